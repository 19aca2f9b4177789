"""Preference pairs in the Pick-a-Pic schema, from toy pairs or a local Pick-a-Pic copy.

Every method reads pairs through one path, whatever their origin: :func:`open_pairs` (defined in
``lpo_bench.data.stream``) opens a split lazily, with metadata in RAM and images decoded per batch, so memory is
flat in the dataset size; :func:`load_pairs` decodes a small split whole (held-out sets, tests) on top of it.
A source is a directory holding ``<split>.parquet`` (toy pairs, written by ``lpo-bench toy make-pairs``), parquet
shards ``<split>-*.parquet`` / ``<split>/*.parquet`` / ``data/<split>-*.parquet`` (a local copy of the Hugging
Face ``yuvalkirstain/pickapic_v1`` or ``_v2`` dataset), or a ``datasets`` ``save_to_disk`` copy
(``<split>/*.arrow``); ``val`` and ``validation`` name the same split. Columns used: ``caption``, ``jpg_0``,
``jpg_1`` (encoded image bytes), ``label_0`` (1: image 0 preferred, 0: image 1, 0.5: tie) and, when present,
``has_label`` (rows without a human label are dropped, uncounted), ``num_example_per_prompt`` and the MPCF gap
columns ``aesthetic_gap``, ``clipscore_gap``, ``vqascore_gap``, ``different_flag``.

Broken rows (undecodable images, missing captions, labels outside {0, 0.5, 1}) are skipped and
counted; past ``max_bad_frac`` the load is refused with a HarnessError.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lpo_bench.data.stream import (
    VALID_LABELS,
    PairBatch,
    PairIndex,
    decode_image,
    open_pairs,
    split_files,
)
from lpo_bench.errors import HarnessError

__all__ = ["GAP_COLUMNS", "VALID_LABELS", "PairBatch", "PairIndex", "PairSet", "compute_gap_columns", "encode_png",
           "gap_columns", "load_pairs", "open_pairs", "split_files"]

GAP_COLUMNS = ("aesthetic_gap", "clipscore_gap", "vqascore_gap")
_split_files = split_files  # the name lpo_bench.data.suites imports
_decode = decode_image


@dataclass
class PairSet:
    """Decoded pairs. images_*: uint8 arrays [n, H, W, 3]; label_0: [n]; weight: [n] per-prompt weights."""

    captions: list[str]
    images_0: np.ndarray
    images_1: np.ndarray
    label_0: np.ndarray
    weight: np.ndarray
    extra: Any  # pandas DataFrame of the other columns (gaps, oracle rewards, ...), row-aligned
    skipped: int
    source: str
    sha256: str

    def __len__(self) -> int:
        return len(self.captions)

    def subset(self, idx: np.ndarray) -> PairSet:
        idx = np.asarray(idx)
        return PairSet([self.captions[i] for i in idx], self.images_0[idx], self.images_1[idx], self.label_0[idx],
                       self.weight[idx], self.extra.iloc[idx].reset_index(drop=True), self.skipped, self.source,
                       self.sha256)

    def images_tensor(self, which: int, idx: np.ndarray | None = None) -> Any:
        """Images as a float tensor [n, 3, H, W] in [0, 1]."""
        import torch

        arr = self.images_0 if which == 0 else self.images_1
        if idx is not None:
            arr = arr[np.asarray(idx)]
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def encode_png(img: np.ndarray) -> bytes:
    """float [H,W,3] in [0,1] or uint8 -> PNG bytes."""
    from PIL import Image

    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def load_pairs(
    source: str | Path,
    split: str,
    *,
    resolution: int | None = None,
    max_rows: int | None = None,
    max_bad_frac: float = 0.05,
    drop_ties: bool = False,
) -> PairSet:
    """Load, validate and decode one split of preference pairs whole (small splits; see module docstring).

    The same rows as :func:`open_pairs`, minus pairs whose images do not decode; those count as skipped."""
    index = open_pairs(source, split, max_rows=max_rows, drop_ties=drop_ties, max_bad_frac=max_bad_frac)
    ds = index._dataset(np.arange(len(index)), 256, resolution)
    ok: list[int] = []
    im0: list[np.ndarray] = []
    im1: list[np.ndarray] = []
    for k in range(len(ds)):
        o, a, b, _ = ds.decode(k)
        ok += o
        im0 += a
        im1 += b
    n_total = len(index) + index.skipped
    skipped = n_total - len(ok)
    if not ok:
        raise HarnessError(f"{source} split {split} has no usable pairs ({skipped} bad rows); check the data")
    if skipped / n_total > max_bad_frac:
        raise HarnessError(f"{skipped} of {n_total} pairs in {source} split {split} are broken (missing/corrupt images "
                           f"or invalid labels), above the {max_bad_frac:.0%} threshold; repair or re-download the data")
    if len({a.shape for a in im0} | {b.shape for b in im1}) > 1:
        raise HarnessError(f"{source} split {split} has images of different sizes; pass a resolution to resize them")
    kept = index.subset(np.asarray(ok, dtype=np.int64))
    extra = kept.extra
    weight = kept.weight
    if "num_example_per_prompt" not in extra.columns:  # per-caption counts over the pairs that decoded
        weight = 1.0 / extra.groupby("caption")["caption"].transform("count").to_numpy().astype(np.float64)
    return PairSet(kept.captions, np.stack(im0), np.stack(im1), kept.label_0, weight, extra, skipped,
                   kept.source, kept.sha256)


# ---------------------------------------------------------------------------- gap columns
def gap_columns(
    scores_0: dict[str, np.ndarray], scores_1: dict[str, np.ndarray], label_0: np.ndarray
) -> dict[str, np.ndarray]:
    """MPCF columns from per-image metric scores: {"aesthetic"|"clipscore"|"vqascore": [n]} for each image.

    Returns different_flag and the three *_gap columns (winner minus loser; absolute for ties).
    """
    lab = np.asarray(label_0, dtype=np.float64)
    out: dict[str, np.ndarray] = {"different_flag": (lab != 0.5).astype(np.int64)}
    for name in ("aesthetic", "clipscore", "vqascore"):
        s0, s1 = np.asarray(scores_0[name], dtype=np.float64), np.asarray(scores_1[name], dtype=np.float64)
        g = np.where(lab == 1.0, s0 - s1, s1 - s0)
        out[f"{name}_gap"] = np.where(lab == 0.5, np.abs(s0 - s1), g)
    return out


def compute_gap_columns(
    images_0: Any, images_1: Any, prompts: Sequence[str], label_0: np.ndarray,
    scorers: dict[str, Callable[[Any, Sequence[str]], Any]], batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Score both images of every pair with the project's metric adapters and return the MPCF columns.

    ``scorers`` maps "aesthetic" / "clipscore" / "vqascore" to ``adapter.score`` callables
    (images [b,3,H,W] in [0,1], prompts) -> [b]; e.g. LaionAesthetic, CLIPScore and BlipVQA for real
    data, ToyAesthetic, ToyClip and ToyVQA on the toy world.
    """
    import torch

    def run(images: Any, fn: Callable) -> np.ndarray:
        outs = [fn(images[s : s + batch_size], list(prompts[s : s + batch_size])) for s in range(0, len(prompts), batch_size)]
        return torch.cat([torch.as_tensor(o).float().cpu() for o in outs]).numpy()

    s0 = {k: run(images_0, fn) for k, fn in scorers.items()}
    s1 = {k: run(images_1, fn) for k, fn in scorers.items()}
    return gap_columns(s0, s1, label_0)


