"""SPO's part of one sampling step, for ``lpo-bench bench``: x̂0 of the K candidates (one CFG pass), K VAE
decodes and K SPM forwards, the calls ``SPO.scorer`` makes.

At full size the SPM has PickScore's image tower (CLIP ViT-H/14, from the public config of
laion/CLIP-ViT-H-14-laion2B-s32B-b79K / yuvalkirstain/PickScore_v1) with random weights and a 1-layer text
tower: SPO caches text features per prompt, so the text tower never runs in a sampling step.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import torch

from lpo_bench.baselines.spo.spm import StepAwarePreferenceModel
from lpo_bench.diffusion import ddim
from lpo_bench.harness.spec import BenchComponent, SamplingStepSetting

CLIP_H14_VISION_CONFIG: dict[str, Any] = dict(
    hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, image_size=224,
    patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5,
)
CLIP_H14_TEXT_CONFIG: dict[str, Any] = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5,
)
CLIP_H14_PROJECTION_DIM = 1024
FULL_SPM_TEXT_LAYERS = 1  # cached text features: the text tower is not part of a sampling step
SMALL_SPM = dict(image_size=32, hidden=64, layers=3, patch_size=4)  # as configs/spm_toy.toml


def random_spm(bundle: Any, *, full_size: bool, seed: int = 0) -> StepAwarePreferenceModel:
    """An SPM with random weights: CLIP ViT-H/14-sized for full-size backbones, toy-sized otherwise."""
    tok = bundle.tokenizers[0]
    if not full_size:
        spm = StepAwarePreferenceModel.tiny(tok, seed=seed, **SMALL_SPM)
        return spm.to(bundle.device).eval().requires_grad_(False)
    from transformers import CLIPConfig, CLIPModel

    text = {**CLIP_H14_TEXT_CONFIG, "num_hidden_layers": FULL_SPM_TEXT_LAYERS}
    torch.manual_seed(seed)
    with torch.device(bundle.device):
        clip = CLIPModel(CLIPConfig(text_config=text, vision_config=CLIP_H14_VISION_CONFIG,
                                    projection_dim=CLIP_H14_PROJECTION_DIM))
        spm = StepAwarePreferenceModel(clip.eval(), tok, base="clip-vit-h-14-architecture",
                                       base_checkpoint="random-weights")
    return spm.to(bundle.device).eval().requires_grad_(False)


def _label(spm: StepAwarePreferenceModel, full_size: bool) -> str:
    n = sum(p.numel() for p in spm.parameters()) / 1e6
    if not full_size:
        return f"toy-size SPM (tiny-clip, 32 px) ({n:.4g} M params)"
    return (f"SPM at CLIP ViT-H/14 vision size (1280 wide, 32 layers, patch 14, 224 px) + adaLN, random weights; "
            f"text tower {FULL_SPM_TEXT_LAYERS} layer (text features cached, not timed) ({n:.4g} M params)")


def sampling_step_components(bundle: Any, setting: SamplingStepSetting, state: dict[str, Any]
                             ) -> Iterator[BenchComponent]:
    k, t_child, gs = setting.num_candidates, setting.child_timestep, setting.guidance_scale
    cfg_mult = 2 if gs != 1 else 1

    def x0_pred() -> None:
        eps = bundle.guided_eps(state["cands"], t_child, state["cond_k"], state["uncond_k"], gs)
        state["x0"] = ddim.predict_x0(bundle.scheduler, state["cands"], eps, t_child)

    yield BenchComponent("x0_pred", x0_pred, {"unet_fwd": k * cfg_mult})
    yield BenchComponent("vae_decode", lambda: state.__setitem__("images", bundle.decode(state["x0"])),
                         {"vae_decode": k})
    spm = random_spm(bundle, full_size=setting.full_size)
    if bundle.device.type == "meta":  # FLOP counting: the text side is cached, only its shape matters
        spm_text = torch.empty(k, spm.clip.config.projection_dim, device="meta")
    else:
        with torch.inference_mode():
            spm_text = spm.text_features([setting.prompt]).repeat(k, 1)  # cached per prompt, as SPO does
    labels = {"spm": _label(spm, setting.full_size),
              "spm_attention": getattr(spm.clip.config, "_attn_implementation", None)}
    yield BenchComponent("spm_reward", lambda: spm.score_images(state["images"], t_child, spm_text),
                         {"reward_fwd": k}, labels)
    if not setting.keep_models:
        del spm
        gc.collect()
