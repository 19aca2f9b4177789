"""A run's cost in FLOPs: the ledger's work counters priced with per-call FLOPs (pure: no torch).

The ledger counts work per phase (``Ledger.count``: one count = one sample through a component, e.g. one
``unet_fwd`` per sample per UNet call, two under CFG). ``lpo_bench.harness.flop_probes`` measures, once per run
at SETUP (off the clock), the FLOPs of one count of each counter on the run's own models, and the same at the
full SD1.5 and SDXL architectures ("projected"), and writes them to ``flops.json`` beside ``ledger.jsonl``::

    {"format": 1, "torch": "2.x", "counter": "torch.utils.flop_counter.FlopCounterMode ...", "devices": 1,
     "policy": {"params": N, "trainable_params": n, "mode": "adapter" | "full" | null},
     "measured": {"label": "...", "resolution": 32, "flops_per_call": {counter: FLOPs}, "how": {counter: text},
                  "unpriced": {counter: why}},
     "projected": {"sd15": {...same keys...}, "sdxl": {...}},
     "projected_skipped": ""}   # why "projected" is empty, when it is (LPO_BENCH_PROJECTED_FLOPS=0)

Pricing (:func:`price`): FLOPs(phase) = devices x sum over counters of count(phase, counter) x FLOPs per call
(under DDP each process counts its own share, and rank 0's counts stand for every rank's). Counted = PREP +
SAMPLE + SCORE + UPDATE; RM = RM_TRAIN (amortised, shown separately, as GPU-hours). A counter with counts but no
FLOPs per call is *unpriced*: it is listed (``unpriced_counts``) and makes the FLOPs of its phase, and of the
totals that include it, unknown (nan) rather than an undercount; so do counts that no phase claimed (rows of
ledgers older than per-phase counts).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpo_bench import records
from lpo_bench.ledger import AMORTISED, COUNTED, UNKNOWN_PHASE

FLOPS_FILE = "flops.json"
FLOPS_FORMAT = 1
PROJECTED_ARCHITECTURES = ("sd15", "sdxl")
PROJECTED_ENV = "LPO_BENCH_PROJECTED_FLOPS"  # "0": skip the projection (about 10 s per process on a CPU)
COUNTED_PHASES = tuple(p.value for p in COUNTED)
RM_PHASES = tuple(p.value for p in AMORTISED)
HEADLINE_PHASES = COUNTED_PHASES + RM_PHASES

CountsByPhase = Mapping[str, Mapping[str, float]]


@dataclass(frozen=True)
class FlopTable:
    """FLOPs of one count of each counter on one set of models.

    ``flops_per_call``: {counter: FLOPs of one sample through it}; ``how``: {counter: what was run};
    ``unpriced``: {counter: why it has no FLOPs per call} (its probe failed or was not applicable);
    ``label``: the models (e.g. "the run's own models" or "sd15 architecture (projected)"); ``resolution``: pixels.
    """

    label: str
    flops_per_call: dict[str, float]
    how: dict[str, str] = field(default_factory=dict)
    unpriced: dict[str, str] = field(default_factory=dict)
    resolution: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "resolution": self.resolution, "flops_per_call": dict(self.flops_per_call),
                "how": dict(self.how), "unpriced": dict(self.unpriced)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FlopTable:
        return cls(label=str(d.get("label", "")), flops_per_call={k: float(v) for k, v in d["flops_per_call"].items()},
                   how=dict(d.get("how", {})), unpriced=dict(d.get("unpriced", {})), resolution=d.get("resolution"))

    def merged(self, other: FlopTable) -> FlopTable:
        """This table with ``other``'s counters added (``other`` wins on a clash)."""
        return FlopTable(self.label, {**self.flops_per_call, **other.flops_per_call}, {**self.how, **other.how},
                         {k: v for k, v in {**self.unpriced, **other.unpriced}.items()
                          if k not in {**self.flops_per_call, **other.flops_per_call}}, self.resolution)


