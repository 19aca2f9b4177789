"""Step reward models as a stage of a policy run and as runs of their own (``lpo-bench train-reward``).

A method whose spec names a ``reward_stage`` gets a trained reward model before its own setup: the one given
with ``--reward-model DIR`` (checked to be of the right kind), the one an interrupted session of the same run
already trained, or one trained here by the spec's trainer on the one loop, all its time RM_TRAIN. The model
is saved atomically (temporary directory + rename) so a crash never leaves half a model behind.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from lpo_bench import registry
from lpo_bench.config import load_target_config
from lpo_bench.errors import HarnessError
from lpo_bench.harness.loop import LoopSettings, run_loop
from lpo_bench.harness.method import TrainContext
from lpo_bench.ledger import Phase


def stage_config(stage: Any, backbone: str, *, config_file: str | None = None,
                 overrides: dict[str, Any] | None = None) -> Any:
    """The trainer config of step reward model ``stage``: defaults -> ``configs/<name>_<backbone>.toml`` ->
    ``config_file`` -> ``overrides``."""
    return load_target_config(stage.config, backbone=backbone, config_file=config_file, overrides=overrides,
                              preset_prefix=f"{stage.name}_")


def check_reward_model_dir(stage: Any, path: Path) -> None:
    """Refuse a directory that is not a saved ``stage`` model, before any model loads."""
    if not path.is_dir():
        raise HarnessError(f"--reward-model {path} does not exist; pass the directory a {stage.name} was saved to")
    if not (path / stage.marker_file).exists():
        model_dir = path / "model"
        hint = f" (did you mean {model_dir}?)" if (model_dir / stage.marker_file).exists() else ""
        raise HarnessError(f"--reward-model {path} is not a saved {stage.name} (no {stage.marker_file}){hint}; "
                           f"pass a directory written by `lpo-bench train-reward --kind {stage.name}`")


def save_atomically(trainer: Any, out: Path) -> Path:
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def train_stage(ctx: TrainContext[Any], stage: Any, cfg: Any, out: Path) -> tuple[Path, list[dict[str, Any]]]:
    """Train ``stage`` inside ``ctx.ledger`` (RM_TRAIN) and save it to ``out``; returns (out, validation rows)."""
    trainer = registry.load_target(stage.trainer)()
    sub = replace(ctx, cfg=cfg)
    with ctx.ledger.phase(Phase.RM_TRAIN):
        trainer.setup(sub)
    run_loop(trainer, ctx.ledger, LoopSettings(label=stage.name, phase=Phase.RM_TRAIN, precision=ctx.precision),
             log=ctx.log)
    with ctx.ledger.phase(Phase.RM_TRAIN), ctx.precision.autocast():
        rows = trainer.validate()
        if ctx.is_main:
            save_atomically(trainer, out)
    ctx.dist.barrier()
    return out, rows


def is_released(name: str | None) -> bool:
    """``--reward-model released:<name>`` (a released checkpoint) rather than a directory."""
    from lpo_bench.models.released import is_released as check

    return check(name)


def resolve_released(stage: Any, name: str, backbone: str, weights_dir: str | Path | None) -> Any:
    """``--reward-model released:<name>`` for ``stage`` on ``backbone``: the entry checked (kind, backbone), its
    files located offline, hashed and pin-checked, before any model loads."""
    from lpo_bench.models import released

    return released.resolve_released(name, kind=released.STEP_REWARD_MODEL, reward_model=stage.name,
                                     backbone=backbone, weights_dir=weights_dir)


def materialise_released(ctx: TrainContext[Any], resolved: Any) -> Path:
    """The released model imported into its stage's own saved layout (cached by content, written by the main
    process); the method then loads it from ``ctx.reward_model_dir`` like a trained one."""
    from lpo_bench.models import released

    out = released.materialised_dir(resolved)
    if ctx.is_main:
        released.materialise(resolved, ctx.bundle, out)
    ctx.dist.barrier()
    return out
