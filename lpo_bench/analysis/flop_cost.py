"""Training cost in FLOPs, from run records: each run's ledger counts (``ledger.jsonl``, replayed per phase)
priced with its ``flops.json`` (:mod:`lpo_bench.harness.flops`), measured on its own models and projected at the
full SD1.5 and SDXL architectures.

Counted FLOPs = PREP + SAMPLE + SCORE + UPDATE; reward-model FLOPs = RM_TRAIN, the run's own or, for a given
model, those of the reward run that trained it (as GPU-hours). Pair scoring (``score-pairs``) is not priced in
FLOPs (its metric models have no probes); a run whose reward model used it says so in a note. A run without a
FLOP record (older runs) has blank FLOP columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lpo_bench.analysis.runs import Run, given_reward_run
from lpo_bench.harness.flops import (
    HEADLINE_PHASES,
    PROJECTED_ARCHITECTURES,
    FlopRecord,
    PricedFlops,
    price,
    read_record,
)
from lpo_bench.ledger import Ledger

ARCH_LABELS = {"sd15": "SD1.5", "sdxl": "SDXL"}


@dataclass
class RunFlops:
    """One run's FLOPs: ``counted`` and ``rm`` (nan: unknown), ``by_phase`` (counted phases and RM_TRAIN),
    ``projected`` {arch: (counted, rm)}, ``unpriced`` {counter: samples} of the run's own pricing."""

    counted: float
    rm: float
    rm_source: str
    by_phase: dict[str, float]
    projected: dict[str, tuple[float, float]]
    unpriced: dict[str, float]

    @property
    def total(self) -> float:
        return self.counted + self.rm

    def projected_total(self, arch: str) -> float:
        c, r = self.projected.get(arch, (math.nan, math.nan))
        return c + r


def _priced(run: Run, record: FlopRecord) -> tuple[PricedFlops, dict[str, PricedFlops]]:
    """(measured, {arch: projected}) FLOPs of ``run``'s ledger counts."""
    lp = run.path / "ledger.jsonl"
    if lp.exists():
        counts = Ledger(lp, write=False).counts_by_phase()  # replays the rows, rewinds included
    else:
        counts = (run.info.get("ledger") or {}).get("counts_by_phase") or {}
    return (price(counts, record.measured, record.devices),
            {a: price(counts, t, record.devices) for a, t in record.projected.items()})


def _note_unpriced(run: Run, what: str, unpriced: dict[str, float], notes: list[str]) -> None:
    if unpriced:
        listing = ", ".join(f"{k} ({v:,.0f} samples)" for k, v in sorted(unpriced.items()))
        notes.append(f"{run.run_id}: counters without FLOPs per call, so the {what} FLOPs of their phases are "
                     f"unknown (n/a): {listing}")


def _rm_flops(run: Run, own: PricedFlops, own_proj: dict[str, PricedFlops],
              notes: list[str]) -> tuple[float, dict[str, float], str]:
    """(RM FLOPs, {arch: projected RM FLOPs}, source) as :func:`lpo_bench.analysis.cost._reward_model_cost`."""
    unknown = (math.nan, {a: math.nan for a in own_proj}, "unknown")
    if own.rm > 0 or math.isnan(own.rm):
        return own.rm, {a: p.rm for a, p in own_proj.items()}, "this run (RM_TRAIN)"
    stage = run.info.get("reward_stage")
    if not stage:
        return 0.0, {a: 0.0 for a in own_proj}, "none"
    ext = given_reward_run(run)
    if ext is None:  # the GPU-hour costing notes it
        return unknown
    record = read_record(ext.path)
    if record is None:
        notes.append(f"{run.run_id}: its reward run {ext.run_id} has no FLOP record, so its reward model's FLOPs are "
                     f"unknown (FLOP totals incl. RM are n/a)")
        return unknown
    rm, proj = _priced(ext, record)
    _note_unpriced(ext, "measured", rm.unpriced_counts, notes)
    return rm.rm, {a: proj[a].rm if a in proj else math.nan for a in own_proj}, f"reward run {ext.run_id}"


def run_flops(run: Run, notes: list[str]) -> RunFlops | None:
    """FLOPs of a train run from its records; None without a FLOP record."""
    record = read_record(run.path)
    if record is None:
        return None
    own, proj = _priced(run, record)
    rm, rm_proj, source = _rm_flops(run, own, proj, notes)
    _note_unpriced(run, "measured", own.unpriced_counts, notes)
    for arch, p in proj.items():
        _note_unpriced(run, f"projected {arch}", p.unpriced_counts, notes)
    if record.projected_skipped:
        notes.append(f"{run.run_id}: projected FLOPs {record.projected_skipped}; its projected columns are blank")
    if (run.info.get("inputs") or {}).get("pair_scores"):
        notes.append(f"{run.run_id}: the pair scoring behind its reward model's data filter is in its GPU-hours but "
                     f"not in its FLOPs (the metric models have no FLOP probes)")
    phases = {p: v for p, v in own.by_phase.items() if p in HEADLINE_PHASES}
    return RunFlops(own.counted, rm, source, phases,
                    {a: (proj[a].counted if a in proj else math.nan, rm_proj.get(a, math.nan))
                     for a in PROJECTED_ARCHITECTURES}, own.unpriced_counts)



def per_run_columns(f: RunFlops | None) -> dict[str, Any]:
    """The FLOP columns of one run's row in ``cost_by_run.csv`` (blank without a FLOP record)."""
    return {**run_values(f), "flops_rm_source": f.rm_source if f else "",
            "flops_unpriced": ", ".join(sorted(f.unpriced)) if f else ""}


def run_values(f: RunFlops | None) -> dict[str, float]:
    """Every per-run FLOP quantity whose median over seeds ``cost.py`` tabulates (nan without a record)."""
    nan = math.nan
    out = {"flops_counted": f.counted if f else nan, "flops_rm": f.rm if f else nan,
           "flops_total_incl_rm": f.total if f else nan}
    for arch in PROJECTED_ARCHITECTURES:
        c, r = f.projected.get(arch, (nan, nan)) if f else (nan, nan)
        out |= {f"projected_{arch}_flops_counted": c, f"projected_{arch}_flops_total_incl_rm": c + r}
    return out


def fmt_flops(v: float) -> str:
    """FLOPs for people: "1.23e+15" style with 3 significant digits; n/a when unknown."""
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.3g}"