@dataclass(frozen=True)
class FlopRecord:
    """Everything ``flops.json`` holds (see the module docstring)."""

    torch: str
    counter: str
    devices: int
    measured: FlopTable
    projected: dict[str, FlopTable]
    policy: dict[str, Any] = field(default_factory=dict)
    projected_skipped: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"format": FLOPS_FORMAT, "torch": self.torch, "counter": self.counter, "devices": self.devices,
                "policy": dict(self.policy), "measured": self.measured.as_dict(),
                "projected": {a: t.as_dict() for a, t in self.projected.items()},
                "projected_skipped": self.projected_skipped}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FlopRecord:
        return cls(torch=str(d.get("torch", "")), counter=str(d.get("counter", "")), devices=int(d.get("devices", 1)),
                   measured=FlopTable.from_dict(d["measured"]),
                   projected={a: FlopTable.from_dict(t) for a, t in (d.get("projected") or {}).items()},
                   policy=dict(d.get("policy") or {}), projected_skipped=str(d.get("projected_skipped", "")))


@dataclass(frozen=True)
class PricedFlops:
    """A ledger's counts priced with one :class:`FlopTable`. FLOPs per phase (``by_phase``, every phase with
    counts), ``counted`` (PREP + SAMPLE + SCORE + UPDATE) and ``rm`` (RM_TRAIN); ``unpriced_counts``: {counter:
    samples} counted in those phases with no FLOPs per call (their phase's FLOPs are nan)."""

    by_phase: dict[str, float]
    counted: float
    rm: float
    unpriced_counts: dict[str, float]

    @property
    def total(self) -> float:
        return self.counted + self.rm


def price(counts_by_phase: CountsByPhase, table: FlopTable, devices: int = 1) -> PricedFlops:
    """FLOPs per phase = ``devices`` x sum of count x FLOPs per call (see the module docstring)."""
    by_phase: dict[str, float] = {}
    unpriced: dict[str, float] = {}
    for phase, counts in counts_by_phase.items():
        total = 0.0
        for name, n in counts.items():
            per_call = table.flops_per_call.get(name)
            if per_call is None:
                total = math.nan
                if phase in HEADLINE_PHASES or phase == UNKNOWN_PHASE:
                    unpriced[name] = unpriced.get(name, 0.0) + float(n)
                continue
            total += float(n) * per_call
        by_phase[phase] = total * devices
    unknown = math.nan if counts_by_phase.get(UNKNOWN_PHASE) else 0.0  # nan propagates into both sums
    counted = unknown + sum(by_phase.get(p, 0.0) for p in COUNTED_PHASES)
    rm = unknown + sum(by_phase.get(p, 0.0) for p in RM_PHASES)
    return PricedFlops(by_phase, counted, rm, unpriced)


def summary(counts_by_phase: CountsByPhase, record: FlopRecord) -> dict[str, Any]:
    """FLOPs of a run for ``run.json`` (``ledger.flops``): measured, then each projected architecture."""
    def one(table: FlopTable) -> dict[str, Any]:
        p = price(counts_by_phase, table, record.devices)
        return {"flops_by_phase": p.by_phase, "flops_counted": p.counted, "flops_rm": p.rm,
                "flops_total_incl_rm": p.total, "unpriced_counts": p.unpriced_counts}

    return {**one(record.measured), "projected": {a: one(t) for a, t in record.projected.items()},
            "record": FLOPS_FILE}


def cost_rows(flops_summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``train_cost`` measurement rows (metric, value) of :func:`summary`: ``flops_counted``, ``flops_rm``,
    ``flops_total_incl_rm`` and ``projected_<arch>_flops_*``."""
    keys = ("flops_counted", "flops_rm", "flops_total_incl_rm")
    rows = [{"kind": "train_cost", "metric": k, "value": float(flops_summary[k])} for k in keys]
    for arch, s in flops_summary.get("projected", {}).items():
        rows += [{"kind": "train_cost", "metric": f"projected_{arch}_{k}", "value": float(s[k])} for k in keys]
    return rows


def write_record(run_dir: Path, record: FlopRecord) -> None:
    records.atomic_write_json(Path(run_dir) / FLOPS_FILE, record.as_dict())


def read_record(run_dir: Path) -> FlopRecord | None:
    """The run's ``flops.json``, or None for a run without one (older runs, run kinds that count no work)."""
    path = Path(run_dir) / FLOPS_FILE
    if not path.exists():
        return None
    return FlopRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
