"""The answer first: one headline row per method and one generated sentence per question, above everything else
in the report.

Rows: quality change against the base model on each evaluated suite's primary metric (category "all"), cost
excluding and including reward-model training, the reference method's speed-up and, when there is a target,
the GPU-hours to reach it. Cost and time-to-target numbers are the sections' own headline numbers; quality is
computed here from per-sample scores with :mod:`lpo_bench.analysis.stats`: each trained model minus the base
model per prompt (matched images), averaged over the method's evaluated seeds, with a paired bootstrap CI over
prompts; the best two methods are compared the same way on their common prompts. Every sentence is built from
those numbers, says how many prompts and seeds stand behind it, and hedges when intervals overlap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from lpo_bench.analysis import stats
from lpo_bench.analysis.quality import eval_group_key, order_runs, prompt_diffs
from lpo_bench.analysis.render import (
    Answer,
    Section,
    Table,
    fmt,
    fmt_range,
    fmt_signed_ci,
    fmt_speedup,
    fmt_ttt,
    titled,
)
from lpo_bench.analysis.runs import Run
from lpo_bench.analysis.time_to_target import primary_metric


@dataclass
class Column:
    """One evaluated suite: the primary metric's change against base, per method."""

    label: str  # "toy-oracle on toy-general"
    backbone: str
    suite: str
    metric: str
    higher_is_better: bool
    cells: dict[str, Cell] = field(default_factory=dict)  # by method

    def ranked(self) -> list[Cell]:
        """Methods by improvement over base, best first (ties: by name)."""
        sign = 1.0 if self.higher_is_better else -1.0
        return sorted(self.cells.values(), key=lambda c: (-sign * c.d, c.method))


@dataclass
class Cell:
    method: str
    diffs: Any  # trained minus base per prompt, mean over seeds (Series by prompt_id)
    seed_means: list[float]  # each evaluated seed's mean change
    d: float
    lo: float
    hi: float

    @property
    def n_seeds(self) -> int:
        return len(self.seed_means)

    @property
    def n_prompts(self) -> int:
        return len(self.diffs)


def quality_columns(eval_runs: list[Run]) -> list[Column]:
    """Per evaluation group with a base-model run: each method's change on the suite's primary metric."""
    import pandas as pd

    groups: dict[tuple[str, str, str, str], list[Run]] = {}
    for r in eval_runs:
        groups.setdefault(eval_group_key(r), []).append(r)
    cols: list[Column] = []
    for (_, suite, split, _), runs in sorted(groups.items()):
        runs = order_runs(runs)
        base = next((r for r in runs if r.model()[0] == "base"), None)
        ev = base.rows("eval_metric") if base is not None else []
        if base is None or not len(ev):
            continue
        metric = primary_metric(suite, list(dict.fromkeys(ev["metric"].astype(str))))
        hib = ev[ev["metric"].astype(str) == metric]["higher_is_better"]
        per_method: dict[str, list[Any]] = {}
        for r in runs:
            d = None if r is base else prompt_diffs(r, base, metric)
            if d is not None and len(d):
                per_method.setdefault(r.model()[0], []).append(d)
        if not per_method:
            continue
        label = f"{metric} on {suite}"
        if any(c.label == label and c.backbone == base.backbone for c in cols):
            label += f" ({split}, {len(cols)})"
        col = Column(label, base.backbone, suite, metric, bool(hib.iloc[0]) if len(hib) and not pd.isna(hib.iloc[0])
                     else True)
        for method, ds in per_method.items():
            pooled = pd.concat(ds, axis=1, join="inner").mean(axis=1)  # prompts every seed was matched on
            col.cells[method] = Cell(method, pooled, [float(x.mean()) for x in ds], *stats.mean_ci(pooled.to_numpy()))
        cols.append(col)
    return cols


