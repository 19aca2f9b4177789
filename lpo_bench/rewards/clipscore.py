"""CLIP score, defined as the raw cosine with OpenAI CLIP ViT-L/14. Higher is better.

Definition (metric id ``clipscore.openai-vit-l-14.cos``)::

    clipscore = cos(E_I, E_T)        # in [-1, 1]; no x100, no clipping

with E_I, E_T the projected image/text embeddings of ``openai/clip-vit-large-patch14``
(transformers ``CLIPModel``, QuickGELU, 224 px; PIL preprocessing from the checkpoint's
``preprocessor_config.json``; text truncated to 77 tokens). Other conventions are views of the
same number: torchmetrics' ``CLIPScore`` (same backbone by default) is ``max(100 * cos, 0)``;
Hessel et al.'s CLIP-S is ``2.5 * max(cos, 0)`` but with ViT-B/32, and T2I-CompBench's
non-spatial score is the raw cosine with ViT-B/32 -- neither is comparable with this backbone.

Pin: ``32bd642...`` is the snapshot public code loads ``model.safetensors`` and ``tokenizer.json``
from (``models--openai--clip-vit-large-patch14/snapshots/32bd642...``); the same files serve the
LAION aesthetic predictor, so one download covers both.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch

from lpo_bench.rewards._common import HubFiles, check_inputs, checked_sha256, not_loaded, sha_summary
from lpo_bench.rewards.base import ScorerProvenance

OPENAI_CLIP_L14 = HubFiles(
    "openai/clip-vit-large-patch14",
    "32bd64288804d66eefd0ccbe215aa642df71cc41",
    (
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ),
)


class CLIPScore:
    id: ClassVar[str] = "clipscore.openai-vit-l-14.cos"
    version: ClassVar[str] = "v1"
    higher_is_better: ClassVar[bool] = True

    def __init__(
        self, *, weights_dir: str | Path | None = None, allow_download: bool | None = None, batch_size: int = 16
    ) -> None:
        self.weights_dir = weights_dir
        self.allow_download = allow_download
        self.batch_size = batch_size
        self._clip = None

    def load(self, device: str = "cpu") -> ScorerProvenance:
        snapshot = OPENAI_CLIP_L14.resolve(self.weights_dir, self.allow_download)
        digest = checked_sha256(snapshot / "model.safetensors", None, OPENAI_CLIP_L14.ref)
        from lpo_bench.rewards._hf_clip import HFClip

        self._clip = HFClip(snapshot, snapshot, device=device, source=OPENAI_CLIP_L14.ref)
        return ScorerProvenance(
            metric_id=self.id,
            metric_version=self.version,
            checkpoint=OPENAI_CLIP_L14.ref,
            sha256=sha_summary({"model.safetensors": digest}),
        )

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """images [b, 3, H, W] in [0, 1], one prompt per image -> cosine [b] (float32, CPU)."""
        if self._clip is None:
            raise not_loaded(self.id)
        check_inputs(images, prompts)
        return self._clip.cosine(images, prompts, self.batch_size)
