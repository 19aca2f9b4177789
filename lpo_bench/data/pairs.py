"""Preference pairs in the Pick-a-Pic schema, from toy pairs or a local Pick-a-Pic copy.

Every method reads pairs through :func:`load_pairs`, whatever their origin. A source is a
directory holding ``<split>.parquet`` (toy pairs, written by ``lpo-bench toy make-pairs``) or
parquet shards ``<split>-*.parquet`` / ``<split>/*.parquet`` (a local copy of the Hugging Face
``yuvalkirstain/pickapic_v1`` or ``_v2`` dataset). Columns used: ``caption``, ``jpg_0``, ``jpg_1``
(encoded image bytes), ``label_0`` (1: image 0 preferred, 0: image 1, 0.5: tie) and, when present,
``num_example_per_prompt`` and the MPCF gap columns ``aesthetic_gap``, ``clipscore_gap``,
``vqascore_gap``, ``different_flag``.

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

from lpo_bench.errors import HarnessError

GAP_COLUMNS = ("aesthetic_gap", "clipscore_gap", "vqascore_gap")
VALID_LABELS = (0.0, 0.5, 1.0)


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


def _decode(data: Any, resolution: int | None) -> np.ndarray:
    from PIL import Image

    if isinstance(data, dict):  # HF datasets Image feature stored as {"bytes":..., "path":...}
        data = data.get("bytes")
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if resolution is not None and img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.BILINEAR)  # no aspect preservation, as the official LRM trainer
    return np.asarray(img, dtype=np.uint8)


def _split_files(source: Path, split: str) -> list[Path]:
    if source.is_file():
        return [source]
    cands = [source / f"{split}.parquet", *sorted(source.glob(f"{split}-*.parquet"))]
    if (source / split).is_dir():
        cands += sorted((source / split).glob("*.parquet"))
    if (source / "data").is_dir():  # the layout of a Hugging Face dataset snapshot
        cands += sorted((source / "data").glob(f"{split}-*.parquet"))
    return [p for p in cands if p.exists()]


def load_pairs(
    source: str | Path,
    split: str,
    *,
    resolution: int | None = None,
    max_rows: int | None = None,
    max_bad_frac: float = 0.05,
    drop_ties: bool = False,
) -> PairSet:
    """Load and validate one split of preference pairs (see module docstring)."""
    import pandas as pd

    source = Path(source)
    if not source.exists():
        raise HarnessError(f"preference data {source} does not exist; create toy pairs with `lpo-bench toy "
                           f"make-pairs --out {source}` or pass a local Pick-a-Pic copy")
    files = _split_files(source, split)
    if not files:
        raise HarnessError(f"no '{split}' split in {source} (looked for {split}.parquet, {split}-*.parquet, "
                           f"{split}/*.parquet); pass the directory that holds it")
    try:
        df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    except Exception as exc:
        raise HarnessError(f"could not read {files[0]}: {type(exc).__name__}; the file is corrupt or not parquet") from None
    missing = [c for c in ("caption", "jpg_0", "jpg_1", "label_0") if c not in df.columns]
    if missing:
        raise HarnessError(f"{source} split {split} lacks columns {missing}; expected the Pick-a-Pic schema")
    if max_rows is not None:
        df = df.iloc[:max_rows]
    caps, im0, im1, lab, keep = [], [], [], [], []
    for i, row in enumerate(df.itertuples(index=False)):
        try:
            cap = row.caption
            label = float(row.label_0)
            if not isinstance(cap, str) or label not in VALID_LABELS:
                raise ValueError("bad caption or label")
            if drop_ties and label == 0.5:
                continue
            a, b = _decode(row.jpg_0, resolution), _decode(row.jpg_1, resolution)
            if a.shape != b.shape:
                raise ValueError("image sizes differ")
        except Exception:
            continue
        caps.append(cap)
        im0.append(a)
        im1.append(b)
        lab.append(label)
        keep.append(i)
    n_total = len(df) if not drop_ties else len(df) - int((pd.to_numeric(df["label_0"], errors="coerce") == 0.5).sum())
    skipped = max(n_total - len(keep), 0)
    if n_total == 0 or not keep:
        raise HarnessError(f"{source} split {split} has no usable pairs ({skipped} bad rows); check the data")
    if skipped / n_total > max_bad_frac:
        raise HarnessError(f"{skipped} of {n_total} pairs in {source} split {split} are broken (missing/corrupt images "
                           f"or invalid labels), above the {max_bad_frac:.0%} threshold; repair or re-download the data")
    kept = df.iloc[keep].reset_index(drop=True)
    if "num_example_per_prompt" in kept.columns:
        m = pd.to_numeric(kept["num_example_per_prompt"], errors="coerce").fillna(1).clip(lower=1).to_numpy()
    else:
        m = kept.groupby("caption")["caption"].transform("count").to_numpy()
    weight = 1.0 / m.astype(np.float64)
    extra = kept.drop(columns=["jpg_0", "jpg_1"])
    # the run identity's manifest hash of this split's shards (footers, not the multi-GB row data)
    from lpo_bench.harness.identity import files_manifest_sha256

    digest = files_manifest_sha256(source if source.is_dir() else source.parent, [Path(f) for f in files])
    return PairSet(caps, np.stack(im0), np.stack(im1), np.asarray(lab, dtype=np.float64), weight, extra, skipped,
                   str(source), digest)


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
