"""A transformers ``CLIPModel`` with its tokenizer and PIL image processor (PickScore, CLIP score, Aesthetic)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from lpo_bench.rewards._common import CLIP_VOCAB_SIZE, check_vocab, chunks, features, load_hf_model, to_pil


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
        pixels = self.image_processor(images=to_pil(images), return_tensors="pt")["pixel_values"]
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
