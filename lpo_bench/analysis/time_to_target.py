"""Time to target: the counted GPU-hours a train run needed for a training-time evaluation to reach a target
value, with the target given (``metric@suite[:category](>=|<=)value``) or chosen from the runs."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpo_bench.analysis import stats
from lpo_bench.analysis.render import (
    Figure,
    Section,
    Table,
    fmt,
    fmt_speedup,
    fmt_ttt,
    plot_curves,
    slug,
    titled,
)
from lpo_bench.analysis.runs import Run
from lpo_bench.errors import HarnessError

_TARGET_RE = re.compile(
    r"^\s*([^@\s]+)@([^\s:<>=]+)(?::([^\s<>=]+))?\s*(>=|<=)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)


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
            "run_id": r.run_id, "backbone": r.backbone, "method": r.method, "seed": r.seed,
            "role": str(r.info.get("method_role", "")),
            "suite": ev["suite"].astype(str).to_numpy(), "metric": ev["metric"].astype(str).to_numpy(),
            "category": ev["category"].fillna("all").astype(str).to_numpy(),
            "train_step": pd.to_numeric(ev["train_step"], errors="coerce").to_numpy(dtype=float),
            "gpu_h": pd.to_numeric(ev["gpu_h_at_measurement"], errors="coerce").to_numpy(dtype=float),
            "flops": pd.to_numeric(ev.get("flops_at_measurement", pd.Series(math.nan, index=ev.index)),
                                   errors="coerce").to_numpy(dtype=float),
            "value": pd.to_numeric(ev["value"], errors="coerce").to_numpy(dtype=float),
            "ci_low": pd.to_numeric(ev["ci_low"], errors="coerce").to_numpy(dtype=float),
            "ci_high": pd.to_numeric(ev["ci_high"], errors="coerce").to_numpy(dtype=float),
            "higher_is_better": ev["higher_is_better"].fillna(True).astype(bool).to_numpy(),
        }))
    cols = ["run_id", "backbone", "method", "seed", "role", "suite", "metric", "category", "train_step", "gpu_h", "flops",
            "value", "ci_low", "ci_high", "higher_is_better"]
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


def primary_metric(suite: str, present: list[str]) -> str:
    """The suite's primary metric: its first declared metric among ``present``, else the first recorded."""
    try:
        from lpo_bench.data.suites import get_suite

        order = list(get_suite(suite).metrics)
    except HarnessError:  # a suite this install does not know: record order
        order = []
    return next((m for m in order if m in present), present[0])


def resolve_targets(target: str | None, curves: Any) -> list[Target]:
    """The given target, or by default one per (backbone, suite) on the suite's first metric: the median over
    each method's seeds of their best value during training, the worst of these medians (control runs left out)."""
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
        metric = primary_metric(suite, list(dict.fromkeys(g["metric"])))
        cat = _pick_category(curves[curves["backbone"] == bb], metric, suite, None, strict=False)
        g = g[(g["metric"] == metric) & (g["category"] == cat)]
        if (g["role"] != "control").any():  # controls (e.g. flipped preferences) do not set the default target
            g = g[g["role"] != "control"]
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


