"""`lpo-bench` command line: a thin typer layer over the harness, evaluation, analysis and bench functions.

User mistakes raise HarnessError: one line on stderr, exit code 2, no traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from lpo_bench.errors import HarnessError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Benchmark harness for preference optimisation of text-to-image diffusion models.")
toy_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Toy world: pretraining and pairs.")
app.add_typer(toy_app, name="toy")

_SET_HELP = "Override a config key, repeatable: --set lr=1e-4"
# Options shared by several commands, declared once.
OUT_ROOT = typer.Option(None, "--out-root", help="Runs root (default ./runs or $LPO_BENCH_RUNS)")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing run")
RESUME = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint")
WEIGHTS_DIR = typer.Option(None, "--weights-dir", help="Local directory with model weights")
DOWNLOAD = typer.Option(False, "--download", help="Allow downloading missing weights from the hub")
DATA_DIR = typer.Option(None, "--data-dir", help="Local directory with datasets/prompt files")
DEVICE = typer.Option(None, "--device", help="cpu | cuda | cuda:N (default: cuda when available)")
PRECISION = typer.Option("fp32", "--precision", help="fp32 | bf16 | fp16: autocast of the updates with fp32 master "
                         "weights; frozen weights cast to bf16/fp16; fp16 adds loss scaling")
PAIR_SCORES = typer.Option(None, "--pair-scores", help="A score-pairs run whose per-pair scores feed the reward "
                           "model's data filter (MPCF) on data without them (Pick-a-Pic)")
GRAD_CKPT = typer.Option(False, "--grad-ckpt", help="Gradient checkpointing of the UNet (recompute activations in "
                         "the backward pass: less memory, one extra forward)")


@app.callback()
def _options(quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or progress lines")) -> None:
    """Options of every command: progress is live bars on a terminal, a line per ~10 s otherwise."""
    from lpo_bench import progress

    progress.configure(quiet=quiet)


def _allow_download(download: bool) -> None:
    if download:
        os.environ["LPO_BENCH_DOWNLOAD"] = "1"


def _console():
    from rich.console import Console

    return Console(stderr=False)


@app.command("list")
def list_cmd() -> None:
    """Every registered method, backbone, metric, step reward model and suite, with its file."""
    from rich.table import Table

    from lpo_bench import registry

    table = Table(title="lpo-bench registry")
    for col in ("kind", "name", "target", "file"):
        table.add_column(col, overflow="fold")
    for row in registry.describe():
        table.add_row(row["kind"], row["name"], row["target"], row["file"])
    _console().print(table)


@app.command()
def train(
    method: str = typer.Option(..., "--method", help="A registered method (lpo-bench list)"),
    backbone: str = typer.Option("toy", "--backbone", help="toy | sd15 | sd21 | sdxl"),
    seed: int = typer.Option(0, "--seed"),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file with config keys"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=_SET_HELP),
    out_root: Optional[Path] = OUT_ROOT,
    run_id: Optional[str] = typer.Option(None, "--run-id"),
    overwrite: bool = OVERWRITE,
    resume: bool = RESUME,
    budget_gpu_h: Optional[float] = typer.Option(None, "--budget-gpu-h", help="Stop after this many counted GPU-hours"),
    eval_suite: Optional[str] = typer.Option(None, "--eval-suite", help="Validation suite evaluated during training"),
    eval_every_gpu_s: Optional[float] = typer.Option(None, "--eval-every-gpu-s", help="Eval cadence in counted GPU-seconds"),
    budget_flops: Optional[float] = typer.Option(None, "--budget-flops", help="Stop after this many counted FLOPs"),
    eval_every_flops: Optional[float] = typer.Option(
        None, "--eval-every-flops", help="Eval cadence in counted FLOPs (learning curves on a machine-independent axis)"),
    eval_prompts: int = typer.Option(64, "--eval-prompts", help="Validation prompts per evaluation"),
    checkpoint_every: int = typer.Option(50, "--checkpoint-every", help="Checkpoint every N updates"),
    rm_set: Optional[list[str]] = typer.Option(None, "--rm-set", help="Override a reward-model stage config key"),
    reward_model: Optional[Path] = typer.Option(
        None, "--reward-model", help="Use this step reward model instead of training one: a saved model "
        "directory or released:NAME (lpo-bench list)"),
    pairs: Optional[Path] = typer.Option(
        None, "--pairs", help="Preference pairs (toy pairs dir or local Pick-a-Pic copy; toy default: the demo's)"),
    weights_dir: Optional[Path] = WEIGHTS_DIR,
    download: bool = DOWNLOAD,
    data_dir: Optional[Path] = DATA_DIR,
    device: Optional[str] = DEVICE,
    precision: str = PRECISION,
    grad_ckpt: bool = GRAD_CKPT,
    pair_scores: Optional[Path] = PAIR_SCORES,
) -> None:
    """Train a method on a backbone (its reward-model stage first, unless --reward-model is given).

    Prints the estimated peak memory before the first update."""
    _allow_download(download)
    from lpo_bench import config as config_mod
    from lpo_bench.harness.train import TrainRequest, train_run

    req = TrainRequest(
        method=method, backbone=backbone, seed=seed, config_file=str(config) if config else None,
        overrides=config_mod.parse_set(set_), reward_stage_overrides=config_mod.parse_set(rm_set),
        pairs=_str(pairs), reward_model=_str(reward_model), out_root=_str(out_root), run_id=run_id,
        overwrite=overwrite, resume=resume, budget_gpu_h=budget_gpu_h, eval_suite=eval_suite,
        eval_every_gpu_s=eval_every_gpu_s, eval_prompts=eval_prompts, budget_flops=budget_flops,
        eval_every_flops=eval_every_flops, checkpoint_every_updates=checkpoint_every,
        weights_dir=_str(weights_dir), data_dir=_str(data_dir), device=device, precision=precision,
        gradient_checkpointing=grad_ckpt, pair_scores=_str(pair_scores),
    )
    typer.echo(f"run: {train_run(req)}")


def _str(path: Optional[Path]) -> Optional[str]:
    return str(path) if path is not None else None


@app.command("train-reward")
def train_reward(
    kind: str = typer.Option(..., "--kind", help="A registered step reward model (lpo-bench list)"),
    backbone: str = typer.Option("toy", "--backbone"),
    seed: int = typer.Option(0, "--seed"),
    config: Optional[Path] = typer.Option(None, "--config"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=_SET_HELP),
    pairs: Optional[Path] = typer.Option(
        None, "--pairs", help="Preference pairs directory (toy default: the demo's, built once and cached)"),
    out_root: Optional[Path] = OUT_ROOT,
    overwrite: bool = OVERWRITE,
    resume: bool = RESUME,
    weights_dir: Optional[Path] = WEIGHTS_DIR,
    download: bool = DOWNLOAD,
    device: Optional[str] = DEVICE,
    precision: str = PRECISION,
    grad_ckpt: bool = GRAD_CKPT,
    pair_scores: Optional[Path] = PAIR_SCORES,
) -> None:
    """Train a step-level reward model as its own run; pass its model directory to train --reward-model."""
    _allow_download(download)
    from lpo_bench import config as config_mod
    from lpo_bench.harness.reward_run import RewardRequest, train_reward_run

    req = RewardRequest(
        kind=kind, backbone=backbone, seed=seed, config_file=str(config) if config else None,
        overrides=config_mod.parse_set(set_), pairs=_str(pairs), out_root=_str(out_root), overwrite=overwrite,
        resume=resume, weights_dir=_str(weights_dir), device=device, precision=precision,
        gradient_checkpointing=grad_ckpt, pair_scores=_str(pair_scores),
    )
    typer.echo(f"run: {train_reward_run(req)}")


@app.command("score-pairs")
def score_pairs(
    pairs: Path = typer.Option(..., "--pairs", help="Preference pairs (toy pairs dir or local Pick-a-Pic copy)"),
    split: str = typer.Option("train", "--split"),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Decode size (default: native for toy "
                                             "pairs, 512 otherwise)"),
    shard_pairs: int = typer.Option(4096, "--shard-pairs", help="Pairs per written shard (the unit of --resume)"),
    batch_pairs: int = typer.Option(64, "--batch-pairs"),
    num_workers: int = typer.Option(0, "--num-workers", help="DataLoader workers decoding images"),
    max_rows: Optional[int] = typer.Option(None, "--max-rows", help="Score only the first N rows"),
    out_root: Optional[Path] = OUT_ROOT,
    overwrite: bool = OVERWRITE,
    resume: bool = RESUME,
    weights_dir: Optional[Path] = WEIGHTS_DIR,
    download: bool = DOWNLOAD,
    device: Optional[str] = DEVICE,
) -> None:
    """Score both images of every pair (aesthetic, CLIP, VQA) into a side table for MPCF; pass the run to
    train / train-reward --pair-scores. Its GPU-hours are charged to the reward model in compare."""
    _allow_download(download)
    from lpo_bench.harness.score_run import ScorePairsRequest, score_pairs_run

    req = ScorePairsRequest(pairs=str(pairs), split=split, resolution=resolution, shard_pairs=shard_pairs,
                            batch_pairs=batch_pairs, num_workers=num_workers, max_rows=max_rows,
                            out_root=_str(out_root), overwrite=overwrite, resume=resume,
                            weights_dir=_str(weights_dir), device=device)
    typer.echo(f"run: {score_pairs_run(req)}")


@app.command("flip-pairs")
def flip_pairs(
    pairs: Path = typer.Option(..., "--pairs", help="Preference data (toy pairs or a Pick-a-Pic copy)"),
    out: Path = typer.Option(..., "--out", help="Where the flipped copy goes"),
    overwrite: bool = OVERWRITE,
) -> None:
    """Negative control: copy preference data with every decided preference reversed (train on it with --pairs)."""
    from lpo_bench.data.pairs import flip_preferences

    typer.echo(f"flipped pairs: {flip_preferences(pairs, out, overwrite=overwrite)}")


@app.command("eval")
def eval_cmd(
    suite: list[str] = typer.Option(..., "--suite", help="Suite name, repeatable"),
    model: str = typer.Option("base:toy", "--model", help="base:<backbone>, a run directory, or a LoRA path"),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Backbone for a LoRA path"),
    split: str = typer.Option("test", "--split", help="val | test (toy suites); real suites have one split"),
    max_prompts: Optional[int] = typer.Option(None, "--max-prompts"),
    images_per_prompt: Optional[int] = typer.Option(None, "--images-per-prompt"),
    batch_size: int = typer.Option(64, "--batch-size"),
    out_root: Optional[Path] = OUT_ROOT,
    overwrite: bool = OVERWRITE,
    weights_dir: Optional[Path] = WEIGHTS_DIR,
    download: bool = DOWNLOAD,
    data_dir: Optional[Path] = DATA_DIR,
    device: Optional[str] = DEVICE,
) -> None:
    """Generate images for a suite and score them; writes an eval run with per-sample scores and CIs."""
    _allow_download(download)
    from lpo_bench import registry

    for s in suite:
        registry.check_name("suite", s)
    from lpo_bench.evaluation import eval_run

    for s in suite:
        run_dir = eval_run(
            model, s, backbone=backbone, split=split, max_prompts=max_prompts, images_per_prompt=images_per_prompt,
            batch_size=batch_size, out_root=str(out_root) if out_root else None, overwrite=overwrite,
            weights_dir=str(weights_dir) if weights_dir else None, data_dir=str(data_dir) if data_dir else None,
            device=device,
        )
        typer.echo(f"run: {run_dir}")


@app.command("step-accuracy")
def step_accuracy(
    pairs: Path = typer.Option(..., "--pairs", help="Held-out preference pairs (toy pairs dir)"),
    backbone: str = typer.Option("toy", "--backbone"),
    reward_model: Optional[list[Path]] = typer.Option(
        None, "--reward-model", help="Trained step reward model directory, repeatable"),
    metric: Optional[list[str]] = typer.Option(None, "--metric", help="Pixel metric(s) scored on decoded inputs"),
    timesteps: str = typer.Option("1,101,201,301,401,501,601,701,801,901,951", "--timesteps"),
    max_pairs: int = typer.Option(256, "--max-pairs"),
    shuffled_prompt_control: bool = typer.Option(
        True, "--shuffled-prompt-control/--no-shuffled-prompt-control",
        help="Also score each step reward model with another pair's prompt (about 0.5 if it reads the prompt)"),
    out_root: Optional[Path] = OUT_ROOT,
    overwrite: bool = OVERWRITE,
    weights_dir: Optional[Path] = WEIGHTS_DIR,
    device: Optional[str] = DEVICE,
) -> None:
    """Pairwise accuracy of step reward models (and pixel metrics) at each noise level t."""
    from lpo_bench.evaluation.step_accuracy import step_accuracy_run

    try:
        grid = [int(x) for x in timesteps.split(",") if x.strip()]
    except ValueError:
        raise HarnessError(f"--timesteps {timesteps!r} must be comma-separated integers, e.g. 1,251,501") from None
    run_dir = step_accuracy_run(
        pairs_dir=pairs, backbone=backbone, reward_models=list(reward_model or []), metrics=list(metric or []),
        timesteps=grid, shuffled_prompt_control=shuffled_prompt_control,
        max_pairs=max_pairs, out_root=str(out_root) if out_root else None, overwrite=overwrite,
        weights_dir=str(weights_dir) if weights_dir else None, device=device,
    )
    typer.echo(f"run: {run_dir}")


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="Run directories (train, eval, step-accuracy)"),
    out: Path = typer.Option(Path("reports/latest"), "--out"),
    target: Optional[str] = typer.Option(None, "--target", help="metric@suite>=value for time-to-target"),
    allow_mixed_hardware: bool = typer.Option(False, "--allow-mixed-hardware"),
) -> None:
    """Speedup and quality tables, plots and a report from run records only."""
    from lpo_bench.analysis.compare import compare as compare_runs

    path = compare_runs(runs, out, target=target, allow_mixed_hardware=allow_mixed_hardware)
    typer.echo(f"report: {path}")


@app.command()
def demo(
    out_root: Path = typer.Option(Path("runs/demo"), "--out-root"),
    report: Path = typer.Option(Path("reports/demo"), "--report"),
    seeds: str = typer.Option("0", "--seeds", help="Comma-separated training seeds, e.g. 0,1,2"),
    quick: bool = typer.Option(False, "--quick", help="Tiny settings (seconds), for smoke tests"),
    methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated methods (default: all registered)"),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="Use these toy pairs instead of making new ones"),
    overwrite: bool = typer.Option(True, "--overwrite/--no-overwrite"),
    budget_flops: float = typer.Option(3e12, "--budget-flops", help="Counted-FLOP budget of every method's run"),
    eval_prompts: int = typer.Option(128, "--eval-prompts", help="Test prompts per final evaluation (0: all 256)"),
    step_accuracy_pairs: int = typer.Option(
        400, "--step-accuracy-pairs", help="Held-out pairs of the step-accuracy run (0: every decided test pair)"),
    eval_images: int = typer.Option(
        2, "--eval-images", help="Images per test prompt in the final toy-general evaluations (the other suites: 2)"),
) -> None:
    """The whole pipeline on the toy world on the CPU: pairs, every method (and reward model), eval, compare."""
    from lpo_bench import demo as demo_mod

    try:
        seed_list = [int(x) for x in seeds.split(",") if x.strip()]
    except ValueError:
        raise HarnessError(f"--seeds {seeds!r} must be comma-separated integers, e.g. 0,1,2") from None
    method_list = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    if pairs is not None and not pairs.is_dir():
        raise HarnessError(f"--pairs {pairs} is not a directory; make toy pairs with `lpo-bench toy make-pairs`")
    demo_mod.run_demo(out_root=out_root, report=report, seeds=seed_list, methods=method_list, pairs=pairs,
                      quick=quick, overwrite=overwrite, budget_flops=budget_flops, eval_prompts=eval_prompts or None,
                      step_accuracy_pairs=step_accuracy_pairs or None, eval_images_per_prompt=eval_images)


@app.command()
def bench(
    method: str = typer.Option(..., "--method"),
    backbone: str = typer.Option("toy", "--backbone", help="toy | tiny-sd15 | tiny-sdxl | sd15 | sdxl"),
    random_weights: bool = typer.Option(False, "--random-weights", help="Full-size architecture, random weights"),
    repeats: int = typer.Option(3, "--repeats"),
    device: Optional[str] = DEVICE,
    out: Optional[Path] = typer.Option(None, "--out", help="Write the result as JSON here"),
    parts: Optional[str] = typer.Option(
        None, "--parts", help="Comma-separated: sampling_step,train_step,overhead (default: all on toy/tiny, "
                              "sampling_step on full-size backbones)"),
    candidates: int = typer.Option(4, "--candidates", help="K candidates per sampling step"),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Untimed calls first (default 1; 0 full-size on CPU)"),
    autocast: Optional[str] = typer.Option(None, "--autocast", help="bf16 | fp16 autocast (GPU)"),
    grad_ckpt: bool = typer.Option(False, "--grad-ckpt", help="UNet gradient checkpointing in training steps"),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the timed components / the UNet"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads"),
    sequential: bool = typer.Option(False, "--sequential", help="Time sampling-step components one after another, "
                                    "one model in memory at a time (default: interleaved rounds, all models built)"),
) -> None:
    """Cost of one sampling step (LPO paper Tab. 5) and one training step per method, and the harness overhead.

    --method takes a name, a comma-separated list (e.g. lpo,spo) or all."""
    from lpo_bench import bench as bench_mod

    bench_mod.run_bench(methods=method, backbone=backbone, random_weights=random_weights, repeats=repeats,
                        device=device, out=out, parts=[p.strip() for p in parts.split(",")] if parts else None,
                        num_candidates=candidates, warmup=warmup, autocast_dtype=autocast,
                        gradient_checkpointing=grad_ckpt, compile=compile_, threads=threads,
                        interleave=not sequential)


@toy_app.command("pretrain")
def toy_pretrain(
    out: Path = typer.Option(Path("runs/toy-pretrain"), "--out"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Pretrain the toy base model (bit-exact on one thread; about 35-40 minutes on a 2-core CPU)."""
    from lpo_bench.toy import pretrain

    report = pretrain.pretrain(out, seed=seed)
    typer.echo(f"pretrained into {out}: {report.get('sha256', '')}")


