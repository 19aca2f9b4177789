"""Clocks for the bench: synchronised timed calls, autocast, and the two ledgers of the overhead measurement."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from lpo_bench.ledger import Ledger

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def sync_fn(device: str) -> Callable[[], None]:
    """Waits for queued GPU work (CUDA kernels run asynchronously); a no-op elsewhere."""
    return torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)


def autocast(device: str, autocast_dtype: str | None) -> contextlib.AbstractContextManager:
    if autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=str(device).split(":")[0], dtype=AUTOCAST_DTYPES[autocast_dtype])


def time_call(fn: Callable[[], Any], *, repeats: int, warmup: int, sync: Callable[[], None]) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls (synchronised)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


class NullLedger:
    """A ledger that does nothing: the bare loop of the overhead measurement."""

    def phase(self, phase: Any) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def step(self, step: int) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def count(self, name: str, n: float = 1) -> None:
        return None


class SelfTimedLedger(Ledger):
    """A file-backed ledger (as a training run's) that also sums the seconds spent in its own bookkeeping
    (clock reads, charging, row writes, counters): the harness overhead measured from the inside, free of
    the run-to-run noise of a shared machine."""

    def __init__(self, path: Path, sync: Callable[[], None] | None = None) -> None:
        super().__init__(path, sync=sync)
        self.self_s = 0.0

    @contextlib.contextmanager
    def _timed(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.self_s += time.perf_counter() - t0

    def now(self) -> float:
        if self.sync is not None:
            self.sync()  # waiting for queued GPU work is not bookkeeping; a lost overlap shows in the wall times
        with self._timed():
            return self.clock()

    def _charge(self, t: float) -> None:
        with self._timed():
            super()._charge(t)

    def _flush(self, row: dict[str, Any]) -> None:
        with self._timed():
            super()._flush(row)

    def count(self, name: str, n: float = 1) -> None:
        with self._timed():
            super().count(name, n)
