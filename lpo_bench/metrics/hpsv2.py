"""Human Preference Score v2.0 and v2.1 (Wu et al. 2023). Higher is better.

``HPS = 100 * cos(image_emb, text_emb)`` of an open_clip ViT-H-14 (standard GELU, the
laion2B-s32B-b79K architecture) whose weights are replaced by ``xswu/HPSv2``
``HPS_v2_compressed.pt`` (v2.0) or ``HPS_v2.1_compressed.pt`` (v2.1), loaded strictly. The
x100 is the paper/benchmark convention (published tables ~24-31); ``hpsv2.score()`` itself
returns the raw cosine (~0.27), so divide by 100 to compare with it. v2.0 and v2.1 differ;
``hpsv2.score()`` defaults to v2.0, hence two metric ids.

Preprocessing follows ``hpsv2``'s ``image_transform(..., resize_longest_max=True)``: 8-bit RGB ->
tensor -> bicubic resize of the longest side to 224 (antialiased, as torchvision >= 0.17 does by
default; older torchvision did not antialias tensors, a ~1e-3 source of drift) -> zero-pad to
224x224 (extra pixel right/bottom) -> OpenAI mean/std. Text: open_clip's CLIP BPE, 77 tokens.

Why not the ``hpsv2`` package: it pins ``pytest==7.2.0`` and ``protobuf<4``, its wheel lacks the
BPE vocabulary file (FileNotFoundError on first use, tgxs002/HPSv2#30), and ``score()`` downloads
the 3.9 GB laion ViT-H weights only to overwrite them, re-loading the 2 GB checkpoint on every
call. open_clip alone builds the same architecture (``hpsv2/src/open_clip`` is a vendored copy of it)
and the HPS state dict loads into it strictly, so the package adds nothing but install problems.

Pin: ``xswu/HPSv2@697403c`` is the commit that uploaded both compressed checkpoints; their
sha256 are the LFS digests listed on that commit and are checked on load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from lpo_bench.errors import HarnessError
from lpo_bench.metrics._common import (
    CLIP_VOCAB_SIZE,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    HubFiles,
    HubScorer,
    check_vocab,
    chunks,
    quantize_8bit,
    strict_load,
)
from lpo_bench.metrics.base import ScorerProvenance

HPS_REPO = "xswu/HPSv2"
HPS_REVISION = "697403c78157020a1ae59d23f111aa58ced35b0a"
HPS_V20 = HubFiles(
    HPS_REPO,
    HPS_REVISION,
    ("HPS_v2_compressed.pt",),
    {"HPS_v2_compressed.pt": "07cb0d20626232204ca3a6ec53ff5984e7e53212a8a7b0e0ec2bac1bdaf125a1"},
)
HPS_V21 = HubFiles(
    HPS_REPO,
    HPS_REVISION,
    ("HPS_v2.1_compressed.pt",),
    {"HPS_v2.1_compressed.pt": "c57a38fb4a2f7e7c15bf00da2ea377cdf165448b4dd1052a484c215a998c9837"},
)
HPS_ARCH = "ViT-H-14"
HPS_IMAGE_SIZE = 224


def hps_preprocess(images: torch.Tensor, size: int = HPS_IMAGE_SIZE) -> torch.Tensor:
    """[b, 3, H, W] in [0, 1] -> [b, 3, size, size] normalised model input (hpsv2's ResizeMaxSize)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    x = quantize_8bit(images)
    height, width = x.shape[-2:]
    scale = size / float(max(height, width))
    if scale != 1.0:
        new_h, new_w = round(height * scale), round(width * scale)
        x = TF.resize(x, [new_h, new_w], InterpolationMode.BICUBIC, antialias=True)
        pad_h, pad_w = size - new_h, size - new_w
        x = TF.pad(x, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return TF.normalize(x, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


def build_open_clip(model_cfg: dict[str, Any]) -> torch.nn.Module:
    """An open_clip ``CLIP`` from a model config dict (no weights, no downloads)."""
    from open_clip.model import CLIP

    unsupported = set(model_cfg) - {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"}
    if unsupported:
        raise HarnessError(f"open_clip config keys not supported here: {sorted(unsupported)}")
    return CLIP(
        embed_dim=model_cfg["embed_dim"],
        vision_cfg=model_cfg["vision_cfg"],
        text_cfg=model_cfg["text_cfg"],
        quick_gelu=model_cfg.get("quick_gelu", False),
    )


@dataclass(kw_only=True, eq=False)
class _HPSv2(HubScorer):
    """Shared HPS v2.x adapter; subclasses pick the checkpoint. ``model_cfg`` replaces open_clip's
    ViT-H-14 config (tests use a tiny one)."""

    checkpoint: ClassVar[HubFiles]

    model_cfg: dict[str, Any] | None = None
    _model: torch.nn.Module | None = field(default=None, init=False, repr=False)
    _tokenizer: Any = field(default=None, init=False, repr=False)
    _image_size: int = field(default=HPS_IMAGE_SIZE, init=False, repr=False)

    def load(self, device: str = "cpu") -> ScorerProvenance:
        filename = self.checkpoint.files[0]
        snapshot = self.snapshot(self.checkpoint)
        path = snapshot / filename
        digest = self.digest(self.checkpoint, snapshot, filename)
        import open_clip

        cfg = self.model_cfg if self.model_cfg is not None else open_clip.get_model_config(HPS_ARCH)
        model = build_open_clip(cfg)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt or non-tensor pickle
            raise HarnessError(f"cannot read {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
        state = state.get("state_dict", state)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        strict_load(model, state, f"{self.checkpoint.ref} {filename}")
        self._model = model.float().eval().to(device)
        self._device = device
        self._tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=cfg["text_cfg"].get("context_length", 77))
        check_vocab(len(self._tokenizer.encoder), CLIP_VOCAB_SIZE, "open_clip bpe_simple_vocab_16e6")
        image_size = cfg["vision_cfg"].get("image_size", HPS_IMAGE_SIZE)
        self._image_size = image_size if isinstance(image_size, int) else image_size[0]
        pinned = digest == self.checkpoint.sha256[filename]
        checkpoint = f"{self.checkpoint.ref}/{filename}" if pinned else f"{path} (not the pinned {self.checkpoint.ref})"
        return self.provenance(checkpoint, {filename: digest})

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """images [b, 3, H, W] in [0, 1], one prompt per image -> 100 * cosine [b] (float32, CPU)."""
        self.check_call(self._model, images, prompts)
        out = []
        with torch.inference_mode():
            for sl in chunks(len(prompts), self.batch_size):
                pixels = hps_preprocess(images[sl], self._image_size).to(self._device)
                tokens = self._tokenizer(list(prompts[sl])).to(self._device)
                img = self._model.encode_image(pixels, normalize=True)
                txt = self._model.encode_text(tokens, normalize=True)
                out.append((100.0 * (img * txt).sum(-1)).float().cpu())
        return torch.cat(out).float()


class HPSv20(_HPSv2):
    id: ClassVar[str] = "hpsv2.0"
    checkpoint: ClassVar[HubFiles] = HPS_V20


class HPSv21(_HPSv2):
    id: ClassVar[str] = "hpsv2.1"
    checkpoint: ClassVar[HubFiles] = HPS_V21