@toy_app.command("make-pairs")
def toy_make_pairs(
    out: Path = typer.Option(Path("runs/toy-pairs"), "--out"),
    n_train: int = typer.Option(2048, "--n-train", help="Training prompts"),
    n_val: int = typer.Option(256, "--n-val"),
    n_test: int = typer.Option(256, "--n-test"),
    images_per_prompt: int = typer.Option(2, "--images-per-prompt", help="k images per prompt: k(k-1)/2 pairs each"),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = OVERWRITE,
) -> None:
    """Sample k images per prompt from the toy base model, pair them and label the pairs with the oracle."""
    from lpo_bench.toy import pairs

    path = pairs.make_pairs(out, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed, overwrite=overwrite,
                            images_per_prompt=images_per_prompt)
    typer.echo(f"pairs: {path}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: HarnessError -> one line on stderr, exit 2, no traceback."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app(args=argv, standalone_mode=False)
    except HarnessError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("interrupted; rerun with --resume to continue", err=True)
        return 130
    except Exception as exc:  # click usage errors arrive here in non-standalone mode (typer vendors click)
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # ClickException / UsageError
            exc.show()
            return int(exc.exit_code)
        if type(exc).__name__ == "Exit":
            return int(getattr(exc, "exit_code", 0))
        if type(exc).__name__ == "Abort":
            return 1
        raise
    return 0


def entry() -> None:  # pragma: no cover - console script wrapper
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
