"""`lpo-bench compare`: cost, time-to-target, quality and step-accuracy reports from run records only.

Reads finished runs' ``run.json``, ``measurements.parquet``, ``per_sample.parquet``, ``ledger.jsonl``
and saved images; never logs. Every headline number comes from :mod:`lpo_bench.stats`. Writes into
``out``: ``report.md``, a self-contained ``report.html`` (figures as data URIs), ``report.json``
(every headline number), one CSV per table and the PNG figures.

Definitions (printed in every report, "How to read this"):

* Cost: GPU-hours = ledger seconds x devices allocated / 3600, per phase. Counted = PREP + SAMPLE +
  SCORE + UPDATE; reward-model training (RM_TRAIN) is shown separately, and totals are given both
  excluding and including it. Train runs are grouped by (backbone, method); seeds give the median
  and min-max (``stats.median_range``).
* LPO speed-up over method M = cost(M) / cost(LPO) (``stats.speedup``) on the medians: above 1
  means LPO was cheaper.
* Time-to-target: the first counted GPU-hour at which a training-time evaluation reaches the target
  (``stats.time_to_target``); median over seeds (``stats.median_time_to_target``), a miss counts as
  never. Default target (no ``--target``), per backbone and evaluation suite, on the suite's first
  metric (category "all"): each seed's best value during training, the median over each method's
  seeds, and the lowest of those medians, i.e. the typical best of the weakest method.
* Quality: eval-run means with their 95% bootstrap CIs over prompts, and each trained model minus
  the base model on the same prompts and seeds (``stats.paired_diff_ci`` on per-prompt means of
  images matched by prompt_id, image_idx and metric).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lpo_bench import __version__, records, stats
from lpo_bench.errors import HarnessError
from lpo_bench.ledger import AMORTISED, COUNTED, Ledger
from lpo_bench.report_render import (
    MIXED,
    Figure,
    Section,
    Table,
    fmt,
    fmt_ci,
    fmt_range,
    fmt_speedup,
    fmt_ttt,
    jsonable,
    plot_cost,
    plot_curves,
    plot_grid,
    plot_step_accuracy,
    render,
    slug,
    titled,
)

REFERENCE_METHOD = "lpo"
COUNTED_PHASES = tuple(p.value for p in COUNTED)
RM_PHASE = AMORTISED[0].value
TIMED_KINDS = ("train", "reward")  # runs whose GPU-hours are compared (hardware must match)
KNOWN_KINDS = ("train", "eval", "step_accuracy", "reward")
GRID_PROMPTS = 6
_TARGET_RE = re.compile(
    r"^\s*([^@\s]+)@([^\s:<>=]+)(?::([^\s<>=]+))?\s*(>=|<=)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)


# ---------------------------------------------------------------------------- runs
@dataclass
class Run:
    path: Path
    info: dict[str, Any]
    meas: Any  # pandas DataFrame of measurement rows (MEASUREMENT_COLUMNS)

    @property
    def kind(self) -> str:
        return str(self.info.get("kind", ""))

    @property
    def run_id(self) -> str:
        return str(self.info.get("run_id", self.path.name))

    @property
    def prov(self) -> dict[str, Any]:
        return self.info.get("provenance") or {}

    @property
    def device(self) -> tuple[str, int]:
        return str(self.prov.get("device_name", "unknown")), int(self.prov.get("device_count") or 1)

    @property
    def backbone(self) -> str:
        return str(self.info.get("backbone", ""))

    @property
    def backbone_id(self) -> str:
        bp = self.info.get("backbone_provenance") or {}
        if bp.get("backbone_id"):
            return str(bp["backbone_id"])
        ids = self.meas["backbone_id"].dropna().astype(str) if len(self.meas) else []
        return str(ids.iloc[0]) if len(ids) else self.backbone

    @property
    def seed(self) -> int | None:
        s = self.info.get("seed")
        return None if s is None else int(s)

    def rows(self, kind: str) -> Any:
        return self.meas[self.meas["kind"].astype(object) == kind]

    def model(self) -> tuple[str, str, int | None]:
        """(method, label, training seed) of the model an eval run evaluated ("base" for the backbone)."""
        spec = self.info.get("model_spec") or {}
        tr = spec.get("train_run") or {}
        if spec.get("kind") == "base":
            return "base", f"base ({self.backbone})", None
        if tr.get("method"):
            seed = tr.get("seed")
            return str(tr["method"]), f"{tr['method']} s{seed} ({tr.get('run_id', '')})", seed
        return str(spec.get("kind", "model")), self.run_id, None


def discover(paths: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Run directories under ``paths`` (a run dir, or a folder searched recursively); unfinished ones are
    skipped with a note."""
    found: list[Path] = []
    seen: set[Path] = set()
    notes: list[str] = []
    for p in map(Path, paths):
        if not p.exists():
            raise HarnessError(f"{p} does not exist; pass run directories or a folder holding them (e.g. runs/)")
        cands = [p] if (p / "run.json").exists() else []
        if not cands:
            for root, dirs, files in os.walk(p):
                if "run.json" in files:
                    cands.append(Path(root))
                    dirs[:] = []  # a run's own subfolders (images, checkpoints) hold no runs
                else:
                    dirs.sort()
        for c in cands:
            if not records.is_done(c):
                notes.append(f"skipped unfinished run {c} (no DONE marker)")
            elif c.resolve() not in seen:
                seen.add(c.resolve())
                found.append(c)
    if not found:
        raise HarnessError(f"no finished runs (with a DONE marker) under {', '.join(map(str, paths))}; "
                           f"pass finished run directories or the runs/ folder")
    return found, notes


def load_run(path: Path) -> Run:
    import pandas as pd

    info = records.read_run(path)
    mp = Path(path) / "measurements.parquet"
    meas = records.read_measurements(mp) if mp.exists() else pd.DataFrame(columns=list(records.MEASUREMENT_COLUMNS))
    return Run(Path(path), info, meas)


def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


