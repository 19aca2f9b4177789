"""Rich tables of a ``run_bench`` result."""

from __future__ import annotations

import sys
from typing import Any

from lpo_bench.bench.train_step import OVERHEAD_TARGET_PCT


def _f(x: float | None, fmt: str = ".4f") -> str:
    return "-" if x is None else format(x, fmt)


def _evals(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {v:g}" for n, v in counts.items())


def render(result: dict[str, Any], console: Any = None) -> None:
    from rich.console import Console

    console = console or Console(width=None if sys.stdout.isatty() else 150)
    dev = result["provenance"]["device_name"]
    if result.get("sampling_step"):
        render_sampling_step(console, result["sampling_step"], result["backbone"], dev)
    if result.get("train_step"):
        render_train_step(console, result, dev)


def render_sampling_step(console: Any, ss: dict[str, Any], backbone: str, dev: str) -> None:
    from rich.table import Table

    k = ss["num_candidates"]
    t = Table(title=f"One sampling step, K={k}, 1 prompt: {backbone} on {dev} (seconds, median of {ss['repeats']}"
                    f"{' interleaved rounds' if ss['interleaved'] else ''}; TFLOP counted)")
    for col in ("component", "method", "s", "s per candidate", "TFLOP", "evaluations"):
        t.add_column(col, justify="left" if col in ("component", "method", "evaluations") else "right")
    d = ss["denoise"]
    t.add_row("denoising step (CFG), shared", "all", _f(d["median_s"]), "-", _f(d.get("tflop"), ".3g"),
              _evals(d["evals"]))
    for m, r in ss["methods"].items():
        for name, c in r["components"].items():
            t.add_row(name, m, _f(c["median_s"]), _f(c["median_s"] / k), _f(c.get("tflop"), ".3g"), _evals(c["evals"]))
    console.print(t)
    rat = ss["ratios"]
    t = Table(title=f"Per method: the shared step + its own components; ratios over {rat['reference']}")
    for col in ("method", "total s", "total TFLOP", "ratio (s)", "ratio (TFLOP)", "ratio per round (s)"):
        t.add_column(col, justify="left" if col == "method" else "right")
    for m, r in ss["methods"].items():
        o = rat["over_reference"].get(m, {})
        t.add_row(m, _f(r["total_s"]), _f(r.get("total_tflop"), ".3g"), _f(o.get("seconds"), ".2f"),
                  _f(o.get("tflop"), ".2f"), ", ".join(f"{x:.2f}" for x in o.get("seconds_rounds", [])) or "-")
    console.print(t)
    acc = ss.get("acceptance")
    if acc:
        verdict = ("PASS" if acc["passed"] else "FAIL") if acc["applies"] else (
            f"{'yes' if acc['passed'] else 'no'} (not a full-size backbone at K = 4: indicative only)")
        console.print(f"{acc['criterion']}: {verdict}")
    for pub in ss.get("published", []):
        render_published(console, pub)
    for name, label in ss["labels"].items():
        console.print(f"  {name}: {label}")
    console.print(f"  attention: {ss['attention']}")


def render_published(console: Any, pub: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title=f"Published (paper): {pub['title']} ({pub['units']})", caption=pub["note"] or None)
    t.add_column("row")
    for col in pub["columns"]:
        t.add_column(col, justify="right")
    for row in pub["rows"]:
        t.add_row(row["label"], *(f"{v:g}" for v in row["values"]))
    console.print(t)


def render_train_step(console: Any, result: dict[str, Any], dev: str) -> None:
    from rich.table import Table

    train = result["train_step"]
    ph = sorted({p for r in train.values() for p in r["seconds_by_phase"]})
    t = Table(title=f"One training cycle through the harness: {result['backbone']} on {dev} "
                    f"(seconds, median of {result['repeats']})")
    for col in ("method", "updates", "pairs", "s/update", "s/pair", *(f"{p}/upd" for p in ph)):
        t.add_column(col, justify="left" if col == "method" else "right")
    for m, r in train.items():
        pu = r["seconds_by_phase_per_update"]
        t.add_row(m, str(r["updates_per_cycle"]), _f(r["pairs_per_cycle"], "g"), _f(r["per_update_s"]),
                  _f(r["per_pair_s"], ".5f"), *(f"{pu.get(p, 0.0):.4f}" for p in ph))
    console.print(t)
    names = sorted({c for r in train.values() for c in r["counts_per_pair"]})
    t = Table(title="Work counters per pair (ledger rows; UNet counts are evaluations, a CFG pass on n latents = 2n)")
    t.add_column("method")
    for c in names:
        t.add_column(c, justify="right")
    for m, r in train.items():
        t.add_row(m, *(f"{r['counts_per_pair'].get(c, 0.0):.2f}" for c in names))
    console.print(t)
    rat = result.get("train_step_ratios", {})
    for m, r in rat.get("over_reference", {}).items():
        console.print(f"{m} / {rat['reference']}: " + ", ".join(f"{n} {v:.2f}x" for n, v in r.items()))
    if any("overhead" in r for r in train.values()):
        t = Table(title=f"Harness overhead: ledger vs null ledger, same cycle (target <= {OVERHEAD_TARGET_PCT:g} %)")
        for col in ("method", "harness s", "bare s", "median paired %", "fastest runs %", "ledger self-time %"):
            t.add_column(col, justify="left" if col == "method" else "right")
        for m, r in train.items():
            o = r.get("overhead")
            if o:
                t.add_row(m, f"{o['harness_median_s']:.4f}", f"{o['bare_median_s']:.4f}", f"{o['overhead_pct']:+.2f}",
                          f"{o['overhead_min_pct']:+.2f}", f"{o['ledger_self_pct']:.3f}")
        console.print(t)
