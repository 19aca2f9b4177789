"""Tiny random-weight Stable-Diffusion-family bundles, built in-process (no hub, no network).

`tiny_bundle("sd15" | "sd21" | "sdxl")` uses the same diffusers/transformers classes and the same
structural features as the real backbone (cross-attention UNet; SD2's linear projections and
per-block head dims; SDXL's two text encoders, "text_time" added conditioning and
force-zeros-for-empty-prompt), at a size that runs a denoising step in milliseconds on a CPU.
Like diffusers' ``get_dummy_components``, every component is built after ``torch.manual_seed``.

The tokenizer is the real 49,408-token CLIP BPE tokenizer, rebuilt offline from the
``bpe_simple_vocab_16e6.txt.gz`` file that open_clip ships, so prompts tokenize exactly as
with the real backbones. The vocab.json/merges.txt it needs are written once to
``$LPO_BENCH_CACHE/clip_tokenizer`` (default ``~/.cache/lpo_bench/clip_tokenizer``).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import torch

from lpo_bench.errors import HarnessError
from lpo_bench.models.bundle import ModelBundle

TINY_FAMILIES = ("sd15", "sd21", "sdxl")
CLIP_VOCAB_SIZE = 49408
# Tiny latents are [4, 8, 8] for resolutions 16..64 (see _vae_blocks).
_TINY_LATENT_SIDE = 8


# ---------------------------------------------------------------------------- tokenizer
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode map (the table open_clip and HF CLIP use)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _open_clip_bpe_file() -> Path:
    # find_spec locates the wheel without importing it (importing open_clip imports torch+timm: seconds).
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise HarnessError(
            "open_clip_torch is not installed; it ships the CLIP BPE vocabulary: pip install open_clip_torch"
        )
    path = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.exists():
        raise HarnessError(f"CLIP BPE vocabulary missing at {path}; reinstall open_clip_torch")
    return path


# Process-level memo of the default directory: the test suite points LPO_BENCH_CACHE at a fresh
# tmp dir per test, and the files are deterministic, so rebuilding them each time is wasted work.
_default_dir: list[Path] = []


def _complete(d: Path) -> bool:
    return (d / "vocab.json").exists() and (d / "merges.txt").exists()


def clip_tokenizer_dir(cache_dir: str | Path | None = None) -> Path:
    """Directory with the CLIP ``vocab.json`` + ``merges.txt`` (49,408 tokens), built once and cached.

    Same construction as ``open_clip.tokenizer.SimpleTokenizer``: 256 byte tokens, their ``</w>``
    forms, the first 48,894 merges, then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).
    """
    if cache_dir is None:
        if _default_dir and _complete(_default_dir[0]):
            return _default_dir[0]
        cache_dir = (
            Path(os.environ.get("LPO_BENCH_CACHE", Path.home() / ".cache" / "lpo_bench")) / "clip_tokenizer"
        )
        _default_dir[:] = [Path(cache_dir)]
    out = Path(cache_dir)
    if _complete(out):
        return out
    lines = gzip.open(_open_clip_bpe_file()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # line 0 is a version header
    byte_tokens = list(_bytes_to_unicode().values())
    vocab = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == CLIP_VOCAB_SIZE, len(vocab)
    out.mkdir(parents=True, exist_ok=True)
    # Write-then-rename so concurrent test workers never read a half-written file.
    suffix = f".{os.getpid()}.tmp"
    (out / ("vocab.json" + suffix)).write_text(
        json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8"
    )
    (out / ("merges.txt" + suffix)).write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (out / ("vocab.json" + suffix)).replace(out / "vocab.json")
    (out / ("merges.txt" + suffix)).replace(out / "merges.txt")
    return out


def clip_tokenizer(model_max_length: int = 77, pad_token: str = "<|endoftext|>") -> Any:
    """The real CLIP tokenizer. pad_token: "<|endoftext|>" (OpenAI CLIP: SD1.5, SDXL encoder 1)
    or "!" (OpenCLIP: SD2.x, SDXL encoder 2), as in the released backbones."""
    from transformers import CLIPTokenizer

    d = clip_tokenizer_dir()
    return CLIPTokenizer(
        vocab=str(d / "vocab.json"),
        merges=str(d / "merges.txt"),
        pad_token=pad_token,
        model_max_length=model_max_length,
    )


# ---------------------------------------------------------------------------- models
def _vae_blocks(resolution: int) -> int:
    """Number of VAE blocks so that latents are 8x8 (factor 2**(n-1), capped at SD's 8)."""
    n = 1
    while n < 4 and resolution // 2 ** (n - 1) > _TINY_LATENT_SIDE:
        n += 1
    if resolution % 2 ** (n - 1) or (resolution // 2 ** (n - 1)) % 2:
        raise ValueError(f"tiny resolution {resolution} must give an even latent side (e.g. 16, 32, 64)")
    return n


def _text_encoder(seed: int, hidden: int, *, act: str, projection_dim: int | None, max_len: int) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=max_len,
        hidden_act=act,
        projection_dim=projection_dim if projection_dim is not None else hidden,
    )
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if projection_dim is not None else CLIPTextModel
    return cls(cfg).eval()


def tiny_components(
    family: str = "sd15", seed: int = 0, resolution: int = 32, model_max_length: int = 77
) -> dict[str, Any]:
    """Diffusers-pipeline component dict (``unet``, ``vae``, ``text_encoder``, ``tokenizer``,
    ``scheduler`` and, for SDXL, ``text_encoder_2``/``tokenizer_2``) of a tiny ``family`` model."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {TINY_FAMILIES}")
    n_vae = _vae_blocks(resolution)
    latent_side = resolution // 2 ** (n_vae - 1)
    comps: dict[str, Any] = {}

    if family == "sd15":
        comps["text_encoder"] = _text_encoder(
            seed, 32, act="quick_gelu", projection_dim=None, max_len=model_max_length
        )
        comps["tokenizer"] = clip_tokenizer(model_max_length, pad_token="<|endoftext|>")
        unet_kwargs: dict[str, Any] = dict(
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
        )
    elif family == "sd21":
        comps["text_encoder"] = _text_encoder(
            seed, 32, act="gelu", projection_dim=None, max_len=model_max_length
        )
        comps["tokenizer"] = clip_tokenizer(model_max_length, pad_token="!")
        unet_kwargs = dict(
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=(2, 4),  # SD2: per-block head dims
            use_linear_projection=True,
        )
    else:
        # Encoder 2 is deliberately wider than encoder 1 and its projection differs from both,
        # so that mixing up hidden/pooled sources fails loudly in tests.
        comps["text_encoder"] = _text_encoder(
            seed, 32, act="quick_gelu", projection_dim=None, max_len=model_max_length
        )
        comps["text_encoder_2"] = _text_encoder(
            seed + 1, 64, act="gelu", projection_dim=24, max_len=model_max_length
        )
        comps["tokenizer"] = clip_tokenizer(model_max_length, pad_token="<|endoftext|>")
        comps["tokenizer_2"] = clip_tokenizer(model_max_length, pad_token="!")
        unet_kwargs = dict(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32 + 64,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            transformer_layers_per_block=(1, 2),
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 24,  # time_ids embedding + pooled text_embeds
        )

    torch.manual_seed(seed)
    comps["unet"] = UNet2DConditionModel(
        sample_size=latent_side,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=4,
        **unet_kwargs,
    ).eval()
    torch.manual_seed(seed)
    comps["vae"] = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n_vae,
        up_block_types=("UpDecoderBlock2D",) * n_vae,
        block_out_channels=(8,) * n_vae,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=resolution,
        scaling_factor=0.13025 if family == "sdxl" else 0.18215,
    ).eval()
    comps["scheduler"] = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,  # as in the released SD scheduler configs
    )
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if name in comps:
            comps[name].requires_grad_(False)
    return comps


def _state_sha256(module: Any) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(f"{k}|{tuple(v.shape)}|{v.dtype}".encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def bundle_from_components(
    name: str, comps: dict[str, Any], *, family: str, resolution: int, provenance: dict[str, Any]
) -> ModelBundle:
    """A ModelBundle over a diffusers component dict (as returned by ``tiny_components``)."""
    sdxl = family == "sdxl"
    return ModelBundle(
        name=name,
        unet=comps["unet"],
        vae=comps["vae"],
        text_encoders=(comps["text_encoder"], comps["text_encoder_2"]) if sdxl else (comps["text_encoder"],),
        tokenizers=(comps["tokenizer"], comps["tokenizer_2"]) if sdxl else (comps["tokenizer"],),
        scheduler=comps["scheduler"],
        text_kind="sdxl" if sdxl else "sd",
        resolution=resolution,
        provenance=provenance,
        force_zeros_for_empty_prompt=sdxl,
    )


def tiny_bundle(
    family: str = "sd15", seed: int = 0, resolution: int = 32, model_max_length: int = 77
) -> ModelBundle:
    """Tiny random-weight bundle of ``family`` ("sd15", "sd21", "sdxl"); latents [4, 8, 8] at resolution 32.

    Deterministic in ``seed``; provenance records the sha256 of the UNet state dict.
    """
    comps = tiny_components(family, seed, resolution, model_max_length)
    provenance = {
        "backbone_id": f"tiny-{family}",
        "backbone_revision": f"seed{seed}",
        "weights_sha256": _state_sha256(comps["unet"]),
        "dtype": "fp32",
    }
    return bundle_from_components(
        f"tiny-{family}", comps, family=family, resolution=resolution, provenance=provenance
    )