# ---------------------------------------------------------------------------- hardware
def check_hardware(runs: list[Run], allow_mixed: bool) -> bool:
    """True when timed runs (train, reward) come from different devices; refuses unless allowed."""
    devices = sorted({r.device for r in runs if r.kind in TIMED_KINDS})
    if len(devices) > 1 and not allow_mixed:
        desc = "; ".join(f"{n} x{c}" for n, c in devices)
        raise HarnessError(f"the runs were timed on different hardware ({desc}), so their GPU-hours are not "
                           f"comparable; compare runs from one device type and count, or pass "
                           f"--allow-mixed-hardware to get a report labelled {MIXED}")
    return len(devices) > 1


# ---------------------------------------------------------------------------- cost
@dataclass
class RunCost:
    run: Run
    phases_gpu_h: dict[str, float]
    counted: float
    rm: float
    rm_source: str
    updates: float

    @property
    def total(self) -> float:
        return self.counted + self.rm


def _external_reward_run(run: Run) -> Run | None:
    """The standalone reward run whose model a train run used (``--lrm``/``--spm``), if its record exists."""
    extra = (run.info.get("options") or {}).get("extra") or {}
    for key in ("lrm", "spm"):
        if key in extra:
            p = Path(str(extra[key]))
            for cand in (p, p.parent):
                if (cand / "run.json").exists() and records.is_done(cand):
                    r = load_run(cand)
                    if r.kind == "reward":
                        return r
    return None


def _rm_cost_of_reward_run(r: Run) -> float:
    rows = r.rows("train_cost")
    rows = rows[rows["metric"].astype(object) == "gpu_h_rm"]
    return _num(rows["value"].iloc[-1]) if len(rows) else _num((r.info.get("ledger") or {}).get("gpu_h_rm"))


def run_cost(run: Run, notes: list[str]) -> RunCost:
    """Per-phase GPU-hours (ledger.jsonl replayed by :class:`Ledger`) and headline totals (train_cost rows)."""
    devices = int((run.info.get("ledger") or {}).get("devices") or 1)
    cost = run.rows("train_cost")
    by_metric = {str(m): _num(v) for m, v in zip(cost["metric"], cost["value"], strict=True)}
    lp = run.path / "ledger.jsonl"
    if lp.exists():
        secs = Ledger(lp, devices=devices, write=False).totals_dict()  # replays rows, rewinds included
    else:
        secs = {k[len("seconds_"):]: v for k, v in by_metric.items() if k.startswith("seconds_")}
    phases = {p: secs.get(p, 0.0) * devices / 3600.0 for p in (*COUNTED_PHASES, RM_PHASE)}
    counted = by_metric.get("gpu_h_counted", sum(phases[p] for p in COUNTED_PHASES))
    rm = by_metric.get("gpu_h_rm", phases[RM_PHASE])
    if abs(sum(phases[p] for p in COUNTED_PHASES) - counted) > 1e-9 + 1e-3 * abs(counted):
        notes.append(f"{run.run_id}: ledger.jsonl phases sum to {sum(phases[p] for p in COUNTED_PHASES):.6g} "
                     f"GPU-h but its train_cost record says {counted:.6g}; the record is used for totals")
    source = "this run (RM_TRAIN)" if rm > 0 else "none"
    if rm == 0:
        ext = _external_reward_run(run)
        extra = (run.info.get("options") or {}).get("extra") or {}
        if ext is not None:
            rm, source = _rm_cost_of_reward_run(ext), f"reward run {ext.run_id}"
        elif any(k in extra for k in ("lrm", "spm")):
            rm, source = math.nan, "unknown (pretrained RM without a run record)"
            notes.append(f"{run.run_id}: used a reward model from {extra.get('lrm') or extra.get('spm')} with no "
                         f"reward-run record there, so its training cost is unknown (totals incl. RM are n/a)")
    return RunCost(run, phases, counted, rm, source, by_metric.get("updates", math.nan))


def cost_section(costs: list[RunCost], published: Any, mixed: bool) -> tuple[Section, dict[str, Any]]:
    import pandas as pd

    sec = Section("Training cost (GPU-hours)")
    per_run = pd.DataFrame([{
        "run_id": c.run.run_id, "backbone": c.run.backbone, "method": c.run.info.get("method"), "seed": c.run.seed,
        "updates": c.updates, **{f"gpu_h_{p}": c.phases_gpu_h[p] for p in COUNTED_PHASES},
        "gpu_h_counted": c.counted, "gpu_h_rm": c.rm, "rm_source": c.rm_source, "gpu_h_total_incl_rm": c.total,
        "device": f"{c.run.device[0]} x{c.run.device[1]}",
    } for c in costs])
    summary: dict[tuple[str, str], dict[str, Any]] = {}
    for key, cs in _by_method(costs).items():
        summary[key] = {
            "n_seeds": len(cs),
            "updates": _median_range([c.updates for c in cs]),
            **{p: _median_range([c.phases_gpu_h[p] for c in cs]) for p in COUNTED_PHASES},
            RM_PHASE: _median_range([c.rm for c in cs]),
            "counted": _median_range([c.counted for c in cs]),
            "rm": _median_range([c.rm for c in cs]),
            "total": _median_range([c.total for c in cs]),
        }
    rows, show, headline = [], [], {}
    for (bb, method), s in summary.items():
        ref = summary.get((bb, REFERENCE_METHOD))
        sp_ex = stats.speedup(s["counted"][0], ref["counted"][0]) if ref else math.nan
        sp_in = stats.speedup(s["total"][0], ref["total"][0]) if ref else math.nan
        rows.append({
            "backbone": bb, "method": method, "n_seeds": s["n_seeds"], "updates_median": s["updates"][0],
            **{f"gpu_h_{p}_median": s[p][0] for p in COUNTED_PHASES},
            "gpu_h_counted_median": s["counted"][0], "gpu_h_counted_min": s["counted"][1],
            "gpu_h_counted_max": s["counted"][2], "gpu_h_rm_median": s["rm"][0],
            "gpu_h_total_incl_rm_median": s["total"][0], "gpu_h_total_incl_rm_min": s["total"][1],
            "gpu_h_total_incl_rm_max": s["total"][2],
            "lpo_speedup_excl_rm": sp_ex, "lpo_speedup_incl_rm": sp_in,
        })
        show.append({
            "backbone": bb, "method": method, "seeds": str(s["n_seeds"]), "updates": fmt(s["updates"][0]),
            **{p: fmt(s[p][0]) for p in COUNTED_PHASES},
            "counted GPU-h (excl. RM)": fmt_range(*s["counted"]), "RM training GPU-h": fmt_range(*s["rm"]),
            "total incl. RM": fmt_range(*s["total"]),
            "LPO speed-up (excl. RM)": fmt_speedup(sp_ex), "LPO speed-up (incl. RM)": fmt_speedup(sp_in),
        })
        headline.setdefault(bb, {})[method] = {
            "n_seeds": s["n_seeds"],
            "gpu_h_counted": dict(zip(("median", "min", "max"), s["counted"], strict=True)),
            "gpu_h_rm": dict(zip(("median", "min", "max"), s["rm"], strict=True)),
            "gpu_h_total_incl_rm": dict(zip(("median", "min", "max"), s["total"], strict=True)),
            "gpu_h_by_phase_median": {p: s[p][0] for p in (*COUNTED_PHASES, RM_PHASE)},
            "lpo_speedup_excl_rm": sp_ex, "lpo_speedup_incl_rm": sp_in,
        }
    tables = [
        Table("cost", titled("Cost per method: median over seeds (min–max), GPU-hours", mixed), pd.DataFrame(rows),
              pd.DataFrame(show), note="Phase columns are medians of each phase over seeds, so they need not add up "
              "to the median total. LPO speed-up = method's cost / LPO's cost (above 1: LPO was cheaper)."),
        Table("cost_by_run", titled("Cost per run, GPU-hours", mixed), per_run),
    ]
    if not any(m == REFERENCE_METHOD for _, m in summary):
        sec.blocks.append("No LPO train run is in this comparison, so no speed-ups are computed.")
    sec.blocks += tables
    for bb_id in sorted({c.run.backbone_id for c in costs}):
        for pt in published.matching("cost", bb_id):
            sec.blocks.append(published_table(pt, published, measured=None))
    return sec, headline


