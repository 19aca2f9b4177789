"""LAION improved aesthetic predictor v2 ("sac+logos+ava1-l14-linearMSE"). Higher is better.

``aesthetic = MLP(e / ||e||_2)`` where ``e`` is the 768-d projected image embedding of OpenAI
CLIP ViT-L/14 (``openai/clip-vit-large-patch14``, transformers ``CLIPModel``, PIL preprocessing
from its ``preprocessor_config.json``), and the MLP is 768-1024-128-64-16-1 with dropout and no
activations (``layers.{0,2,4,6,7}``). Nominally 1-10, not clamped; SD1.5 images score ~5-6.
The prompt is ignored. This is the scorer of LPO's ``evaluation/aesthetic_score.py``.

Head weights: ``sac+logos+ava1-l14-linearMSE.pth`` as bundled in Kwai-Kolors/LPO
``evaluation/`` at commit 9c2e8b8 (MIT; originally christophschuhmann/improved-aesthetic-predictor),
sha256 pinned. Pass ``head_path=`` explicitly, or let it be found in ``weights_dir`` (by name or
at its repository path), in the lpo-bench file cache, or (opt-in) downloaded from that commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from lpo_bench.data.datasets import PinnedFile, resolve_pinned_file
from lpo_bench.errors import HarnessError
from lpo_bench.metrics._common import HubScorer, checked_sha256, chunks, strict_load
from lpo_bench.metrics._hf_clip import HFClip
from lpo_bench.metrics.base import ScorerProvenance
from lpo_bench.metrics.clipscore import OPENAI_CLIP_L14

AESTHETIC_HEAD = PinnedFile(
    "Kwai-Kolors/LPO",
    "9c2e8b81418cb86cc0a78aa1dc10a5503ce59f4e",
    "evaluation/sac+logos+ava1-l14-linearMSE.pth",
    "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0",
    3714759,
)


class AestheticHead(torch.nn.Module):
    """The predictor's MLP, with the state-dict layout of ``sac+logos+ava1-l14-linearMSE.pth``."""

    def __init__(self, input_dim: int = 768) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(input_dim, 1024),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(1024, 128),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1),
        )

    def forward(self, normalized_embeds: torch.Tensor) -> torch.Tensor:
        """[b, 768] unit-norm CLIP image embeddings -> [b] aesthetic scores."""
        return self.layers(normalized_embeds).squeeze(-1)


def load_head(path: str | Path) -> AestheticHead:
    """The head from a ``.pth`` state dict, loaded strictly (HarnessError on any key/shape mismatch)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling/IO errors of a user-supplied file
        raise HarnessError(f"cannot read aesthetic head {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    head = AestheticHead(input_dim=state["layers.0.weight"].shape[1]) if "layers.0.weight" in state else AestheticHead()
    strict_load(head, state, str(path))
    return head.eval()


@dataclass(kw_only=True, eq=False)
class LaionAesthetic(HubScorer):
    id: ClassVar[str] = "aesthetic.laion-v2-l14"

    head_path: str | Path | None = None
    _clip: HFClip | None = field(default=None, init=False, repr=False)
    _head: AestheticHead | None = field(default=None, init=False, repr=False)

    def _resolve_head(self) -> tuple[Path, str]:
        """(path, sha256): an explicit head_path is recorded as is; otherwise the pinned file."""
        if self.head_path is not None:
            path = Path(self.head_path)
            if not path.is_file():
                raise HarnessError(f"aesthetic head_path {path} does not exist")
            return path, checked_sha256(path, None, "aesthetic head")
        if self.weights_dir is not None:
            for cand in (Path(self.weights_dir) / AESTHETIC_HEAD.name, Path(self.weights_dir) / AESTHETIC_HEAD.repo / AESTHETIC_HEAD.path):
                if cand.is_file():
                    expected = AESTHETIC_HEAD.sha256 if self.verify_sha256 else None
                    return cand, checked_sha256(cand, expected, AESTHETIC_HEAD.describe())
        path = resolve_pinned_file(
            AESTHETIC_HEAD,
            allow_download=self.allow_download,
            how_to=f"put it in --weights-dir DIR (as {AESTHETIC_HEAD.name}) or pass head_path=",
        )
        return path, AESTHETIC_HEAD.sha256

    def load(self, device: str = "cpu") -> ScorerProvenance:
        head_path, head_sha = self._resolve_head()
        snapshot = self.snapshot(OPENAI_CLIP_L14)
        clip_sha = self.digest(OPENAI_CLIP_L14, snapshot, "model.safetensors")
        self._head = load_head(head_path).to(device)
        self._clip = HFClip(snapshot, snapshot, device=device, source=OPENAI_CLIP_L14.ref, need_text=False)
        head_ref = AESTHETIC_HEAD.describe() if head_sha == AESTHETIC_HEAD.sha256 else str(head_path)
        digests = {"model.safetensors": clip_sha, AESTHETIC_HEAD.name: head_sha}
        return self.provenance(f"{OPENAI_CLIP_L14.ref}+{head_ref}", digests)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """images [b, 3, H, W] in [0, 1] (prompts only checked for length) -> scores [b] (float32, CPU)."""
        self.check_call(self._clip, images, prompts)  # set after the head
        out = []
        with torch.inference_mode():
            for sl in chunks(len(prompts), self.batch_size):
                out.append(self._head(self._clip.image_embeds(images[sl])).cpu())
        return torch.cat(out).float()
