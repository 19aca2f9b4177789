"""Suite evaluation of one UNet: sample with one generator per image, score every image, aggregate with CIs.

Image ``k`` of a prompt is sampled from ``sample_seed(suite.seed_base, prompt_id, k)`` by its own generator,
so batch size and prompt subsets never change an image. Images are quantised to 8 bits before scoring,
exactly as the saved PNGs that the official scripts score.

Aggregates: per metric, one row per category it scored and, when it scored several, one for "all".
``value`` is the mean score ("all" of a suite with ``overall="categories"``, GenEval: the mean of the category
means, with a bootstrap stratified by category); the 95% CI is a bootstrap over prompts of the per-prompt mean scores (images
of one prompt share the prompt, so they are not independent samples); ``n`` is the number of scored images
and ``n_prompts`` the number of prompts.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lpo_bench import progress, records
from lpo_bench.analysis import stats
from lpo_bench.data.suites import PromptItem, Suite, get_suite
from lpo_bench.errors import HarnessError
from lpo_bench.evaluation.images import GRID_MAX_IMAGES, image_question_id, save_images, to_uint8
from lpo_bench.evaluation.loading import SuiteMetrics, resolve_metrics


@dataclass
class EvalOutput:
    rows: list[dict[str, Any]]
    per_sample: list[dict[str, Any]]
    skipped: list[dict[str, str]]  # {"category", "metric", "reason"}
    scorers: dict[str, dict[str, Any]]  # metric -> provenance
    grid: Any = None  # uint8 [n,H,W,3]: image 0 of the first prompts (for a preview)
    n_images: int = 0


def sampler_name(suite: Suite) -> str:
    s = suite.sampler
    return s.scheduler if s.eta == 0 else f"{s.scheduler}(eta={s.eta:g})"


def evaluate_items(
    bundle: Any,
    unet: Any,
    suite: Suite,
    items: list[PromptItem],
    *,
    images_per_prompt: int,
    batch_size: int = 64,
    metrics: SuiteMetrics,
    image_dir: Path | None = None,
    log: Callable[[str], None] | None = None,
    best_of: tuple[int, Any] | None = None,
) -> EvalOutput:
    """Generate ``images_per_prompt`` images per item, score them, aggregate (see module docstring).

    With ``image_dir`` every image is saved (and every category generated, even one whose metrics
    are unavailable, so it can be scored offline); without it only scorable categories are sampled.
    Progress (images generated and scored) goes to a ``lpo_bench.progress`` bar; ``log`` is unused.
    ``best_of=(n, LoadedMetric)``: each image is the best of n candidates under that metric (:func:`best_of_images`).
    """
    import numpy as np

    from lpo_bench.diffusion.generate import generate_images
    from lpo_bench.diffusion.seeding import sample_seed
    from lpo_bench.metrics._common import quantize_8bit

    if images_per_prompt < 1 or batch_size < 1:
        raise HarnessError(f"images per prompt and batch size must be >= 1 (got {images_per_prompt}, {batch_size})")
    cats = [c for c in suite.categories if any(it.category == c for it in items)]
    skipped = [{"category": c, "metric": m, "reason": metrics.unavailable[m]}
               for c in cats for m in suite.metrics_for(c) if m in metrics.unavailable]
    gen_cats = set(cats) if image_dir is not None else {c for c in cats if metrics.available_for(suite, c)}
    needs_dir = any(m in metrics.external for c in gen_cats for m in suite.metrics_for(c))
    tmp = tempfile.TemporaryDirectory(prefix="lpo-bench-eval-") if image_dir is None and needs_dir else None
    out_dir = Path(tmp.name) if tmp is not None else image_dir
    try:
        jobs = [(it, k) for it in items if it.category in gen_cats for k in range(images_per_prompt)]
        seeds = [sample_seed(suite.seed_base, it.prompt_id, k) for it, k in jobs]
        per_sample: list[dict[str, Any]] = []
        grid: list[Any] = []
        if out_dir is not None:
            for c in gen_cats:
                (out_dir / c / "samples").mkdir(parents=True, exist_ok=True)
        sp = suite.sampler
        with progress.task(f"eval {suite.name}", total=len(jobs), unit="image") as bar:
            for start in range(0, len(jobs), batch_size):
                chunk = jobs[start : start + batch_size]
                prompts = [it.text for it, _ in chunk]
                def sample(sub_seeds: list[int], prompts: list[str] = prompts) -> Any:
                    return quantize_8bit(generate_images(
                        bundle, prompts, sub_seeds, num_inference_steps=sp.num_inference_steps,
                        guidance_scale=sp.guidance_scale, eta=sp.eta, batch_size=batch_size, unet=unet))

                if best_of is None:
                    imgs = sample(seeds[start : start + batch_size])
                else:
                    imgs, chosen = best_of_images(sample, chunk, seeds[start : start + batch_size], prompts,
                                                  suite.seed_base, *best_of)
                    seeds[start : start + batch_size] = chosen
                u8 = to_uint8(imgs) if out_dir is not None or suite.kind == "toy" else None
                if out_dir is not None:
                    save_images(out_dir, chunk, u8, images_per_prompt)
                if suite.kind == "toy":
                    grid += [u8[j] for j, (_, k) in enumerate(chunk) if k == 0][: GRID_MAX_IMAGES - len(grid)]
                for m, lm in metrics.inproc.items():
                    idx = [j for j, (it, _) in enumerate(chunk) if m in suite.metrics_for(it.category)]
                    if not idx:
                        continue
                    scores = lm.scorer.score(imgs[idx], [prompts[j] for j in idx])
                    for j, s in zip(idx, scores.tolist(), strict=True):
                        it, k = chunk[j]
                        per_sample.append(_sample_row(it, k, seeds[start + j], m, s))
                bar.advance(len(chunk))
        for m, scorer in metrics.external.items():
            for c in cats:
                if m in suite.metrics_for(c) and out_dir is not None:
                    per_sample += _external_rows(scorer, m, c, out_dir, items, images_per_prompt, suite.seed_base)
    finally:
        if tmp is not None:
            tmp.cleanup()
    scorers = {m: lm.provenance.as_dict() for m, lm in metrics.inproc.items()}
    for m, scorer in metrics.external.items():
        scorers[m] = {"metric_id": m, "metric_version": str(scorer.version), "checkpoint": " ".join(scorer.command),
                      "sha256": records.sha256_of(scorer.detector_info), "detector": scorer.detector_info}
    hib = {m: lm.higher_is_better for m, lm in metrics.inproc.items()}
    rows = aggregate(per_sample, suite, items, images_per_prompt=images_per_prompt, batch_size=batch_size,
                     scorers=scorers, higher_is_better=hib)
    return EvalOutput(rows, per_sample, skipped, scorers, np.stack(grid) if grid else None, len(jobs))


def best_of_images(sample: Callable[[list[int]], Any], jobs: list[tuple[PromptItem, int]], seeds: list[int],
                   prompts: list[str], seed_base: int, n: int, selector: Any) -> tuple[Any, list[int]]:
    """(images [b,3,H,W], the seed of each chosen image): per job the best of ``n`` candidates under ``selector``
    (a LoadedMetric; ties keep the earlier candidate). Candidate 0 has the job's own seed; candidate j > 0 has
    ``sample_seed(seed_base, "<prompt_id>/best-of/<j>", image_idx)``."""
    import torch

    from lpo_bench.diffusion.seeding import sample_seed

    cand_seeds = [seeds] + [[sample_seed(seed_base, f"{it.prompt_id}/best-of/{j}", k) for it, k in jobs]
                            for j in range(1, n)]
    cands = [sample(s) for s in cand_seeds]
    sign = 1.0 if selector.higher_is_better else -1.0
    scores = torch.stack([sign * selector.scorer.score(c, prompts).float() for c in cands])  # [n, b]
    best = torch.argmax(scores, dim=0)  # first maximum: the earlier candidate wins ties
    imgs = torch.stack([cands[int(j)][i] for i, j in enumerate(best)])
    return imgs, [cand_seeds[int(j)][i] for i, j in enumerate(best)]


def _sample_row(it: PromptItem, k: int, seed: int, metric: str, score: float) -> dict[str, Any]:
    return {"prompt_id": it.prompt_id, "prompt": it.text, "category": it.category, "image_idx": k,
            "sample_seed": seed, "metric": metric, "score": float(score)}


def _external_rows(scorer: Any, metric: str, category: str, out_dir: Path, items: list[PromptItem], ipp: int,
                   seed_base: int) -> list[dict[str, Any]]:
    """Per-image rows from an external scorer's per-image scores (matched by question_id)."""
    from lpo_bench.diffusion.seeding import sample_seed

    by_qid = {int(r.question_id): float(r.score) for r in scorer.score_dir(out_dir / category / "samples", category)}
    rows = []
    for it in items:
        if it.category != category:
            continue
        for k in range(ipp):
            qid = image_question_id(it, k, ipp)
            if qid not in by_qid:
                raise HarnessError(f"external scorer {metric} returned no score for image {qid} of {category} "
                                   f"(images in {out_dir / category / 'samples'}); check the detector's output")
            rows.append(_sample_row(it, k, sample_seed(seed_base, it.prompt_id, k), metric, by_qid[qid]))
    return rows