def _by_method(costs: list[RunCost]) -> dict[tuple[str, str], list[RunCost]]:
    """Train-run costs grouped by (backbone, method), sorted."""
    groups: dict[tuple[str, str], list[RunCost]] = {}
    for c in costs:
        groups.setdefault((c.run.backbone, str(c.run.info.get("method"))), []).append(c)
    return dict(sorted(groups.items()))


def _median_range(values: list[float]) -> tuple[float, float, float]:
    """stats.median_range over seeds, but unknown (nan) when any seed's value is unknown."""
    return (math.nan,) * 3 if any(math.isnan(v) for v in values) else stats.median_range(values)


def _cost_figure(path: Path, costs: list[RunCost], mixed: bool) -> None:
    """Stacked bars by phase: each segment is that phase's median over the seeds of a (backbone, method)."""
    groups = _by_method(costs)
    keys = list(groups)
    stacks = {RM_PHASE: [_median_range([c.rm for c in groups[k]])[0] for k in keys]}
    for p in COUNTED_PHASES:
        stacks[p] = [_median_range([c.phases_gpu_h[p] for c in groups[k]])[0] for k in keys]
    labels = [f"{m}\n({bb}, {len(groups[(bb, m)])} seed{'s' * (len(groups[(bb, m)]) > 1)})" for bb, m in keys]
    plot_cost(path, labels, stacks, mixed)


# ---------------------------------------------------------------------------- time to target
@dataclass(frozen=True)
class Target:
    metric: str
    suite: str
    category: str
    op: str  # ">=" or "<="
    value: float
    backbone: str | None = None  # None: applies to every backbone
    how: str = "given with --target"

    @property
    def higher_is_better(self) -> bool:
        return self.op == ">="

    def text(self) -> str:
        cat = "" if self.category == "all" else f":{self.category}"
        return f"{self.metric}@{self.suite}{cat}{self.op}{self.value:.6g}"


def parse_target(text: str) -> tuple[str, str, str | None, str, float]:
    """``metric@suite[:category](>=|<=)value`` -> (metric, suite, category or None, op, value)."""
    m = _TARGET_RE.match(text)
    if m is None:
        raise HarnessError(f"--target {text!r} must look like metric@suite>=value (or <=, optionally "
                           f"metric@suite:category>=value), e.g. toy-oracle@toy-general>=0.62")
    return m.group(1), m.group(2), m.group(3), m.group(4), float(m.group(5))


def training_curves(train_runs: list[Run]) -> Any:
    """Training-time evaluation points: one row per (run, suite, metric, category, measurement)."""
    import pandas as pd

    frames = []
    for r in train_runs:
        ev = r.rows("eval_metric")
        ev = ev[pd.to_numeric(ev["gpu_h_at_measurement"], errors="coerce").notna()]
        if not len(ev):
            continue
        frames.append(pd.DataFrame({
            "run_id": r.run_id, "backbone": r.backbone, "method": str(r.info.get("method")), "seed": r.seed,
            "suite": ev["suite"].astype(str).to_numpy(), "metric": ev["metric"].astype(str).to_numpy(),
            "category": ev["category"].fillna("all").astype(str).to_numpy(),
            "train_step": pd.to_numeric(ev["train_step"], errors="coerce").to_numpy(dtype=float),
            "gpu_h": pd.to_numeric(ev["gpu_h_at_measurement"], errors="coerce").to_numpy(dtype=float),
            "value": pd.to_numeric(ev["value"], errors="coerce").to_numpy(dtype=float),
            "higher_is_better": ev["higher_is_better"].fillna(True).astype(bool).to_numpy(),
        }))
    cols = ["run_id", "backbone", "method", "seed", "suite", "metric", "category", "train_step", "gpu_h", "value",
            "higher_is_better"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)


def _pick_category(curves: Any, metric: str, suite: str, category: str | None, *, strict: bool = True) -> str:
    """The named category, else "all", else the only one (else the first one, unless ``strict``)."""
    cats = sorted(set(curves[(curves["metric"] == metric) & (curves["suite"] == suite)]["category"]))
    if category is not None and category not in cats:
        raise HarnessError(f"no training-time evaluation of {metric}@{suite} in category {category!r}; "
                           f"recorded categories: {', '.join(cats) or 'none'}")
    if category is not None or "all" in cats:
        return category or "all"
    if len(cats) > 1 and strict:
        raise HarnessError(f"{metric}@{suite} was recorded per category ({', '.join(cats)}) without an overall "
                           f"value; name one, e.g. --target {metric}@{suite}:{cats[0]}>=...")
    return cats[0]


