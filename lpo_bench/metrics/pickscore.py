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

from typing import ClassVar

from lpo_bench.metrics._common import HubFiles
from lpo_bench.metrics._hf_clip import ClipSimilarity

PICKSCORE_MODEL = HubFiles(
    "yuvalkirstain/PickScore_v1", "a4e4367c6dfa7288a00c550414478f865b875800", ("config.json", "model.safetensors")
)
LAION_H14_PROCESSOR = HubFiles(
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    "1c2b8495b28150b8a4922ee1c8edee224c284c0c",
    ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"),
)


class PickScore(ClipSimilarity):
    id: ClassVar[str] = "pickscore"
    checkpoint: ClassVar[HubFiles] = PICKSCORE_MODEL
    processor: ClassVar[HubFiles | None] = LAION_H14_PROCESSOR
    logit_scaled: ClassVar[bool] = True
