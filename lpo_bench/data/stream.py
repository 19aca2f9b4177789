"""Lazy preference pairs: metadata in RAM, image bytes read and decoded per batch.

:func:`open_pairs` reads one split's metadata columns only (parquet column projection, row group by row group;
the image columns' bytes are never loaded for the whole split), drops ties (``drop_ties``) and rows without a
human label (``has_label`` false), counts rows broken in their metadata (missing caption, label outside
{0, 0.5, 1}, null image) as ``skipped``, and remembers (shard, row) per kept pair. The images of a pair are read
and decoded only when asked for (:meth:`PairIndex.images`, :meth:`PairIndex.batches`), in DataLoader workers
when ``num_workers > 0``; an image that fails to decode then is left out of its batch and counted in
``PairIndex.decode_failures``. Memory is flat in the dataset size: a pair costs its metadata row (~1 KB for
the Pick-a-Pic schema, image URLs left out), never its images.

Layouts of a split (``val`` and ``validation`` are aliases of each other): ``<split>.parquet`` (toy pairs),
``<split>-*.parquet``, ``<split>/*.parquet``, ``data/<split>-*.parquet`` (a Hugging Face snapshot of
``yuvalkirstain/pickapic_v1`` / ``_v2``: splits ``train``, ``validation``, ``test``, ``validation_unique``,
``test_unique``) and ``<split>/*.arrow`` (a ``datasets`` ``save_to_disk`` copy, memory-mapped).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lpo_bench.data.shards import IMAGE_COLUMNS, SPLIT_ALIASES, Shard, split_files
from lpo_bench.errors import HarnessError

VALID_LABELS = (0.0, 0.5, 1.0)
REQUIRED_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0")
URL_COLUMNS = ("image_0_url", "image_1_url")  # Pick-a-Pic's ~90-character image URLs: not kept (~0.2 KB a pair)


# ---------------------------------------------------------------------------- decoding
def decode_image(data: Any, resolution: int | None) -> np.ndarray:
    """Encoded image bytes (or a datasets Image {"bytes", "path"}) -> uint8 [H, W, 3], bilinear-resized to
    ``resolution`` x ``resolution`` (no aspect preservation, as the official LRM trainer)."""
    from PIL import Image

    if isinstance(data, dict):
        data = data.get("bytes")
    img = Image.open(io.BytesIO(data))
    img = img.convert("RGB") if img.mode != "RGB" else img  # an RGB JPEG needs no converted copy
    if resolution is not None and img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def to_tensor(images: Sequence[np.ndarray]) -> Any:
    """uint8 [H, W, 3] arrays -> float tensor [b, 3, H, W] in [0, 1]."""
    import torch

    if not images:
        return torch.zeros(0, 3, 0, 0)
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise HarnessError(f"pair images have different sizes {sorted(shapes)[:2]}; pass a resolution to resize them")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


@dataclass
class PairBatch:
    """One decoded batch, in the order asked for. idx: [b] PairIndex positions of the pairs that decoded;
    images_*: float [b, 3, H, W] in [0, 1]; failed: positions left out because an image did not decode."""

    idx: Any
    images_0: Any
    images_1: Any
    failed: Any


MAX_OPEN_SHARDS = 32  # per process: Pick-a-Pic has hundreds of shards, and the default fd limit is 1024


class _Batches:
    """Map-style dataset of batches (one item = one batch), small enough to send to DataLoader workers. At most
    ``MAX_OPEN_SHARDS`` shards stay open per process (the least recently read is closed first)."""

    def __init__(self, shards: list[Shard], pos: np.ndarray, shard: np.ndarray, row: np.ndarray,
                 batch_pairs: int, resolution: int | None, recent: list[int]) -> None:
        self.shards, self.pos, self.shard, self.row = shards, pos, shard, row
        self.bp, self.resolution = batch_pairs, resolution
        self._recent = recent  # the open shards, least recently read first (shared by the index's readers)

    def __len__(self) -> int:
        return -(-len(self.pos) // self.bp)

    def _opened(self, s: int) -> None:
        if s in self._recent:
            self._recent.remove(s)
        self._recent.append(s)
        while len(self._recent) > MAX_OPEN_SHARDS:
            self.shards[self._recent.pop(0)].reset()

    def decode(self, k: int) -> tuple[list[int], list[np.ndarray], list[np.ndarray], list[int]]:
        """Batch ``k`` as (decoded positions, uint8 images 0, uint8 images 1, failed positions)."""
        sl = slice(k * self.bp, (k + 1) * self.bp)
        pos, shard, row = self.pos[sl], self.shard[sl], self.row[sl]
        decoded: dict[int, tuple[np.ndarray, np.ndarray] | None] = {}
        for s in np.unique(shard):  # read each shard's rows in ascending order, decoding as they come
            at = np.nonzero(shard == s)[0]
            order = at[np.argsort(row[at], kind="stable")]
            for i, pair in zip(order.tolist(), self.shards[int(s)].image_bytes(row[order]), strict=True):
                try:
                    a, b = (decode_image(x, self.resolution) for x in pair)
                    decoded[i] = (a, b) if a.shape == b.shape else None
                except Exception:
                    decoded[i] = None
            self._opened(int(s))
        ok, im0, im1, bad = [], [], [], []
        for i in range(len(pos)):  # back in the order asked for
            got = decoded[i]
            if got is None:
                bad.append(int(pos[i]))
                continue
            ok.append(int(pos[i]))
            im0.append(got[0])
            im1.append(got[1])
        return ok, im0, im1, bad

    def __getitem__(self, k: int) -> PairBatch:
        import torch

        ok, im0, im1, bad = self.decode(k)
        return PairBatch(torch.tensor(ok, dtype=torch.long), to_tensor(im0), to_tensor(im1),
                         torch.tensor(bad, dtype=torch.long))


def _worker_init(_: int) -> None:
    """A DataLoader worker: one thread, and its own file handles (a forked worker must not share the parent's)."""
    import torch
    from torch.utils.data import get_worker_info

    torch.set_num_threads(1)
    info = get_worker_info()
    for sh in info.dataset.shards if info is not None else ():
        sh.reset()


# ---------------------------------------------------------------------------- the index
@dataclass
class PairIndex:
    """The kept pairs of one split: metadata in RAM, images on disk.

    captions [n]; label_0: float64 [n] (1: image 0 preferred, 0: image 1, 0.5: tie); weight: float64 [n],
    1 / num_example_per_prompt (per-caption count when the column is absent); extra: pandas DataFrame of the
    other metadata columns, row-aligned (never image bytes); skipped: rows broken in their metadata;
    unlabeled: rows dropped for ``has_label`` false; sha256: the manifest hash of the split's shards.
    """

    captions: list[str]
    label_0: np.ndarray
    weight: np.ndarray
    extra: Any
    skipped: int
    source: str
    sha256: str
    shards: list[Shard]
    shard: np.ndarray  # int32 [n] shard of each pair
    row: np.ndarray  # int64 [n] row within its shard
    unlabeled: int = 0
    decode_failures: int = 0
    open_shards: list[int] = field(default_factory=list)  # open in this process, least recently read first

    def __len__(self) -> int:
        return len(self.captions)

    def subset(self, idx: Any) -> PairIndex:
        """The pairs at positions ``idx`` (in that order), same shards and counters."""
        idx = np.asarray(idx, dtype=np.int64)
        return PairIndex([self.captions[i] for i in idx.tolist()], self.label_0[idx], self.weight[idx],
                         self.extra.iloc[idx].reset_index(drop=True), self.skipped, self.source, self.sha256,
                         self.shards, self.shard[idx], self.row[idx], self.unlabeled, self.decode_failures,
                         self.open_shards)

    def _dataset(self, idx: Any, batch_pairs: int, resolution: int | None) -> _Batches:
        pos = np.asarray(idx, dtype=np.int64).reshape(-1)
        if batch_pairs < 1:
            raise HarnessError(f"batch_pairs={batch_pairs} must be >= 1")
        return _Batches(self.shards, pos, self.shard[pos], self.row[pos], batch_pairs, resolution, self.open_shards)

    def batches(self, idx: Any, *, batch_pairs: int, resolution: int | None,
                num_workers: int = 0) -> Iterator[PairBatch]:
        """Decoded batches of the pairs at ``idx``, in that order (in ``num_workers`` DataLoader workers when > 0).
        Pairs whose images do not decode are left out of their batch and added to ``decode_failures``."""
        ds = self._dataset(idx, batch_pairs, resolution)
        if num_workers <= 0:
            items: Any = (ds[k] for k in range(len(ds)))
        else:
            import gc

            from torch.utils.data import DataLoader

            loader = DataLoader(ds, batch_size=None, shuffle=False, num_workers=num_workers,
                                worker_init_fn=_worker_init, prefetch_factor=2)
            gc.collect()
            gc.freeze()  # forked workers then never scan (and so copy) the parent's objects; the parent unfreezes
            try:
                items = iter(loader)
            finally:
                gc.unfreeze()
        for b in items:
            self.decode_failures += len(b.failed)
            yield b

    def images(self, idx: Any, which: int, *, resolution: int | None) -> Any:
        """Images ``which`` (0 or 1) of the pairs at ``idx``: float [b, 3, H, W] in [0, 1], decoded now."""
        pos = np.asarray(idx, dtype=np.int64).reshape(-1)
        out = []
        for k in range(-(-len(pos) // 256)):
            b = self._dataset(pos[k * 256 : (k + 1) * 256], 256, resolution)[0]
            if len(b.failed):
                self.decode_failures += len(b.failed)
                raise HarnessError(f"pair {int(b.failed[0])} of {self.source} has an image that does not decode; "
                                   f"repair the data or read it with batches(), which leaves such pairs out")
            out.append(b.images_0 if which == 0 else b.images_1)
        import torch

        return torch.cat(out) if out else to_tensor([])


# ---------------------------------------------------------------------------- opening a split
def _row_masks(table: Any, ok: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unlabeled, broken, tie) masks of a metadata table, computed column-wise (no Python object per row).

    unlabeled: ``has_label`` false; broken: caption not a string, label_0 missing or outside {0, 0.5, 1}, or an
    image missing (``ok`` false); tie: label_0 == 0.5."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    has = table.column("has_label") if "has_label" in table.column_names else None
    unlabeled = np.zeros(n, dtype=bool) if has is None else pc.fill_null(pc.equal(has, False), False).to_numpy(
        zero_copy_only=False)
    cap = table.column("caption")
    cap_ok = pc.is_valid(cap).to_numpy(zero_copy_only=False) if pa.types.is_string(cap.type) or pa.types.is_large_string(
        cap.type) else np.zeros(n, dtype=bool)
    try:
        lab = pc.cast(table.column("label_0"), pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        lab = np.full(n, np.nan)
    broken = ~unlabeled & ~(cap_ok & np.isin(lab, VALID_LABELS) & (True if ok is None else ok))
    return unlabeled, broken, ~unlabeled & ~broken & (lab == 0.5)


def open_pairs(source: str | Path, split: str, *, max_rows: int | None = None, drop_ties: bool = False,
               max_bad_frac: float = 0.05) -> PairIndex:
    """Open one split lazily (see module docstring); refuses a split with more than ``max_bad_frac`` broken rows."""
    import pandas as pd
    import pyarrow as pa

    source = Path(source)
    if not source.exists():
        raise HarnessError(f"preference data {source} does not exist; create toy pairs with `lpo-bench toy "
                           f"make-pairs --out {source}` or pass a local Pick-a-Pic copy")
    files = split_files(source, split)
    if not files:
        names = " or ".join((split, *SPLIT_ALIASES.get(split, ())))
        raise HarnessError(f"no '{split}' split in {source} (looked for {names} as <split>.parquet, "
                           f"<split>-*.parquet, <split>/*.parquet, data/<split>-*.parquet, <split>/*.arrow); "
                           f"pass the directory that holds it")
    shards = [Shard(f) for f in files]
    metas, shard_of, row_of, bad, ties, unlabeled, seen = [], [], [], 0, 0, 0, 0
    for s, sh in enumerate(shards):
        if max_rows is not None and seen >= max_rows:
            break  # the later shards are never opened
        try:
            names = sh.schema_names()
        except Exception as exc:
            raise HarnessError(f"could not read {sh.path}: {type(exc).__name__}; the file is corrupt or not "
                               f"parquet/arrow") from None
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise HarnessError(f"{source} split {split} lacks columns {missing}; expected the Pick-a-Pic schema")
        columns = [c for c in names if c not in IMAGE_COLUMNS + URL_COLUMNS and not c.startswith("__index_level")]
        start = 0
        try:
            for table, ok in sh.metadata_tables(columns):
                if max_rows is not None and seen >= max_rows:
                    break
                if max_rows is not None and seen + table.num_rows > max_rows:
                    table, ok = table.slice(0, max_rows - seen), None if ok is None else ok[: max_rows - seen]
                n = table.num_rows
                unl, brk, tie = _row_masks(table, ok)
                tie &= drop_ties
                unlabeled, bad, ties = unlabeled + int(unl.sum()), bad + int(brk.sum()), ties + int(tie.sum())
                at = np.nonzero(~(unl | brk | tie))[0]
                metas.append(table.take(pa.array(at)))
                shard_of.append(np.full(len(at), s, dtype=np.int32))
                row_of.append(start + at)
                start, seen = start + n, seen + n
            sh.reset()  # images are read later, per batch, reopening only the shards they need
        except HarnessError:
            raise
        except Exception as exc:
            raise HarnessError(f"could not read {sh.path}: {type(exc).__name__}; the file is corrupt") from None
    n_total = seen - ties - unlabeled
    kept = sum(len(r) for r in row_of)
    if n_total == 0 or not kept:
        raise HarnessError(f"{source} split {split} has no usable pairs ({bad} bad rows); check the data")
    if bad / n_total > max_bad_frac:
        raise HarnessError(f"{bad} of {n_total} pairs in {source} split {split} are broken (missing/corrupt images "
                           f"or invalid labels), above the {max_bad_frac:.0%} threshold; repair or re-download the data")
    extra = pa.concat_tables(metas, promote_options="permissive").to_pandas()  # str columns: Arrow-backed
    captions = extra["caption"].astype(object).tolist()
    label_0 = pd.to_numeric(extra["label_0"]).to_numpy(dtype=np.float64)
    if "num_example_per_prompt" in extra.columns:
        m = pd.to_numeric(extra["num_example_per_prompt"], errors="coerce").fillna(1).clip(lower=1).to_numpy()
    else:
        m = extra.groupby("caption")["caption"].transform("count").to_numpy()
    from lpo_bench.harness.identity import files_manifest_sha256

    digest = files_manifest_sha256(source if source.is_dir() else source.parent, files)
    return PairIndex(captions, label_0, 1.0 / m.astype(np.float64), extra, bad, str(source), digest, shards,
                     np.concatenate(shard_of), np.concatenate(row_of).astype(np.int64), unlabeled)