def _primary_metric(suite: str, present: list[str]) -> str:
    try:
        from lpo_bench.suites import get_suite

        order = list(get_suite(suite).metrics)
    except HarnessError:  # a suite this install does not know: record order
        order = []
    return next((m for m in order if m in present), present[0])


def resolve_targets(target: str | None, curves: Any) -> list[Target]:
    if target is not None:
        metric, suite, category, op, value = parse_target(target)
        have = curves[(curves["metric"] == metric) & (curves["suite"] == suite)]
        if not len(have):
            known = sorted({f"{m}@{s}" for m, s in zip(curves["metric"], curves["suite"], strict=True)})
            raise HarnessError(f"no train run recorded {metric}@{suite} during training (--target); "
                               f"recorded: {', '.join(known) or 'none (train with --eval-suite)'}")
        return [Target(metric, suite, _pick_category(curves, metric, suite, category), op, value)]
    out = []
    for (bb, suite), g in curves.groupby(["backbone", "suite"], sort=True):
        metric = _primary_metric(suite, list(dict.fromkeys(g["metric"])))
        cat = _pick_category(curves[curves["backbone"] == bb], metric, suite, None, strict=False)
        g = g[(g["metric"] == metric) & (g["category"] == cat)]
        hib = bool(g["higher_is_better"].iloc[0])
        medians = {}
        for method, gm in g.groupby("method"):
            best = [(gr["value"].max() if hib else gr["value"].min()) for _, gr in gm.groupby("run_id")]
            medians[method] = stats.median_range(best)[0]
        weakest = (min if hib else max)(medians, key=medians.get)
        how = (f"default: the median over seeds of each method's best value during training, the worst of these "
               f"({weakest}: {medians[weakest]:.6g})")
        out.append(Target(metric, suite, cat, ">=" if hib else "<=", medians[weakest], bb, how))
    return out


def ttt_section(curves: Any, targets: list[Target], costs: dict[str, RunCost], mixed: bool,
                out: Path) -> tuple[Section, list[dict[str, Any]]]:
    import pandas as pd

    sec = Section("Time to target (counted GPU-hours)")
    by_run, by_method, headline, tables = [], [], [], []
    for i, tg in enumerate(targets):
        sel = (curves["metric"] == tg.metric) & (curves["suite"] == tg.suite) & (curves["category"] == tg.category)
        g = curves[sel]
        if tg.backbone is not None:
            g = g[g["backbone"] == tg.backbone]
        per_method: dict[tuple[str, str], dict[str, list[float]]] = {}
        lines = []
        for run_id, gr in g.groupby("run_id", sort=True):
            rm = costs[run_id].rm if run_id in costs else math.nan
            t_ex = stats.time_to_target(gr["gpu_h"], gr["value"], tg.value, higher_is_better=tg.higher_is_better)
            t_in = (math.nan if math.isnan(rm) else  # an RM of unknown cost: no total
                    stats.time_to_target(gr["gpu_h"] + rm, gr["value"], tg.value, higher_is_better=tg.higher_is_better))
            gr = gr.sort_values("gpu_h", kind="stable")
            last = gr.iloc[-1]
            hit = None if math.isinf(t_ex) else (t_ex, float(gr[gr["gpu_h"] == t_ex]["value"].iloc[0]))
            lines.append({"method": str(last["method"]), "x": gr["gpu_h"].tolist(), "y": gr["value"].tolist(),
                          "reached": hit})
            best = gr["value"].max() if tg.higher_is_better else gr["value"].min()
            key = (str(last["backbone"]), str(last["method"]))
            d = per_method.setdefault(key, {"ex": [], "in": []})
            d["ex"].append(t_ex)
            d["in"].append(t_in)
            by_run.append({"target": tg.text(), "run_id": run_id, "backbone": key[0], "method": key[1],
                           "seed": last["seed"], "gpu_h_to_target": t_ex, "gpu_h_to_target_incl_rm": t_in,
                           "final_value": float(last["value"]), "best_value": float(best),
                           "final_gpu_h": float(last["gpu_h"]), "n_evals": len(gr)})
        med = {k: (stats.median_time_to_target(d["ex"]),
                   math.nan if any(math.isnan(t) for t in d["in"]) else stats.median_time_to_target(d["in"]))
               for k, d in per_method.items()}
        for (bb, method), (m_ex, m_in) in sorted(med.items()):
            ref = med.get((bb, REFERENCE_METHOD))
            sp_ex = stats.speedup(m_ex, ref[0]) if ref else math.nan
            sp_in = stats.speedup(m_in, ref[1]) if ref else math.nan
            d = per_method[(bb, method)]
            row = {"target": tg.text(), "backbone": bb, "method": method, "n_seeds": len(d["ex"]),
                   "seeds_reached": sum(math.isfinite(t) for t in d["ex"]), "median_gpu_h_to_target": m_ex,
                   "median_gpu_h_to_target_incl_rm": m_in, "lpo_speedup_excl_rm": sp_ex, "lpo_speedup_incl_rm": sp_in}
            by_method.append(row)
            headline.append({**row, "target_how": tg.how})
        fig = f"fig_ttt_{i}_{slug(tg.text())}.png"
        plot_curves(out / fig, lines, tg.value, f"target {tg.op} {tg.value:.4g}", f"{tg.metric} ({tg.category})",
                    f"Time to target: {tg.text()}  (star: first reached)", mixed)
        sec.blocks.append(f"Target {i + 1}: {tg.text()} ({tg.how}).")
        sec.blocks.append(Figure(fig, f"{tg.metric} on {tg.suite} ({tg.category}) against counted GPU-hours, one line "
                                      f"per seed; dashed: the target."))
    if not targets:
        sec.blocks.append("No train run recorded evaluations during training (train with --eval-suite and "
                          "--eval-every-gpu-s), so there is no time-to-target.")
        return sec, headline
    show = [{"target": r["target"], "backbone": r["backbone"], "method": r["method"],
             "seeds reaching": f"{r['seeds_reached']}/{r['n_seeds']}",
             "median GPU-h to target": fmt_ttt(r["median_gpu_h_to_target"]),
             "incl. RM": fmt_ttt(r["median_gpu_h_to_target_incl_rm"]),
             "LPO speed-up (excl. RM)": fmt_speedup(r["lpo_speedup_excl_rm"]),
             "LPO speed-up (incl. RM)": fmt_speedup(r["lpo_speedup_incl_rm"])} for r in by_method]
    tables.append(Table("time_to_target", titled("Time to target: median over seeds", mixed), pd.DataFrame(by_method),
                        pd.DataFrame(show), note="A seed that never reached the target counts as never; a median of "
                        "'not reached' means at least half the seeds missed. Speed-up ∞: only LPO reached the "
                        "target; 0: only the other method did."))
    run_df = pd.DataFrame(by_run)
    run_show = run_df.copy().astype(object)
    for c in ("gpu_h_to_target", "gpu_h_to_target_incl_rm"):
        run_show[c] = [fmt_ttt(v) for v in run_df[c]]
    for c in ("final_value", "best_value", "final_gpu_h", "seed", "n_evals"):
        run_show[c] = [fmt(v) for v in run_df[c]]
    tables.append(Table("time_to_target_by_run", titled("Time to target per run", mixed), run_df, run_show))
    if len(targets) > 1:
        geo = []
        for bb, method in sorted({(r["backbone"], r["method"]) for r in by_method}):
            sps = [r["lpo_speedup_excl_rm"] for r in by_method if (r["backbone"], r["method"]) == (bb, method)]
            geo.append({"backbone": bb, "method": method, "geomean_lpo_speedup_excl_rm": stats.geometric_mean(sps)})
        tables.append(Table("time_to_target_geomean", titled("Geometric-mean LPO speed-up across targets", mixed),
                            pd.DataFrame(geo),
                            note="Targets a method missed (speed-up 0 or ∞) are left out of the mean."))
    sec.blocks[:0] = tables
    return sec, headline