# ---------------------------------------------------------------------------- sentences
def _seeds(ns: list[int], kind: str) -> str:
    """"3 training seeds per method", "1–2 evaluated seeds per method"."""
    lo, hi = min(ns), max(ns)
    return f"{lo if lo == hi else f'{lo}–{hi}'} {kind} seed{'s' if hi > 1 else ''} per method"


def _ci(c: Cell) -> str:
    return fmt_signed_ci(c.d, c.lo, c.hi)


def _seed_range(c: Cell) -> tuple[float, float]:
    return min(c.seed_means), max(c.seed_means)


def _best_answer(col: Column) -> str:
    ranked = col.ranked()
    best, sign = ranked[0], (1 if col.higher_is_better else -1)
    basis = (f"paired 95% CI over {best.n_prompts} prompts" + (f" of the mean over {best.n_seeds} seeds"
                                                              if best.n_seeds > 1 else ""))
    what = f"{best.method}: {_ci(best)} {col.metric} vs base on {col.suite} ({basis}"
    if stats.excludes(best.lo, best.hi) and sign * best.d > 0:
        text = f"{what}, excludes 0)."
    elif stats.excludes(best.lo, best.hi):
        text = f"None: every method scored worse than base; the least affected is {what}, excludes 0)."
    else:
        text = f"None credibly: the best estimate is {what}, includes 0)."
    if len(ranked) > 1:
        r = ranked[1]
        if stats.overlap(best.lo, best.hi, r.lo, r.hi):
            text += (f" The runner-up's CI overlaps {best.method}'s ({r.method}: {_ci(r)}), so these intervals alone "
                     f"do not rank the two; see the paired comparison.")
        else:
            text += f" The runner-up's CI does not overlap {best.method}'s ({r.method}: {_ci(r)})."
    else:
        text += " It is the only method evaluated against base."
    ns = [c.n_seeds for c in ranked]
    if max(ns) == 1:
        text += " With 1 evaluated seed per method the CIs cover prompt sampling only, not training randomness."
    else:
        lo, hi = _seed_range(best)
        text += f" {_seeds(ns, 'evaluated')}; {best.method}'s seeds range {fmt(lo)} to {fmt(hi)}."
    return text


def _gap_answer(col: Column) -> str:
    import pandas as pd

    a, b = col.ranked()[:2]
    both = pd.concat([a.diffs, b.diffs], axis=1, join="inner")
    d, lo, hi = stats.paired_diff_ci(both.iloc[:, 0].to_numpy(), both.iloc[:, 1].to_numpy())
    what = f"{a.method} − {b.method} = {fmt_signed_ci(d, lo, hi)} {col.metric} on {col.suite}"
    if len(both) >= 2 and stats.excludes(lo, hi):
        text = (f"Yes on these prompts: {what} (paired 95% CI over the same {len(both)} prompts excludes 0), so "
                f"{a.method} is ahead.")
        if min(a.n_seeds, b.n_seeds) == 1:
            text += " Only 1 evaluated seed for at least one of them, so training randomness is not measured."
        else:
            (alo, ahi), (blo, bhi) = _seed_range(a), _seed_range(b)
            rel = "overlap, so another seed could reverse it" if stats.overlap(alo, ahi, blo, bhi) else "do not overlap"
            text += f" Per-seed changes ({a.method} {fmt(alo)} to {fmt(ahi)}, {b.method} {fmt(blo)} to {fmt(bhi)}) {rel}."
        return text
    return (f"No: {what} (paired 95% CI over the same {len(both)} prompts includes 0); these runs do not separate "
            f"them ({_seeds([a.n_seeds, b.n_seeds], 'evaluated')}).")


