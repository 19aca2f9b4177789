"""The GPU-hour ledger: the harness's only clock.

Phases form a closed enum. Time is attributed to the innermost open phase; inside a runner
step (``ledger.step``) time not claimed by a method phase is charged to UPDATE, so the
runner's outer timer stays the ground truth. Rows go to ``ledger.jsonl`` (append-only,
flushed per row). GPU-hours = wall seconds x devices allocated / 3600.

Headline accounting (after AlgoPerf's timing rules): PREP, SAMPLE, SCORE and UPDATE count; RM_TRAIN
is reported separately (amortised: LPO's speedup depends on including it or not); SETUP, EVAL and
CHECKPOINT are recorded but off the clock.

Work counters (``count``: one count = one sample through a component, e.g. ``unet_fwd``) are kept per phase,
attributed like time (innermost open phase; inside a step, UPDATE; outside both, ``NO_PHASE``). Each row
carries ``counts`` (this row's totals) and ``counts_by_phase`` ({phase: {counter: n}}); ``count_totals``
replays them (rows of older ledgers, which have ``counts`` only, go to ``UNKNOWN_PHASE``).
``lpo_bench.harness.flops`` prices them in FLOPs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any


class Phase(str, Enum):
    SETUP = "SETUP"
    PREP = "PREP"
    RM_TRAIN = "RM_TRAIN"
    SAMPLE = "SAMPLE"
    SCORE = "SCORE"
    UPDATE = "UPDATE"
    EVAL = "EVAL"
    CHECKPOINT = "CHECKPOINT"


COUNTED = (Phase.PREP, Phase.SAMPLE, Phase.SCORE, Phase.UPDATE)
AMORTISED = (Phase.RM_TRAIN,)
UNCOUNTED = (Phase.SETUP, Phase.EVAL, Phase.CHECKPOINT)
IDENTITY_TOLERANCE = 0.01
IDENTITY_ABS_TOLERANCE_S = 0.05
NO_PHASE = "NO_PHASE"  # counts made outside any phase and outside a runner step
UNKNOWN_PHASE = "UNKNOWN_PHASE"  # counts of rows written before counts were kept per phase

CountsByPhase = dict[str, dict[str, float]]  # {phase name: {counter: count}}


class Ledger:
    """Phase timer writing append-only rows.

    Args:
        path: ledger.jsonl path (None keeps rows in memory only, e.g. for benchmarks).
        clock: monotonic seconds (``time.perf_counter``; tests inject a fake).
        sync: called before every timestamp (``torch.cuda.synchronize`` on GPU).
        devices: devices allocated to the run (GPU-hours multiplier).
        reduce_max: under DDP, maps a list of per-phase seconds to the element-wise max over ranks.
        write: False on non-zero ranks (only rank 0 writes the file).
    """

    def __init__(
        self,
        path: str | Path | None,
        *,
        clock: Callable[[], float] = time.perf_counter,
        sync: Callable[[], None] | None = None,
        devices: int = 1,
        reduce_max: Callable[[list[float]], list[float]] | None = None,
        write: bool = True,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.clock = clock
        self.sync = sync
        self.devices = int(devices)
        self.reduce_max = reduce_max
        self.write = write
        self.totals: dict[Phase, float] = {p: 0.0 for p in Phase}
        self.lost_s = 0.0
        self.paused_s = 0.0  # the ledger's own work (cross-rank max, row writes): clock paused
        # this process's own phase seconds before the max over ranks: the wall-time identity holds per rank
        # (a sum of per-row maxima over ranks can exceed any one rank's wall time)
        self.local_s = 0.0
        self.counts: dict[str, float] = {}  # this row's counts, all phases (written as "counts")
        self._phase_counts: CountsByPhase = {}  # this row's counts per phase (written as "counts_by_phase")
        self.count_totals: CountsByPhase = {}  # every flushed row's counts per phase (replayed on reload)
        self._stack: list[Phase] = []
        self._pending: dict[Phase, float] = {}
        self._last = 0.0
        self._in_step = False
        self._step: int | None = None
        if self.path is not None and self.path.exists():
            self._reload()

    # ---------------------------------------------------------------- clock
    def now(self) -> float:
        if self.sync is not None:
            self.sync()
        return self.clock()

    def _charge(self, t: float) -> None:
        """Attribute time since the last mark to the innermost open phase."""
        if self._stack:
            top = self._stack[-1]
            self._pending[top] = self._pending.get(top, 0.0) + (t - self._last)
        elif self._in_step:
            self._pending[Phase.UPDATE] = self._pending.get(Phase.UPDATE, 0.0) + (t - self._last)
        self._last = t

    @contextmanager
    def phase(self, phase: Phase) -> Iterator[None]:
        """Time a block as ``phase`` (nested phases take the time from their parent)."""
        phase = Phase(phase)
        self._charge(self.now())
        self._stack.append(phase)
        try:
            yield
        finally:
            self._charge(self.now())
            self._stack.pop()
            if not self._stack and not self._in_step:
                self._flush({"type": "phase", "phase": phase.value})

    @contextmanager
    def step(self, step: int) -> Iterator[None]:
        """The runner's outer timer around one method step; unclaimed time goes to UPDATE."""
        if self._stack:
            raise RuntimeError("ledger.step() cannot run inside a phase")
        self._last = self.now()
        self._in_step, self._step = True, step
        try:
            yield
        finally:
            self._charge(self.now())
            self._in_step = False
            self._flush({"type": "step", "step": step})

    def count(self, name: str, n: float = 1) -> None:
        """Increment a work counter (unet_fwd, vae_decode, reward_fwd, ...) by ``n`` samples, in the current phase."""
        self.counts[name] = self.counts.get(name, 0) + n
        key = self._stack[-1].value if self._stack else Phase.UPDATE.value if self._in_step else NO_PHASE
        bucket = self._phase_counts.setdefault(key, {})
        bucket[name] = bucket.get(name, 0) + n

    # ---------------------------------------------------------------- rows
    def _flush(self, row: dict[str, Any]) -> None:
        phases = [self._pending.get(p, 0.0) for p in Phase]
        self.local_s += sum(phases)
        t0 = self.clock()  # from here on the clock is paused: the cross-rank max and the row write
        if self.reduce_max is not None:
            phases = self.reduce_max(phases)
        seconds = {p.value: s for p, s in zip(Phase, phases) if s > 0}
        for p, s in zip(Phase, phases):
            self.totals[p] += s
        self._pending = {}
        row = {**row, "seconds": seconds, "wall_s": sum(seconds.values())}
        if self.counts:
            row["counts"], self.counts = dict(self.counts), {}
            row["counts_by_phase"], self._phase_counts = self._phase_counts, {}
            _add_counts(self.count_totals, row["counts_by_phase"])
        self._append(row)
        self.paused_s += self.clock() - t0

    def _append(self, row: dict[str, Any]) -> None:
        if self.path is None or not self.write:
            return
        with open(self.path, "a+b") as fh:
            # a kill can leave a torn last line: start on a fresh line so this row stays parseable
            if fh.tell() > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")
            fh.write((json.dumps(row, sort_keys=True) + "\n").encode())
            fh.flush()  # survives a killed process; no fsync: it would cost more than the step it records

    def _reload(self) -> None:
        """Continue totals from an existing ledger (resume). A torn last line is ignored."""
        assert self.path is not None
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            self._apply(row)

    def _apply(self, row: dict[str, Any]) -> None:
        if row.get("type") == "rewind":
            for k, v in row["totals"].items():
                self.totals[Phase(k)] = float(v)
            self.lost_s += float(row.get("lost_s", 0.0))
            if row.get("count_totals") is not None:
                self.count_totals = {}
                _add_counts(self.count_totals, row["count_totals"])
            return
        for k, v in row.get("seconds", {}).items():
            self.totals[Phase(k)] += float(v)
        if "counts_by_phase" in row:
            _add_counts(self.count_totals, row["counts_by_phase"])
        elif row.get("counts"):
            _add_counts(self.count_totals, {UNKNOWN_PHASE: row["counts"]})

    def rewind(self, totals: dict[str, float], count_totals: CountsByPhase | None = None) -> None:
        """On resume: reset totals (and the per-phase counts, when the checkpoint saved them) to those saved with
        the checkpoint; the rest is recorded as lost."""
        lost = sum(self.totals.values()) - sum(totals.values())
        row: dict[str, Any] = {"type": "rewind", "totals": dict(totals), "lost_s": max(lost, 0.0)}
        if count_totals is not None:
            row["count_totals"] = {p: dict(c) for p, c in count_totals.items()}
        self._apply(row)
        self._append(row)

    # ---------------------------------------------------------------- summaries
    def totals_dict(self) -> dict[str, float]:
        return {p.value: s for p, s in self.totals.items()}

    def counts_by_phase(self) -> CountsByPhase:
        """A copy of the flushed counts per phase: {phase name: {counter: samples}}."""
        return {p: dict(c) for p, c in self.count_totals.items()}

    def counted_s(self) -> float:
        return sum(self.totals[p] for p in COUNTED)

    def gpu_h(self, phases: tuple[Phase, ...] = COUNTED) -> float:
        return sum(self.totals[p] for p in phases) * self.devices / 3600.0

    def summary(self) -> dict[str, Any]:
        return {
            "seconds_by_phase": self.totals_dict(),
            "gpu_h_counted": self.gpu_h(COUNTED),
            "gpu_h_rm": self.gpu_h(AMORTISED),
            "gpu_h_total_incl_rm": self.gpu_h(COUNTED + AMORTISED),
            "devices": self.devices,
            "lost_s": self.lost_s,
            "paused_s": self.paused_s,
            "counts_by_phase": self.counts_by_phase(),
        }


