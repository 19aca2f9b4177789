"""Subsets and controls of the step-accuracy run (:mod:`lpo_bench.evaluation.step_accuracy`), and its measurement
rows per subset.

* Subsets: on pairs that carry the toy oracle's parts of each image (``alignment_0/1``, ``oracle_aesthetic_0/1``;
  ``reward = alignment + w * aesthetic``, ``w`` = ``lpo_bench.toy.oracle.AESTHETIC_WEIGHT``), a pair is
  "alignment-decided" when ``|alignment_0 - alignment_1| > w * |oracle_aesthetic_0 - oracle_aesthetic_1|`` (the
  alignment term dominates the reward gap) and "aesthetic-decided" otherwise. Pairs without those columns (real
  Pick-a-Pic data) have no subset; every pair is in "all".
* Prompt-shuffled control: a step reward model scoring the same x_t with another pair's prompt. Pair i gets the
  prompt of pair ``(i + max(1, n // 2) + k) % n`` for the smallest k >= 0 whose index differs from i and whose
  text differs from pair i's (when no such pair exists: ``(i + max(1, n // 2)) % n``, and the run records the
  fraction of pairs whose shuffled prompt equals their own). A model that reads the prompt falls to about 0.5 on
  alignment-decided pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lpo_bench.analysis import stats
from lpo_bench.analysis.step_accuracy import AESTHETIC_DECIDED, ALIGNMENT_DECIDED, ALL

ORACLE_PART_COLUMNS = ("alignment_0", "alignment_1", "oracle_aesthetic_0", "oracle_aesthetic_1")
SUBSET_RULE = ("alignment-decided: |alignment_0 - alignment_1| > w * |oracle_aesthetic_0 - oracle_aesthetic_1|, "
               "w the oracle's aesthetic weight (reward = alignment + w * aesthetic), i.e. the alignment term "
               "dominates the reward gap; aesthetic-decided: the other pairs")
SHUFFLE_RULE = ("pair i scores with the prompt of pair (i + max(1, n//2) + k) % n, the smallest k >= 0 giving "
                "another pair with a different prompt text, over the n selected pairs")


def pair_subsets(extra: Any, aesthetic_weight: float | None = None) -> list[str] | None:
    """Per row of ``extra`` (a DataFrame with the oracle-part columns): its subset name; None when the columns
    are missing. ``aesthetic_weight`` defaults to the toy oracle's."""
    import numpy as np

    if extra is None or not set(ORACLE_PART_COLUMNS) <= set(extra.columns):
        return None
    if aesthetic_weight is None:
        from lpo_bench.toy.oracle import AESTHETIC_WEIGHT as aesthetic_weight
    a0, a1, e0, e1 = (extra[c].to_numpy(dtype=np.float64) for c in ORACLE_PART_COLUMNS)
    by_alignment = np.abs(a0 - a1) > float(aesthetic_weight) * np.abs(e0 - e1)
    return [ALIGNMENT_DECIDED if b else AESTHETIC_DECIDED for b in by_alignment]


def subset_summary(subsets: list[str] | None, n: int, aesthetic_weight: float | None = None) -> dict[str, Any]:
    """The run.json record of the subsets: definition, columns used and sizes."""
    if subsets is None:
        return {"definition": None, "note": f"the pairs have no {', '.join(ORACLE_PART_COLUMNS)} columns",
                "sizes": {ALL: n}}
    if aesthetic_weight is None:
        from lpo_bench.toy.oracle import AESTHETIC_WEIGHT as aesthetic_weight
    return {"definition": SUBSET_RULE, "columns": list(ORACLE_PART_COLUMNS), "aesthetic_weight": aesthetic_weight,
            "sizes": {ALL: n, **{c: subsets.count(c) for c in (ALIGNMENT_DECIDED, AESTHETIC_DECIDED)}}}


def shuffled_prompt_index(prompts: Sequence[str]) -> list[int]:
    """For each pair, the index of the pair whose prompt it is scored with in the control (see module doc)."""
    n = len(prompts)
    shift = max(1, n // 2)
    out = []
    for i in range(n):
        cands = [(i + shift + k) % n for k in range(n)]
        out.append(next((j for j in cands if j != i and prompts[j] != prompts[i]), cands[0]))
    return out


def same_prompt_fraction(prompts: Sequence[str], index: Sequence[int]) -> float:
    """Fraction of pairs whose shuffled prompt text equals their own (0 for a proper control)."""
    if not prompts:
        return 0.0
    return sum(prompts[j] == p for p, j in zip(prompts, index, strict=True)) / len(prompts)


def accuracy_rows(per_pair: list[dict[str, Any]], provenance: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Measurement rows (kind "step_reward_acc"): accuracy, bootstrap CI over pairs and n per (reward model,
    timestep, input mode), in first-seen order of reward model and mode; category "all" first, then one row per
    subset named in the per-pair rows' ``category`` (rows without one count in "all" only)."""
    import pandas as pd

    if not per_pair:
        return []
    df = pd.DataFrame(per_pair)
    groups = [(ALL, df)]
    if "category" in df.columns:
        cats = df["category"].dropna()
        groups += [(c, df[df["category"] == c]) for c in sorted(cats.unique())]
    rows = []
    for cat, sub in groups:
        for (name, mode, t), g in sub.groupby(["reward_model", "input_mode", "timestep"], sort=False):
            value, lo, hi = stats.mean_ci(g["acc"].to_numpy())
            prov = provenance.get(name, {})
            rows.append({"kind": "step_reward_acc", "metric": name, "input_mode": mode, "timestep": int(t),
                         "category": cat, "value": value, "ci_low": lo, "ci_high": hi, "n": int(len(g)),
                         "higher_is_better": True, "metric_version": str(prov.get("metric_version", "")),
                         "scorer_checkpoint": str(prov.get("checkpoint", "")),
                         "scorer_sha256": str(prov.get("sha256", ""))})
    return rows
