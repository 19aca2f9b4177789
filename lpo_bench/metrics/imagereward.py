"""ImageReward v1.0 (Xu et al. 2023), run on transformers' BLIP classes. Higher is better.

``reward = (MLP(h_cls) - 0.16717362830052426) / 1.0333394966054072`` where ``h_cls`` is the
[CLS] output of BLIP's BERT text encoder (prompt padded/truncated to 35 tokens) cross-attending
to the ViT-L/16 (224 px) image tokens, and the MLP is 768-1024-128-64-16-1 without activations.
Roughly standard-normal over SD1.4 images. A constant -0.16178 for every input means the MLP was
not loaded (zai-org/ImageReward#45); here any missing weight is an error instead.

Approach, and why not the ``image-reward`` package: ``image-reward==1.5`` pins ``timm==0.6.13``
(unresolvable together with open_clip), imports diffusers/accelerate/datasets and the undeclared
``clip`` package, and does not import on transformers after 4.55: its BLIP ``med.py`` imports helpers
that ``transformers.modeling_utils`` no longer re-exports (and on 5.x its ``BertModel`` breaks in
``init_weights``). Its network is plain BLIP, which transformers implements (``BlipVisionModel``,
``BlipTextModel``, ported from the same BLIP ``vit.py``/``med.py``), so ``ImageReward.pt`` is loaded
into those classes through :func:`imagereward_key_to_hf`, a fixed renaming (the one transformers'
own BLIP converter uses), with every model weight required. That runs on the core dependencies and
is testable with tiny random models; the vision side is checked against timm's ViT, whose parameter
names and forward are those of BLIP's ViT. Preprocessing: PIL resize of the shortest side to 224 (bicubic),
centre crop 224, OpenAI mean/std, as in ``ImageReward.py``.

Pins: ``zai-org/ImageReward`` (formerly THUDM) at ``5736be0...``, the snapshot public code loads it
from; the ``ImageReward.pt`` sha256 is the LFS digest of its upload commit (7a9e21f) and is
checked. The tokenizer is ``bert-base-uncased``'s vocab.txt (``google-bert/bert-base-uncased@86b5e09``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
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
    strict_load,
    to_pil,
)
from lpo_bench.metrics.aesthetic import AestheticHead
from lpo_bench.metrics.base import ScorerProvenance

IMAGEREWARD = HubFiles(
    "zai-org/ImageReward",
    "5736be03b2652728fb87788c9797b0570450ab72",
    ("ImageReward.pt", "med_config.json"),
    {"ImageReward.pt": "d71dc8d4912bc633c06ab8ef1ef6a81e8199d4369f14b47b29baf1d19de561f6"},
)
BERT_BASE_UNCASED = HubFiles("google-bert/bert-base-uncased", "86b5e0934494bd15c9632b12f734a8a67f723594", ("vocab.txt",))
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
PROMPT_MAX_TOKENS = 35
IMAGE_SIZE_PX = 224
# BLIP "large" ViT of ImageReward: ViT-L/16 at 224 px; timm-style LayerNorm eps 1e-6, exact GELU.
BLIP_LARGE_VISION: dict[str, Any] = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    image_size=IMAGE_SIZE_PX, patch_size=16, layer_norm_eps=1e-6, hidden_act="gelu",
)
_MED_TO_BLIP_TEXT = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "max_position_embeddings", "layer_norm_eps", "pad_token_id",
)
# Checkpoint weights that scoring does not use: ITC projections, and a buffer transformers recreates.
_UNUSED = re.compile(r"^blip\.(vision_proj|text_proj)\.|^blip\.text_encoder\.embeddings\.position_ids$")
_VIT_RULES = (
    (re.compile(r"^cls_token$"), "embeddings.class_embedding"),
    (re.compile(r"^pos_embed$"), "embeddings.position_embedding"),
    (re.compile(r"^patch_embed\.proj\.(weight|bias)$"), r"embeddings.patch_embedding.\1"),
    (re.compile(r"^norm\.(weight|bias)$"), r"post_layernorm.\1"),
    (re.compile(r"^blocks\.(\d+)\.norm1\.(weight|bias)$"), r"encoder.layers.\1.layer_norm1.\2"),
    (re.compile(r"^blocks\.(\d+)\.norm2\.(weight|bias)$"), r"encoder.layers.\1.layer_norm2.\2"),
    (re.compile(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$"), r"encoder.layers.\1.self_attn.qkv.\2"),
    (re.compile(r"^blocks\.(\d+)\.attn\.proj\.(weight|bias)$"), r"encoder.layers.\1.self_attn.projection.\2"),
    (re.compile(r"^blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)$"), r"encoder.layers.\1.mlp.\2.\3"),
)


def imagereward_key_to_hf(key: str) -> str | None:
    """``ImageReward.pt`` key -> key in :class:`ImageRewardNet`; None for weights scoring does not use.

    ``blip.visual_encoder.*`` (BLIP/timm ViT names) -> ``vision.*`` (BlipVisionModel names),
    ``blip.text_encoder.*`` -> ``text.*`` (BlipTextModel keeps BLIP's med.py names), ``mlp.*`` kept.
    Raises KeyError for a key outside this layout.
    """
    if _UNUSED.search(key):
        return None
    if key.startswith("mlp.layers."):
        return key
    if key.startswith("blip.text_encoder."):
        return "text." + key.removeprefix("blip.text_encoder.")
    if key.startswith("blip.visual_encoder."):
        rest = key.removeprefix("blip.visual_encoder.")
        for pattern, replacement in _VIT_RULES:
            if pattern.match(rest):
                return "vision." + pattern.sub(replacement, rest)
    raise KeyError(key)


class ImageRewardNet(torch.nn.Module):
    """BLIP image encoder + BLIP text encoder (cross-attention) + reward MLP."""

    def __init__(self, vision_config: Any, text_config: Any) -> None:
        from transformers import BlipTextModel, BlipVisionModel

        super().__init__()
        self.vision = BlipVisionModel(vision_config)
        self.text = BlipTextModel(text_config, add_pooling_layer=False)
        self.mlp = AestheticHead(input_dim=text_config.hidden_size)  # same 5-linear layout

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """pixel_values [b, 3, 224, 224], prompt tokens [b, 35] -> normalised rewards [b]."""
        image_embeds = self.vision(pixel_values=pixel_values).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        hidden = self.text(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
        ).last_hidden_state
        return (self.mlp(hidden[:, 0].float()) - REWARD_MEAN) / REWARD_STD


def build_imagereward_net(med_config: dict[str, Any], vision: dict[str, Any] | None = None) -> ImageRewardNet:
    """Random-weight network for a BLIP ``med_config.json`` dict and a vision config (default ViT-L/16)."""
    from transformers import BlipTextConfig, BlipVisionConfig

    vision_config = BlipVisionConfig(**(vision or BLIP_LARGE_VISION))
    text_kwargs = {k: med_config[k] for k in _MED_TO_BLIP_TEXT if k in med_config}
    # BLIP sets encoder_width to the ViT width in code (med_config's 768 is overridden).
    text_config = BlipTextConfig(**text_kwargs, encoder_hidden_size=vision_config.hidden_size)
    return ImageRewardNet(vision_config, text_config)


def convert_imagereward_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an ``ImageReward.pt`` state dict for :class:`ImageRewardNet` (HarnessError on unknown keys)."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        try:
            new_key = imagereward_key_to_hf(key)
        except KeyError:
            unknown.append(key)
            continue
        if new_key is not None:
            out[new_key] = value
    if unknown:
        raise HarnessError(f"ImageReward checkpoint has {len(unknown)} unexpected weights, e.g. {unknown[0]}; is it ImageReward.pt?")
    return out


@dataclass(kw_only=True, eq=False)
class ImageReward(HubScorer):
    """``vision_config`` replaces BLIP's ViT-L/16 config (tests use a tiny one)."""

    id: ClassVar[str] = "imagereward"
    version: ClassVar[str] = "v1.0"

    vision_config: dict[str, Any] | None = None
    _net: ImageRewardNet | None = field(default=None, init=False, repr=False)
    _tokenizer: Any = field(default=None, init=False, repr=False)

    def load(self, device: str = "cpu") -> ScorerProvenance:
        snapshot = self.snapshot(IMAGEREWARD)
        bert_dir = self.snapshot(BERT_BASE_UNCASED)
        digest = self.digest(IMAGEREWARD, snapshot, "ImageReward.pt")
        from transformers import BertTokenizer

        self._tokenizer = BertTokenizer.from_pretrained(bert_dir)
        check_vocab(len(self._tokenizer), BERT_VOCAB_SIZE, str(bert_dir))
        try:
            med_config = json.loads((snapshot / "med_config.json").read_text(encoding="utf-8"))
            state = torch.load(snapshot / "ImageReward.pt", map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt files
            raise HarnessError(f"cannot read {snapshot} ImageReward files: {type(exc).__name__}: {exc}".splitlines()[0]) from None
        net = build_imagereward_net(med_config, self.vision_config)
        strict_load(net, convert_imagereward_state(state), f"{IMAGEREWARD.ref} ImageReward.pt")
        self._net = net.float().eval().to(device)
        self._device = device
        checkpoint = IMAGEREWARD.ref if digest == IMAGEREWARD.sha256["ImageReward.pt"] else f"{snapshot / 'ImageReward.pt'} (not the pinned {IMAGEREWARD.ref})"
        return self.provenance(f"{checkpoint}+{BERT_BASE_UNCASED.ref}", {"ImageReward.pt": digest})

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        from torchvision import transforms as T

        size = self._net.vision.config.image_size
        transform = T.Compose(
            [
                T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
                T.CenterCrop(size),
                T.ToTensor(),
                T.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
            ]
        )
        return torch.stack([transform(im) for im in to_pil(images)])

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """images [b, 3, H, W] in [0, 1], one prompt per image -> normalised reward [b] (float32, CPU)."""
        self.check_call(self._net, images, prompts)
        out = []
        with torch.inference_mode():
            for sl in chunks(len(prompts), self.batch_size):
                tokens = self._tokenizer(
                    list(prompts[sl]), padding="max_length", truncation=True, max_length=PROMPT_MAX_TOKENS, return_tensors="pt"
                )
                out.append(
                    self._net(
                        self._pixels(images[sl]).to(self._device),
                        tokens["input_ids"].to(self._device),
                        tokens["attention_mask"].to(self._device),
                    ).cpu()
                )
        return torch.cat(out).float()