def _add_counts(into: CountsByPhase, add: dict[str, dict[str, Any]]) -> None:
    for phase, counts in add.items():
        bucket = into.setdefault(phase, {})
        for name, n in counts.items():
            bucket[name] = bucket.get(name, 0) + float(n)


def check_identity(phase_s: float, paused_s: float, wall_s: float, tol: float = IDENTITY_TOLERANCE,
                   abs_tol_s: float = IDENTITY_ABS_TOLERANCE_S) -> float:
    """Relative residual of Σ phases + paused vs wall; raises if it exceeds both ``tol`` of the wall time and
    ``abs_tol_s`` seconds (AlgoPerf #452). The absolute floor keeps a run of a fraction of a second from failing
    on a few milliseconds the scheduler spent between two phases; over minutes the relative bound rules."""
    gap = wall_s - phase_s - paused_s
    residual = gap / wall_s if wall_s > 0 else 0.0
    if abs(residual) > tol and abs(gap) > abs_tol_s:
        raise AssertionError(
            f"ledger identity violated: phases {phase_s:.3f}s + paused {paused_s:.3f}s vs wall {wall_s:.3f}s "
            f"(residual {residual:.2%} > {tol:.0%} and {abs(gap) * 1000:.0f} ms > {abs_tol_s * 1000:.0f} ms)"
        )
    return residual