def _cost_answer(bb: str, methods: dict[str, dict[str, Any]], reference: str | None, multi: bool) -> str:
    med = {m: (h["gpu_h_counted"]["median"], h["gpu_h_total_incl_rm"]["median"]) for m, h in methods.items()}
    order = sorted(med, key=lambda m: (math.isnan(med[m][0]), med[m][0], m))
    listing = ", ".join(f"{m} {fmt(med[m][0])} / {fmt(med[m][1])}" for m in order)
    text = (f"{f'On {bb}: c' if multi else 'C'}ounted GPU-hours excl. / incl. reward-model training, median over "
            f"seeds: {listing}.")
    known_in = [m for m in order if not math.isnan(med[m][1])]
    text += f" Cheapest excl. RM: {order[0]}" + (f"; incl. RM: {min(known_in, key=lambda m: med[m][1])}."
                                                  if known_in else "; incl. RM unknown.")
    others = [m for m in order if m != reference]
    if reference in methods and others:
        sps = ", ".join(f"{m} {fmt_speedup(methods[m]['speedup_excl_rm'], reference)} / "
                        f"{fmt_speedup(methods[m]['speedup_incl_rm'], reference)}" for m in others)
        gpu = f" Speed-up of {reference} (method's GPU-h ÷ {reference}'s, excl. / incl. RM): {sps}."
        flop = _flop_speedups(methods, others, reference)
        on_cpu = all(h.get("on_cpu") for h in methods.values())
        text += (flop + gpu.replace(" Speed-up of", " In GPU-hours (CPU wall time), speed-up of")) if flop and on_cpu \
            else gpu + flop
    ns = [h["n_seeds"] for h in methods.values()]
    if max(ns) == 1:
        text += " 1 training seed per method, so the spread over seeds is not measured."
    elif len(order) > 1:
        a, b = (methods[m]["gpu_h_counted"] for m in order[:2])
        rel = ("overlap, so their order may change with more seeds" if stats.overlap(a["min"], a["max"], b["min"],
                                                                                    b["max"]) else "do not overlap")
        text += (f" {_seeds(ns, 'training')}; the two cheapest's min–max ranges excl. RM ({order[0]} "
                 f"{fmt(a['min'])}–{fmt(a['max'])}, {order[1]} {fmt(b['min'])}–{fmt(b['max'])}) {rel}.")
    return text


def _flop_speedups(methods: dict[str, dict[str, Any]], others: list[str], reference: str) -> str:
    """The reference's speed-up in counted FLOPs (machine-independent), as a sentence; "" without FLOP records."""
    sp = {m: (methods[m].get("speedup_flops_excl_rm", math.nan), methods[m].get("speedup_flops_incl_rm", math.nan))
          for m in others}
    if all(math.isnan(a) for a, _ in sp.values()):
        return ""
    listing = ", ".join(f"{m} {fmt_speedup(a, reference)} / {fmt_speedup(b, reference)}" for m, (a, b) in sp.items())
    return f" Speed-up of {reference} in FLOPs (method's counted FLOPs ÷ {reference}'s, excl. / incl. RM): {listing}."


def _ttt_answer(target: dict[str, Any], rows: list[dict[str, Any]], reference: str | None) -> str:
    how = "given" if target["how"].startswith("given") else "default: the weakest method's typical best"
    rows = sorted(rows, key=lambda r: (r["median_gpu_h_to_target"], r["method"]))
    listing = ", ".join(f"{r['method']} {fmt_ttt(r['median_gpu_h_to_target'])} / "
                        f"{fmt_ttt(r['median_gpu_h_to_target_incl_rm'])} ({r['seeds_reached']}/{r['n_seeds']} seeds reached)"
                        for r in rows)
    text = f"To reach {target['target']} ({how}), median counted GPU-h excl. / incl. RM: {listing}."
    sps = [r for r in rows if r["method"] != reference]
    if reference in {r["method"] for r in rows} and sps:
        text += (f" Speed-up of {reference}: " + ", ".join(
            f"{r['method']} {fmt_speedup(r['speedup_excl_rm'], reference)} / "
            f"{fmt_speedup(r['speedup_incl_rm'], reference)}" for r in sps) + ".")
    return text + (f" Resolved only to the evaluation cadence; {_seeds([r['n_seeds'] for r in rows], 'training')}, "
                   f"a miss counts as never.")


