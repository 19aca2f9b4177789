"""The report's step-accuracy section: pairwise accuracy of step reward models against the timestep, from
step-accuracy runs and from reward models' own validation rows."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lpo_bench.analysis.render import Figure, Section, Table, fmt_ci, plot_step_accuracy, titled
from lpo_bench.analysis.runs import Run

ACCURACY_KINDS = ("step_reward_acc", "rm_val_acc")  # measurement kinds; rm_val_acc: an RM's validation split


def _accuracy_rows(runs: list[Run]) -> Any:
    """One row per (run, kind, reward model, input mode, timestep); None when no run recorded any."""
    import pandas as pd

    frames = []
    for r in runs:
        for kind in ACCURACY_KINDS:
            x = r.rows(kind)
            if not len(x):
                continue
            who = r.run_id if r.kind != "train" else f"{r.method} s{r.seed}"
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
        return None
    return pd.concat(frames, ignore_index=True).sort_values(["source", "reward_model", "input_mode", "timestep"])


def step_accuracy_section(runs: list[Run], mixed: bool, out: Path) -> tuple[Section | None, list[dict[str, Any]]]:
    """A table (value [CI] per timestep and curve) and a figure; (None, []) when no run recorded accuracy."""
    import pandas as pd

    df = _accuracy_rows(runs)
    if df is None:
        return None, []
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
