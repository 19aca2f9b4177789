"""The bundles the bench measures: toy and tiny bundles, full-size architectures with random weights, or a
registered backbone with its weights."""

from __future__ import annotations

from typing import Any

from lpo_bench.errors import HarnessError
from lpo_bench.models.full_size import RANDOM_WEIGHT_BACKBONES, full_size_bundle

TINY_BACKBONES = ("tiny-sd15", "tiny-sdxl")
SMALL_BACKBONES = ("toy", *TINY_BACKBONES)
RANDOM_BUILDABLE = tuple(dict.fromkeys((*SMALL_BACKBONES, *RANDOM_WEIGHT_BACKBONES)))


def is_full_size(backbone: str) -> bool:
    """Whether reward models are built at the size of the released ones (everything but toy and tiny)."""
    return backbone not in SMALL_BACKBONES


def check_backbone(backbone: str, random_weights: bool) -> None:
    if random_weights and backbone not in RANDOM_BUILDABLE:
        raise HarnessError(f"--random-weights builds {', '.join(RANDOM_BUILDABLE)}, not {backbone!r}; "
                           f"pick one of those or drop --random-weights")


def build_bundle(backbone: str, *, random_weights: bool, device: str, seed: int = 0) -> Any:
    """``tiny-*``: ``lpo_bench.models.tiny`` (random weights already); ``random_weights``: the released
    architecture, untrained; otherwise the registered backbone with its weights."""
    if backbone in TINY_BACKBONES:
        from lpo_bench.models.tiny import tiny_bundle

        return tiny_bundle(backbone.removeprefix("tiny-"), seed=seed).to(device)
    if random_weights:
        return full_size_bundle(backbone, seed=seed, device=device)
    from lpo_bench.models.load import load_bundle

    return load_bundle(backbone, weights_dir=None, device=device)


def meta_bundle(backbone: str, *, random_weights: bool) -> Any:
    """The bundle with shapes only (``torch.device("meta")``): for FLOP counting, no memory and no compute."""
    if random_weights and backbone in RANDOM_WEIGHT_BACKBONES:
        return full_size_bundle(backbone, device="meta")
    return build_bundle(backbone, random_weights=random_weights, device="cpu").to("meta")


def count_params(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def attention_report(bundle: Any) -> dict[str, Any]:
    """Attention implementations in use: diffusers processors and transformers ``_attn_implementation``."""
    def procs(m: Any) -> list[str]:
        return sorted({type(p).__name__ for p in getattr(m, "attn_processors", {}).values()})

    return {"unet": procs(bundle.unet), "vae": procs(bundle.vae),
            "text_encoders": [getattr(e.config, "_attn_implementation", None) for e in bundle.text_encoders]}
