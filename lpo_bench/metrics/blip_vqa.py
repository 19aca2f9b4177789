"""T2I-CompBench BLIP-VQA attribute-binding score, in-process (transformers BLIP port). Higher is better.

Per image (``BLIPvqa_eval/BLIP_vqa.py`` @ T2I-CompBench 1b70949): the prompt's spaCy noun chunks
(minus "top", "the side", "the left", "the right"; at most 8) become questions ``"<chunk>?"``;
for each, BLIP-VQA's text encoder reads the question (first token replaced by ``[ENC]``) over the
480x480 image tokens, the answer decoder is fed ``[DEC]`` only, and the first-step probability
``p(yes) / (p(yes) + p(no))`` (bert-base-uncased ids 2748 / 2053) is the answer. The image score is
the product over questions (4-decimal rounding as in the official code); the category score is
the mean over images (aggregation happens elsewhere).

Metric id ``blip-vqa.hf-capfilt-large``: this uses ``Salesforce/blip-vqa-capfilt-large``, the
transformers conversion of ``model_base_vqa_capfilt_large.pth``. That conversion resampled the
480-px position embeddings to 384 px and uses LayerNorm eps 1e-5 instead of BLIP's 1e-6; feeding
480 px re-interpolates them. So the numbers are close to, but not guaranteed identical with, the
official scorer (not verified with real weights); report them under this id, not as
"T2I-CompBench BLIP-VQA".

Noun chunks need spaCy with ``en_core_web_sm`` (3.5.0 in the official environment; the model is not
on PyPI). Without it, pass ``noun_chunks``: a ``{prompt: [chunk, ...]}`` mapping or a JSON file of
one, produced once where spaCy is available (``[c.text for c in nlp(prompt).noun_chunks]``).

Pin: ``e53f952...`` is a commit of the repo's history listed on the hub (same weights as ``main``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from lpo_bench.errors import HarnessError
from lpo_bench.metrics._common import (
    BERT_VOCAB_SIZE,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    HubFiles,
    HubScorer,
    check_vocab,
    chunks,
    load_hf_model,
    to_pil,
)
from lpo_bench.metrics.base import ScorerProvenance
from lpo_bench.metrics.compbench_rules import (
    BLIP_NP_NUM,
    blip_vqa_image_score,
    blip_vqa_questions,
    pre_question,
)

BLIP_VQA = HubFiles(
    "Salesforce/blip-vqa-capfilt-large",
    "e53f95265aeab69013fabb5380500ab984adbbb4",
    ("config.json", "pytorch_model.bin", "vocab.txt", "tokenizer_config.json"),
)
YES_TOKEN_ID = 2748
NO_TOKEN_ID = 2053
DEC_TOKEN_ID = 30522  # BLIP's init_tokenizer adds [DEC] (bos) then [ENC] to bert-base-uncased
ENC_TOKEN_ID = 30523
QUESTION_MAX_TOKENS = 35
IMAGE_SIZE_PX = 480  # BLIPvqa_eval/configs/vqa.yaml


def spacy_noun_chunker(model: str = "en_core_web_sm") -> tuple[Any, str]:
    """(prompt -> noun chunks, description) using spaCy; HarnessError when it is not installed."""
    try:
        import spacy

        nlp = spacy.load(model)
    except (ImportError, OSError) as exc:
        raise HarnessError(
            f"BLIP-VQA needs spaCy noun chunks ({model}) but they are unavailable ({type(exc).__name__}); "
            f"pass noun_chunks=<JSON file mapping prompt -> noun chunks> made where spaCy is installed"
        ) from None
    return (lambda prompt: [c.text for c in nlp(prompt).noun_chunks]), f"spacy-{spacy.__version__}/{model}-{nlp.meta.get('version', '?')}"


@dataclass(kw_only=True, eq=False)
class BlipVQA(HubScorer):
    id: ClassVar[str] = "blip-vqa.hf-capfilt-large"

    noun_chunks: Mapping[str, Sequence[str]] | str | Path | None = None
    image_size_px: int = IMAGE_SIZE_PX
    np_num: int = BLIP_NP_NUM
    _model: Any = field(default=None, init=False, repr=False)
    _tokenizer: Any = field(default=None, init=False, repr=False)
    _chunker: Any = field(default=None, init=False, repr=False)

    def _load_chunker(self) -> str:
        if self.noun_chunks is None:
            self._chunker, source = spacy_noun_chunker()
            return source
        if isinstance(self.noun_chunks, Mapping):
            table = {str(k): list(v) for k, v in self.noun_chunks.items()}
        else:
            path = Path(self.noun_chunks)
            try:
                table = json.loads(path.read_text(encoding="utf-8-sig"))
            except (OSError, ValueError) as exc:
                raise HarnessError(f"cannot read noun-chunk file {path}: {exc}".splitlines()[0]) from None
        digest = hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()

        def lookup(prompt: str) -> list[str]:
            if prompt not in table:
                raise HarnessError(f"no noun chunks for prompt {prompt!r}; add it to the noun_chunks table")
            return list(table[prompt])

        self._chunker = lookup
        return f"noun-chunks-sha256:{digest[:16]}"

    def load(self, device: str = "cpu") -> ScorerProvenance:
        snapshot = self.snapshot(BLIP_VQA)
        chunk_source = self._load_chunker()
        digest = self.digest(BLIP_VQA, snapshot, "pytorch_model.bin")
        from transformers import BertTokenizer, BlipForQuestionAnswering

        self._tokenizer = BertTokenizer.from_pretrained(snapshot)
        check_vocab(self._tokenizer.vocab_size, BERT_VOCAB_SIZE, str(snapshot))
        if self._tokenizer.convert_tokens_to_ids(["yes", "no"]) != [YES_TOKEN_ID, NO_TOKEN_ID]:
            raise HarnessError(f"tokenizer in {snapshot} is not bert-base-uncased (yes/no ids differ); re-fetch {BLIP_VQA.ref}")
        self._model = load_hf_model(BlipForQuestionAnswering, snapshot, BLIP_VQA.ref).float().to(device)
        self._device = device
        return self.provenance(f"{BLIP_VQA.ref}+{chunk_source}", {"pytorch_model.bin": digest})

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        from torchvision import transforms as T

        size = self.image_size_px
        transform = T.Compose(
            [
                T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC),
                T.ToTensor(),
                T.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
            ]
        )
        return torch.stack([transform(im) for im in to_pil(images)])

    def yes_probability(self, image_embeds: torch.Tensor, questions: Sequence[str]) -> torch.Tensor:
        """p(yes) / (p(yes) + p(no)) at the first answer step, one question per row of image_embeds."""
        tokens = self._tokenizer(
            [pre_question(q) for q in questions],
            padding="longest",
            truncation=True,
            max_length=QUESTION_MAX_TOKENS,
            return_tensors="pt",
        )
        input_ids = tokens["input_ids"].to(self._device)
        input_ids[:, 0] = ENC_TOKEN_ID
        mask = tokens["attention_mask"].to(self._device)
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self._device)
        states = self._model.text_encoder(
            input_ids=input_ids, attention_mask=mask, encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts
        ).last_hidden_state
        start = torch.full((len(questions), 1), DEC_TOKEN_ID, dtype=torch.long, device=self._device)
        logits = self._model.text_decoder(
            input_ids=start, encoder_hidden_states=states, encoder_attention_mask=mask, use_cache=False
        ).logits[:, 0].float()
        # Same value as softmax over the full vocabulary followed by the yes/no ratio.
        return torch.softmax(logits[:, [YES_TOKEN_ID, NO_TOKEN_ID]], dim=-1)[:, 0]

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """images [b, 3, H, W] in [0, 1], one prompt per image -> BLIP-VQA score [b] in [0, 1]."""
        self.check_call(self._model, images, prompts)
        questions = [blip_vqa_questions(self._chunker(p), self.np_num) for p in prompts]
        interpolate = self.image_size_px != self._model.config.vision_config.image_size
        out: list[float] = []
        with torch.inference_mode():
            for sl in chunks(len(prompts), self.batch_size):
                embeds = self._model.vision_model(
                    pixel_values=self._pixels(images[sl]).to(self._device), interpolate_pos_encoding=interpolate
                ).last_hidden_state
                pairs = [(i, q) for i, qs in enumerate(questions[sl]) for q in qs if q is not None]
                probs: dict[tuple[int, str], float] = {}
                if pairs:
                    rows = torch.tensor([i for i, _ in pairs], device=self._device)
                    p_yes = self.yes_probability(embeds.index_select(0, rows), [q for _, q in pairs]).cpu()
                    probs = {pair: float(p) for pair, p in zip(pairs, p_yes, strict=True)}
                for i, qs in enumerate(questions[sl]):
                    out.append(blip_vqa_image_score([None if q is None else probs[(i, q)] for q in qs]))
        return torch.tensor(out, dtype=torch.float32)
