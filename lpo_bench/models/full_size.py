"""Random-weight bundles at the size of the released models, built offline (no weights, no hub access).

``sd15`` / ``sdxl``: the public architectures, from the ``config.json`` files of the pinned hub repos in
``lpo_bench.models.backbones`` (stable-diffusion-v1-5/stable-diffusion-v1-5, stabilityai/stable-diffusion-xl-base-1.0
with the madebyollin/sdxl-vae-fp16-fix VAE) and of their text encoders (openai/clip-vit-large-patch14,
laion/CLIP-ViT-bigG-14-laion2B-39B-b160k). ``toy``: the shipped toy model's architecture.
Costs do not depend on the weights, so these measure what the released models cost without downloading them.
"""

from __future__ import annotations

from typing import Any

import torch

from lpo_bench.errors import HarnessError

RANDOM_WEIGHT_BACKBONES = ("toy", "sd15", "sdxl")

SD15_UNET_CONFIG: dict[str, Any] = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8,
)
SDXL_UNET_CONFIG: dict[str, Any] = dict(
    sample_size=128, in_channels=4, out_channels=4, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280), layers_per_block=2, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
    cross_attention_dim=2048, attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10),
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 6 time ids x 256 + 1280 pooled text_embeds
)
SD_VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
)
SDXL_VAE_CONFIG: dict[str, Any] = {**SD_VAE_CONFIG, "sample_size": 1024, "scaling_factor": 0.13025}
CLIP_L14_TEXT_CONFIG: dict[str, Any] = dict(  # SD1.5 text_encoder, SDXL text_encoder
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=0, eos_token_id=2,
    pad_token_id=1,
)
CLIP_BIGG14_TEXT_CONFIG: dict[str, Any] = dict(  # SDXL text_encoder_2 (OpenCLIP ViT-bigG/14)
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=1280, bos_token_id=0, eos_token_id=2,
    pad_token_id=1,
)


def _sd_scheduler() -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, steps_offset=1)


def _provenance(architecture: str, seed: int) -> dict[str, str]:
    return {"backbone_id": f"{architecture}-architecture", "backbone_revision": f"random-weights-seed{seed}",
            "dtype": "fp32"}


def _sd_bundle(family: str, *, seed: int = 0, device: str = "cpu") -> Any:
    """A full-size ``family`` ("sd15" | "sdxl") bundle with random weights; ``device="meta"`` builds shapes only
    (no memory), for FLOP counting."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lpo_bench.models.tiny import bundle_from_components, clip_tokenizer

    sdxl = family == "sdxl"
    torch.manual_seed(seed)
    comps: dict[str, Any] = {"tokenizer": clip_tokenizer(77, pad_token="<|endoftext|>"), "scheduler": _sd_scheduler()}
    if sdxl:
        comps["tokenizer_2"] = clip_tokenizer(77, pad_token="!")
    with torch.device(device):
        comps["unet"] = UNet2DConditionModel(**(SDXL_UNET_CONFIG if sdxl else SD15_UNET_CONFIG))
        comps["vae"] = AutoencoderKL(**(SDXL_VAE_CONFIG if sdxl else SD_VAE_CONFIG))
        comps["text_encoder"] = CLIPTextModel(CLIPTextConfig(**CLIP_L14_TEXT_CONFIG))
        if sdxl:
            comps["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG14_TEXT_CONFIG))
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if name in comps:
            comps[name].eval().requires_grad_(False)
    return bundle_from_components(family, comps, family=family, resolution=1024 if sdxl else 512,
                                  provenance=_provenance(family, seed))


def _toy_bundle(*, seed: int = 0, device: str = "cpu") -> Any:
    """The toy backbone's architecture with random weights (the shipped toy model, untrained)."""
    from lpo_bench.models.bundle import ModelBundle
    from lpo_bench.toy.models import build_toy_components

    unet, vae, text_encoder, tokenizer, scheduler = build_toy_components(seed)
    for m in (unet, vae, text_encoder):
        m.eval().requires_grad_(False)
    return ModelBundle(name="toy", unet=unet, vae=vae, text_encoders=(text_encoder,), tokenizers=(tokenizer,),
                       scheduler=scheduler, text_kind="sd", resolution=32,
                       provenance=_provenance("toy", seed)).to(device)


def full_size_bundle(backbone: str, *, seed: int = 0, device: str = "cpu") -> Any:
    """``backbone``'s released architecture with random weights, on ``device``."""
    if backbone not in RANDOM_WEIGHT_BACKBONES:
        raise HarnessError(f"no random-weight architecture for {backbone!r}; use one of "
                           f"{', '.join(RANDOM_WEIGHT_BACKBONES)}")
    if backbone == "toy":
        return _toy_bundle(seed=seed, device=device)
    return _sd_bundle(backbone, seed=seed, device=device)
