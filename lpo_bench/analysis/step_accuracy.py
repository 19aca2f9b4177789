"""The report's step-accuracy section: pairwise accuracy of step reward models against the timestep, from
step-accuracy runs and from reward models' own validation rows, per pair subset (category), with the paired
accuracy difference of every two step reward models (and of each model minus its prompt-shuffled control) over
a timestep range, computed from the runs' per-pair rows (:func:`paired_accuracy_diff`).

The names below are the ones the step-accuracy run (:mod:`lpo_bench.evaluation.step_accuracy`) writes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lpo_bench.analysis import stats
from lpo_bench.analysis.render import (
    Figure,
    Section,
    Table,
    fmt,
    fmt_ci,
    fmt_signed_ci,
    plot_step_accuracy,
    titled,
)
from lpo_bench.analysis.runs import Run

ACCURACY_KINDS = ("step_reward_acc", "rm_val_acc")  # measurement kinds; rm_val_acc: an RM's validation split
ALL, ALIGNMENT_DECIDED, AESTHETIC_DECIDED = "all", "alignment-decided", "aesthetic-decided"  # pair subsets
# per-pair ``view_role``: what scored the pair
ROLE_REWARD_MODEL, ROLE_PIXEL_METRIC, ROLE_SHUFFLED = "step_reward_model", "pixel_metric", "shuffled_prompt_control"
SHUFFLED_SUFFIX = "+shuffled-prompt"  # a step reward model's prompt-shuffled control is named <name>+shuffled-prompt
DIFF_RANGES = (("t >= 500", 500, None), ("t <= 200", None, 200))  # (label, t_min, t_max) of the paired differences


def _view(df: Any, v: str | tuple[str, str]) -> tuple[Any, str]:
    name, mode = (v, None) if isinstance(v, str) else v
    g = df[df["reward_model"] == name]
    if mode is not None:
        g = g[g["input_mode"] == mode]
    elif g["input_mode"].nunique() > 1:
        raise ValueError(f"view {name} has several input modes ({', '.join(sorted(g['input_mode'].unique()))}); "
                         f"pass (name, input_mode)")
    return g, name if mode is None else f"{name} [{mode}]"


def paired_accuracy_diff(per_pair: Any, a: str | tuple[str, str], b: str | tuple[str, str], *,
                         t_min: int | None = 500, t_max: int | None = None, category: str = ALL) -> dict[str, Any]:
    """Mean over pairs of acc_a - acc_b on the timesteps in [t_min, t_max] (None: open) that both views scored,
    with a bootstrap CI over pairs (the independent unit): each pair's accuracy is first averaged over those
    timesteps per view, then ``stats.paired_diff_ci`` over the pairs both views scored.

    per_pair: rows {pair_id, timestep, reward_model, input_mode, acc[, category]} (list of dicts or DataFrame);
    a / b: a view's name, or (name, input_mode) for a name scored in several modes; category: "all" or a subset.
    Returns {a, b, category, t_min, t_max, timesteps, n_timesteps, n_pairs, acc_a, acc_b, diff, ci_low, ci_high}.
    """
    import pandas as pd

    df = per_pair if isinstance(per_pair, pd.DataFrame) else pd.DataFrame(list(per_pair))
    if df.empty:
        df = pd.DataFrame(columns=["pair_id", "timestep", "reward_model", "input_mode", "acc"])
    if category != ALL:
        df = df[df["category"] == category] if "category" in df.columns else df.iloc[:0]
    t = df["timestep"].astype(int)
    df = df[(t >= (t_min if t_min is not None else -math.inf)) & (t <= (t_max if t_max is not None else math.inf))]
    (ga, name_a), (gb, name_b) = _view(df, a), _view(df, b)
    ts = sorted(set(ga["timestep"].astype(int)) & set(gb["timestep"].astype(int)))
    ma = ga[ga["timestep"].astype(int).isin(ts)].groupby("pair_id")["acc"].mean()
    mb = gb[gb["timestep"].astype(int).isin(ts)].groupby("pair_id")["acc"].mean()
    ids = ma.index.intersection(mb.index)
    va, vb = ma.loc[ids].to_numpy(dtype=float), mb.loc[ids].to_numpy(dtype=float)
    diff, lo, hi = stats.paired_diff_ci(va, vb)
    return {"a": name_a, "b": name_b, "category": category, "t_min": t_min, "t_max": t_max,
            "timesteps": ",".join(map(str, ts)), "n_timesteps": len(ts), "n_pairs": len(ids),
            "acc_a": float(va.mean()) if len(ids) else math.nan, "acc_b": float(vb.mean()) if len(ids) else math.nan,
            "diff": diff, "ci_low": lo, "ci_high": hi}


def _accuracy_rows(runs: list[Run]) -> Any:
    """One row per (run, kind, category, reward model, input mode, timestep); None when no run recorded any."""
    import pandas as pd

    frames = []
    for r in runs:
        for kind in ACCURACY_KINDS:
            x = r.rows(kind)
            if not len(x):
                continue
            who = r.run_id if r.kind != "train" else f"{r.method} s{r.seed}"
            frames.append(pd.DataFrame({
                "run_id": r.run_id, "kind": kind, "category": x["category"].astype(object).fillna(ALL).to_numpy(),
                "reward_model": x["metric"].astype(str).to_numpy(),
                "input_mode": x["input_mode"].fillna("").astype(str).to_numpy(),
                "timestep": pd.to_numeric(x["timestep"], errors="coerce").to_numpy(dtype=float),
                "value": pd.to_numeric(x["value"], errors="coerce").to_numpy(dtype=float),
                "ci_low": pd.to_numeric(x["ci_low"], errors="coerce").to_numpy(dtype=float),
                "ci_high": pd.to_numeric(x["ci_high"], errors="coerce").to_numpy(dtype=float),
                "n": pd.to_numeric(x["n"], errors="coerce").to_numpy(dtype=float),
                "source": who if kind == "step_reward_acc" else f"{who}, RM validation",
            }))
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True).sort_values(["source", "reward_model", "input_mode", "timestep"])


def _accuracy_table(df: Any, name: str, title: str, note: str) -> Table:
    """value [CI] per timestep (rows) and curve (columns); each model's shuffled-prompt control beside it."""
    import pandas as pd

    keys = df.drop_duplicates("curve")
    order = sorted(zip(keys["source"], keys["reward_model"].str.removesuffix(SHUFFLED_SUFFIX),
                       keys["reward_model"].str.endswith(SHUFFLED_SUFFIX), keys["input_mode"], keys["curve"],
                       strict=True))
    show = df.pivot_table(index="timestep", columns="curve", values="value", aggfunc="first")
    lo = df.pivot_table(index="timestep", columns="curve", values="ci_low", aggfunc="first")
    hi = df.pivot_table(index="timestep", columns="curve", values="ci_high", aggfunc="first")
    disp = pd.DataFrame({c: [fmt_ci(v, lo.at[t, c], hi.at[t, c]) if not math.isnan(v) else ""
                             for t, v in show[c].items()]
                         for c in [k[-1] for k in order]}, index=show.index).reset_index()
    disp["timestep"] = [str(int(t)) for t in disp["timestep"]]
    return Table(name, title, df.drop(columns=["curve"]), disp, note=note)


