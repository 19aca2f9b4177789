"""A transformers ``CLIPModel`` with its tokenizer and PIL image processor, and the image-text
similarity adapter built on it (PickScore, CLIP score; the aesthetic predictor uses the image tower)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from lpo_bench.metrics._common import (
    CLIP_VOCAB_SIZE,
    HubFiles,
    HubScorer,
    check_vocab,
    chunks,
    features,
    load_hf_model,
    to_pil,
)
from lpo_bench.metrics.base import ScorerProvenance


class HFClip:
    """CLIP towers returning L2-normalised embeddings.

    Images go through the checkpoint's own ``preprocessor_config.json`` on PIL images (shortest
    side to 224 bicubic, centre crop, OpenAI mean/std), as the reference scripts do; on
    transformers 5 that is ``CLIPImageProcessorPil`` (the default processor there resizes tensors
    with torchvision, which differs slightly from PIL). Text: CLIP BPE, truncated to 77 tokens.
    """

    def __init__(self, model_dir: Path, processor_dir: Path, *, device: str, source: str, need_text: bool = True):
        import transformers

        self.device = device
        self.tokenizer = None
        if need_text:
            # Auto: the fast tokenizer from tokenizer.json on transformers 4.x too (some repos lack merges.txt).
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(processor_dir)
            check_vocab(len(self.tokenizer), CLIP_VOCAB_SIZE, str(processor_dir))
        processor_cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
        self.image_processor = processor_cls.from_pretrained(processor_dir)
        self.model = load_hf_model(transformers.CLIPModel, model_dir, source).to(device)

    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        return self.pil_embeds(to_pil(images))

    def pil_embeds(self, images: Sequence[Any]) -> torch.Tensor:
        """Embeddings [b, d] of PIL images of any sizes (each resized and centre-cropped by the processor)."""
        pixels = self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        emb = features(self.model.get_image_features(pixel_values=pixels.to(self.device)))
        return torch.nn.functional.normalize(emb.float(), dim=-1)

    def text_embeds(self, prompts: Sequence[str]) -> torch.Tensor:
        assert self.tokenizer is not None
        tokens = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=77, return_tensors="pt")
        emb = features(
            self.model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)
            )
        )
        return torch.nn.functional.normalize(emb.float(), dim=-1)

    def cosine(self, images: torch.Tensor, prompts: Sequence[str], batch_size: int) -> torch.Tensor:
        """Image-text cosine [b] (float32, CPU) for images [b, 3, H, W] in [0, 1], one prompt per image."""
        out = []
        with torch.inference_mode():
            for sl in chunks(len(prompts), batch_size):
                out.append((self.image_embeds(images[sl]) * self.text_embeds(prompts[sl])).sum(-1).cpu())
        return torch.cat(out).float()


@dataclass(kw_only=True, eq=False)
class ClipSimilarity(HubScorer):
    """Image-text similarity of a CLIPModel checkpoint: ``cos``, or ``exp(logit_scale) * cos``.

    A metric is a subclass that sets only class constants: ``id`` (and ``version`` when not v1), the
    ``checkpoint`` repo (``config.json``, ``model.safetensors``), the ``processor`` repo (tokenizer
    and preprocessor files; None when the checkpoint repo has them) and ``logit_scaled``.
    """

    checkpoint: ClassVar[HubFiles]
    processor: ClassVar[HubFiles | None] = None
    logit_scaled: ClassVar[bool] = False

    _clip: HFClip | None = field(default=None, init=False, repr=False)

    def load(self, device: str = "cpu") -> ScorerProvenance:
        model_dir = self.snapshot(self.checkpoint)
        processor_dir = model_dir if self.processor is None else self.snapshot(self.processor)
        digest = self.digest(self.checkpoint, model_dir, "model.safetensors")
        self._clip = HFClip(model_dir, processor_dir, device=device, source=self.checkpoint.ref)
        hubs = [self.checkpoint] if self.processor is None else [self.checkpoint, self.processor]
        return self.provenance("+".join(hub.ref for hub in hubs), {"model.safetensors": digest})

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """images [b, 3, H, W] in [0, 1], one prompt per image -> scores [b] (float32, CPU)."""
        self.check_call(self._clip, images, prompts)
        cosine = self._clip.cosine(images, prompts, self.batch_size)
        if not self.logit_scaled:
            return cosine
        with torch.inference_mode():
            scale = self._clip.model.logit_scale.exp().float().cpu()
        return scale * cosine