# ---------------------------------------------------------------------------- quality
def _eval_group_key(r: Run) -> tuple[str, str, str, str]:
    suite = r.info.get("suite")
    name = suite.get("name") if isinstance(suite, dict) else str(suite)
    return r.backbone_id, str(name), str(r.info.get("split", "")), str(r.info.get("inputs_sha256", ""))


def _per_sample(r: Run) -> Any:
    import pandas as pd

    p = r.path / "per_sample.parquet"
    return pd.read_parquet(p) if p.exists() else None


def _order(runs: list[Run]) -> list[Run]:
    def key(r: Run) -> tuple[int, str, int, str]:
        method, _, seed = r.model()
        return (0 if method == "base" else 1, method, -1 if seed is None else int(seed), r.run_id)

    return sorted(runs, key=key)


def paired_vs_base(trained: Run, base: Run) -> list[dict[str, Any]]:
    """Trained minus base on matched images, per metric and category (+ "all"): per-prompt means, paired
    bootstrap over prompts; win rate over matched images."""
    a, b = _per_sample(trained), _per_sample(base)
    if a is None or b is None:
        return []
    keys = ["prompt_id", "image_idx", "metric"]
    m = a.merge(b[keys + ["score"]], on=keys, suffixes=("", "_base"))
    out = []
    for metric, gm in m.groupby("metric", sort=False):
        unmatched = int((a["metric"] == metric).sum() - len(gm))
        cats = list(dict.fromkeys(gm["category"].astype(str)))
        for cat in cats + (["all"] if len(cats) > 1 else []):
            g = gm if cat == "all" else gm[gm["category"].astype(str) == cat]
            pp = g.groupby("prompt_id", sort=True)[["score", "score_base"]].mean()
            d, lo, hi = stats.paired_diff_ci(pp["score"].to_numpy(), pp["score_base"].to_numpy())
            out.append({"metric": metric, "category": cat, "diff_vs_base": d, "ci_low": lo, "ci_high": hi,
                        "win_rate_images": stats.win_rate(g["score"].to_numpy(), g["score_base"].to_numpy()),
                        "n_prompts": len(pp), "n_images": len(g),
                        "n_unmatched": unmatched})
    return out


def _wide(df: Any, cell: str) -> Any:
    """Display pivot: one row per (model, category), one column per metric (first-seen order)."""
    metrics = list(dict.fromkeys(df["metric"]))
    w = df.pivot_table(index=["model", "category"], columns="metric", values=cell, aggfunc="first", sort=False)
    return w.reindex(columns=metrics).fillna("").reset_index()