FLIPPED_MANIFEST = "flipped.json"


def flip_preferences(src: str | Path, dst: str | Path, *, overwrite: bool = False) -> Path:
    """A negative control: a copy of the preference data in ``src`` with every decided preference reversed.

    Each ``*.parquet`` file under ``src`` (any layout :mod:`lpo_bench.data.stream` reads) is written to the same
    relative path under ``dst`` with ``label_0`` and ``label_1`` swapped and the MPCF ``*_gap`` columns (winner minus
    loser) negated on decided pairs; ties, images and every other column are kept. Other files are copied, and
    ``dst/flipped.json`` records the source and the sha256 of every source file. A method trained on ``dst``
    learns the opposite preference, so it must land below the base model: a harness that cannot show that cannot
    rank methods either.
    """
    import hashlib
    import shutil

    import pandas as pd

    from lpo_bench import records

    src, dst = Path(src), Path(dst)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    if not any(p.suffix == ".parquet" for p in files):
        raise HarnessError(f"no parquet files under {src}; pass a preference-data directory (e.g. toy pairs)")
    if (dst / FLIPPED_MANIFEST).exists() and not overwrite:
        raise HarnessError(f"{dst} already holds flipped pairs; pass --overwrite to rebuild them")
    digests = {}
    for p in files:
        rel = p.relative_to(src)
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        digests[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest()
        if p.suffix != ".parquet":
            shutil.copyfile(p, out)
            continue
        df = pd.read_parquet(p)
        if not {"label_0", "label_1"} <= set(df.columns):
            raise HarnessError(f"{p} has no label_0/label_1 columns; it is not Pick-a-Pic-style preference data")
        decided = df["label_0"] != df["label_1"]
        df["label_0"], df["label_1"] = df["label_1"].copy(), df["label_0"].copy()
        for col in [c for c in df.columns if c.endswith("_gap")]:
            df.loc[decided, col] = -df.loc[decided, col]
        records.atomic_write_parquet(out, df)
    records.atomic_write_json(dst / FLIPPED_MANIFEST, {"control": "flipped preferences", "source": str(src.resolve()),
                                                       "source_sha256": digests})
    return dst
