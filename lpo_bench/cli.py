"""`lpo-bench` command line: a thin typer layer over the runner, evaluation and reporting functions.

User mistakes raise HarnessError: one line on stderr, exit code 2, no traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from lpo_bench.errors import HarnessError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Benchmark harness for LPO, SPO and Diffusion-DPO.")
toy_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Toy world: pretraining and pairs.")
app.add_typer(toy_app, name="toy")

_SET_HELP = "Override a config key, repeatable: --set beta_lpo=500"


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
    method: str = typer.Option(..., "--method", help="lpo | spo | diffusion-dpo"),
    backbone: str = typer.Option("toy", "--backbone", help="toy | sd15 | sd21 | sdxl"),
    seed: int = typer.Option(0, "--seed"),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file with config keys"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=_SET_HELP),
    out_root: Optional[Path] = typer.Option(None, "--out-root", help="Runs root (default ./runs or $LPO_BENCH_RUNS)"),
    run_id: Optional[str] = typer.Option(None, "--run-id"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run"),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint"),
    budget_gpu_h: Optional[float] = typer.Option(None, "--budget-gpu-h", help="Stop after this many counted GPU-hours"),
    eval_suite: Optional[str] = typer.Option(None, "--eval-suite", help="Validation suite evaluated during training"),
    eval_every_gpu_s: Optional[float] = typer.Option(None, "--eval-every-gpu-s", help="Eval cadence in counted GPU-seconds"),
    eval_prompts: int = typer.Option(64, "--eval-prompts", help="Validation prompts per evaluation"),
    checkpoint_every: int = typer.Option(50, "--checkpoint-every", help="Checkpoint every N updates"),
    rm_set: Optional[list[str]] = typer.Option(None, "--rm-set", help="Override a reward-model stage config key"),
    lrm: Optional[Path] = typer.Option(None, "--lrm", help="LPO: use this trained LRM instead of training one"),
    spm: Optional[Path] = typer.Option(None, "--spm", help="SPO: use this trained SPM instead of training one"),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="Preference pairs (toy pairs dir or local Pick-a-Pic copy)"),
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", help="Local directory with backbone weights"),
    download: bool = typer.Option(False, "--download", help="Allow downloading missing weights from the hub"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Local directory with datasets/prompt files"),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """Train a method on a backbone (reward-model stage first, unless --lrm/--spm is given)."""
    _allow_download(download)
    from lpo_bench import config as config_mod
    from lpo_bench import registry

    registry.check_name("method", method)
    registry.check_name("backbone", backbone)
    extra: dict = {k: str(v) for k, v in (("lrm", lrm), ("spm", spm), ("pairs", pairs)) if v is not None}
    if rm_set:
        extra["rm_overrides"] = config_mod.parse_set(rm_set)
    from lpo_bench.runner import TrainOptions, train_run

    opts = TrainOptions(
        method=method, backbone=backbone, seed=seed, config_file=str(config) if config else None,
        overrides=config_mod.parse_set(set_), out_root=str(out_root) if out_root else None, run_id=run_id,
        overwrite=overwrite, resume=resume, budget_gpu_h=budget_gpu_h, eval_suite=eval_suite,
        eval_every_gpu_s=eval_every_gpu_s, eval_prompts=eval_prompts, checkpoint_every_updates=checkpoint_every,
        weights_dir=str(weights_dir) if weights_dir else None, data_dir=str(data_dir) if data_dir else None,
        device=device, extra=extra,
    )
    run_dir = train_run(opts)
    typer.echo(f"run: {run_dir}")


@app.command("train-reward")
def train_reward(
    kind: str = typer.Option(..., "--kind", help="lrm | spm"),
    backbone: str = typer.Option("toy", "--backbone"),
    seed: int = typer.Option(0, "--seed"),
    config: Optional[Path] = typer.Option(None, "--config"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=_SET_HELP),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="Preference pairs directory"),
    out_root: Optional[Path] = typer.Option(None, "--out-root"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    resume: bool = typer.Option(False, "--resume"),
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir"),
    download: bool = typer.Option(False, "--download", help="Allow downloading missing weights from the hub"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir"),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """Train a step-level reward model (LRM for LPO, SPM for SPO) as its own run."""
    _allow_download(download)
    from lpo_bench import config as config_mod
    from lpo_bench import registry
    from lpo_bench.reward_training import RewardOptions, train_reward_run

    registry.check_name("step-reward-model", kind)
    registry.check_name("backbone", backbone)
    opts = RewardOptions(
        kind=kind, backbone=backbone, seed=seed, config_file=str(config) if config else None,
        overrides=config_mod.parse_set(set_), pairs=str(pairs) if pairs else None,
        out_root=str(out_root) if out_root else None, overwrite=overwrite, resume=resume,
        weights_dir=str(weights_dir) if weights_dir else None, data_dir=str(data_dir) if data_dir else None,
        device=device,
    )
    typer.echo(f"run: {train_reward_run(opts)}")


@app.command("eval")
def eval_cmd(
    suite: list[str] = typer.Option(..., "--suite", help="Suite name, repeatable"),
    model: str = typer.Option("base:toy", "--model", help="base:<backbone>, a run directory, or a LoRA path"),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Backbone for a LoRA path"),
    split: str = typer.Option("test", "--split", help="val | test (toy suites); real suites have one split"),
    max_prompts: Optional[int] = typer.Option(None, "--max-prompts"),
    images_per_prompt: Optional[int] = typer.Option(None, "--images-per-prompt"),
    batch_size: int = typer.Option(64, "--batch-size"),
    out_root: Optional[Path] = typer.Option(None, "--out-root"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir"),
    download: bool = typer.Option(False, "--download", help="Allow downloading missing weights from the hub"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir"),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """Generate images for a suite and score them; writes an eval run with per-sample scores and CIs."""
    _allow_download(download)
    from lpo_bench import registry

    for s in suite:
        registry.check_name("suite", s)
    from lpo_bench import evaluation

    for s in suite:
        run_dir = evaluation.eval_run(
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
    lrm: Optional[Path] = typer.Option(None, "--lrm", help="Trained LRM directory"),
    spm: Optional[Path] = typer.Option(None, "--spm", help="Trained SPM directory"),
    metric: Optional[list[str]] = typer.Option(None, "--metric", help="Pixel metric(s) scored on decoded inputs"),
    timesteps: str = typer.Option("1,101,201,301,401,501,601,701,801,901,951", "--timesteps"),
    max_pairs: int = typer.Option(256, "--max-pairs"),
    out_root: Optional[Path] = typer.Option(None, "--out-root"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir"),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """Pairwise accuracy of step reward models (and pixel metrics) at each noise level t."""
    from lpo_bench import step_accuracy as sa

    try:
        grid = [int(x) for x in timesteps.split(",") if x.strip()]
    except ValueError:
        raise HarnessError(f"--timesteps {timesteps!r} must be comma-separated integers, e.g. 1,251,501") from None
    run_dir = sa.step_accuracy_run(
        pairs_dir=pairs, backbone=backbone, lrm=lrm, spm=spm, metrics=list(metric or []), timesteps=grid,
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
    from lpo_bench import reporting

    path = reporting.compare(runs, out, target=target, allow_mixed_hardware=allow_mixed_hardware)
    typer.echo(f"report: {path}")


@app.command()
def demo(
    out_root: Path = typer.Option(Path("runs/demo"), "--out-root"),
    report: Path = typer.Option(Path("reports/demo"), "--report"),
    seeds: str = typer.Option("0", "--seeds", help="Comma-separated training seeds, e.g. 0,1,2"),
    quick: bool = typer.Option(False, "--quick", help="Tiny settings (seconds), for smoke tests"),
    overwrite: bool = typer.Option(True, "--overwrite/--no-overwrite"),
) -> None:
    """The whole pipeline on the toy world on the CPU: pairs, LRM+LPO, SPM+SPO, Diffusion-DPO, eval, compare."""
    from lpo_bench import demo as demo_mod

    try:
        seed_list = [int(x) for x in seeds.split(",") if x.strip()]
    except ValueError:
        raise HarnessError(f"--seeds {seeds!r} must be comma-separated integers, e.g. 0,1,2") from None
    demo_mod.run_demo(out_root=out_root, report=report, seeds=seed_list, quick=quick, overwrite=overwrite)


@app.command()
def bench(
    method: str = typer.Option(..., "--method"),
    backbone: str = typer.Option("toy", "--backbone", help="toy | tiny-sd15 | tiny-sdxl | sd15 | sdxl"),
    random_weights: bool = typer.Option(False, "--random-weights", help="Full-size architecture, random weights"),
    repeats: int = typer.Option(3, "--repeats"),
    device: Optional[str] = typer.Option(None, "--device"),
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
    """Cost of one sampling step (LPO paper Tab. 5) and one training step per method, and the harness overhead."""
    from lpo_bench import bench as bench_mod

    bench_mod.run_bench(method=method, backbone=backbone, random_weights=random_weights, repeats=repeats,
                        device=device, out=out, parts=[p.strip() for p in parts.split(",")] if parts else None,
                        num_candidates=candidates, warmup=warmup, autocast_dtype=autocast,
                        gradient_checkpointing=grad_ckpt, compile=compile_, threads=threads,
                        interleave=not sequential)


@toy_app.command("pretrain")
def toy_pretrain(
    out: Path = typer.Option(Path("runs/toy-pretrain"), "--out"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Pretrain the toy base model (deterministic; about 15 minutes on 2 CPU cores)."""
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
    overwrite: bool = typer.Option(False, "--overwrite"),
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