def quality_section(eval_runs: list[Run], published: Any, mixed: bool, out: Path,
                    notes: list[str]) -> tuple[Section, list[dict[str, Any]]]:
    import pandas as pd

    sec = Section("Quality (evaluation runs)")
    headline: list[dict[str, Any]] = []
    groups: dict[tuple[str, str, str, str], list[Run]] = {}
    for r in eval_runs:
        groups.setdefault(_eval_group_key(r), []).append(r)
    proto = []
    for gi, ((bb_id, suite, split, inputs), runs) in enumerate(sorted(groups.items())):
        runs = _order(runs)
        tag = f"{suite}_{gi}" if len(groups) > 1 else suite
        ev = pd.concat([r.rows("eval_metric").assign(_run=r.run_id) for r in runs], ignore_index=True)
        first = ev.iloc[0] if len(ev) else {}
        proto.append({"backbone_id": bb_id, "suite": suite, "suite_version": first.get("suite_version"),
                      "split": split, "sampler": first.get("sampler"), "steps": first.get("num_inference_steps"),
                      "guidance_scale": first.get("guidance_scale"), "seed_base": first.get("sample_seed_base"),
                      "images_per_prompt": first.get("images_per_prompt"),
                      "n_prompts": runs[0].info.get("n_prompts"), "inputs_sha256": inputs,
                      "metrics": ", ".join(sorted({
                          f"{m} ({'?' if pd.isna(v) or v == '' else v})"
                          for m, v in zip(ev.get("metric", []), ev.get("metric_version", []), strict=True)})),
                      "runs": len(runs)})
        rows = []
        for r in runs:
            method, label, seed = r.model()
            for _, x in r.rows("eval_metric").iterrows():
                v, lo, hi = _num(x["value"]), _num(x["ci_low"]), _num(x["ci_high"])
                rows.append({"model": label, "method": method, "seed": seed, "eval_run": r.run_id,
                             "category": str(x["category"]), "metric": str(x["metric"]), "value": v, "ci_low": lo,
                             "ci_high": hi, "n": x["n"], "n_prompts": x["n_prompts"],
                             "_cell": fmt_ci(v, lo, hi)})
        title = f"{suite} ({split}) on {bb_id}"
        qdf = pd.DataFrame(rows)
        t = Table(f"quality_{slug(tag)}", titled(f"Measured quality: {title}", mixed), qdf.drop(columns="_cell"),
                  _wide(qdf, "_cell"), note="Mean score [95% bootstrap CI over prompts], as recorded by each eval "
                  "run; prompt and image counts are in the CSV.")
        sec.blocks.append(t)
        base = next((r for r in runs if r.model()[0] == "base"), None)
        diffs, dshow, noted = [], [], set()
        if base is None and len(runs) > 1:
            sec.blocks.append(f"No base-model eval run of {suite} with the same prompts and seeds "
                              f"(inputs {inputs[:12]}), so no paired differences are computed.")
        for r in runs:
            if base is None or r is base:
                continue
            method, label, seed = r.model()
            for d in paired_vs_base(r, base):
                diffs.append({"model": label, "method": method, "seed": seed, "eval_run": r.run_id,
                              "base_run": base.run_id, **d})
                excludes = d["n_prompts"] >= 2 and (d["ci_low"] > 0 or d["ci_high"] < 0)
                mark = " *" if excludes else (" (1 prompt)" if d["n_prompts"] < 2 else "")
                diffs[-1]["ci_excludes_0"] = bool(excludes)
                dshow.append({"model": label, "category": d["category"], "metric": d["metric"],
                              "_cell": fmt_ci(d["diff_vs_base"], d["ci_low"], d["ci_high"]) + mark})
                headline.append({"suite": suite, "backbone_id": bb_id, **diffs[-1]})
                note_key = (r.run_id, d["metric"])
                if d["n_unmatched"] and note_key not in noted:
                    noted.add(note_key)
                    notes.append(f"{r.run_id}: {d['n_unmatched']} {d['metric']} images had no base-model match "
                                 f"and were left out of the paired difference")
        if diffs:
            t = Table(f"quality_vs_base_{slug(tag)}", titled(f"Trained minus base model (paired): {title}", mixed),
                      pd.DataFrame(diffs), _wide(pd.DataFrame(dshow), "_cell"), note="Same prompts and image seeds "
                      "on both sides; difference of per-prompt means [paired bootstrap 95% CI over prompts]. This is "
                      "the 'did it improve' number. *: the CI excludes 0 (a credible change); a single prompt gives "
                      "no interval. Win rates over matched images are in the CSV.")
            sec.blocks.append(t)
        measured = {(str(m), str(c)) for m, c in zip(ev.get("metric", []), ev.get("category", []), strict=True)}
        for pt in published.matching("quality", bb_id, suite):
            sec.blocks.append(published_table(pt, published, measured=measured))
        grid = image_grid(runs, out, tag, mixed, notes)
        if grid is not None:
            sec.blocks.append(grid)
    sec.blocks.insert(0, Table("eval_protocol", "Evaluation protocol of each table", pd.DataFrame(proto)))
    return sec, headline


def published_table(pt: Any, published: Any, measured: set[tuple[str, str]] | None) -> Table:
    """A published table as its own, clearly labelled table (never merged with measured rows)."""
    import pandas as pd

    labels = []
    for c in pt.columns:
        mark = "" if measured is None or (c.metric, c.category) in measured else " †"
        labels.append(c.label + mark)
    notes = {"note": [r.note for r in pt.rows]} if any(r.note for r in pt.rows) else {}
    keys = [c.key for c in pt.columns]
    df = pd.DataFrame([{"published row": r.label, "backbone": r.backbone, **dict(zip(keys, r.values, strict=True))}
                       for r in pt.rows]).assign(**notes)
    show = pd.DataFrame([{"published row": r.label, "backbone": r.backbone,
                          **{lab: fmt(v) for lab, v in zip(labels, r.values, strict=True)}}
                         for r in pt.rows]).assign(**notes)
    note = f"{published.citation}. Units: {pt.units}. Protocol: {pt.protocol}. {pt.note}"
    if measured is not None and any(lab.endswith("†") for lab in labels):
        note += " †: no measured number with this metric and category here (a different metric id or not run)."
    return Table(f"published_{pt.id}_{slug(pt.rows[0].backbone)}", f"published (paper), not measured here: {pt.title}",
                 df, show, note=note)


