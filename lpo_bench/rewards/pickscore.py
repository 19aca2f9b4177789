"""PickScore v1 (Kirstain et al. 2023): CLIP-H/14 fine-tuned on Pick-a-Pic v1. Higher is better.

``score = exp(logit_scale) * cos(image_emb, text_emb)`` with ``logit_scale`` read from the
checkpoint (the model card's raw score; typically ~20-22 for SD1.5 images). The model card's
"probabilities" are a softmax of these scores over images of one prompt; that is aggregation
and is not done here. Weights: ``yuvalkirstain/PickScore_v1`` (transformers ``CLIPModel``);
processor and tokenizer from ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (only its small config
and tokenizer files), exactly as in the model card.

Pins: both revisions are the commits that public code loads from its HF cache
(``models--yuvalkirstain--PickScore_v1/snapshots/a4e4367...``, the ``main`` head shown on the
hub's file listing; ``models--laion--CLIP-ViT-H-14-laion2B-s32B-b79K/snapshots/1c2b849...``).
No public LFS digest of ``model.safetensors`` was found, so its sha256 is recorded, not checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch

from lpo_bench.rewards._common import HubFiles, check_inputs, checked_sha256, not_loaded, sha_summary
from lpo_bench.rewards.base import ScorerProvenance

PICKSCORE_MODEL = HubFiles(
    "yuvalkirstain/PickScore_v1", "a4e4367c6dfa7288a00c550414478f865b875800", ("config.json", "model.safetensors")
)
LAION_H14_PROCESSOR = HubFiles(
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    "1c2b8495b28150b8a4922ee1c8edee224c284c0c",
    ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"),
)


class PickScore:
    id: ClassVar[str] = "pickscore"
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
        model_dir = PICKSCORE_MODEL.resolve(self.weights_dir, self.allow_download)
        processor_dir = LAION_H14_PROCESSOR.resolve(self.weights_dir, self.allow_download)
        digest = checked_sha256(model_dir / "model.safetensors", None, PICKSCORE_MODEL.ref)
        from lpo_bench.rewards._hf_clip import HFClip

        self._clip = HFClip(model_dir, processor_dir, device=device, source=PICKSCORE_MODEL.ref)
        return ScorerProvenance(
            metric_id=self.id,
            metric_version=self.version,
            checkpoint=f"{PICKSCORE_MODEL.ref}+{LAION_H14_PROCESSOR.ref}",
            sha256=sha_summary({"model.safetensors": digest}),
        )

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """images [b, 3, H, W] in [0, 1], one prompt per image -> PickScore [b] (float32, CPU)."""
        if self._clip is None:
            raise not_loaded(self.id)
        check_inputs(images, prompts)
        with torch.inference_mode():
            scale = self._clip.model.logit_scale.exp().float().cpu()
        return scale * self._clip.cosine(images, prompts, self.batch_size)
