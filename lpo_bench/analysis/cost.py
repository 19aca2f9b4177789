"""Training cost in GPU-hours per ledger phase and in FLOPs (:mod:`lpo_bench.analysis.flop_cost`: counted, and
projected at the full SD1.5 and SDXL architectures), with reward-model training kept separate, and the speed-up
of the reference method over every other method on the same backbone, in FLOPs and GPU-hours."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpo_bench import records
from lpo_bench.analysis import stats
from lpo_bench.analysis.flop_cost import (
    ARCH_LABELS,
    RunFlops,
    fmt_flops,
    per_run_columns,
    run_flops,
    run_values,
)
from lpo_bench.analysis.render import (
    Section,
    Table,
    fmt,
    fmt_range,
    fmt_speedup,
    plot_cost,
    published_table,
    titled,
)
from lpo_bench.analysis.runs import Run, given_reward_run, to_float
from lpo_bench.harness.flops import PROJECTED_ARCHITECTURES
from lpo_bench.ledger import AMORTISED, COUNTED, Ledger

COUNTED_PHASES = tuple(p.value for p in COUNTED)
RM_PHASE = AMORTISED[0].value


@dataclass
class RunCost:
    run: Run
    phases_gpu_h: dict[str, float]
    counted: float
    rm: float
    rm_source: str
    updates: float
    pair_scoring: float = 0.0  # GPU-h of the pair-score run behind the reward model's data filter; inside ``rm``
    flops: RunFlops | None = None  # None: the run has no FLOP record (flops.json)

    @property
    def total(self) -> float:
        return self.counted + self.rm


def _reward_run_cost(r: Run) -> float:
    rows = r.rows("train_cost")
    rows = rows[rows["metric"].astype(object) == "gpu_h_rm"]
    return to_float(rows["value"].iloc[-1]) if len(rows) else to_float((r.info.get("ledger") or {}).get("gpu_h_rm"))


def _pair_scoring_cost(run: Run, notes: list[str]) -> float:
    """GPU-hours of the ``score-pairs`` run whose table fed this run's reward-model data filter (0 without one)."""
    where = (run.info.get("inputs") or {}).get("pair_scores")
    if not where:
        return 0.0
    path = Path(where)
    for cand in (path, path.parent):
        if (cand / "run.json").exists() and records.is_done(cand):
            return to_float(records.read_run(cand).get("gpu_h_pair_scores"))
    notes.append(f"{run.run_id}: its pair-score table {where} has no finished score-pairs run record, so the cost "
                 f"of scoring the pairs is unknown (totals incl. RM are n/a)")
    return math.nan


def _reward_model_cost(run: Run, own_rm: float, notes: list[str]) -> tuple[float, str]:
    """(GPU-hours, source) of the reward model a train run used: its own RM_TRAIN time, else the given
    model's reward run, else unknown (nan); 0 for a method without a reward stage."""
    if own_rm > 0:
        return own_rm, "this run (RM_TRAIN)"
    stage = run.info.get("reward_stage")
    if not stage:
        return own_rm, "none"
    ext = given_reward_run(run)
    if ext is not None:
        return _reward_run_cost(ext), f"reward run {ext.run_id}"
    if stage.get("source") == "given":
        where = (run.info.get("inputs") or {}).get("reward_model")
        notes.append(f"{run.run_id}: used a reward model from {where} with no reward-run record there, so its "
                     f"training cost is unknown (totals incl. RM are n/a)")
        return math.nan, "unknown (given RM without a run record)"
    notes.append(f"{run.run_id}: its reward stage ({stage.get('name')}) recorded no RM_TRAIN time, so its "
                 f"training cost is unknown (totals incl. RM are n/a)")
    return math.nan, "unknown (no RM_TRAIN time recorded)"