# ---------------------------------------------------------------------------- step accuracy
def step_accuracy_section(runs: list[Run], mixed: bool, out: Path) -> tuple[Section | None, list[dict[str, Any]]]:
    import pandas as pd

    frames = []
    for r in runs:
        for kind in ("step_reward_acc", "rm_val_acc"):
            x = r.rows(kind)
            if not len(x):
                continue
            who = r.run_id if r.kind != "train" else f"{r.info.get('method')} s{r.seed}"
            frames.append(pd.DataFrame({
                "run_id": r.run_id, "kind": kind, "reward_model": x["metric"].astype(str).to_numpy(),
                "input_mode": x["input_mode"].fillna("").astype(str).to_numpy(),
                "timestep": pd.to_numeric(x["timestep"], errors="coerce").to_numpy(dtype=float),
                "value": pd.to_numeric(x["value"], errors="coerce").to_numpy(dtype=float),
                "ci_low": pd.to_numeric(x["ci_low"], errors="coerce").to_numpy(dtype=float),
                "ci_high": pd.to_numeric(x["ci_high"], errors="coerce").to_numpy(dtype=float),
                "n": pd.to_numeric(x["n"], errors="coerce").to_numpy(dtype=float),
                "source": who if kind == "step_reward_acc" else f"{who}, RM validation",
            }))
    if not frames:
        return None, []
    df = pd.concat(frames, ignore_index=True).sort_values(["source", "reward_model", "input_mode", "timestep"])
    df["curve"] = [f"{m} [{mode or '?'}] ({src})" for m, mode, src in zip(df["reward_model"], df["input_mode"],
                                                                          df["source"], strict=True)]
    sec = Section("Step-level reward accuracy across timesteps")
    plot_step_accuracy(out / "fig_step_accuracy.png", df, mixed)
    show = df.pivot_table(index="timestep", columns="curve", values="value", aggfunc="first")
    lo = df.pivot_table(index="timestep", columns="curve", values="ci_low", aggfunc="first")
    hi = df.pivot_table(index="timestep", columns="curve", values="ci_high", aggfunc="first")
    disp = pd.DataFrame({c: [fmt_ci(v, lo.at[t, c], hi.at[t, c]) if not math.isnan(v) else ""
                             for t, v in show[c].items()]
                         for c in show.columns}, index=show.index).reset_index()
    disp["timestep"] = [str(int(t)) for t in disp["timestep"]]
    t = Table("step_accuracy", titled("Pairwise accuracy by timestep t, 95% CI", mixed),
              df.drop(columns=["curve"]), disp,
              note="0.5 is chance. A pair is correct when the preferred image scores higher at the same noise "
                   "(ties count one half). 'RM validation' rows come from the reward model's own validation split.")
    sec.blocks += [t, Figure("fig_step_accuracy.png", "Accuracy against timestep t with 95% CI bands; dotted: chance.")]
    return sec, df.drop(columns=["curve"]).to_dict("records")


# ---------------------------------------------------------------------------- image grid
def _image_index(r: Run) -> dict[tuple[str, str], list[int]]:
    """(category, file-name prompt) -> question ids of the eval run's saved images."""
    idx: dict[tuple[str, str], list[int]] = {}
    root = r.path / "images"
    if not root.is_dir():
        return idx
    for cat_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in (cat_dir / "samples").glob("*.png"):
            stem, _, qid = f.stem.rpartition("_")
            if qid.isdigit():
                idx.setdefault((cat_dir.name, stem), []).append(int(qid))
    return idx


def _image_path(r: Run, idx: dict[tuple[str, str], list[int]], category: str, prompt: str,
                image_idx: int) -> Path | None:
    """The saved image of (prompt, image_idx), found by the evaluation's naming (None when ambiguous)."""
    from lpo_bench.evaluation import image_file_name

    stem = image_file_name(prompt, 0).rpartition("_")[0]
    ipp = int(r.info.get("images_per_prompt") or 1)
    qids = [q for q in idx.get((category, stem), []) if q % ipp == image_idx]
    if len(qids) != 1:
        return None
    return r.path / "images" / category / "samples" / image_file_name(prompt, qids[0])


def image_grid(runs: list[Run], out: Path, tag: str, mixed: bool, notes: list[str]) -> Figure | None:
    """The same prompts and image seeds across models (image 0 of up to GRID_PROMPTS prompts, one per
    category in turn)."""
    with_images = [r for r in runs if (r.path / "images").is_dir()]
    if len(runs) < 2:
        return None
    if len(with_images) < 2:
        notes.append(f"no image grid for {tag}: fewer than two of its eval runs saved images")
        return None
    ps = _per_sample(with_images[0])
    if ps is None or not {"prompt_id", "prompt", "category", "image_idx"} <= set(ps.columns):
        notes.append(f"no image grid for {tag}: per_sample.parquet lacks prompt texts to find the images by")
        return None
    firsts = ps[ps["image_idx"] == 0].drop_duplicates("prompt_id")
    by_cat = {c: list(g.itertuples()) for c, g in firsts.groupby("category", sort=False)}
    chosen = []
    while len(chosen) < GRID_PROMPTS and any(by_cat.values()):
        for c in list(by_cat):
            if by_cat[c] and len(chosen) < GRID_PROMPTS:
                chosen.append(by_cat[c].pop(0))
    idx = {r.run_id: _image_index(r) for r in with_images}
    cells = [[_image_path(r, idx[r.run_id], str(p.category), str(p.prompt), 0) for r in with_images] for p in chosen]
    if not any(c is not None for row in cells for c in row):
        notes.append(f"no image grid for {tag}: saved images could not be matched to prompts")
        return None
    name = f"grid_{slug(tag)}.png"
    plot_grid(out / name, cells, [str(p.prompt) for p in chosen], [r.model()[1].split(" (")[0] for r in with_images],
              f"Same prompts and seeds across models ({tag}, image 0)", mixed)
    return Figure(name, "Rows: prompts (image 0, the same seed for every model); columns: models.")


# ---------------------------------------------------------------------------- report text
def _how_to_read(runs: list[Run], published: Any) -> list[str]:
    how = [
        "GPU-hours = ledger wall seconds × devices allocated ÷ 3600 (allocated device time, not utilisation). "
        "Counted = PREP + SAMPLE + SCORE + UPDATE; SETUP, EVAL and CHECKPOINT are off the clock. Reward-model "
        "training (RM_TRAIN) is shown separately and every total is given excluding and including it.",
        "LPO speed-up over a method = that method's GPU-hours ÷ LPO's (medians over seeds): above 1 means LPO "
        "was cheaper. With few seeds, read the min–max ranges before the ratio.",
        "Time to target = the first counted GPU-hour at which a training-time evaluation reached the target; "
        "evaluations happen every eval_every_gpu_s, so it is resolved only to that cadence. A seed that never "
        "reached it counts as never ('not reached').",
        "Quality CIs are 95% percentile bootstraps over prompts (seeded, so reproducible). They describe "
        "uncertainty from the finite prompt set, not from training randomness: compare seeds for that.",
        "'Trained minus base' uses the same prompts and the same image seeds for both models (paired), which "
        "removes prompt difficulty from the comparison; a change is credible when its CI excludes 0.",
        "Step accuracy: 0.5 is chance; accuracy usually falls as t grows (more noise).",
        f"Published numbers ({published.citation}) appear only beside measured tables of the same backbone "
        "(and suite), in their own tables labelled 'published (paper)'. They were measured by the authors on "
        "A100s with their protocol and are never mixed into measured tables.",
    ]
    ids = {r.backbone_id for r in runs} | {r.backbone for r in runs}
    if any(i == "toy" or i.startswith("lpo-bench/toy") for i in ids):
        how.insert(0, "TOY WORLD: these runs use the CPU toy world (a tiny diffusion model and a programmatic "
                      "oracle). Their numbers test the harness and the relative behaviour of the methods; they are "
                      "not the paper's numbers and are not comparable with them.")
    if any(i.startswith("tiny-") for i in ids):
        how.insert(0, "TINY RANDOM-WEIGHT BACKBONES: some runs use test-sized random-weight models; their "
                      "numbers only check the plumbing.")
    return how