def _diff_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """Paired differences of every two step reward models of a step-accuracy run (in the run's order) and of each
    model minus its prompt-shuffled control, per category and timestep range (runs without per-pair roles: none)."""
    out = []
    for r in runs:
        ps = r.per_sample() if r.kind == "step_accuracy" else None
        if ps is None or not {"view_role", "acc", "pair_id", "timestep"} <= set(ps.columns):
            continue
        views = ps.drop_duplicates("reward_model")
        rms = [v for v, role in zip(views["reward_model"], views["view_role"], strict=True) if role == ROLE_REWARD_MODEL]
        names = set(views["reward_model"])
        comps = [(a, b, "reward models") for i, a in enumerate(rms) for b in rms[i + 1:]]
        comps += [(a, a + SHUFFLED_SUFFIX, "model minus its prompt-shuffled control") for a in rms
                  if a + SHUFFLED_SUFFIX in names]
        cats = [ALL, *sorted(ps["category"].dropna().unique())] if "category" in ps.columns else [ALL]
        for cat in cats:
            for label, t_min, t_max in DIFF_RANGES:
                for a, b, what in comps:
                    d = paired_accuracy_diff(ps, a, b, t_min=t_min, t_max=t_max, category=cat)
                    if d["n_pairs"]:
                        out.append({"source": r.run_id, "comparison": what, "t_range": label, **d})
    return out


