"""An on-disk cache of VAE posteriors of preference pairs, built batch by batch, read back per update.

Layout under ``root``: ``manifest.json`` (the fingerprint: data identity, resolution, VAE, dtype, streams, shard
size) and, per shard of ``shard_pairs`` consecutive pairs, ``shard-SSSSS.bin`` (rows [n, S, 2, C, h, w]: for each
of the S streams, e.g. winner / loser / their mirror images, the posterior mean and std, in ``store_dtype``),
``shard-SSSSS.pos.npy`` (the PairIndex position of each row: pairs whose images did not decode are absent) and
``shard-SSSSS.json``, written last. Each file is written under a temporary name and renamed, so a shard is
complete exactly when its json exists: a PREP killed half-way leaves complete shards (reused) and temporary files
(removed and rebuilt); a manifest with another fingerprint discards every shard. Built in PREP with peak memory of
one batch; shard s is built by rank ``s mod world_size`` (ranks share the run directory), then every rank reads
all of them. Reads are positioned file reads (``os.pread``), not memory maps, so the process's resident memory
stays one update's rows whatever the cache size.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lpo_bench import records
from lpo_bench.errors import HarnessError

MANIFEST = "manifest.json"
STORE_DTYPES = {"fp32": np.float32, "fp16": np.float16}


@dataclass
class LatentCache:
    """Rows of (stream, mean|std, C, h, w) per cached pair; ``positions`` [n]: PairIndex position of each row."""

    root: Path
    streams: tuple[str, ...]
    row_shape: tuple[int, ...]  # (S, 2, C, h, w)
    dtype: Any  # numpy storage dtype
    positions: np.ndarray
    shard_starts: np.ndarray  # [shards + 1] first row of each shard
    failed: int  # pairs left out because an image did not decode

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape)) * np.dtype(self.dtype).itemsize

    def read(self, rows: Any) -> np.ndarray:
        """float32 [b, S, 2, C, h, w] of cache rows ``rows`` (any order, repeats allowed)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), *self.row_shape), dtype=np.float32)
        shard = np.searchsorted(self.shard_starts, rows, side="right") - 1
        rb = self.row_bytes
        for s in np.unique(shard):
            at = np.nonzero(shard == s)[0]
            fd = os.open(self.root / f"shard-{int(s):05d}.bin", os.O_RDONLY)
            try:
                for i in at[np.argsort(rows[at], kind="stable")].tolist():
                    off = (int(rows[i]) - int(self.shard_starts[s])) * rb
                    buf = os.pread(fd, rb, off)
                    if len(buf) != rb:
                        raise HarnessError(f"latent cache {self.root} is truncated (shard {int(s)}); delete the "
                                           f"directory and rerun with --resume to rebuild it")
                    out[i] = np.frombuffer(buf, dtype=self.dtype).reshape(self.row_shape)
            finally:
                os.close(fd)
        return out

    def stream(self, rows_data: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) [b, C, h, w] of stream ``name`` from rows returned by :meth:`read`."""
        k = self.streams.index(name)
        return rows_data[:, k, 0], rows_data[:, k, 1]


def _shard_done(root: Path, s: int) -> dict[str, Any] | None:
    p = root / f"shard-{s:05d}.json"
    if not p.exists():
        return None
    info = json.loads(p.read_text())
    size = (root / f"shard-{s:05d}.bin").stat().st_size if (root / f"shard-{s:05d}.bin").exists() else -1
    return info if size == info["rows"] * info["row_bytes"] and (root / f"shard-{s:05d}.pos.npy").exists() else None


def _write_shard(root: Path, s: int, batches: Any, make_streams: Callable[[Any], dict[str, Any]],
                 encode: Callable[[Any], tuple[Any, Any]], streams: tuple[str, ...], dtype: Any) -> None:
    import torch

    tmp = root / f".shard-{s:05d}.bin.tmp"
    positions, failed, row_shape = [], 0, None
    try:
        with open(tmp, "wb") as fh:
            for b in batches:
                failed += len(b.failed)
                if len(b.idx) == 0:
                    continue
                imgs = make_streams(b)
                parts = []
                for name in streams:
                    mean, std = encode(imgs[name])
                    parts.append(torch.stack([mean, std], dim=1))  # [b, 2, C, h, w]
                rows = torch.stack(parts, dim=1).float().numpy().astype(dtype)  # [b, S, 2, C, h, w]
                row_shape = rows.shape[1:]
                fh.write(np.ascontiguousarray(rows).tobytes())
                positions.append(b.idx.numpy())
            fh.flush()
            os.fsync(fh.fileno())
        pos = np.concatenate(positions) if positions else np.zeros(0, dtype=np.int64)
        ptmp = root / f".shard-{s:05d}.pos.npy.tmp"
        with open(ptmp, "wb") as fh:
            np.save(fh, pos.astype(np.int64))
        os.replace(ptmp, root / f"shard-{s:05d}.pos.npy")
        os.replace(tmp, root / f"shard-{s:05d}.bin")
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise records._disk_error(root / f"shard-{s:05d}.bin", exc) from None
    row_bytes = int(np.prod(row_shape)) * np.dtype(dtype).itemsize if row_shape else 0
    records.atomic_write_json(root / f"shard-{s:05d}.json", {"rows": len(pos), "failed": failed, "row_bytes": row_bytes,
                                                             "row_shape": list(row_shape or ())})


def build_latent_cache(
    root: Path, index: Any, *, fingerprint: dict[str, Any], streams: tuple[str, ...],
    make_streams: Callable[[Any], dict[str, Any]], encode: Callable[[Any], tuple[Any, Any]],
    batch_pairs: int, shard_pairs: int, resolution: int | None, store_dtype: str = "fp32", num_workers: int = 0,
    dist: Any = None, log: Callable[[str], None] = print,
) -> LatentCache:
    """Build (or complete) the cache of every pair of ``index`` and open it.

    ``make_streams(batch)`` maps a :class:`PairBatch` to {stream name: images [b, 3, H, W] in [0, 1]};
    ``encode(images)`` returns the VAE posterior (mean, std) [b, C, h, w] (and counts its work). ``shard_pairs``
    is rounded up to a multiple of ``batch_pairs`` so every VAE batch is the same whatever the sharding.
    ``dist`` (rank, world_size, is_main, barrier) shares the shards out over processes.
    """
    rank, world = (0, 1) if dist is None else (dist.rank, dist.world_size)
    barrier = (lambda: None) if dist is None else dist.barrier
    dtype = STORE_DTYPES[store_dtype]
    shard_pairs = -(-max(shard_pairs, 1) // batch_pairs) * batch_pairs
    n_shards = max(1, -(-len(index) // shard_pairs))
    fp = {**fingerprint, "streams": list(streams), "store_dtype": store_dtype, "shard_pairs": shard_pairs,
          "batch_pairs": batch_pairs, "resolution": resolution, "pairs": len(index), "format": 1}
    fp = json.loads(json.dumps(fp, sort_keys=True, default=str))
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        old = json.loads((root / MANIFEST).read_text()) if (root / MANIFEST).exists() else None
        for p in root.iterdir():  # leftovers of an interrupted build, or a cache of other data
            if p.name.startswith(".") or (old != fp and p.name != MANIFEST):
                p.unlink()
        if old != fp:
            records.atomic_write_json(root / MANIFEST, fp)
    barrier()
    mine = [s for s in range(n_shards) if s % world == rank and _shard_done(root, s) is None]
    if mine:
        log(f"latent cache: encoding {len(mine)} of {n_shards} shards into {root}")
    for s in mine:
        pos = np.arange(s * shard_pairs, min((s + 1) * shard_pairs, len(index)), dtype=np.int64)
        batches = index.batches(pos, batch_pairs=batch_pairs, resolution=resolution, num_workers=num_workers)
        _write_shard(root, s, batches, make_streams, encode, streams, dtype)
    barrier()
    return open_latent_cache(root, n_shards, streams, dtype)


def open_latent_cache(root: Path, n_shards: int, streams: tuple[str, ...], dtype: Any) -> LatentCache:
    infos, positions = [], []
    for s in range(n_shards):
        info = _shard_done(root, s)
        if info is None:
            raise HarnessError(f"latent cache {root} lacks shard {s} after PREP (a process failed to write it); "
                               f"rerun with --resume to complete it")
        infos.append(info)
        positions.append(np.load(root / f"shard-{s:05d}.pos.npy"))
    shapes = {tuple(i["row_shape"]) for i in infos if i["rows"]}
    if len(shapes) != 1:
        raise HarnessError(f"latent cache {root} holds no rows or rows of different shapes; delete it and rerun")
    starts = np.cumsum([0] + [i["rows"] for i in infos])
    return LatentCache(root, streams, shapes.pop(), dtype, np.concatenate(positions), starts,
                       sum(i["failed"] for i in infos))
