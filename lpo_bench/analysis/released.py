"""Released models (``eval --model released:<name>``) measured beside the numbers their papers published: a check
of this harness's evaluation against the authors'.

An eval run of a released model records the entry's ``published_rows`` (``"<table id>:<row label>"`` of
``data/published.toml``) and the guidance scale the paper sampled it with. For every such row published for the
run's backbone and suite, each column with a measured (metric, category) gives one line: the measured mean with
its 95% CI, the published value, measured minus published, and whether the published value lies inside the CI.
The protocols still differ in known ways (the paper scored one image per prompt at one shared seed; the suite's
guidance scale may differ from the paper's, flagged per line), so a gap is a prompt to look, not a verdict.
"""

from __future__ import annotations

import math
from typing import Any

from lpo_bench.analysis.render import Table, fmt, fmt_ci, slug
from lpo_bench.analysis.runs import Run, to_float


def released_info(run: Run) -> dict[str, Any] | None:
    """The released-model provenance an eval run recorded (None for any other model)."""
    spec = run.info.get("model_spec") or {}
    rel = spec.get("released") if spec.get("kind") == "released" else None
    return rel if isinstance(rel, dict) else None


def released_rows(run: Run, published: Any, suite: str) -> list[dict[str, Any]]:
    """One row per (published row, column) of the run's released model with a measured number beside it."""
    rel = released_info(run)
    if rel is None:
        return []
    measured = {(str(m), str(c)): (to_float(v), to_float(lo), to_float(hi)) for m, c, v, lo, hi in zip(
        *(run.rows("eval_metric")[k] for k in ("metric", "category", "value", "ci_low", "ci_high")), strict=True)}
    cfg_here = to_float((run.info.get("sampler") or {}).get("guidance_scale"))
    cfg_paper = to_float((rel.get("protocol") or {}).get("guidance_scale"))
    tables = {t.id: t for t in published.matching("quality", run.backbone_id, suite)}
    out = []
    for ref in rel.get("published_rows") or []:
        table_id, _, label = str(ref).partition(":")
        pt = tables.get(table_id)
        for row in (r for r in (pt.rows if pt else ()) if r.label == label):
            for col, pub in zip(pt.columns, row.values, strict=True):  # type: ignore[union-attr]
                m = measured.get((col.metric, col.category))
                if m is None or math.isnan(pub):
                    continue
                v, lo, hi = m
                has_ci = not (math.isnan(lo) or math.isnan(hi))
                out.append({"released_model": rel.get("name"), "eval_run": run.run_id, "published_table": table_id,
                            "published_row": label, "metric": col.metric, "category": col.category,
                            "column": col.label, "measured": v, "ci_low": lo, "ci_high": hi, "published": pub,
                            "measured_minus_published": v - pub,
                            "published_in_ci": bool(has_ci and lo <= pub <= hi),
                            "guidance_scale_here": cfg_here, "guidance_scale_paper": cfg_paper,
                            "same_guidance": cfg_here == cfg_paper, "row_note": row.note})
    return out


def released_table(runs: list[Run], published: Any, suite: str, tag: str) -> Table | None:
    """The measured-versus-published table of the released models among ``runs`` (one evaluation group)."""
    import pandas as pd

    rows = [x for r in runs for x in released_rows(r, published, suite)]
    if not rows:
        return None
    df = pd.DataFrame(rows)
    show = pd.DataFrame([{
        "released model": x["released_model"], "published row": f"{x['published_table']}: {x['published_row']}",
        "metric": x["column"], "measured [95% CI]": fmt_ci(x["measured"], x["ci_low"], x["ci_high"]),
        "published": fmt(x["published"]), "measured − published": fmt(x["measured_minus_published"]),
        "published in CI": "yes" if x["published_in_ci"] else "no",
        "CFG here / paper": f"{fmt(x['guidance_scale_here'])} / {fmt(x['guidance_scale_paper'])}"
                            + ("" if x["same_guidance"] else " (differs)")} for x in rows])
    return Table(f"released_vs_published_{slug(tag)}", "Released models: measured here beside the published numbers",
                 df, show, note=f"{published.citation}. A check of this evaluation against the authors': the paper "
                 "scored one image per prompt with one shared seed, this run every image with its own seed; a "
                 "different CFG (flagged) alone moves these metrics. Published values are never mixed into the "
                 "measured tables.")
