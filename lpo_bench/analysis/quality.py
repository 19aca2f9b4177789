"""Quality of evaluated models: eval-run means with their CIs, and each trained model minus the base model on
the same prompts and image seeds (paired), per evaluation group (backbone, suite, split, inputs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lpo_bench.analysis import stats
from lpo_bench.analysis.grids import image_grid
from lpo_bench.analysis.released import released_table
from lpo_bench.analysis.render import Section, Table, fmt_ci, published_table, slug, titled
from lpo_bench.analysis.runs import Run, to_float


def eval_group_key(r: Run) -> tuple[str, str, str, str]:
    suite = r.info.get("suite")
    name = suite.get("name") if isinstance(suite, dict) else str(suite)
    return r.backbone_id, str(name), str(r.info.get("split", "")), str(r.info.get("inputs_sha256", ""))


def order_runs(runs: list[Run]) -> list[Run]:
    """Base model first, then by method, training seed and run id."""
    def key(r: Run) -> tuple[int, str, int, str]:
        method, _, seed = r.model()
        return (0 if method == "base" else 1, method, -1 if seed is None else int(seed), r.run_id)

    return sorted(runs, key=key)


def _matched(trained: Run, base: Run) -> tuple[Any, Any]:
    """(trained per-sample scores, those matched with base images by prompt_id, image_idx and metric, with
    ``score_base``); (None, None) when either run wrote no per-sample scores."""
    a, b = trained.per_sample(), base.per_sample()
    if a is None or b is None:
        return None, None
    keys = ["prompt_id", "image_idx", "metric"]
    return a, a.merge(b[keys + ["score"]], on=keys, suffixes=("", "_base"))


def prompt_diffs(trained: Run, base: Run, metric: str) -> Any:
    """Trained minus base per prompt (all categories): the difference of per-prompt means of matched images,
    a Series by prompt_id (sorted), computed as in :func:`paired_vs_base`; None without per-sample scores."""
    _, m = _matched(trained, base)
    if m is None:
        return None
    pp = m[m["metric"] == metric].groupby("prompt_id", sort=True)[["score", "score_base"]].mean()
    return pp["score"] - pp["score_base"]


def paired_vs_base(trained: Run, base: Run) -> list[dict[str, Any]]:
    """Trained minus base on matched images, per metric and category (+ "all"): per-prompt means, paired
    bootstrap over prompts; win rate over matched images. For a suite whose overall score is the mean of its
    category means (GenEval), "all" is the mean of the per-category differences, bootstrapped within each."""
    a, m = _matched(trained, base)
    if m is None:
        return []
    suite = trained.info.get("suite")
    by_category = isinstance(suite, dict) and suite.get("overall") == "categories"
    out = []
    for metric, gm in m.groupby("metric", sort=False):
        unmatched = int((a["metric"] == metric).sum() - len(gm))
        cats = list(dict.fromkeys(gm["category"].astype(str)))
        for cat in cats + (["all"] if len(cats) > 1 else []):
            g = gm if cat == "all" else gm[gm["category"].astype(str) == cat]
            pp = g.groupby("prompt_id", sort=True)[["score", "score_base"]].mean()
            if cat == "all" and by_category:  # the suite's overall score is the mean of its category means
                diff = g.groupby(["category", "prompt_id"], sort=True)[["score", "score_base"]].mean()
                diff = diff["score"] - diff["score_base"]
                d, lo, hi = stats.mean_of_means_ci([diff[c].to_numpy() for c in cats])
            else:
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


def _protocol(bb_id: str, suite: str, split: str, inputs: str, runs: list[Run], ev: Any) -> dict[str, Any]:
    """How an evaluation group was measured, from its first measurement row."""
    import pandas as pd

    first = ev.iloc[0] if len(ev) else {}
    versions = {f"{m} ({'?' if pd.isna(v) or v == '' else v})"
                for m, v in zip(ev.get("metric", []), ev.get("metric_version", []), strict=True)}
    return {"backbone_id": bb_id, "suite": suite, "suite_version": first.get("suite_version"), "split": split,
            "sampler": first.get("sampler"), "steps": first.get("num_inference_steps"),
            "guidance_scale": first.get("guidance_scale"), "seed_base": first.get("sample_seed_base"),
            "images_per_prompt": first.get("images_per_prompt"), "n_prompts": runs[0].info.get("n_prompts"),
            "inputs_sha256": inputs, "metrics": ", ".join(sorted(versions)), "runs": len(runs)}


def _measured_rows(runs: list[Run]) -> list[dict[str, Any]]:
    rows = []
    for r in runs:
        method, label, seed = r.model()
        for _, x in r.rows("eval_metric").iterrows():
            v, lo, hi = to_float(x["value"]), to_float(x["ci_low"]), to_float(x["ci_high"])
            rows.append({"model": label, "method": method, "seed": seed, "eval_run": r.run_id,
                         "category": str(x["category"]), "metric": str(x["metric"]), "value": v, "ci_low": lo,
                         "ci_high": hi, "n": x["n"], "n_prompts": x["n_prompts"], "_cell": fmt_ci(v, lo, hi)})
    return rows


def quality_section(eval_runs: list[Run], published: Any, mixed: bool, out: Path,
                    notes: list[str]) -> tuple[Section, list[dict[str, Any]]]:
    """Per evaluation group: measured quality, trained minus base, matching published tables, an image grid."""
    import pandas as pd

    sec = Section("Quality (evaluation runs)")
    headline: list[dict[str, Any]] = []
    groups: dict[tuple[str, str, str, str], list[Run]] = {}
    for r in eval_runs:
        groups.setdefault(eval_group_key(r), []).append(r)
    proto = []
    for gi, ((bb_id, suite, split, inputs), runs) in enumerate(sorted(groups.items())):
        runs = order_runs(runs)
        tag = f"{suite}_{gi}" if len(groups) > 1 else suite
        ev = pd.concat([r.rows("eval_metric").assign(_run=r.run_id) for r in runs], ignore_index=True)
        proto.append(_protocol(bb_id, suite, split, inputs, runs, ev))
        title = f"{suite} ({split}) on {bb_id}"
        qdf = pd.DataFrame(_measured_rows(runs))
        sec.blocks.append(Table(f"quality_{slug(tag)}", titled(f"Measured quality: {title}", mixed),
                                qdf.drop(columns="_cell"), _wide(qdf, "_cell"),
                                note="Mean score [95% bootstrap CI over prompts], as recorded by each eval run; "
                                     "prompt and image counts are in the CSV."))
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
                excludes = d["n_prompts"] >= 2 and (d["ci_low"] > 0 or d["ci_high"] < 0)
                diffs.append({"model": label, "method": method, "seed": seed, "eval_run": r.run_id,
                              "base_run": base.run_id, **d, "ci_excludes_0": bool(excludes)})
                mark = " *" if excludes else (" (1 prompt)" if d["n_prompts"] < 2 else "")
                dshow.append({"model": label, "category": d["category"], "metric": d["metric"],
                              "_cell": fmt_ci(d["diff_vs_base"], d["ci_low"], d["ci_high"]) + mark})
                headline.append({"suite": suite, "backbone_id": bb_id, **diffs[-1]})
                if d["n_unmatched"] and (r.run_id, d["metric"]) not in noted:
                    noted.add((r.run_id, d["metric"]))
                    notes.append(f"{r.run_id}: {d['n_unmatched']} {d['metric']} images had no base-model match "
                                 f"and were left out of the paired difference")
        if diffs:
            sec.blocks.append(Table(
                f"quality_vs_base_{slug(tag)}", titled(f"Trained minus base model (paired): {title}", mixed),
                pd.DataFrame(diffs), _wide(pd.DataFrame(dshow), "_cell"), note="Same prompts and image seeds on "
                "both sides; difference of per-prompt means [paired bootstrap 95% CI over prompts]. This is the 'did "
                "it improve' number. *: the CI excludes 0 (a credible change); a single prompt gives no interval. "
                "Win rates over matched images are in the CSV."))
        measured = {(str(m), str(c)) for m, c in zip(ev.get("metric", []), ev.get("category", []), strict=True)}
        for pt in published.matching("quality", bb_id, suite):
            sec.blocks.append(published_table(pt, published, measured=measured))
        rel = released_table(runs, published, suite, tag)  # released models beside their published rows
        if rel is not None:
            sec.blocks.append(rel)
        grid = image_grid(runs, out, tag, mixed, notes)
        if grid is not None:
            sec.blocks.append(grid)
    sec.blocks.insert(0, Table("eval_protocol", "Evaluation protocol of each table", pd.DataFrame(proto)))
    return sec, headline
