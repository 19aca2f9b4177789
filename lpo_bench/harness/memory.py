"""The peak-memory estimate ``train`` prints at setup, before the first update.

    peak ≈ W + 12 · N_train + A

* ``W``: every parameter of the loaded models at its dtype (the bundle's UNet, VAE and text encoders, and the
  models the method or trainer holds: a reward model, a reference UNet), each counted once.
* ``12 · N_train``: per trainable parameter an fp32 gradient (4 B) and AdamW's two fp32 moments (8 B); its fp32
  weight (4 B) is already in ``W``, so a trainable parameter costs 16 B in all.
* ``A = S · a(unet, h, w) · b``: activations kept for the backward pass of one forward/backward of ``S`` samples
  (:func:`activation_samples`) on latents of ``h × w``, ``a`` elements per sample (:func:`unet_activation_elements`),
  ``b`` bytes per element (4 in fp32; 2.5 under bf16/fp16 autocast, where normalisation inputs and a few other
  saved tensors stay fp32: measured 0.6-0.67 of the fp32 bytes per block on the CPU).

Left out: the CUDA context (~0.5 GB) and the caching allocator's reserve and fragmentation; kernel workspaces
(cuDNN, attention); the no-grad passes (sampling, the reference and reward forwards: their activations are freed
layer by layer, so they matter only at large sampling batches); the reward model's own activations while it is
trained in a separate stage; autocast's low-precision copies of trainable weights (small under LoRA, 2 B per
parameter for a fully fine-tuned UNet); the optimiser's temporary buffers during its step; data batches and caches
(VAE-latent caches live on the CPU).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Elements kept for backward per channel and pixel (measured with torch.autograd.graph.saved_tensors_hooks on
# diffusers 0.42 blocks in fp32, weights excluded): a ResnetBlock2D keeps 6 (two GroupNorm inputs and SiLU/conv
# inputs), a BasicTransformerBlock with SDPA attention 30 (three LayerNorms, q/k/v/out of two attentions, the GEGLU
# feed-forward's 8c-wide projection), plus 2·77·c for the cross-attention keys and values of a 77-token prompt;
# the Transformer2DModel around its blocks adds 3 (GroupNorm, proj_in, proj_out).
K_RESNET = 6
K_TRANSFORMER_BLOCK = 30
K_TRANSFORMER_WRAP = 3
# Under gradient checkpointing (fitted on the full-size SD1.5 UNet, same measurement, 405 MiB per fp32 sample at
# 64x64 against 1609 MiB without): each checkpointed ResNet or transformer block keeps its input, 1.5 c per pixel on
# average (up-block ResNets read the concatenated skip connection, 2c to 3c wide); each Transformer2DModel wrapper 6
# (its GroupNorm, proj_in, proj_out and residual, plus the level's share of the up/down-sampler convolutions).
K_CKPT_INPUT = 1.5
K_CKPT_WRAP = 6
CONTEXT_TOKENS = 77
ACT_BYTES = {"fp32": 4.0, "bf16": 2.5, "fp16": 2.5}
OPTIMIZER_BYTES_PER_TRAINABLE = 12  # fp32 gradient + AdamW exp_avg + exp_avg_sq
GIB = 1024**3


def _per_level(value: Any, levels: int) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)] * levels


def unet_layer_counts(config: Mapping[str, Any]) -> list[dict[str, int]]:
    """Per resolution level i (latent downsampled by 2^i) of a diffusers ``UNet2DConditionModel`` config: its
    channels ``c``, ResNet blocks ``resnets`` (down: layers_per_block, up: layers_per_block + 1, mid: 2 at the
    last level), transformer blocks ``transformer_blocks`` (each Transformer2DModel's depth, summed) and
    Transformer2DModel wrappers ``transformers``."""
    chans = [int(c) for c in config["block_out_channels"]]
    n = len(chans)
    layers = _per_level(config.get("layers_per_block", 2), n)
    depth = _per_level(config.get("transformer_layers_per_block", 1) or 1, n)
    rev = config.get("reverse_transformer_layers_per_block")
    up_depth = list(reversed(depth)) if rev is None else [int(d) for d in (rev if isinstance(rev, (list, tuple)) else [rev] * n)]
    down_types, up_types = list(config["down_block_types"]), list(config["up_block_types"])
    out = [{"c": c, "resnets": 0, "transformer_blocks": 0, "transformers": 0} for c in chans]
    for i, kind in enumerate(down_types):
        out[i]["resnets"] += layers[i]
        if "CrossAttn" in kind:
            out[i]["transformers"] += layers[i]
            out[i]["transformer_blocks"] += layers[i] * depth[i]
    for j, kind in enumerate(up_types):  # up block j runs at level n-1-j, layers_per_block + 1 layers
        i = n - 1 - j
        k = list(reversed(layers))[j] + 1
        out[i]["resnets"] += k
        if "CrossAttn" in kind:
            out[i]["transformers"] += k
            out[i]["transformer_blocks"] += k * up_depth[j]
    mid = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid:
        out[-1]["resnets"] += 2
        if "CrossAttn" in str(mid):
            out[-1]["transformers"] += 1
            out[-1]["transformer_blocks"] += depth[-1]
    return out


def unet_activation_elements(config: Mapping[str, Any], latent_hw: tuple[int, int], *, checkpointing: bool,
                             context_tokens: int = CONTEXT_TOKENS) -> int:
    """Elements one sample keeps for the backward pass of a UNet forward, from its config and latent size h × w.

    Level i has p_i = (h / 2^i)(w / 2^i) pixels and c_i channels (:func:`unet_layer_counts`: R_i ResNets,
    T_i transformer blocks in X_i Transformer2DModels). Without checkpointing::

        a = Σ_i c_i · [p_i · (6 R_i + 30 T_i + 3 X_i) + 2 · 77 · T_i]

    With gradient checkpointing (diffusers checkpoints every ResNet and every transformer block, keeping its
    input, and recomputes one at a time in the backward pass)::

        a = Σ_i c_i · p_i · (1.5 (R_i + T_i) + 6 X_i) + max_i c_i · p_i · (30 if T_i else 6)

    Measured on the full-size SD1.5 UNet (64 × 64 latents, one sample, fp32, saved tensors counted): 1609 MiB
    without checkpointing (the formula gives 1737, +8 %), 405 MiB kept with it (the formula without its recompute
    term gives 400).
    """
    h, w = latent_hw
    total, peak_block = 0, 0
    for i, lv in enumerate(unet_layer_counts(config)):
        c, p = lv["c"], (h // 2**i) * (w // 2**i)
        r, t, x = lv["resnets"], lv["transformer_blocks"], lv["transformers"]
        if checkpointing:
            total += int(c * p * (K_CKPT_INPUT * (r + t) + K_CKPT_WRAP * x))
            if r or t:
                peak_block = max(peak_block, c * p * (K_TRANSFORMER_BLOCK if t else K_RESNET))
        else:
            total += c * (p * (K_RESNET * r + K_TRANSFORMER_BLOCK * t + K_TRANSFORMER_WRAP * x)
                          + 2 * context_tokens * t)
    return total + peak_block


def activation_samples(cfg: Any, world_size: int = 1) -> int:
    """Samples in one forward/backward of the policy UNet, read from common config keys: pairs per
    forward/backward = ``micro_batch_pairs`` (per rank) when set, else ``train_batch_pairs``, ``pairs_per_update``
    or ``batch_pairs`` (global, split over ``world_size`` ranks); two images per pair; twice that when the trained
    prediction is classifier-free guided (``guidance_scale`` != 1). A method with another layout overrides this
    with an ``activation_samples()`` method."""
    pairs = getattr(cfg, "micro_batch_pairs", None)
    if not pairs:
        for key in ("train_batch_pairs", "pairs_per_update", "batch_pairs"):
            if getattr(cfg, key, None):
                pairs = math.ceil(int(getattr(cfg, key)) / max(world_size, 1))
                break
    guided = float(getattr(cfg, "guidance_scale", 1.0) or 1.0) != 1.0
    return 2 * int(pairs or 1) * (2 if guided else 1)


def peak_bytes(weights_bytes: int, trainable_params: int, activation_bytes: float) -> int:
    """``W + 12 · N_train + A`` (module docstring), in bytes."""
    return int(weights_bytes + OPTIMIZER_BYTES_PER_TRAINABLE * trainable_params + activation_bytes)


@dataclass
class MemoryEstimate:
    """The estimate's terms (bytes) and what they were computed from."""

    weights_by_model: dict[str, int]
    dtypes_by_model: dict[str, str]
    trainable_params: int
    activation_bytes: int
    samples: int
    latent_shape: tuple[int, ...]
    precision: str
    checkpointing: bool
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def weights_bytes(self) -> int:
        return sum(self.weights_by_model.values())

    @property
    def optimizer_bytes(self) -> int:
        return OPTIMIZER_BYTES_PER_TRAINABLE * self.trainable_params

    @property
    def total_bytes(self) -> int:
        return peak_bytes(self.weights_bytes, self.trainable_params, self.activation_bytes)

    def as_dict(self) -> dict[str, Any]:
        return {"total_bytes": self.total_bytes, "weights_bytes": self.weights_bytes,
                "weights_by_model": dict(self.weights_by_model), "dtypes_by_model": dict(self.dtypes_by_model),
                "trainable_params": self.trainable_params, "optimizer_bytes": self.optimizer_bytes,
                "activation_bytes": self.activation_bytes, "samples": self.samples,
                "latent_shape": list(self.latent_shape), "precision": self.precision,
                "gradient_checkpointing": self.checkpointing}

    def line(self) -> str:
        models = ", ".join(f"{k} {v / GIB:.2f} {self.dtypes_by_model[k]}" for k, v in self.weights_by_model.items())
        lat = "x".join(str(s) for s in self.latent_shape)
        return (f"estimated peak memory {self.total_bytes / GIB:.2f} GiB = weights {self.weights_bytes / GIB:.2f} "
                f"({models}) + grads and AdamW moments {self.optimizer_bytes / GIB:.2f} ({self.trainable_params:,} "
                f"trainable x 12 B) + activations {self.activation_bytes / GIB:.2f} ({self.samples} samples x {lat} "
                f"latents, {self.precision}{', checkpointed' if self.checkpointing else ''}); GiB, not counting the "
                f"CUDA context, allocator reserve and no-grad passes")


def _modules(bundle: Any, trainable: Any) -> dict[str, Any]:
    """The bundle's models and the torch modules ``trainable`` holds as attributes (reward model, reference)."""
    import torch

    mods = {"unet": bundle.unet, "vae": bundle.vae}
    for i, enc in enumerate(bundle.text_encoders):
        mods["text_encoder" if i == 0 else f"text_encoder_{i + 1}"] = enc
    for name, value in sorted(vars(trainable).items()) if trainable is not None else ():
        if isinstance(value, torch.nn.Module) and all(value is not m for m in mods.values()):
            mods[name] = value
    return mods


def estimate(bundle: Any, trainable: Any, cfg: Any, *, precision: str, checkpointing: bool,
             world_size: int = 1) -> MemoryEstimate:
    """The estimate for ``trainable`` (a set-up method or reward trainer) on ``bundle`` (module docstring)."""
    seen: set[int] = set()
    weights, dtypes, n_train = {}, {}, 0
    for name, mod in _modules(bundle, trainable).items():
        total, kinds = 0, set()
        for p in mod.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel() * p.element_size()
            kinds.add(str(p.dtype).removeprefix("torch.").replace("float32", "fp32").replace("bfloat16", "bf16")
                      .replace("float16", "fp16"))
            n_train += p.numel() if p.requires_grad else 0
        weights[name], dtypes[name] = total, "+".join(sorted(kinds)) or "-"
    hook = getattr(trainable, "activation_samples", None)
    samples = int(hook()) if callable(hook) else activation_samples(cfg, world_size)
    latent = tuple(bundle.latent_shape)
    config = getattr(bundle.unet, "config", None)
    a = unet_activation_elements(config, latent[1:], checkpointing=checkpointing) if config is not None else 0
    return MemoryEstimate(weights, dtypes, n_train, int(samples * a * ACT_BYTES[precision]), samples, latent,
                          precision, checkpointing)