def _diff_table(rows: list[dict[str, Any]], mixed: bool) -> Table:
    import pandas as pd

    df = pd.DataFrame(rows)
    disp = pd.DataFrame({
        "run": df["source"], "pairs": df["category"], "t": df["t_range"], "A": df["a"], "B": df["b"],
        "A − B [95% CI]": [fmt_signed_ci(v, lo, hi) for v, lo, hi in zip(df["diff"], df["ci_low"], df["ci_high"],
                                                                          strict=True)],
        "acc A": df["acc_a"].map(fmt), "acc B": df["acc_b"].map(fmt), "n pairs": df["n_pairs"].astype(int).astype(str),
        "timesteps": df["n_timesteps"].astype(int).astype(str)})
    return Table("step_accuracy_diff", titled("Paired accuracy difference A − B over a timestep range, 95% CI", mixed),
                 df, disp, note="Each pair's accuracy is averaged over the range's timesteps first; the CI is a "
                 "bootstrap over pairs. Shown whatever its sign. A model minus its prompt-shuffled control near 0 "
                 "means the model does not use the prompt.")


def step_accuracy_section(runs: list[Run], mixed: bool, out: Path) -> tuple[Section | None, list[dict[str, Any]]]:
    """Tables (value [CI] per timestep and curve, one per pair subset; paired differences) and a figure of the
    "all" rows; (None, []) when no run recorded accuracy."""
    df = _accuracy_rows(runs)
    if df is None:
        return None, []
    df["curve"] = [f"{m} [{mode or '?'}] ({src})" for m, mode, src in zip(df["reward_model"], df["input_mode"],
                                                                          df["source"], strict=True)]
    sec = Section("Step-level reward accuracy across timesteps")
    every = df[df["category"] == ALL]
    plot_step_accuracy(out / "fig_step_accuracy.png", every, mixed)
    sec.blocks.append(_accuracy_table(
        every, "step_accuracy", titled("Pairwise accuracy by timestep t, 95% CI", mixed),
        "0.5 is chance. A pair is correct when the preferred image scores higher at the same noise "
        "(ties count one half). 'RM validation' rows come from the reward model's own validation split. "
        f"'{SHUFFLED_SUFFIX}': the model scoring the same x_t with another pair's prompt."))
    for cat in sorted(set(df["category"]) - {ALL}):
        sec.blocks.append(_accuracy_table(
            df[df["category"] == cat], f"step_accuracy_{cat}",
            titled(f"Pairwise accuracy by timestep t on the {cat} pairs, 95% CI", mixed),
            f"Only the pairs whose oracle reward gap is {cat} (definition and sizes in the run's run.json)."))
    diffs = _diff_rows(runs)
    if diffs:
        sec.blocks.append(_diff_table(diffs, mixed))
    sec.blocks.append(Figure("fig_step_accuracy.png", "Accuracy against timestep t with 95% CI bands (all pairs); "
                                                      "dotted: chance."))
    return sec, df.drop(columns=["curve"]).to_dict("records")