def run_cost(run: Run, notes: list[str]) -> RunCost:
    """Per-phase GPU-hours (ledger.jsonl replayed by :class:`Ledger`) and headline totals (train_cost rows)."""
    devices = int((run.info.get("ledger") or {}).get("devices") or 1)
    cost = run.rows("train_cost")
    by_metric = {str(m): to_float(v) for m, v in zip(cost["metric"], cost["value"], strict=True)}
    lp = run.path / "ledger.jsonl"
    if lp.exists():
        secs = Ledger(lp, devices=devices, write=False).totals_dict()  # replays rows, rewinds included
    else:
        secs = {k[len("seconds_"):]: v for k, v in by_metric.items() if k.startswith("seconds_")}
    phases = {p: secs.get(p, 0.0) * devices / 3600.0 for p in (*COUNTED_PHASES, RM_PHASE)}
    phase_sum = sum(phases[p] for p in COUNTED_PHASES)
    counted = by_metric.get("gpu_h_counted", phase_sum)
    if abs(phase_sum - counted) > 1e-9 + 1e-3 * abs(counted):
        notes.append(f"{run.run_id}: ledger.jsonl phases sum to {phase_sum:.6g} GPU-h but its train_cost record "
                     f"says {counted:.6g}; the record is used for totals")
    rm, source = _reward_model_cost(run, by_metric.get("gpu_h_rm", phases[RM_PHASE]), notes)
    rm_run = run if source.startswith("this run") else given_reward_run(run)
    scoring = _pair_scoring_cost(rm_run, notes) if rm_run is not None else 0.0
    if scoring:  # the paper leaves the MPCF scoring out of its headline; here it is part of the RM's cost
        rm, source = rm + scoring, f"{source} + pair scoring"
    return RunCost(run, phases, counted, rm, source, by_metric.get("updates", math.nan), scoring,
                   run_flops(run, notes))


def _by_method(costs: list[RunCost]) -> dict[tuple[str, str], list[RunCost]]:
    """Train-run costs grouped by (backbone, method), sorted."""
    groups: dict[tuple[str, str], list[RunCost]] = {}
    for c in costs:
        groups.setdefault((c.run.backbone, c.run.method), []).append(c)
    return dict(sorted(groups.items()))


def _median_range(values: list[float]) -> tuple[float, float, float]:
    """stats.median_range over seeds, but unknown (nan) when any seed's value is unknown."""
    return (math.nan,) * 3 if any(math.isnan(v) for v in values) else stats.median_range(values)


FLOP_KEYS = tuple(run_values(None))  # flops_counted, flops_rm, flops_total_incl_rm, projected_<arch>_flops_*
SPEEDUP_KEYS = ("speedup_excl_rm", "speedup_incl_rm", "speedup_flops_excl_rm", "speedup_flops_incl_rm",
                *(f"projected_{a}_speedup_{w}_rm" for a in PROJECTED_ARCHITECTURES for w in ("excl", "incl")))


def _speedups(s: dict[str, Any], ref: dict[str, Any] | None) -> dict[str, float]:
    """Speed-ups of the reference over one method (method's cost / reference's, medians over seeds): GPU-hours
    and FLOPs, excl. and incl. RM, and the projected FLOPs at each architecture."""
    def sp(key: str) -> float:
        return stats.speedup(s[key][0], ref[key][0]) if ref else math.nan

    out = {"speedup_excl_rm": sp("counted"), "speedup_incl_rm": sp("total"),
           "speedup_flops_excl_rm": sp("flops_counted"), "speedup_flops_incl_rm": sp("flops_total_incl_rm")}
    for a in PROJECTED_ARCHITECTURES:
        out[f"projected_{a}_speedup_excl_rm"] = sp(f"projected_{a}_flops_counted")
        out[f"projected_{a}_speedup_incl_rm"] = sp(f"projected_{a}_flops_total_incl_rm")
    return out


def _flop_show(s: dict[str, Any]) -> dict[str, str]:
    cols = {"counted FLOPs (excl. RM)": fmt_flops(s["flops_counted"][0]), "RM training FLOPs": fmt_flops(s["flops_rm"][0]),
            "total FLOPs incl. RM": fmt_flops(s["flops_total_incl_rm"][0])}
    for a in PROJECTED_ARCHITECTURES:
        cols[f"projected {ARCH_LABELS[a]} FLOPs excl. / incl. RM"] = (
            f"{fmt_flops(s[f'projected_{a}_flops_counted'][0])} / {fmt_flops(s[f'projected_{a}_flops_total_incl_rm'][0])}")
    return cols


