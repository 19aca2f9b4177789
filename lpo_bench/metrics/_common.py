"""Shared by the metric adapters: pinned hub files and the :class:`HubScorer` base, input checks,
8-bit images, strict loading."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from lpo_bench.errors import HarnessError
from lpo_bench.metrics.base import ScorerProvenance
from lpo_bench.models.weights import file_sha256, resolve_snapshot

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_VOCAB_SIZE = 49408
BERT_VOCAB_SIZE = 30522


@dataclass(frozen=True)
class HubFiles:
    """Files of a Hugging Face repo at a pinned commit; ``sha256`` holds known LFS digests."""

    repo: str
    revision: str
    files: tuple[str, ...]
    sha256: dict[str, str] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.repo}@{self.revision}"

    def resolve(self, weights_dir: str | Path | None, allow_download: bool | None) -> Path:
        """Snapshot directory holding all ``files`` (HarnessError naming the first missing one)."""
        return resolve_snapshot(
            self.repo, self.revision, required=self.files, weights_dir=weights_dir, allow_download=allow_download
        )


# A dataclass so that subclasses add their own keyword fields and the generated __init__ still lists
# weights_dir (evaluation.load_metric passes it only to adapters whose signature has it).
@dataclass(kw_only=True, eq=False)
class HubScorer:
    """Base of the adapters whose weights are pinned hub files: constructor, device, file resolution.

    Construction only records where the weights are; ``load(device)`` resolves them offline (or,
    with ``allow_download``, downloads them). ``verify_sha256=False`` accepts a file whose digest
    differs from its pinned one; files without a published digest are recorded, never checked.
    """

    id: ClassVar[str]
    version: ClassVar[str] = "v1"
    higher_is_better: ClassVar[bool] = True

    weights_dir: str | Path | None = None
    allow_download: bool | None = None
    batch_size: int = 16
    verify_sha256: bool = True
    _device: str = field(default="cpu", init=False, repr=False)

    def snapshot(self, hub: HubFiles) -> Path:
        """Directory holding ``hub``'s files (HarnessError naming the first missing one)."""
        return hub.resolve(self.weights_dir, self.allow_download)

    def digest(self, hub: HubFiles, directory: Path, name: str) -> str:
        """sha256 of ``directory / name``, checked against ``hub``'s pinned digest if any (and verify_sha256)."""
        expected = hub.sha256.get(name) if self.verify_sha256 else None
        return checked_sha256(directory / name, expected, f"{hub.ref} {name}")

    def provenance(self, checkpoint: str, digests: dict[str, str]) -> ScorerProvenance:
        """What ``load()`` returns: the refs of the files used and one ``name=sha256`` per weights file."""
        summary = ";".join(f"{name}={digest}" for name, digest in digests.items())
        return ScorerProvenance(metric_id=self.id, metric_version=self.version, checkpoint=checkpoint, sha256=summary)

    def check_call(self, model: object, images: torch.Tensor, prompts: Sequence[str]) -> None:
        """HarnessError unless ``load()`` has set ``model`` and ``images``/``prompts`` are one batch."""
        if model is None:
            raise HarnessError(f"metric '{self.id}' is not loaded; call load() before score()")
        check_inputs(images, prompts)


def check_inputs(images: torch.Tensor, prompts: Sequence[str]) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise HarnessError(f"images must be a float tensor [b, 3, H, W] in [0, 1], got {shape}")
    if len(prompts) != images.shape[0]:
        raise HarnessError(f"got {images.shape[0]} images but {len(prompts)} prompts; pass one prompt per image")


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """What PIL round-tripping does to a [0, 1] image (diffusers ``numpy_to_pil`` rounding)."""
    return (images.detach().float().cpu().clamp(0, 1) * 255).round() / 255


def to_pil(images: torch.Tensor) -> list[Any]:
    """[b, 3, H, W] in [0, 1] -> RGB PIL images, quantised like a diffusers pipeline's output."""
    from PIL import Image

    arr = (quantize_8bit(images) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a, mode="RGB") for a in arr]


def chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, max(1, size)):
        yield slice(start, min(n, start + size))


def checked_sha256(path: Path, expected: str | None, what: str) -> str:
    """sha256 of ``path``; HarnessError when it differs from the pinned digest ``expected``."""
    digest = file_sha256(path)
    if expected is not None and digest != expected:
        raise HarnessError(
            f"{path} has sha256 {digest[:12]}..., not the pinned {what} ({expected[:12]}...); "
            f"replace it with the pinned file"
        )
    return digest


def check_vocab(n_tokens: int, expected: int, source: str) -> None:
    """Offline with missing files, transformers 5 returns a tokenizer of a few tokens instead of failing."""
    if n_tokens != expected:
        raise HarnessError(
            f"tokenizer from {source} has {n_tokens} tokens, expected {expected}; the tokenizer files are "
            f"incomplete or wrong: re-fetch them (--weights-dir or HF_HOME)"
        )


def load_hf_model(cls: Any, path: Path, source: str) -> Any:
    """``cls.from_pretrained(path)`` that fails when any weight of the model is missing or misshapen."""
    model, info = cls.from_pretrained(path, output_loading_info=True)
    bad = list(info.get("missing_keys", [])) + [str(m[0]) if isinstance(m, tuple) else str(m) for m in info.get("mismatched_keys", [])]
    if bad:
        raise HarnessError(f"checkpoint {source} does not fit {cls.__name__}: {len(bad)} missing/misshapen weights, e.g. {bad[0]}")
    return model.eval()


def strict_load(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True) with a one-line HarnessError listing the first offending key."""
    try:
        result = module.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even with strict=False
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc))
        raise HarnessError(f"checkpoint {source} does not match the architecture: {first}") from None
    problems = [f"missing {k}" for k in result.missing_keys] + [f"unexpected {k}" for k in result.unexpected_keys]
    if problems:
        raise HarnessError(f"checkpoint {source} does not match the architecture: {len(problems)} keys differ, e.g. {problems[0]}")


def features(output: Any) -> torch.Tensor:
    """CLIP get_*_features: a tensor on transformers 4.x, a ModelOutput (pooler_output) on 5.x."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output