def ttt_section(curves: Any, targets: list[Target], rm_gpu_h: dict[str, float], reference: str, mixed: bool,
                out: Path) -> tuple[Section, list[dict[str, Any]]]:
    """Tables and one figure per target; ``rm_gpu_h``: each run's reward-model GPU-hours (nan: unknown),
    added for the totals incl. RM."""
    import pandas as pd

    sec = Section("Time to target (counted GPU-hours)")
    by_run, by_method, headline, tables = [], [], [], []
    for i, tg in enumerate(targets):
        sel = (curves["metric"] == tg.metric) & (curves["suite"] == tg.suite) & (curves["category"] == tg.category)
        g = curves[sel]
        if tg.backbone is not None:
            g = g[g["backbone"] == tg.backbone]
        per_method: dict[tuple[str, str], dict[str, list[float]]] = {}
        lines: list[dict[str, Any]] = []
        flop_lines: list[dict[str, Any]] = []
        for run_id, gr in g.groupby("run_id", sort=True):
            rm = rm_gpu_h.get(run_id, math.nan)
            t_ex = stats.time_to_target(gr["gpu_h"], gr["value"], tg.value, higher_is_better=tg.higher_is_better)
            t_in = (math.nan if math.isnan(rm) else  # an RM of unknown cost: no total
                    stats.time_to_target(gr["gpu_h"] + rm, gr["value"], tg.value, higher_is_better=tg.higher_is_better))
            f_ex = (stats.time_to_target(gr["flops"], gr["value"], tg.value, higher_is_better=tg.higher_is_better)
                    if gr["flops"].notna().all() else math.nan)
            gr = gr.sort_values("gpu_h", kind="stable")
            last = gr.iloc[-1]
            hit = None if math.isinf(t_ex) else (t_ex, float(gr[gr["gpu_h"] == t_ex]["value"].iloc[0]))
            lines.append({"method": str(last["method"]), "x": gr["gpu_h"].tolist(), "y": gr["value"].tolist(),
                          "reached": hit})
            if gr["flops"].notna().all():
                hit_f = None if math.isinf(f_ex) or math.isnan(f_ex) else (
                    f_ex, float(gr[gr["flops"] == f_ex]["value"].iloc[0]))
                flop_lines.append({"method": str(last["method"]), "x": gr["flops"].tolist(), "y": gr["value"].tolist(),
                                   "reached": hit_f})
            best = gr["value"].max() if tg.higher_is_better else gr["value"].min()
            key = (str(last["backbone"]), str(last["method"]))
            d = per_method.setdefault(key, {"ex": [], "in": [], "flops": []})
            d["ex"].append(t_ex)
            d["in"].append(t_in)
            d["flops"].append(f_ex)
            by_run.append({"target": tg.text(), "run_id": run_id, "backbone": key[0], "method": key[1],
                           "seed": last["seed"], "gpu_h_to_target": t_ex, "gpu_h_to_target_incl_rm": t_in,
                           "flops_to_target": f_ex, "final_value": float(last["value"]), "best_value": float(best),
                           "final_gpu_h": float(last["gpu_h"]), "final_flops": float(last["flops"]),
                           "n_evals": len(gr), "plateau_last3": stats.plateau(gr["ci_low"].tolist()[-3:],
                                                                              gr["ci_high"].tolist()[-3:])})
        def med_of(ts: list[float]) -> float:
            return math.nan if any(math.isnan(t) for t in ts) else stats.median_time_to_target(ts)

        med = {k: (stats.median_time_to_target(d["ex"]), med_of(d["in"]), med_of(d["flops"]))
               for k, d in per_method.items()}
        for (bb, method), (m_ex, m_in, m_fl) in sorted(med.items()):
            ref = med.get((bb, reference))
            sp_ex = stats.speedup(m_ex, ref[0]) if ref else math.nan
            sp_in = stats.speedup(m_in, ref[1]) if ref else math.nan
            sp_fl = stats.speedup(m_fl, ref[2]) if ref and not (math.isnan(m_fl) or math.isnan(ref[2])) else math.nan
            d = per_method[(bb, method)]
            row = {"target": tg.text(), "backbone": bb, "method": method, "n_seeds": len(d["ex"]),
                   "seeds_reached": sum(math.isfinite(t) for t in d["ex"]), "median_gpu_h_to_target": m_ex,
                   "median_gpu_h_to_target_incl_rm": m_in, "median_flops_to_target": m_fl,
                   "reference_method": reference, "speedup_excl_rm": sp_ex, "speedup_incl_rm": sp_in,
                   "speedup_flops_excl_rm": sp_fl}
            by_method.append(row)
            headline.append({**row, "target_how": tg.how})
        fig = f"fig_ttt_{i}_{slug(tg.text())}.png"
        plot_curves(out / fig, lines, tg.value, f"target {tg.op} {tg.value:.4g}", f"{tg.metric} ({tg.category})",
                    f"Time to target: {tg.text()}  (star: first reached)", mixed)
        sec.blocks.append(f"Target {i + 1}: {tg.text()} ({tg.how}).")
        sec.blocks.append(Figure(fig, f"{tg.metric} on {tg.suite} ({tg.category}) against counted GPU-hours, one line "
                                      f"per seed, the seed band and mean per method; dashed: the target."))
        if flop_lines and len(flop_lines) == len(lines):
            fig_f = f"fig_ttt_{i}_flops_{slug(tg.text())}.png"
            plot_curves(out / fig_f, flop_lines, tg.value, f"target {tg.op} {tg.value:.4g}",
                        f"{tg.metric} ({tg.category})", f"Learning curves in FLOPs: {tg.text()}", mixed,
                        xlabel="counted FLOPs (excl. reward-model training; the run's own models)")
            sec.blocks.append(Figure(fig_f, "The same curves against counted FLOPs (machine-independent)."))
    if not targets:
        sec.blocks.append("No train run recorded evaluations during training (train with --eval-suite and "
                          "--eval-every-gpu-s), so there is no time-to-target.")
        return sec, headline
    show = [{"target": r["target"], "backbone": r["backbone"], "method": r["method"],
             "seeds reaching": f"{r['seeds_reached']}/{r['n_seeds']}",
             "median GPU-h to target": fmt_ttt(r["median_gpu_h_to_target"]),
             "incl. RM": fmt_ttt(r["median_gpu_h_to_target_incl_rm"]),
             "median FLOPs to target": fmt_ttt(r["median_flops_to_target"]),
             f"speed-up of {reference} in FLOPs (excl. RM)": fmt_speedup(r["speedup_flops_excl_rm"], reference),
             f"speed-up of {reference} (excl. RM)": fmt_speedup(r["speedup_excl_rm"], reference),
             f"speed-up of {reference} (incl. RM)": fmt_speedup(r["speedup_incl_rm"], reference)} for r in by_method]
    tables.append(Table("time_to_target", titled("Time to target: median over seeds", mixed), pd.DataFrame(by_method),
                        pd.DataFrame(show), note=f"A seed that never reached the target counts as never; a median of "
                        f"'not reached' means at least half the seeds missed. Speed-up ∞: only {reference} reached "
                        f"the target; 0: only the other method did."))
    run_df = pd.DataFrame(by_run)
    run_show = run_df.copy().astype(object)
    for c in ("gpu_h_to_target", "gpu_h_to_target_incl_rm", "flops_to_target"):
        run_show[c] = [fmt_ttt(v) for v in run_df[c]]
    for c in ("final_value", "best_value", "final_gpu_h", "final_flops", "seed", "n_evals"):
        run_show[c] = [fmt(v) for v in run_df[c]]
    tables.append(Table("time_to_target_by_run", titled("Time to target per run", mixed), run_df, run_show))
    if len(targets) > 1:
        geo = []
        for bb, method in sorted({(r["backbone"], r["method"]) for r in by_method}):
            sps = [r["speedup_excl_rm"] for r in by_method if (r["backbone"], r["method"]) == (bb, method)]
            geo.append({"backbone": bb, "method": method, "reference_method": reference,
                        "geomean_speedup_excl_rm": stats.geometric_mean(sps)})
        tables.append(Table("time_to_target_geomean",
                            titled(f"Geometric-mean speed-up of {reference} across targets", mixed),
                            pd.DataFrame(geo), note="Targets a method missed (speed-up 0 or ∞) are left out of the mean."))
    sec.blocks[:0] = tables
    return sec, headline