def aggregate(
    per_sample: list[dict[str, Any]],
    suite: Suite,
    items: list[PromptItem],
    *,
    images_per_prompt: int,
    batch_size: int,
    scorers: dict[str, dict[str, Any]],
    higher_is_better: dict[str, bool] | None = None,
) -> list[dict[str, Any]]:
    """Measurement rows (kind "eval_metric") per (metric, category) and (metric, "all")."""
    import numpy as np
    import pandas as pd

    if not per_sample:
        return []
    df = pd.DataFrame(per_sample)
    common = {
        "kind": "eval_metric", "suite": suite.name, "suite_version": str(suite.version),
        "inputs_sha256": suite.inputs_sha256(items, images_per_prompt), "images_per_prompt": images_per_prompt,
        "sampler": sampler_name(suite), "num_inference_steps": suite.sampler.num_inference_steps,
        "guidance_scale": suite.sampler.guidance_scale, "sample_seed_base": suite.seed_base, "batch_size": batch_size,
    }
    rows = []
    for metric in [m for m in suite.metrics if m in set(df["metric"])]:
        sub = df[df["metric"] == metric]
        cats = [c for c in suite.categories if c in set(sub["category"])]
        groups = [(c, sub[sub["category"] == c]) for c in cats] + ([("all", sub)] if len(cats) > 1 else [])
        prov = scorers.get(metric, {})
        for cat, g in groups:
            per_prompt = g.groupby("prompt_id", sort=False)["score"].mean()
            if cat == "all" and suite.overall == "categories":
                by_cat = g.groupby(["category", "prompt_id"], sort=False)["score"].mean()
                value, lo, hi = stats.mean_of_means_ci([by_cat[c].to_numpy() for c in cats])
            else:
                value, lo, hi = stats.mean_ci(per_prompt.to_numpy())
            rows.append({
                **common, "metric": metric, "category": cat, "value": value, "ci_low": lo, "ci_high": hi,
                "n": int(np.isfinite(g["score"].to_numpy(dtype=float)).sum()), "n_prompts": int(len(per_prompt)),
                "metric_version": str(prov.get("metric_version", "")), "scorer_checkpoint": str(prov.get("checkpoint", "")),
                "scorer_sha256": str(prov.get("sha256", "")),
                "higher_is_better": (higher_is_better or {}).get(metric, True),
            })
    return rows