def _speedup_show(sp: dict[str, float], reference: str) -> dict[str, str]:
    def pair(ex: str, inc: str) -> str:
        return f"{fmt_speedup(sp[ex], reference)} / {fmt_speedup(sp[inc], reference)}"

    cols = {"FLOPs (excl. / incl. RM)": pair("speedup_flops_excl_rm", "speedup_flops_incl_rm"),
            "GPU-hours (excl. / incl. RM)": pair("speedup_excl_rm", "speedup_incl_rm")}
    for a in PROJECTED_ARCHITECTURES:
        cols[f"projected {ARCH_LABELS[a]} FLOPs (excl. / incl. RM)"] = pair(f"projected_{a}_speedup_excl_rm",
                                                                         f"projected_{a}_speedup_incl_rm")
    return cols


def cost_section(costs: list[RunCost], reference: str, published: Any, mixed: bool) -> tuple[Section, dict[str, Any]]:
    """The cost tables (per method, per run, in FLOPs) and the speed-up table, and the headline numbers per
    backbone and method."""
    import pandas as pd

    sec = Section("Training cost (FLOPs and GPU-hours)")
    per_run = pd.DataFrame([{
        "run_id": c.run.run_id, "backbone": c.run.backbone, "method": c.run.method, "seed": c.run.seed,
        "updates": c.updates, **{f"gpu_h_{p}": c.phases_gpu_h[p] for p in COUNTED_PHASES},
        "gpu_h_counted": c.counted, "gpu_h_rm": c.rm, "gpu_h_rm_pair_scoring": c.pair_scoring, "rm_source": c.rm_source, "gpu_h_total_incl_rm": c.total,
        **per_run_columns(c.flops), "device": f"{c.run.device[0]} x{c.run.device[1]}",
    } for c in costs])
    summary: dict[tuple[str, str], dict[str, Any]] = {}
    for key, cs in _by_method(costs).items():
        flop_values = [run_values(c.flops) for c in cs]
        summary[key] = {
            "n_seeds": len(cs),
            "updates": _median_range([c.updates for c in cs]),
            **{p: _median_range([c.phases_gpu_h[p] for c in cs]) for p in COUNTED_PHASES},
            RM_PHASE: _median_range([c.rm for c in cs]),
            "counted": _median_range([c.counted for c in cs]),
            "rm": _median_range([c.rm for c in cs]),
            "scoring": _median_range([c.pair_scoring for c in cs]),
            "total": _median_range([c.total for c in cs]),
            **{k: _median_range([v[k] for v in flop_values]) for k in FLOP_KEYS},
            "on_cpu": all(c.run.device[0].startswith("cpu") for c in cs),
        }
    rows, show, flop_show, sp_show, headline = [], [], [], [], {}
    any_scoring = any(c.pair_scoring != 0 for c in costs)
    for (bb, method), s in summary.items():
        sp = _speedups(s, summary.get((bb, reference)))
        sp_ex, sp_in = sp["speedup_excl_rm"], sp["speedup_incl_rm"]
        rows.append({
            "backbone": bb, "method": method, "n_seeds": s["n_seeds"], "updates_median": s["updates"][0],
            **{f"gpu_h_{p}_median": s[p][0] for p in COUNTED_PHASES},
            "gpu_h_counted_median": s["counted"][0], "gpu_h_counted_min": s["counted"][1],
            "gpu_h_counted_max": s["counted"][2], "gpu_h_rm_median": s["rm"][0],
            "gpu_h_rm_pair_scoring_median": s["scoring"][0],
            "gpu_h_total_incl_rm_median": s["total"][0], "gpu_h_total_incl_rm_min": s["total"][1],
            "gpu_h_total_incl_rm_max": s["total"][2],
            "flops_counted_min": s["flops_counted"][1], "flops_counted_max": s["flops_counted"][2],
            **{f"{k}_median": s[k][0] for k in FLOP_KEYS},
            "reference_method": reference, **sp,
        })
        who = {"backbone": bb, "method": method, "seeds": str(s["n_seeds"])}
        show.append({
            **who, "updates": fmt(s["updates"][0]),
            **{p: fmt(s[p][0]) for p in COUNTED_PHASES},
            "counted GPU-h (excl. RM)": fmt_range(*s["counted"]), "RM training GPU-h": fmt_range(*s["rm"]),
            **({"of which pair scoring": fmt(s["scoring"][0])} if any_scoring else {}),
            "total incl. RM": fmt_range(*s["total"]),
            f"speed-up of {reference} (excl. RM)": fmt_speedup(sp_ex, reference),
            f"speed-up of {reference} (incl. RM)": fmt_speedup(sp_in, reference),
        })
        flop_show.append({**who, **_flop_show(s)})
        sp_show.append({**who, **_speedup_show(sp, reference)})
        headline.setdefault(bb, {})[method] = {
            "n_seeds": s["n_seeds"],
            "gpu_h_counted": dict(zip(("median", "min", "max"), s["counted"], strict=True)),
            "gpu_h_rm": dict(zip(("median", "min", "max"), s["rm"], strict=True)),
            "gpu_h_total_incl_rm": dict(zip(("median", "min", "max"), s["total"], strict=True)),
            "gpu_h_by_phase_median": {p: s[p][0] for p in (*COUNTED_PHASES, RM_PHASE)},
            "flops_median": {k: s[k][0] for k in FLOP_KEYS},
            "on_cpu": s["on_cpu"], **sp,
        }
    for bb in sorted({bb for bb, _ in summary} - {bb for bb, m in summary if m == reference}):
        sec.blocks.append(f"No {reference} train run on backbone {bb}, so its methods have no speed-ups.")
    missing = [c.run.run_id for c in costs if c.flops is None]
    flop_note = ("FLOPs: the ledger's work counts priced with per-call FLOPs measured at each run's SETUP on its own "
                 "models (torch's FLOP counter, flops.json); projected: the same counts priced at the full SD1.5 and "
                 "SDXL architectures (a projection, not a measurement). Medians over seeds; reward-model training (RM_TRAIN) kept separate, as for GPU-hours."
                 + (f" Blank (n/a): runs without a FLOP record ({', '.join(missing)})." if missing else ""))
    sec.blocks += [
        Table("speedup", titled(f"Speed-up of {reference}: FLOPs, GPU-hours and projected FLOPs", mixed),
              pd.DataFrame(rows, columns=["backbone", "method", "reference_method", *SPEEDUP_KEYS]), pd.DataFrame(sp_show),
              note=f"Speed-up of {reference} = method's cost / {reference}'s (medians over seeds; above 1: {reference} "
                   f"was cheaper). FLOPs are machine-independent (the headline on a CPU or a shared machine); "
                   f"GPU-hours are wall time on the runs' hardware; projected columns price the same work at the "
                   f"released architectures. " + flop_note),
        Table("cost", titled("Cost per method: median over seeds (min–max), GPU-hours", mixed), pd.DataFrame(rows),
              pd.DataFrame(show), note=f"Phase columns are medians of each phase over seeds, so they need not add "
              f"up to the median total. RM training includes the pair-scoring run behind the reward model's data "
              f"filter where one was used (published headlines leave that cost out). Speed-up of {reference} = method's cost / {reference}'s cost (above 1: "
              f"{reference} was cheaper). cost.csv also holds the FLOP columns."),
        Table("cost_flops", titled("Cost per method in FLOPs: median over seeds", mixed),
              pd.DataFrame(rows, columns=["backbone", "method", "n_seeds", *(f"{k}_median" for k in FLOP_KEYS)]),
              pd.DataFrame(flop_show), note=flop_note),
        Table("cost_by_run", titled("Cost per run, GPU-hours and FLOPs", mixed), per_run),
    ]
    for bb_id in sorted({c.run.backbone_id for c in costs}):
        for pt in published.matching("cost", bb_id):
            sec.blocks.append(published_table(pt, published, measured=None))
    return sec, headline


def cost_figure(path: Path, costs: list[RunCost], mixed: bool) -> None:
    """Stacked bars by phase: each segment is that phase's median over the seeds of a (backbone, method)."""
    groups = _by_method(costs)
    keys = list(groups)
    stacks = {RM_PHASE: [_median_range([c.rm for c in groups[k]])[0] for k in keys]}
    for p in COUNTED_PHASES:
        stacks[p] = [_median_range([c.phases_gpu_h[p] for c in groups[k]])[0] for k in keys]
    labels = [f"{m}\n({bb}, {len(groups[(bb, m)])} seed{'s' * (len(groups[(bb, m)]) > 1)})" for bb, m in keys]
    plot_cost(path, labels, stacks, mixed)
