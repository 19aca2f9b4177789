"""`lpo-bench demo`: the whole pipeline on the toy world, on the CPU, for every registered method.

Stages (each a normal run, so the report reads the same records a real study would): toy pairs -> every
method (its reward-model stage first) under one counted-FLOP budget (``DEMO_BUDGET_FLOPS``, the same for every
method; each spec's ``budget_overrides`` make the budget, not the preset's length, end the run), evaluated
``DEMO_EVALS`` times on the toy-general val prompts at evaluations spaced over the budget (learning curves) ->
two controls: a negative one (the cheapest method that reads pairs directly, trained on the same pairs with every
preference flipped, :func:`lpo_bench.data.pairs.flip_preferences`) and a positive one (best-of-4 sampling of the
base model under the toy oracle, ``best-of-4:toy-oracle:base:toy``) -> evaluation of the base model, every
trained model and the controls on toy-general, toy-compbench and toy-geneval (test prompts) -> step-level accuracy
of the first seed's step reward models and of pixel metrics across t on every decided held-out test pair ->
compare into a report. With ``quick`` each method runs its spec's ``quick`` settings (seconds; the numbers mean
nothing at that size, and there are no controls).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lpo_bench import progress, registry
from lpo_bench.toy.default_pairs import DEMO_PAIRS

EVAL_SUITES = ("toy-general", "toy-compbench", "toy-geneval")
STEP_ACC_METRICS = ("toy-oracle", "toy-clip")
STEP_ACC_TIMESTEPS = (1, 101, 201, 301, 401, 501, 601, 701, 801, 901, 951)
QUICK_STEP_ACC_TIMESTEPS = (1, 501, 951)
QUICK_PAIRS = {"n_train": 24, "n_val": 8, "n_test": 8}
# One counted-FLOP budget for every method (the policy phases; reward-model training is reported beside it,
# charged and excluded). The toy presets' own lengths cost 1.8e12 (LPO, 81 updates), 2.7e12 (Diffusion-DPO, 80)
# and 4.5e12 (SPO, 12) counted FLOPs; 3e12 lets each run about as long as its preset.
DEMO_BUDGET_FLOPS = 3e12
DEMO_EVALS = 8  # evaluations during training, evenly spaced over the budget (plus one at the end)
DEMO_EVAL_PROMPTS = 32
POSITIVE_CONTROL = "best-of-4:toy-oracle:base:toy"


def negative_control_method(specs: Sequence[Any]) -> Any | None:
    """The method trained on flipped preferences: among those that read pairs themselves and train no reward
    model, the first registered (the cheapest kind of run); None when no such method is registered."""
    return next((s for s in specs if "pairs" in s.inputs and not s.reward_stage), None)


def run_demo(
    *,
    out_root: Path,
    report: Path,
    seeds: Sequence[int] = (0,),
    methods: Sequence[str] | None = None,
    pairs: Path | None = None,
    quick: bool = False,
    overwrite: bool = True,
    pairs_sizes: dict[str, int] | None = None,
    eval_prompts: int | None = None,
    budget_flops: float = DEMO_BUDGET_FLOPS,
    step_accuracy_pairs: int | None = None,
    eval_images_per_prompt: int = 2,
    log: Any = print,
) -> Path:
    """Run the toy pipeline for ``methods`` (default: every registered method); returns the report directory.
    ``pairs``: an existing toy pairs directory to use instead of making new ones. ``eval_prompts`` /
    ``step_accuracy_pairs``: test prompts per evaluation / held-out pairs of the step-accuracy run (None: all);
    ``eval_images_per_prompt``: images per test prompt in the final toy-general evaluations (the oracle reward,
    the headline; more images narrow its paired CI); the other suites take 2."""
    from lpo_bench.analysis.compare import compare
    from lpo_bench.data.pairs import flip_preferences
    from lpo_bench.evaluation import eval_run
    from lpo_bench.evaluation.step_accuracy import step_accuracy_run
    from lpo_bench.harness.train import TrainRequest, train_run
    from lpo_bench.toy.pairs import make_pairs

    specs = [registry.method_spec(registry.check_name("method", m)) for m in (methods or list(registry.METHODS))]
    t0 = time.perf_counter()
    out_root = Path(out_root)
    timings: dict[str, float] = {}

    def stage(name: str, fn: Any) -> Any:
        s = time.perf_counter()
        log(f"== {name}")
        overall.update(running=name)
        res = fn()
        overall.advance(1, running=None)
        timings[name] = time.perf_counter() - s
        log(f"   {name}: {timings[name]:.0f} s")
        return res

    sizes = pairs_sizes or (QUICK_PAIRS if quick else DEMO_PAIRS)
    pairs_dir = Path(pairs) if pairs is not None else out_root / "pairs"
    make_pairs_now = pairs is None and (overwrite or not (pairs_dir / "pairs.json").exists())
    negative = None if quick else negative_control_method(specs)
    n_train = len(specs) * len(seeds) + (negative is not None)
    n_models = 1 + n_train + (not quick)
    n_stages = int(make_pairs_now) + n_train + n_models * len(EVAL_SUITES) + 2  # + step accuracy, compare
    with progress.task("demo", total=n_stages, unit="stage") as overall:
        if make_pairs_now:
            stage("toy pairs", lambda: make_pairs(pairs_dir, seed=0, overwrite=True, log=log, **sizes))

        def train(spec: Any, seed: int, pairs_used: Path, label: str, control: str | None = None) -> Path:
            overrides = dict(spec.quick) if quick else dict(spec.budget_overrides)
            req = TrainRequest(method=spec.name, backbone="toy", seed=seed, out_root=str(out_root),
                               overrides=overrides, overwrite=overwrite,
                               reward_stage_overrides=dict(spec.quick_reward_stage) if quick and spec.reward_stage
                               else {}, pairs=str(pairs_used), eval_suite="toy-general",
                               budget_flops=None if quick else budget_flops,
                               eval_every_flops=None if quick else budget_flops / DEMO_EVALS,
                               eval_prompts=8 if quick else DEMO_EVAL_PROMPTS, control=control)
            return stage(label, lambda: train_run(req, log=log))

        train_runs: list[Path] = []
        reward_models: list[Path] = []
        for spec in specs:
            for s in seeds:
                run_dir = train(spec, s, pairs_dir, f"train {spec.name} seed {s}")
                train_runs.append(run_dir)
                if spec.reward_stage and s == seeds[0]:
                    reward_models.append(run_dir / spec.reward_stage)
        controls: list[str] = []
        if negative is not None:
            flipped = flip_preferences(pairs_dir, out_root / "pairs-flipped", overwrite=True)
            controls.append(str(train(negative, seeds[0], flipped, f"negative control: {negative.name} on flipped "
                                                                     f"preferences", control="flipped preferences")))
        if not quick:
            controls.append(POSITIVE_CONTROL)
        models = ["base:toy"] + [str(r) for r in train_runs] + controls
        eval_runs = [stage(f"eval {Path(m).name} on {su}", lambda m=m, su=su: eval_run(
            m, su, split="test", max_prompts=8 if quick else eval_prompts,
            images_per_prompt=1 if quick else eval_images_per_prompt if su == EVAL_SUITES[0] else 2,
            out_root=str(out_root), overwrite=overwrite)) for m in models for su in EVAL_SUITES]
        acc_run = stage("step accuracy", lambda: step_accuracy_run(
            pairs_dir=pairs_dir, backbone="toy", reward_models=reward_models, metrics=list(STEP_ACC_METRICS),
            timesteps=list(QUICK_STEP_ACC_TIMESTEPS if quick else STEP_ACC_TIMESTEPS), max_pairs=16 if quick else step_accuracy_pairs,
            out_root=str(out_root), overwrite=overwrite))
        runs = [*train_runs, *(Path(c) for c in controls if Path(c).is_dir()), *eval_runs, acc_run]
        report_dir = stage("compare", lambda: compare(runs, Path(report), target=None))
    total = time.perf_counter() - t0
    log(f"demo finished in {total / 60:.1f} min; stage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    return report_dir