def evaluate_unet(
    bundle: Any,
    unet: Any,
    suite_name: str,
    *,
    split: str = "test",
    max_prompts: int | None = None,
    images_per_prompt: int | None = None,
    batch_size: int = 64,
    data_dir: str | Path | None = None,
    weights_dir: str | Path | None = None,
    seed_base: int | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Evaluate ``unet`` (None: ``bundle.unet``) on a suite; returns (measurement rows, per-sample rows).

    For evaluation during training: nothing is written. Categories whose metrics are unavailable
    (T2I-CompBench's UniDet categories without the external scorer) are not sampled and produce no rows.
    """
    suite = get_suite(suite_name)
    if seed_base is not None:
        suite = replace(suite, seed_base=int(seed_base))
    items = suite.prompts(split, data_dir=data_dir, max_prompts=max_prompts)
    ipp = int(images_per_prompt or suite.images_per_prompt)
    cats = sorted({it.category for it in items})
    metrics = resolve_metrics(suite, cats, device=str(bundle.device), weights_dir=weights_dir, data_dir=data_dir)
    net = unet if unet is not None else bundle.unet
    was_training = bool(getattr(net, "training", False))
    net.eval()
    try:
        out = evaluate_items(bundle, unet, suite, items, images_per_prompt=ipp, batch_size=batch_size, metrics=metrics)
    finally:
        net.train(was_training)
    return out.rows, out.per_sample
