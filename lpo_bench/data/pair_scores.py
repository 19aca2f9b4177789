"""Per-pair metric scores and gap columns as a side table, for preference data that lacks them (Pick-a-Pic).

LPO's MPCF filter (arXiv 2502.01051 Sec. 4.3) reads, per pair, the winner-minus-loser gaps of an aesthetic, a
CLIP and a VQA score. The authors computed them offline into a CSV row-aligned with the Hugging Face train split
(Kwai-Kolors/LPO issue #3) and released neither the scoring code nor a reproducible copy (issue #11). This module
computes them by streaming: both images of every pair are decoded batch by batch, scored, and written as parquet
shards ``part-NNNNN.parquet`` of ``shard_pairs`` pairs each (atomic writes, so a killed pass resumes with the
shards it lacks). A table row is keyed by ``key``: the pair's ``ranking_id`` when the data has one (Pick-a-Pic),
else ``row:<position>`` in the split (stable for data with the same manifest hash). Columns: ``key``,
``score_0_<name>`` / ``score_1_<name>`` per score and the gap columns of :func:`lpo_bench.data.pairs.gap_columns`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lpo_bench.errors import HarnessError

SCORE_NAMES = ("aesthetic", "clipscore", "vqascore")
PART_GLOB = "part-*.parquet"
SCORES_DIR = "scores"  # the table's folder inside a score-pairs run
MPCF_COLUMNS = ("different_flag", "aesthetic_gap", "clipscore_gap", "vqascore_gap")

# (images [b,3,H,W] float in [0,1], prompts) -> scores [b]
ScoreFn = Callable[[Any, Sequence[str]], Any]


def pair_keys(index: Any) -> list[str]:
    """The side-table key of every pair of ``index`` (a PairIndex or PairSet): ranking_id, else the position."""
    extra = index.extra
    if "ranking_id" in extra.columns:
        return [str(v) for v in extra["ranking_id"].tolist()]
    return [f"row:{i}" for i in range(len(index))]


def shard_path(out_dir: Path, shard: int) -> Path:
    return Path(out_dir) / f"part-{shard:05d}.parquet"


def n_shards(n_pairs: int, shard_pairs: int) -> int:
    return -(-n_pairs // shard_pairs)


def score_positions(index: Any, positions: np.ndarray, scorers: dict[str, ScoreFn], *, batch_pairs: int,
                    resolution: int | None, num_workers: int = 0) -> Any:
    """Score both images of the pairs at ``positions``; a DataFrame in that order (NaN where an image failed to
    decode, so every MPCF comparison on that pair is false and the filter drops it)."""
    import pandas as pd
    import torch

    from lpo_bench.data.pairs import gap_columns

    n = len(positions)
    at = {int(p): i for i, p in enumerate(positions)}
    scores = {(w, k): np.full(n, np.nan) for w in (0, 1) for k in scorers}
    for batch in index.batches(positions, batch_pairs=batch_pairs, resolution=resolution, num_workers=num_workers):
        if not len(batch.idx):  # every pair of this batch failed to decode (NaN rows, counted by the index)
            continue
        rows = [at[int(p)] for p in batch.idx.tolist()]
        caps = [index.captions[int(p)] for p in batch.idx.tolist()]
        for w, images in ((0, batch.images_0), (1, batch.images_1)):
            for k, fn in scorers.items():
                with torch.no_grad():
                    scores[(w, k)][rows] = torch.as_tensor(fn(images, caps)).float().cpu().numpy()
    keys = pair_keys(index)
    label = np.asarray(index.label_0, dtype=np.float64)[positions]
    df = pd.DataFrame({"key": [keys[int(p)] for p in positions]})
    for (w, k), v in scores.items():
        df[f"score_{w}_{k}"] = v
    if set(SCORE_NAMES) <= set(scorers):
        gaps = gap_columns({k: scores[(0, k)] for k in SCORE_NAMES}, {k: scores[(1, k)] for k in SCORE_NAMES}, label)
        for col, v in gaps.items():
            df[col] = v
    return df


def write_scores(index: Any, scorers: dict[str, ScoreFn], out_dir: str | Path, *, shard_pairs: int = 4096,
                 batch_pairs: int = 64, resolution: int | None = None, num_workers: int = 0, rank: int = 0,
                 world_size: int = 1, on_shard: Callable[[int, int], None] | None = None) -> int:
    """Write the shards this rank owns (shard i goes to rank i mod world_size) that are not on disk yet;
    returns how many it wrote. ``on_shard(shard, pairs)`` is called after each write (progress, ledger counts)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for shard in range(rank, n_shards(len(index), shard_pairs), world_size):
        path = shard_path(out, shard)
        if path.exists():  # written by an earlier, interrupted pass (writes are atomic)
            continue
        positions = np.arange(shard * shard_pairs, min((shard + 1) * shard_pairs, len(index)))
        df = score_positions(index, positions, scorers, batch_pairs=batch_pairs, resolution=resolution,
                             num_workers=num_workers)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        df.to_parquet(tmp, index=False)
        tmp.replace(path)
        written += 1
        if on_shard is not None:
            on_shard(shard, len(positions))
    return written


