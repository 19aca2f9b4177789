"""Global batches of a pair dataset, the same on every process: which rows an update trains on, and which of
them each process holds.

A data-parallel trainer draws the rows of update ``u`` with :func:`global_batch_indices` (a function of the seed,
the purpose and ``u`` only: identical on all ranks, and nothing to checkpoint), keeps the contiguous slice
:func:`rank_slice` gives its rank, and draws each pair's randomness (noise, timestep) from a generator keyed by the
pair's position in the global batch (``seeding.purpose_generator(seed, purpose, u, position)``), so a pair gets the
same noise whichever rank holds it, and P processes train on exactly the pairs one process would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from lpo_bench.diffusion.seeding import purpose_generator


@lru_cache(maxsize=4)
def _epoch_order(n: int, epoch: int, seed: int, purpose: str) -> np.ndarray:
    import torch

    return torch.randperm(n, generator=purpose_generator(seed, purpose, epoch)).numpy()


def epoch_order(n: int, epoch: int, *, seed: int, purpose: str) -> np.ndarray:
    """The row order of ``epoch``: a permutation [n] of range(n) drawn by ``purpose_generator(seed, purpose,
    epoch)`` (a shuffled DataLoader's epoch: every row once)."""
    return _epoch_order(n, epoch, seed, purpose).copy()


def global_batch_indices(n: int, update: int, batch: int, *, seed: int, purpose: str) -> np.ndarray:
    """Rows [batch] of global batch ``update`` over a dataset of ``n`` rows.

    The data stream is π_0 ‖ π_1 ‖ … with π_e = ``epoch_order(n, e)``; update u takes stream positions
    u·batch … (u+1)·batch − 1, so a batch may straddle two epochs (no row dropped, none repeated within an epoch).
    """
    if n < 1 or batch < 1 or update < 0:
        raise ValueError(f"need n >= 1, batch >= 1 and update >= 0, got n={n}, batch={batch}, update={update}")
    out = np.empty(batch, dtype=np.int64)
    pos, filled = update * batch, 0
    while filled < batch:
        epoch, offset = divmod(pos, n)
        take = min(batch - filled, n - offset)
        out[filled : filled + take] = _epoch_order(n, epoch, seed, purpose)[offset : offset + take]
        filled += take
        pos += take
    return out


def rank_slice(batch: int, rank: int, world_size: int) -> slice:
    """Positions of a global batch of ``batch`` pairs held by ``rank`` of ``world_size``: contiguous slices in rank
    order whose sizes differ by at most one (the first ``batch mod world_size`` ranks hold one more); a rank may
    hold none when ``batch < world_size``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside [0, {world_size})")
    base, extra = divmod(batch, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def decoded_positions(expected_rows: np.ndarray, decoded_rows: Sequence[int]) -> np.ndarray:
    """Which of ``expected_rows`` (the rows asked for, in order) are ``decoded_rows`` (the rows that decoded, same
    order, failures left out): their offsets into ``expected_rows``. A row that fails fails every time it is asked
    for, so the greedy match is exact even when a row repeats."""
    out, j = [], 0
    decoded = list(decoded_rows)
    for k, r in enumerate(np.asarray(expected_rows).tolist()):
        if j < len(decoded) and decoded[j] == r:
            out.append(k)
            j += 1
    if j != len(decoded):
        raise ValueError("decoded rows are not an ordered subset of the rows asked for")
    return np.asarray(out, dtype=np.int64)


@dataclass
class LocalChunk:
    """One micro-batch of this rank's share of a global batch, decoded. positions: [m] positions in the global
    batch (keys of the per-pair generators); rows: [m] dataset rows; images_*: float [m, 3, H, W] in [0, 1]."""

    positions: np.ndarray
    rows: np.ndarray
    images_0: Any
    images_1: Any


class RankBatches:
    """This rank's share of global batch ``update`` of a lazily opened pair split (``lpo_bench.data.pairs.PairIndex``),
    decoded ahead of use (``num_workers`` DataLoader workers) and cut into micro-batches.

    The rows of every update come from :func:`global_batch_indices` (the same on every rank), the rank keeps
    :func:`rank_slice` of them. One decode stream serves the updates from the one asked for first to ``updates``
    (a request out of sequence, e.g. after resuming, starts a new stream); micro-batches never straddle updates.
    Pairs whose images do not decode are left out of their chunk (``pairs.decode_failures`` counts them).
    """

    def __init__(self, pairs: Any, *, batch_pairs: int, micro_batch_pairs: int, updates: int, rank: int,
                 world_size: int, seed: int, purpose: str, resolution: int | None, num_workers: int = 0) -> None:
        self.pairs, self.batch, self.updates = pairs, batch_pairs, updates
        self.seed, self.purpose, self.resolution, self.num_workers = seed, purpose, resolution, num_workers
        self.slice = rank_slice(batch_pairs, rank, world_size)
        local = self.slice.stop - self.slice.start
        self.micro = micro_batch_pairs
        # decode unit: a micro-batch when they tile the rank's share, else the whole share (cut up after decoding)
        self.chunk = micro_batch_pairs if local % micro_batch_pairs == 0 else local
        self.per_update = local // self.chunk if local else 0
        self._it: Iterator[Any] | None = None
        self._next = -1

    def global_indices(self, update: int) -> np.ndarray:
        """Rows [batch_pairs] of global batch ``update`` (every rank's)."""
        return global_batch_indices(len(self.pairs), update, self.batch, seed=self.seed, purpose=self.purpose)

    def local(self, update: int) -> list[LocalChunk]:
        """This rank's micro-batches of global batch ``update``, decoded."""
        if self._it is None or update != self._next:
            rows = [self.global_indices(u)[self.slice] for u in range(update, max(update + 1, self.updates))]
            self._it = iter(self.pairs.batches(np.concatenate(rows), batch_pairs=self.chunk,
                                               resolution=self.resolution, num_workers=self.num_workers))
        self._next = update + 1
        expected = self.global_indices(update)[self.slice]
        positions = np.arange(self.slice.start, self.slice.stop)
        out = []
        for k in range(self.per_update):
            b = next(self._it)
            sl = slice(k * self.chunk, (k + 1) * self.chunk)
            at = decoded_positions(expected[sl], b.idx.tolist())
            for j in range(0, len(at), self.micro):
                part = slice(j, j + self.micro)
                out.append(LocalChunk(positions[sl][at][part], expected[sl][at][part], b.images_0[part],
                                      b.images_1[part]))
        return out
