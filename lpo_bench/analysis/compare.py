"""`lpo-bench compare`: cost, time-to-target, quality and step-accuracy reports from run records only.

Reads finished runs' ``run.json``, ``measurements.parquet``, ``per_sample.parquet``, ``ledger.jsonl``
and saved images; never logs. Every headline number comes from :mod:`lpo_bench.analysis.stats`. Writes
into ``out``: ``report.md``, a self-contained ``report.html`` (figures as data URIs), ``report.json``
(every headline number), one CSV per table and the PNG figures. Both reports open with the answer
(:mod:`lpo_bench.analysis.headline`: one row per method and one generated sentence per question), then
provenance (the command line collapsed), how to read, the sections and the notes.

Definitions (printed in every report, "How to read this"):

* Cost: GPU-hours = ledger seconds x devices allocated / 3600, per phase. Counted = PREP + SAMPLE +
  SCORE + UPDATE; reward-model training (RM_TRAIN) is shown separately, and totals are given both
  excluding and including it. Train runs are grouped by (backbone, method); seeds give the median
  and min-max (``stats.median_range``). FLOPs (``analysis.flop_cost``): the ledger's work counts per phase
  priced with per-call FLOPs measured on each run's own models (``flops.json``), machine-independent; projected
  FLOPs price the same counts at the full SD1.5 and SDXL architectures.
* Reference method R: the method whose train runs have ``method_role == "proposed"``. R's speed-up over
  method M = cost(M) / cost(R) (``stats.speedup``) on the medians: above 1 means R was cheaper; given in FLOPs,
  GPU-hours and projected FLOPs.
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
import shlex
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lpo_bench import __version__, records
from lpo_bench.analysis.cost import cost_figure, cost_section, run_cost
from lpo_bench.analysis.headline import headline_section
from lpo_bench.analysis.quality import quality_section
from lpo_bench.analysis.render import Figure, Section, Table, jsonable, render, titled
from lpo_bench.analysis.runs import (
    KNOWN_KINDS,
    Run,
    check_hardware,
    discover,
    given_reward_run,
    load_run,
    reference_method,
)
from lpo_bench.analysis.step_accuracy import step_accuracy_section
from lpo_bench.analysis.time_to_target import parse_target, resolve_targets, training_curves, ttt_section
from lpo_bench.errors import HarnessError


def _how_to_read(runs: list[Run], reference: str | None, published: Any) -> list[str]:
    ref = reference or "the proposed method"
    how = [
        "GPU-hours = ledger wall seconds × devices allocated ÷ 3600 (allocated device time, not utilisation). "
        "Counted = PREP + SAMPLE + SCORE + UPDATE; SETUP, EVAL and CHECKPOINT are off the clock. Reward-model "
        "training (RM_TRAIN) is shown separately and every total is given excluding and including it.",
        "FLOPs = each phase's work counts (samples through the UNet, VAE, text encoder, reward model) × the FLOPs of "
        "one such call, measured once per run on its own models with torch's FLOP counter: machine-independent, "
        "so the headline on a CPU or a shared machine. Projected FLOPs price the same counts at the full SD1.5 and "
        "SDXL architectures: what the same amount of work would cost at the paper's scale, not a measurement.",
        f"Speed-up of {ref} (the method whose runs are marked proposed) over a method = that method's GPU-hours ÷ "
        f"{ref}'s (medians over seeds): above 1 means {ref} was cheaper. With few seeds, read the min–max "
        "ranges before the ratio.",
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
    if any(r.backbone == "toy" for r in runs):
        how.insert(0, "TOY WORLD: these runs use the CPU toy world (a tiny diffusion model and a programmatic "
                      "oracle). Their numbers test the harness and the relative behaviour of the methods; they are "
                      "not the paper's numbers and are not comparable with them.")
    if any(i.startswith("tiny-") for r in runs for i in (r.backbone, r.backbone_id)):
        how.insert(0, "TINY RANDOM-WEIGHT BACKBONES: some runs use test-sized random-weight models; their "
                      "numbers only check the plumbing.")
    return how


def _lead(runs: list[Run]) -> list[str]:
    """One-line caveats printed above the headline."""
    lead = []
    if any(i.startswith("tiny-") for r in runs for i in (r.backbone, r.backbone_id)):
        lead.append("Tiny random-weight backbones: their numbers only check the plumbing.")
    if any(r.backbone == "toy" for r in runs):
        lead.append("Toy world (CPU toy model, programmatic oracle): these numbers test the harness and the methods' "
                    "relative behaviour; they are not the paper's numbers.")
    return lead


def _command(runs: Sequence[str | Path], out: Path, target: str | None, allow_mixed: bool) -> str:
    parts = ["lpo-bench", "compare", *map(str, runs), "--out", str(out)]
    if target is not None:
        parts += ["--target", target]
    if allow_mixed:
        parts.append("--allow-mixed-hardware")
    return shlex.join(parts)


def _load(runs: Sequence[str | Path]) -> tuple[list[Run], list[str]]:
    """The finished runs of known kinds under ``runs``, and notes on what was skipped."""
    paths, notes = discover(runs)
    loaded = []
    for p in paths:
        r = load_run(p)
        if r.kind in KNOWN_KINDS:
            loaded.append(r)
        else:
            notes.append(f"skipped {p}: run kind {r.kind!r} is not one of {', '.join(KNOWN_KINDS)}")
    return loaded, notes


def _training_sections(train_runs: list[Run], target: str | None, reference: str, published: Any, mixed: bool,
                       out: Path, notes: list[str]) -> tuple[list[Section], dict[str, Any]]:
    """Cost and time-to-target of the train runs, and their headline numbers."""
    headline: dict[str, Any] = {}
    costs = [run_cost(r, notes) for r in train_runs]
    cost_sec, headline["cost"] = cost_section(costs, reference, published, mixed)
    cost_figure(out / "fig_cost.png", costs, mixed)
    cost_sec.blocks.insert(0, Figure("fig_cost.png", "GPU-hours by ledger phase per method (median over seeds); "
                                                     "hatched: reward-model training (amortised, shown separately)."))
    curves = training_curves(train_runs)
    if target is not None and not len(curves):
        raise HarnessError("--target was given but no train run recorded evaluations during training; train "
                           "with --eval-suite and --eval-every-gpu-s")
    targets = resolve_targets(target, curves) if len(curves) else []
    ttt_sec, headline["time_to_target"] = ttt_section(curves, targets, {c.run.run_id: c.rm for c in costs},
                                                      reference, mixed, out)
    headline["targets"] = [{"target": tg.text(), "how": tg.how, "backbone": tg.backbone, "suite": tg.suite}
                           for tg in targets]
    return [cost_sec, ttt_sec], headline


def _run_row(r: Run) -> dict[str, Any]:
    commit = str(r.prov.get("git_commit", "unknown")) + ("-dirty" if r.prov.get("git_dirty") else "")
    return {"run_id": r.run_id, "kind": r.kind, "method_or_model": r.subject, "backbone": r.backbone,
            "backbone_id": r.backbone_id, "seed": r.seed, "device": f"{r.device[0]} x{r.device[1]}",
            "git_commit": commit, "path": str(r.path)}


def compare(runs: Sequence[str | Path], out: str | Path, *, target: str | None = None,
            allow_mixed_hardware: bool = False) -> Path:
    """Build the comparison report of ``runs`` (run dirs or folders of runs) into ``out``; returns report.md."""
    import pandas as pd

    from lpo_bench.published import load_published

    if target is not None:
        parse_target(target)  # fail on a malformed target before reading anything
    out = Path(out)
    loaded, notes = _load(runs)
    by_kind = {k: [r for r in loaded if r.kind == k] for k in KNOWN_KINDS}
    external = [e for e in map(given_reward_run, by_kind["train"]) if e is not None]
    mixed = check_hardware(loaded + external, allow_mixed_hardware)
    published = load_published()
    reference = reference_method(by_kind["train"], notes)
    out.mkdir(parents=True, exist_ok=True)

    sections: list[Section] = []
    headline: dict[str, Any] = {"reference_method": reference}
    if by_kind["train"]:
        secs, train_headline = _training_sections(by_kind["train"], target, reference, published, mixed, out, notes)
        sections += secs
        headline.update(train_headline)
    elif target is not None:
        raise HarnessError("--target needs train runs (with evaluations during training) among the compared runs")
    if by_kind["eval"]:
        sec, headline["quality_vs_base"] = quality_section(by_kind["eval"], published, mixed, out, notes)
        sections.append(sec)
    acc_runs = by_kind["step_accuracy"] + by_kind["train"] + by_kind["reward"]
    step_sec, headline["step_accuracy"] = step_accuracy_section(acc_runs, mixed, out)
    if step_sec is not None:
        sections.append(step_sec)
    top, headline["headline"] = headline_section(by_kind["train"], by_kind["eval"], headline, reference, mixed)
    run_rows = [_run_row(r) for r in loaded]
    sections.append(Section("Runs compared", [Table("runs", titled("Runs compared", mixed), pd.DataFrame(run_rows))]))

    command = _command(runs, out, target, allow_mixed_hardware)
    date = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    commits = sorted({row["git_commit"] for row in run_rows})
    devices = sorted({f"{r.device[0]} x{r.device[1]} ({r.kind})" for r in loaded})
    here, dirty = records.git_info()
    header = [f"Date (UTC): {date}",
              f"Git commit(s) of the runs: {', '.join(commits)}; report written by lpo-bench "
              f"{__version__} at {here}{'-dirty' if dirty else ''}",
              f"Device(s): {'; '.join(devices)}",
              f"Runs: {len(loaded)} ({', '.join(f'{k} {len(v)}' for k, v in by_kind.items() if v)})"]

    for t in {b.name: b for s in [top, *sections] for b in s.blocks if isinstance(b, Table)}.values():
        records.atomic_write_bytes(out / f"{t.name}.csv", t.df.to_csv(index=False).encode())
    summary = f"Command: lpo-bench compare of {len(runs)} path{'s' * (len(runs) != 1)} ({len(command)} characters)"
    md, page = render(sections, header, _how_to_read(loaded, reference, published), notes, out, mixed, top=top,
                      command=(summary, command), lead=_lead(loaded))
    records.atomic_write_bytes(out / "report.md", md.encode())
    records.atomic_write_bytes(out / "report.html", page.encode())
    report = {"command": command, "date_utc": date, "git_commits": commits, "report_git_commit": here,
              "devices": devices, "mixed_hardware": mixed, "published_source": published.citation,
              "notes": notes, "conventions": "GPU-hours; FLOPs (counted, projected); 'inf' = never reached; null = not available",
              "runs": run_rows, **headline}
    records.atomic_write_bytes(out / "report.json", (json.dumps(jsonable(report), indent=2) + "\n").encode())
    return out / "report.md"
