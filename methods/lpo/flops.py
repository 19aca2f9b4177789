"""The LRM's ledger counters as FLOP probes (``LRM_SPEC.flop_probes``; priced by ``lpo_bench.harness.flops``).

What LPO and the LRM trainer count, one count = one sample:

* ``lrm_trunk_fwd`` (LPO, SCORE): one pass of the UNet trunk (down + mid blocks) over a noisy latent;
  with VFE guidance a score makes two (conditional and unconditional text).
* ``reward_fwd`` (LPO, SCORE): one score on cached text (LPO encodes its prompts once), *net of* its trunk
  passes, which ``lrm_trunk_fwd`` prices: the pooling, projection and cosine heads.
* ``reward_fwdbwd`` (LRM trainer, RM_TRAIN): one sample's text encoding (the caption and the VFE "" branch),
  score and backward into the parameters the trainer trains (``train_text_encoder``, ``train_unet``, heads).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lpo_bench.harness.spec import FlopProbe

PROMPT = "a red square left of a blue circle"
TIMESTEP = 500


def _model(bundle: Any, model_dir: Path | None, cfg: Any, device: Any) -> Any:
    from lpo_bench.diffusion.seeding import seeded_init
    from lpo_bench.methods.lpo.lrm import LatentRewardModel

    if model_dir is not None:
        return LatentRewardModel.load(model_dir, bundle, device=device)
    with seeded_init(0, "flops-lrm"):
        lrm = LatentRewardModel.from_bundle(bundle, guidance_scale=cfg.guidance_scale_vfe, multi_scale=cfg.multi_scale)
    return lrm.to(device)


def _trained_params(lrm: Any, cfg: Any) -> list[torch.Tensor]:
    """The parameters the LRM trainer trains under ``cfg`` (its setup's freezing), set to require grad."""
    lrm.requires_grad_(True)
    if not cfg.train_text_encoder:
        for e in lrm.text_encoders:
            e.requires_grad_(False)
    if not cfg.train_unet:
        lrm.unet.requires_grad_(False)
    return [p for p in lrm.parameters() if p.requires_grad]


def flop_probes(bundle: Any, *, model_dir: Path | None = None, cfg: Any = None, full_size: bool = False,
                device: Any = None) -> Iterator[FlopProbe]:
    """The LRM's probes on ``bundle`` (its own saved model from ``model_dir``, else one built as the trainer
    builds it: the bundle's UNet and text encoders, at whatever size the bundle is), on ``device`` (default the
    bundle's; "meta": shapes only)."""
    from lpo_bench.harness.flop_probes import fwd_bwd, train_mode
    from lpo_bench.methods.lpo.lrm import unet_trunk
    from lpo_bench.methods.lpo.lrm_config import LRMConfig

    cfg = cfg if cfg is not None else LRMConfig()
    dev = torch.device(device) if device is not None else bundle.device
    lrm = _model(bundle, model_dir, cfg, dev).eval()
    x = torch.zeros(1, *bundle.latent_shape, device=dev)
    t = torch.full((1,), TIMESTEP, device=dev)
    with torch.no_grad():
        text, uncond = lrm.encode_text([PROMPT]), lrm.negative_embeds(1)
    vfe = lrm.guidance_scale != 1
    where = "the run's LRM" if model_dir is not None else "an LRM built as the trainer builds it"

    def trunk() -> None:
        with torch.no_grad():
            unet_trunk(lrm.unet, x, t, text.embeds)

    def score() -> None:
        with torch.no_grad():
            lrm.score(x, t, text, uncond)

    def train_sample() -> torch.Tensor:
        return lrm.score(x, t, lrm.encode_text([PROMPT]), lrm.negative_embeds(1))

    def fwdbwd() -> None:
        with train_mode(lrm):
            fwd_bwd(train_sample, _trained_params(lrm, cfg))

    yield FlopProbe("lrm_trunk_fwd", trunk, f"{where}: one UNet trunk pass (down + mid blocks), no grad")
    yield FlopProbe("reward_fwd", score, f"{where}: one score on cached text (VFE {'on' if vfe else 'off'}), no grad",
                    net_of={"lrm_trunk_fwd": 2 if vfe else 1})
    yield FlopProbe("reward_fwdbwd", fwdbwd,
                    f"{where}: caption + '' encoded, one score, backward into the trained parameters (text encoders "
                    f"{'trained' if cfg.train_text_encoder else 'frozen'}, UNet trunk "
                    f"{'trained' if cfg.train_unet else 'frozen'}, heads trained)")
