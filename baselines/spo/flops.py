"""The SPM's ledger counters as FLOP probes (``SPM_SPEC.flop_probes``; priced by ``lpo_bench.harness.flops``).

What SPO and the SPM trainer count, one count = one sample:

* ``reward_fwd`` (SPO, SCORE): one decoded x̂0 image scored on cached text features (the decode and the
  x̂0 UNet call are ``vae_decode`` and ``unet_fwd``, priced on their own).
* ``reward_text_fwd`` (SPO, PREP): one prompt through the SPM's text tower.
* ``reward_fwdbwd`` (SPM trainer, RM_TRAIN): one image of a pair scored, with half the pair's caption encoding,
  and the backward into every parameter (the trainer trains them all); measured on a whole pair, per sample.

At full size the SPM has PickScore's architecture (CLIP ViT-H/14 image and text towers, public config), random
weights, whatever the run's own base.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lpo_bench.harness.spec import FlopProbe

PROMPT = "a red square left of a blue circle"
TIMESTEP = 500


def _pickscore_sized(bundle: Any, cfg: Any, device: torch.device) -> Any:
    """An SPM of PickScore's size (CLIP ViT-H/14 with its full text tower), random weights, on ``device``."""
    from transformers import CLIPConfig, CLIPModel

    from lpo_bench.baselines.spo.bench import (
        CLIP_H14_PROJECTION_DIM,
        CLIP_H14_TEXT_CONFIG,
        CLIP_H14_VISION_CONFIG,
    )
    from lpo_bench.baselines.spo.spm import StepAwarePreferenceModel

    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        clip = CLIPModel(CLIPConfig(text_config=CLIP_H14_TEXT_CONFIG, vision_config=CLIP_H14_VISION_CONFIG,
                                    projection_dim=CLIP_H14_PROJECTION_DIM))
        return StepAwarePreferenceModel(clip.eval(), bundle.tokenizers[0], base="clip-vit-h-14-architecture",
                                        base_checkpoint="random-weights", guidance_scale=cfg.guidance_scale,
                                        antialias=cfg.antialias)


def _text_features(spm: Any, prompts: list[str]) -> torch.Tensor:
    """``spm.text_features``; on the meta device without the padding mask (transformers reads the mask's values
    to build it; a mask changes no FLOP count)."""
    if spm.pixel_mean.device.type != "meta":
        return spm.text_features(prompts)
    tok = spm.tokenizer(prompts, padding="max_length", max_length=spm.tokenizer.model_max_length, truncation=True,
                        return_tensors="pt")
    out = spm.clip.get_text_features(input_ids=tok.input_ids.to("meta"))
    f = out if torch.is_tensor(out) else out.pooler_output
    return f / f.norm(dim=-1, keepdim=True)


def _model(bundle: Any, model_dir: Path | None, cfg: Any, full_size: bool, device: torch.device) -> Any:
    from lpo_bench.baselines.spo.spm import StepAwarePreferenceModel

    if model_dir is not None:
        return StepAwarePreferenceModel.load(model_dir, bundle, device=device)
    if full_size or cfg.base == "pickscore":
        return _pickscore_sized(bundle, cfg, device)
    spm = StepAwarePreferenceModel.tiny(bundle.tokenizers[0], image_size=cfg.tiny_image_size, hidden=cfg.tiny_hidden,
                                        layers=cfg.tiny_layers, patch_size=cfg.tiny_patch_size, seed=0,
                                        guidance_scale=cfg.guidance_scale, antialias=cfg.antialias,
                                        text_encoder=bundle.text_encoders[0] if cfg.tiny_text_from_backbone else None)
    return spm.to(device)


def flop_probes(bundle: Any, *, model_dir: Path | None = None, cfg: Any = None, full_size: bool = False,
                device: Any = None) -> Iterator[FlopProbe]:
    """The SPM's probes on images at ``bundle``'s resolution (its own saved model from ``model_dir``, else one
    built from ``cfg`` as the trainer builds it, or PickScore-sized with ``full_size``), on ``device`` (default
    the bundle's; "meta": shapes only)."""
    from lpo_bench.baselines.spo.spm_config import SPMConfig
    from lpo_bench.harness.flop_probes import fwd_bwd, train_mode

    cfg = cfg if cfg is not None else SPMConfig()
    dev, r = (torch.device(device) if device is not None else bundle.device), bundle.resolution
    spm = _model(bundle, model_dir, cfg, full_size, dev).eval()
    images = torch.zeros(2, 3, r, r, device=dev)
    t = torch.full((2,), TIMESTEP, device=dev)
    with torch.no_grad():
        text1 = _text_features(spm, [PROMPT])
    where = "the run's SPM" if model_dir is not None else f"an SPM of {spm.base} size"

    def score() -> None:
        with torch.no_grad():
            spm.score_images(images[:1], t[:1], text1)

    def text() -> None:
        with torch.no_grad():
            _text_features(spm, [PROMPT])

    def pair() -> torch.Tensor:
        f = _text_features(spm, [PROMPT])
        return spm.score_images(images, t, torch.cat([f, f]))

    def fwdbwd() -> None:
        spm.requires_grad_(True)
        with train_mode(spm):
            fwd_bwd(pair, [p for p in spm.parameters() if p.requires_grad])

    yield FlopProbe("reward_fwd", score, f"{where}: one {r}px image scored on cached text features, no grad")
    yield FlopProbe("reward_text_fwd", text, f"{where}: one prompt through the text tower, no grad")
    yield FlopProbe("reward_fwdbwd", fwdbwd, f"{where}: a pair's caption encoded and both images scored, backward "
                                             f"into every parameter", samples=2)