def read_scores(scores_dir: str | Path) -> Any:
    """All shards of a score table, concatenated (HarnessError when there are none or keys repeat)."""
    import pandas as pd

    parts = sorted(Path(scores_dir).glob(PART_GLOB))
    if not parts:
        raise HarnessError(f"{scores_dir} holds no pair-score shards ({PART_GLOB}); pass the directory written by "
                           f"`lpo-bench score-pairs` (its run's scores/ folder)")
    df = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    if df["key"].duplicated().any():
        dup = df.loc[df["key"].duplicated(), "key"].iloc[0]
        raise HarnessError(f"{scores_dir} scores pair {dup} twice; the table mixes shards of different data")
    return df


def attach_scores(extra: Any, keys: Sequence[str], scores: Any, columns: Sequence[str]) -> Any:
    """``extra`` (row-aligned metadata) with ``columns`` taken from ``scores`` by key; refuses a table that misses
    some of the pairs or the columns, with one line naming the first missing key."""
    missing_cols = [c for c in columns if c not in scores.columns]
    if missing_cols:
        raise HarnessError(f"the pair-score table lacks the columns {missing_cols}; rescore with all of "
                           f"{', '.join(SCORE_NAMES)}")
    table = scores.set_index("key")[list(columns)]
    known = set(table.index)
    absent = [k for k in keys if k not in known]
    if absent:
        raise HarnessError(f"the pair-score table has no row for {len(absent)} of {len(keys)} pairs (first: "
                           f"{absent[0]}); it was computed on other data: rerun `lpo-bench score-pairs` on these pairs")
    found = table.reindex(list(keys))
    out = extra.copy()
    for c in columns:
        out[c] = found[c].to_numpy()
    return out


def table_dir(path: str | Path) -> Path:
    """The score table of ``--pair-scores PATH``: a score-pairs run directory or its scores/ folder."""
    p = Path(path)
    if (p / SCORES_DIR).is_dir():
        return p / SCORES_DIR
    if p.is_dir() and any(p.glob(PART_GLOB)):
        return p
    raise HarnessError(f"--pair-scores {p} is not a score-pairs run (no {SCORES_DIR}/ with {PART_GLOB}); "
                       f"run `lpo-bench score-pairs --pairs DIR` first")


def with_scores(index: Any, path: str | Path, columns: Sequence[str] = MPCF_COLUMNS) -> Any:
    """``index`` (a PairIndex) with ``columns`` of the score table at ``path`` joined onto its metadata by key."""
    import dataclasses

    extra = attach_scores(index.extra, pair_keys(index), read_scores(table_dir(path)), columns)
    return dataclasses.replace(index, extra=extra)


def split_rows(index: Any) -> np.ndarray:
    """Each pair's row number in its whole split (shards in order, before any filtering): int64 [n]."""
    import pyarrow.parquet as pq

    sizes = []
    for sh in index.shards:
        if sh.path.suffix != ".parquet":
            raise HarnessError(f"{sh.path} is not a parquet shard; the authors' CSV is aligned with the parquet "
                               f"shards of the Hugging Face train split")
        sizes.append(pq.ParquetFile(sh.path).metadata.num_rows)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return offsets[np.asarray(index.shard, dtype=np.int64)] + np.asarray(index.row, dtype=np.int64)


def official_csv_scores(csv_path: str | Path, keys: Sequence[str], source_rows: Sequence[int]) -> Any:
    """The authors' MPCF CSV (``vqa_aes_clip_score_mp.csv``, row-aligned with Pick-a-Pic v1's HF train split, as
    Kwai-Kolors/LPO@9c2e8b8 reads it with ``select()``) as a score table keyed like :func:`pair_keys`.

    ``source_rows[i]`` is pair i's row number in the split before any filtering."""
    import pandas as pd

    need = ["different_flag", "aesthetic_gap", "clipscore_gap", "vqascore_gap"]
    try:
        csv = pd.read_csv(csv_path)
    except (OSError, ValueError) as exc:
        raise HarnessError(f"cannot read {csv_path}: {exc}".splitlines()[0]) from None
    if missing := [c for c in need if c not in csv.columns]:
        raise HarnessError(f"{csv_path} lacks the columns {missing}; expected the authors' MPCF score CSV")
    rows = np.asarray(source_rows, dtype=np.int64)
    if len(rows) and rows.max() >= len(csv):
        raise HarnessError(f"{csv_path} has {len(csv)} rows but the pairs reach split row {int(rows.max())}; the CSV "
                           f"must be row-aligned with the full Pick-a-Pic v1 train split")
    out = csv.iloc[rows][need].reset_index(drop=True)
    out.insert(0, "key", list(keys))
    return out
