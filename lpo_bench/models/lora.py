"""LoRA on the UNet, shared by LPO, SPO and Diffusion-DPO (peft backend of diffusers).

One UNet serves as both policy and frozen reference: the reference is the same network with the
adapters switched off (``reference_mode``), as in the diffusers Diffusion-DPO example. LoRA
parameters are kept in fp32 even when the base weights are fp16/bf16 (the usual mixed-precision
LoRA recipe). Exports use the diffusers LoRA format, so
``StableDiffusionPipeline.load_lora_weights(dir)`` / ``StableDiffusionXLPipeline.load_lora_weights(dir)``
read them; the LoRA config (rank, alpha, targets) is stored in the file's metadata so the
scale ``alpha / rank`` survives the round trip.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from lpo_bench.errors import HarnessError

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def add_lora(
    unet: Any,
    *,
    rank: int,
    alpha: float | None = None,
    targets: Sequence[str] = DEFAULT_TARGETS,
    init: str | bool = "gaussian",
    adapter_name: str = "default",
) -> list[torch.nn.Parameter]:
    """Freeze ``unet`` and add a LoRA adapter of ``rank`` (scale alpha/rank, alpha defaults to rank)
    on the ``targets`` linear layers. ``init="gaussian"``: A ~ N(0, 1/rank), B = 0, so the adapted
    UNet starts equal to the base. Returns the trainable (fp32) LoRA parameters."""
    from peft import LoraConfig

    if rank < 1:
        raise HarnessError(f"LoRA rank must be >= 1, got {rank}")
    unet.requires_grad_(False)
    config = LoraConfig(
        r=rank,
        lora_alpha=float(alpha if alpha is not None else rank),
        init_lora_weights=init,
        target_modules=list(targets),
    )
    unet.add_adapter(config, adapter_name=adapter_name)
    params = []
    for name, p in unet.named_parameters():
        if "lora_" in name and f".{adapter_name}." in name:
            p.data = p.data.float()
            p.requires_grad_(True)
            params.append(p)
    if not params:
        raise HarnessError(
            f"LoRA targets {list(targets)} matched no layer of the UNet; check the module names"
        )
    return params


def lora_parameters(unet: Any, adapter_name: str = "default") -> list[torch.nn.Parameter]:
    """The LoRA parameters of ``adapter_name`` (e.g. for an optimizer after a reload)."""
    return [p for n, p in unet.named_parameters() if "lora_" in n and f".{adapter_name}." in n]


def lora_state(unet: Any) -> dict[str, torch.Tensor]:
    """Name -> tensor of every LoRA parameter (what a checkpoint needs to resume a LoRA run)."""
    return {n: p for n, p in unet.named_parameters() if "lora_" in n}


def _tuner_layers(unet: Any) -> list[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]


@contextmanager
def reference_mode(unet: Any) -> Iterator[Any]:
    """Inside the block the UNet runs without its adapters (the frozen reference model).

    The previous enabled/disabled state of every LoRA layer is restored on exit, also on error.
    """
    layers = _tuner_layers(unet)
    if not layers:
        raise HarnessError("reference_mode needs a UNet with LoRA adapters (call add_lora first)")
    was_disabled = [m.disable_adapters for m in layers]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield unet
    finally:
        for m, disabled in zip(layers, was_disabled, strict=True):
            m.enable_adapters(not disabled)


def _is_sdxl(unet: Any) -> bool:
    return getattr(unet.config, "addition_embed_type", None) == "text_time"


def export_lora(unet: Any, out_dir: str | Path, adapter_name: str = "default") -> Path:
    """Write ``out_dir/pytorch_lora_weights.safetensors`` (diffusers format, "unet." prefix, LoRA
    config in the metadata). Returns the file path."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    if adapter_name not in getattr(unet, "peft_config", {}):
        raise HarnessError(f"the UNet has no LoRA adapter {adapter_name!r} to export")
    state = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    state = convert_state_dict_to_diffusers(
        {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipeline_cls = StableDiffusionXLPipeline if _is_sdxl(unet) else StableDiffusionPipeline
    pipeline_cls.save_lora_weights(
        out,
        unet_lora_layers=state,
        weight_name=LORA_WEIGHT_NAME,
        safe_serialization=True,
        unet_lora_adapter_metadata=_sorted_sets(unet.peft_config[adapter_name].to_dict()),
    )
    _sort_safetensors_metadata(out / LORA_WEIGHT_NAME)
    return out / LORA_WEIGHT_NAME


def _sort_safetensors_metadata(path: Path) -> None:
    """Rewrite the file's header with its ``__metadata__`` keys sorted: safetensors serialises that map from a Rust
    hash map, in an order that changes per process, so two exports of the same weights would differ in bytes.
    The tensor entries (explicit offsets) and the data are unchanged."""
    import json

    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta is not None else {}) | header
    new = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    new += b" " * ((n if len(new) <= n else -(-len(new) // 8) * 8) - len(new))  # keep the length (and alignment)
    path.write_bytes(len(new).to_bytes(8, "little") + new + raw[8 + n :])


def _sorted_sets(value: Any) -> Any:
    """``value`` with every set a sorted list: diffusers writes a set (``target_modules``) in iteration order,
    which string hash randomisation changes per process, so two identical exports would differ in bytes."""
    if isinstance(value, dict):
        return {k: _sorted_sets(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return value


@torch.no_grad()
def export_merged_unet(unet: Any, out_dir: str | Path, adapter_name: str = "default") -> Path:
    """Save a UNet with the adapter merged into the base weights (``save_pretrained``) to ``out_dir``.

    Works on a deep copy, so the live adapter is untouched (needs memory for a second UNet).
    """
    if adapter_name not in getattr(unet, "peft_config", {}):
        raise HarnessError(f"the UNet has no LoRA adapter {adapter_name!r} to merge")
    merged = copy.deepcopy(unet)
    merged.fuse_lora(lora_scale=1.0, adapter_names=[adapter_name])
    merged.unload_lora()  # replaces LoRA layers by their (now merged) base layers
    out = Path(out_dir)
    merged.save_pretrained(out, safe_serialization=True)
    del merged
    return out


def load_lora_into(unet: Any, lora_dir: str | Path, adapter_name: str = "default") -> Any:
    """Load a diffusers-format LoRA (``export_lora`` output or a published one) into ``unet``
    as ``adapter_name`` and activate it. Returns the UNet."""
    path = Path(lora_dir)
    file = path if path.is_file() else path / LORA_WEIGHT_NAME
    if not file.exists():
        raise HarnessError(f"no LoRA weights at {file}; pass the directory written by export_lora")
    unet.load_lora_adapter(
        str(file.parent),
        weight_name=file.name,
        prefix="unet",
        adapter_name=adapter_name,
        local_files_only=True,
    )
    unet.set_adapters([adapter_name])
    return unet