# ---------------------------------------------------------------------------- the section
def _row_keys(cols: list[Column], cost: dict[str, Any], ttt: list[dict[str, Any]]) -> list[tuple[str, str]]:
    keys = {(bb, m) for bb, ms in cost.items() for m in ms} | {(c.backbone, m) for c in cols for m in c.cells}
    keys |= {(r["backbone"], r["method"]) for r in ttt}
    first = {c.backbone: c for c in reversed(cols)}  # each backbone's first column orders its rows

    def rank(k: tuple[str, str]) -> tuple[str, int, str]:
        col = first.get(k[0])
        order = [c.method for c in col.ranked()] if col else []
        return (k[0], order.index(k[1]) if k[1] in order else len(order), k[1])

    return sorted(keys, key=rank)


def _row(bb: str, m: str, cols: list[Column], cost: dict[str, Any], ttt: list[dict[str, Any]],
         targets: list[dict[str, Any]], reference: str | None, multi: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """One method's headline numbers (for the CSV and report.json) and their display strings."""
    h = cost.get(bb, {}).get(m)
    row: dict[str, Any] = {"backbone": bb, "method": m, "reference": m == reference,
                           "n_train_seeds": h["n_seeds"] if h else 0}
    disp: dict[str, Any] = {"backbone": bb} if multi else {}
    disp["method"] = m + (" (reference)" if m == reference else "")
    disp["seeds (train)"] = str(row["n_train_seeds"]) if h else "–"
    for c in cols:
        cell = c.cells.get(m) if c.backbone == bb else None
        row.update({f"{c.label}: {name}": (getattr(cell, k) if cell else math.nan) for k, name in
                    (("d", "diff_vs_base"), ("lo", "ci_low"), ("hi", "ci_high"), ("n_prompts", "n_prompts"),
                     ("n_seeds", "n_eval_seeds"))})
        disp[f"Δ {c.label} vs base [95% CI]"] = ("–" if cell is None else _ci(cell) + (
            " *" if cell.n_prompts >= 2 and stats.excludes(cell.lo, cell.hi) else "")
            + (f" ({cell.n_seeds} seeds)" if cell.n_seeds > 1 else ""))
    nan3 = {"median": math.nan, "min": math.nan, "max": math.nan}
    ex, inc = (h["gpu_h_counted"], h["gpu_h_total_incl_rm"]) if h else (nan3, nan3)
    sp = (h["speedup_excl_rm"], h["speedup_incl_rm"]) if h else (math.nan, math.nan)
    row.update({"gpu_h_excl_rm_median": ex["median"], "gpu_h_incl_rm_median": inc["median"],
                "speedup_excl_rm": sp[0], "speedup_incl_rm": sp[1]})
    if cost:
        disp["GPU-h excl. RM"] = fmt_range(ex["median"], ex["min"], ex["max"])
        disp["GPU-h incl. RM"] = fmt_range(inc["median"], inc["min"], inc["max"])
    fsp = (h.get("speedup_flops_excl_rm", math.nan), h.get("speedup_flops_incl_rm", math.nan)) if h else (math.nan,) * 2
    row.update({"speedup_flops_excl_rm": fsp[0], "speedup_flops_incl_rm": fsp[1]})
    if cost and reference is not None:
        if any(not math.isnan(x.get("speedup_flops_excl_rm", math.nan)) for ms in cost.values() for x in ms.values()):
            disp[f"speed-up of {reference} in FLOPs (excl. / incl. RM)"] = (f"{fmt_speedup(fsp[0], reference)} / "
                                                                            f"{fmt_speedup(fsp[1], reference)}")
        disp[f"speed-up of {reference} (excl. / incl. RM)"] = (f"{fmt_speedup(sp[0], reference)} / "
                                                               f"{fmt_speedup(sp[1], reference)}")
    for tg in targets:
        t = next((r for r in ttt if r["target"] == tg["target"] and (r["backbone"], r["method"]) == (bb, m)), None)
        row[f"gpu_h_to {tg['target']}"] = t["median_gpu_h_to_target"] if t else math.nan
        row[f"gpu_h_to {tg['target']} incl_rm"] = t["median_gpu_h_to_target_incl_rm"] if t else math.nan
        disp[f"GPU-h to {tg['target']} (excl. / incl. RM)"] = "–" if t is None else (
            f"{fmt_ttt(t['median_gpu_h_to_target'])} / {fmt_ttt(t['median_gpu_h_to_target_incl_rm'])} "
            f"({t['seeds_reached']}/{t['n_seeds']} reached)")
    return row, disp


def headline_section(train_runs: list[Run], eval_runs: list[Run], numbers: dict[str, Any], reference: str | None,
                     mixed: bool) -> tuple[Section, dict[str, Any]]:
    """The headline table and the answers; ``numbers``: the sections' headline numbers (cost, time_to_target,
    targets). Returns the section and its numbers for report.json."""
    import pandas as pd

    cost, ttt, targets = numbers.get("cost", {}), numbers.get("time_to_target", []), numbers.get("targets", [])
    steered = {t["suite"] for t in targets}
    cols = sorted(quality_columns(eval_runs), key=lambda c: c.suite not in steered)  # target suites first
    keys = _row_keys(cols, cost, ttt)
    multi = len({bb for bb, _ in keys}) > 1
    proposed = any(r.method == reference and r.info.get("method_role") == "proposed" for r in train_runs)
    rows, show = zip(*(_row(bb, m, cols, cost, ttt, targets, reference, multi) for bb, m in keys)) if keys else ((), ())
    ref_how = ("the method marked proposed" if proposed else "no method is marked proposed, so the first given; "
               "see Notes")
    note = ("Δ: trained minus base on the same prompts and image seeds, mean over evaluated seeds [paired 95% "
            "bootstrap CI over prompts]; *: the CI excludes 0." if cols else "")
    if cost:
        note += " GPU-h: median over training seeds (min–max)."
    if cost and reference is not None:
        note += (f" Speed-up of {reference} ({ref_how}) = method's GPU-h ÷ {reference}'s: above 1, {reference} "
                 f"was cheaper.")
    sec = Section("Headline")
    if rows:
        sec.blocks.append(Table("headline", titled("One row per method", mixed), pd.DataFrame(list(rows)),
                                pd.DataFrame(list(show)),
                                note=note.strip()))
    answers = _answers(cols, cost, ttt, targets, reference, multi)
    sec.blocks += answers
    return sec, {"rows": list(rows), "answers": [{"question": a.question, "answer": a.text} for a in answers]}


def _answers(cols: list[Column], cost: dict[str, Any], ttt: list[dict[str, Any]], targets: list[dict[str, Any]],
             reference: str | None, multi: bool) -> list[Answer]:
    out = []
    if not cols:
        out.append(Answer("Which method improved quality most?", "Not measured: no trained model was evaluated "
                          "beside a base-model eval run of the same suite, prompts and seeds."))

    def scope(c: Column) -> str:
        return (f" on {c.label if len({x.suite for x in cols}) < len(cols) else c.suite}" if len(cols) > 1 else "") \
            + (f" ({c.backbone})" if multi else "")

    for c in cols:
        out.append(Answer(f"Which method improved quality most{scope(c)}?", _best_answer(c)))
    for c in cols:
        if len(c.cells) > 1:
            out.append(Answer(f"Is the difference between the best two methods resolved{scope(c)}?", _gap_answer(c)))
    if cost:
        out.append(Answer("At what cost?", " ".join(_cost_answer(bb, ms, reference, multi) for bb, ms in cost.items())))
    else:
        out.append(Answer("At what cost?", "Not measured: no train runs among the compared runs."))
    for tg in targets:
        rows = [r for r in ttt if r["target"] == tg["target"] and (tg["backbone"] in (None, r["backbone"]))]
        if rows:
            out.append(Answer("How fast to the target?", _ttt_answer(tg, rows, reference)))
    return out
