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

from typing import ClassVar

from lpo_bench.metrics._common import HubFiles
from lpo_bench.metrics._hf_clip import ClipSimilarity

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


class CLIPScore(ClipSimilarity):
    id: ClassVar[str] = "clipscore.openai-vit-l-14.cos"
    checkpoint: ClassVar[HubFiles] = OPENAI_CLIP_L14
