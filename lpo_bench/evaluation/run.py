"""``lpo-bench eval``: a base model, a finished train run or a LoRA / UNet directory evaluated on a suite and
recorded as ``runs/eval/<run_id>/`` (run.json, measurements.parquet, per_sample.parquet, images/,
samples_grid.png for toy suites, DONE last)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lpo_bench.data.suites import Suite, get_suite
from lpo_bench.errors import HarnessError
from lpo_bench.evaluation.evaluate import evaluate_items
from lpo_bench.evaluation.images import IMAGE_NAMING, save_grid
from lpo_bench.evaluation.loading import resolve_metrics
from lpo_bench.evaluation.models import load_model, resolve_model
from lpo_bench.harness.dist import pick_device
from lpo_bench.harness.run import RunRecorder


def eval_run(
    model: str,
    suite: str | Suite,
    *,
    backbone: str | None = None,
    split: str = "test",
    max_prompts: int | None = None,
    images_per_prompt: int | None = None,
    batch_size: int = 64,
    out_root: str | Path | None = None,
    overwrite: bool = False,
    weights_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    device: str | None = None,
    bundle: Any = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Evaluate ``model`` on ``suite`` (a registered name, or a Suite) and record it; returns the run dir.

    The run id is ``<model tag>-<suite>-<split>-<hash of the model weights and the suite's inputs>``; an
    existing run is never replaced without ``overwrite=True``. ``bundle``: the backbone's ModelBundle to use
    instead of loading the registered one (the model's LoRA or UNet is put into it).
    """
    s = suite if isinstance(suite, Suite) else get_suite(suite)
    items = s.prompts(split, data_dir=data_dir, max_prompts=max_prompts)
    ipp = int(images_per_prompt or s.images_per_prompt)
    if ipp < 1:
        raise HarnessError(f"--images-per-prompt must be >= 1, got {ipp}")
    spec = resolve_model(model, backbone, weights_dir=weights_dir)
    split_used = s.split_name(split)
    inputs = s.inputs_sha256(items, ipp)
    identity = {"kind": "eval", "model": spec.identity(), "suite": s.name, "suite_version": s.version,
                "inputs_sha256": inputs}
    dev = pick_device(device)
    cats = [c for c in s.categories if any(it.category == c for it in items)]
    metrics = resolve_metrics(s, cats, device=dev, weights_dir=weights_dir, data_dir=data_dir)  # before the model
    with RunRecorder("eval", f"{spec.tag}-{s.name}-{split_used}", identity, out_root=out_root,
                     overwrite=overwrite, resumable=False) as run:
        bundle = load_model(spec, weights_dir=weights_dir, device=dev, bundle=bundle)
        sp = s.sampler
        info: dict[str, Any] = {
            "model": model, "model_spec": spec.describe(), "backbone": spec.backbone, "suite": s.describe(),
            "split": split_used, "n_prompts": len(items), "images_per_prompt": ipp, "inputs_sha256": inputs,
            "sampler": {"scheduler": sp.scheduler, "num_inference_steps": sp.num_inference_steps,
                        "guidance_scale": sp.guidance_scale, "eta": sp.eta, "negative_prompt": ""},
            "seed_rule": f"sample_seed({s.seed_base}, prompt_id, image_idx)", "batch_size": batch_size,
            "image_naming": IMAGE_NAMING,
        }
        skipped_sources = s.skipped_categories(data_dir)
        if skipped_sources:
            info["skipped_sources"] = skipped_sources
        tr = spec.train_run or {}
        run.start(info, bundle_provenance=bundle.provenance, backbone=spec.backbone, base_extra={
            "method": str(tr.get("method", spec.kind)), "method_version": str(tr.get("method_version", "")),
            "config_hash": str(tr.get("config_hash", spec.weights_sha256 or "")), "seed": tr.get("seed")})
        best_of = None
        if spec.best_of_n > 1:
            from lpo_bench.evaluation.loading import load_metric

            best_of = (spec.best_of_n, load_metric(str(spec.best_of_metric), device=dev, weights_dir=weights_dir))
        out = evaluate_items(bundle, None, s, items, images_per_prompt=ipp, batch_size=batch_size, metrics=metrics,
                             image_dir=run.dir / "images", log=log, best_of=best_of)
        for sk in out.skipped:
            log(f"skipped {sk['category']} ({sk['metric']}): {sk['reason']}")
        for cat, why in skipped_sources.items():
            log(f"skipped {cat}: {why}")
        run.write_measurements(out.rows)
        run.write_per_sample(out.per_sample)
        if out.grid is not None:
            save_grid(run.dir / "samples_grid.png", out.grid)
        run.finish(n_images=out.n_images, skipped=out.skipped, scorers=out.scorers)
    return run.dir
