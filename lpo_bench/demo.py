"""`lpo-bench demo`: the whole pipeline on the toy world, on the CPU, with the toy presets.

Stages (each a normal run, so the report reads the same records a real study would):
toy pairs -> LPO (LRM stage + LPO) -> SPO (SPM stage + SPO) -> Diffusion-DPO -> evaluation of the base
model and every trained model on toy-general and toy-compbench -> step-level reward accuracy of the
LRM, the SPM and pixel rewards across t -> compare into a report. A stage whose code is missing is
named and skipped, never faked.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

from lpo_bench import registry

METHODS = ("lpo", "spo", "diffusion-dpo")
EVAL_SUITES = ("toy-general", "toy-compbench")
STEP_ACC_METRICS = ("toy-oracle", "toy-clip")
# 4 images per prompt: 6 pairs per prompt from as many images as 1024 prompts x 2 would take; more pairs per image
# is what lifts the toy LRM (3k train pairs) and tightens the held-out accuracy CIs (~1.3k test, ~650 val pairs).
DEMO_PAIRS = {"n_train": 512, "n_val": 128, "n_test": 256, "images_per_prompt": 4}
# --quick: seconds, for smoke tests of the wiring (numbers are meaningless at this size)
QUICK_PAIRS = {"n_train": 24, "n_val": 8, "n_test": 8}
QUICK_SET = {
    "lpo": ["num_inference_steps=4", "prompts_per_round=2", "num_train_prompts=4", "epochs=1", "max_updates=2",
            "train_batch_pairs=4", "threshold_min=0", "threshold_max=0"],
    "spo": ["num_inference_steps=4", "prompts_per_round=2", "num_train_prompts=4", "epochs=1", "max_updates=2",
            "train_batch_pairs=4", "threshold_spo=0"],
    "diffusion-dpo": ["max_updates=2", "pairs_per_update=4", "micro_batch_pairs=4"],
}
_RM = {"lpo": "lrm", "spo": "spm"}
QUICK_RM_SET = {"lrm": {"max_updates": 2, "batch_pairs": 4, "max_val_pairs": 8, "warmup_updates": 1},
                "spm": {"max_updates": 2, "clean_warmup_updates": 1, "batch_pairs": 4, "max_val_pairs": 8,
                        "warmup_updates": 1}}


def _exists(target: str) -> bool:
    try:
        return importlib.util.find_spec(target.split(":")[0]) is not None
    except (ImportError, ValueError):
        return False


def run_demo(
    *,
    out_root: Path,
    report: Path,
    seed: int = 0,
    seeds: list[int] | None = None,
    quick: bool = False,
    overwrite: bool = True,
    pairs_sizes: dict[str, int] | None = None,
    eval_prompts: int | None = None,
    log: Any = print,
) -> Path | None:
    """Run the toy pipeline; returns the report directory (None when compare is unavailable)."""
    from lpo_bench.config import parse_set
    from lpo_bench.runner import TrainOptions, train_run
    from lpo_bench.toy.pairs import make_pairs

    t0 = time.perf_counter()
    seeds = seeds or [seed]
    out_root = Path(out_root)
    timings: dict[str, float] = {}
    missing: list[str] = []

    def stage(name: str, fn: Any) -> Any:
        s = time.perf_counter()
        log(f"== {name}")
        res = fn()
        timings[name] = time.perf_counter() - s
        log(f"   {name}: {timings[name]:.0f} s")
        return res

    sizes = pairs_sizes or (QUICK_PAIRS if quick else DEMO_PAIRS)
    pairs_dir = out_root / "pairs"
    if overwrite or not (pairs_dir / "pairs.json").exists():
        stage("toy pairs", lambda: make_pairs(pairs_dir, seed=0, overwrite=True, log=log, **sizes))
    train_runs: dict[str, list[Path]] = {m: [] for m in METHODS}
    for method in METHODS:
        if not _exists(registry.METHODS[method]):
            missing.append(f"method {method}")
            continue
        for s in seeds:
            opts = TrainOptions(method=method, backbone="toy", seed=s, out_root=str(out_root),
                                overrides=parse_set(QUICK_SET[method]) if quick else {}, overwrite=overwrite,
                                extra={"pairs": str(pairs_dir),
                                       **({"rm_overrides": QUICK_RM_SET[_RM[method]]} if quick and method in _RM else {})},
                                eval_suite="toy-general",
                                eval_every_gpu_s=None if quick else 60.0, eval_prompts=8 if quick else 32)
            train_runs[method].append(stage(f"train {method} seed {s}", lambda o=opts: train_run(o, log=log)))
    eval_runs: list[Path] = []
    if _exists("lpo_bench.evaluation"):
        from lpo_bench import evaluation

        models = ["base:toy"] + [str(r) for runs in train_runs.values() for r in runs]
        for model in models:
            for suite in EVAL_SUITES:
                eval_runs.append(stage(f"eval {Path(model).name} on {suite}", lambda m=model, su=suite: evaluation.eval_run(
                    m, su, split="test", max_prompts=eval_prompts or (8 if quick else 128),
                    images_per_prompt=1 if quick else 2, out_root=str(out_root), overwrite=overwrite)))
    else:
        missing.append("evaluation")
    acc_runs: list[Path] = []
    if _exists("lpo_bench.step_accuracy"):
        from lpo_bench import step_accuracy

        lpo_run = train_runs["lpo"][0] if train_runs["lpo"] else None
        spo_run = train_runs["spo"][0] if train_runs["spo"] else None
        acc_runs.append(stage("step accuracy", lambda: step_accuracy.step_accuracy_run(
            pairs_dir=pairs_dir, backbone="toy", lrm=(lpo_run / "lrm") if lpo_run else None,
            spm=(spo_run / "spm") if spo_run else None, metrics=list(STEP_ACC_METRICS),
            timesteps=[1, 101, 201, 301, 401, 501, 601, 701, 801, 901, 951] if not quick else [1, 501, 951],
            max_pairs=16 if quick else 256, out_root=str(out_root), overwrite=overwrite)))
    else:
        missing.append("step accuracy")
    report_dir = None
    if _exists("lpo_bench.reporting"):
        from lpo_bench import reporting

        all_runs = [r for runs in train_runs.values() for r in runs] + eval_runs + acc_runs
        report_dir = stage("compare", lambda: reporting.compare(all_runs, Path(report), target=None))
    else:
        missing.append("compare/report")
    total = time.perf_counter() - t0
    log(f"demo finished in {total / 60:.1f} min; stage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    if missing:
        log("not available yet (skipped): " + ", ".join(missing))
    return report_dir