def _command(runs: Sequence[str | Path], out: Path, target: str | None, allow_mixed: bool) -> str:
    parts = ["lpo-bench", "compare", *map(str, runs), "--out", str(out)]
    if target is not None:
        parts += ["--target", target]
    if allow_mixed:
        parts.append("--allow-mixed-hardware")
    return shlex.join(parts)


# ---------------------------------------------------------------------------- entry point
def compare(runs: Sequence[str | Path], out: str | Path, *, target: str | None = None,
            allow_mixed_hardware: bool = False) -> Path:
    """Build the comparison report of ``runs`` (run dirs or folders of runs) into ``out``; returns report.md."""
    import pandas as pd

    from lpo_bench.published import load_published

    if target is not None:
        parse_target(target)  # fail on a malformed target before reading anything
    out = Path(out)
    paths, notes = discover(runs)
    loaded = []
    for p in paths:
        r = load_run(p)
        if r.kind in KNOWN_KINDS:
            loaded.append(r)
        else:
            notes.append(f"skipped {p}: run kind {r.kind!r} is not one of {', '.join(KNOWN_KINDS)}")
    by_kind = {k: [r for r in loaded if r.kind == k] for k in KNOWN_KINDS}
    external = [e for e in (_external_reward_run(r) for r in by_kind["train"]) if e is not None]
    mixed = check_hardware(loaded + external, allow_mixed_hardware)
    published = load_published()
    out.mkdir(parents=True, exist_ok=True)

    sections: list[Section] = []
    headline: dict[str, Any] = {}
    costs = [run_cost(r, notes) for r in by_kind["train"]]
    if costs:
        sec, headline["cost"] = cost_section(costs, published, mixed)
        _cost_figure(out / "fig_cost.png", costs, mixed)
        sec.blocks.insert(0, Figure("fig_cost.png", "GPU-hours by ledger phase per method (median over seeds); "
                                                    "hatched: reward-model training (amortised, shown separately)."))
        sections.append(sec)
        curves = training_curves(by_kind["train"])
        targets = resolve_targets(target, curves) if len(curves) else []
        if target is not None and not len(curves):
            raise HarnessError("--target was given but no train run recorded evaluations during training; train "
                               "with --eval-suite and --eval-every-gpu-s")
        sec, headline["time_to_target"] = ttt_section(curves, targets, {c.run.run_id: c for c in costs}, mixed, out)
        sections.append(sec)
        headline["targets"] = [{"target": tg.text(), "how": tg.how, "backbone": tg.backbone} for tg in targets]
    elif target is not None:
        raise HarnessError("--target needs train runs (with evaluations during training) among the compared runs")
    if by_kind["eval"]:
        sec, headline["quality_vs_base"] = quality_section(by_kind["eval"], published, mixed, out, notes)
        sections.append(sec)
    acc_runs = by_kind["step_accuracy"] + by_kind["train"] + by_kind["reward"]
    step_sec, headline["step_accuracy"] = step_accuracy_section(acc_runs, mixed, out)
    if step_sec is not None:
        sections.append(step_sec)

    run_rows = [{"run_id": r.run_id, "kind": r.kind, "method_or_model": r.info.get("method") or r.info.get("model")
                 or r.info.get("reward_kind"), "backbone": r.backbone, "backbone_id": r.backbone_id, "seed": r.seed,
                 "device": f"{r.device[0]} x{r.device[1]}", "git_commit": str(r.prov.get("git_commit", "unknown"))
                 + ("-dirty" if r.prov.get("git_dirty") else ""), "path": str(r.path)} for r in loaded]
    run_table = Table("runs", titled("Runs compared", mixed), pd.DataFrame(run_rows))
    sections.append(Section("Runs compared", [run_table]))

    command = _command(runs, out, target, allow_mixed_hardware)
    date = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    commits = sorted({row["git_commit"] for row in run_rows})
    devices = sorted({f"{r.device[0]} x{r.device[1]} ({r.kind})" for r in loaded})
    here, dirty = records.git_info()
    header = [f"Command: {command}", f"Date (UTC): {date}",
              f"Git commit(s) of the runs: {', '.join(commits)}; report written by lpo-bench "
              f"{__version__} at {here}{'-dirty' if dirty else ''}",
              f"Device(s): {'; '.join(devices)}",
              f"Runs: {len(loaded)} ({', '.join(f'{k} {len(v)}' for k, v in by_kind.items() if v)})"]
    how = _how_to_read(loaded, published)

    for t in {b.name: b for s in sections for b in s.blocks if isinstance(b, Table)}.values():
        records.atomic_write_bytes(out / f"{t.name}.csv", t.df.to_csv(index=False).encode())
    md, page = render(sections, header, how, notes, out, mixed)
    records.atomic_write_bytes(out / "report.md", md.encode())
    records.atomic_write_bytes(out / "report.html", page.encode())
    report = {"command": command, "date_utc": date, "git_commits": commits, "report_git_commit": here,
              "devices": devices, "mixed_hardware": mixed, "published_source": published.citation,
              "notes": notes, "conventions": "GPU-hours; 'inf' = never reached; null = not available",
              "runs": run_rows, **headline}
    records.atomic_write_bytes(out / "report.json", (json.dumps(jsonable(report), indent=2) + "\n").encode())
    return out / "report.md"
