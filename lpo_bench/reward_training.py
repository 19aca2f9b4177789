"""Harness-owned loop for step-level reward-model training (LRM for LPO, SPM for SPO).

A reward trainer (registry ``REWARD_TRAINERS``) supplies::

    kind: ClassVar[str]; config_cls: ClassVar[type]
    setup(ctx: TrainContext)   build the model from ctx.bundle, load pairs (ctx.options["pairs"]), optimiser
    train_step(step) -> logs   one optimiser update
    is_done(step) -> bool
    validate() -> list[dict]   measurement rows (kind "rm_val_acc", per timestep)
    save(out_dir) -> Path      the trained model in its documented layout
    state_dict() / load_state_dict(state)

All of its time is charged to Phase.RM_TRAIN. Used standalone (``lpo-bench train-reward``, a run
under ``runs/reward/``) and as the first stage of ``train --method lpo|spo`` inside the policy
run's ledger.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpo_bench import records, registry
from lpo_bench.config import config_dict, load_config
from lpo_bench.errors import HarnessError
from lpo_bench.ledger import Ledger, Phase, check_identity

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class RewardOptions:
    kind: str
    backbone: str = "toy"
    seed: int = 0
    config_file: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    pairs: str | None = None
    out_root: str | None = None
    overwrite: bool = False
    resume: bool = False
    weights_dir: str | None = None
    data_dir: str | None = None
    device: str | None = None
    checkpoint_every_updates: int = 100
    stop_after_updates: int | None = None  # testing aid: simulate an interruption


def trainer_module(kind: str) -> str:
    return registry.REWARD_TRAINERS[registry.check_name("step-reward-model", kind)].split(":")[0]


def make_trainer(kind: str, backbone: str, config_file: str | None, overrides: dict[str, Any]) -> tuple[Any, Any]:
    import importlib

    mod, attr = registry.REWARD_TRAINERS[registry.check_name("step-reward-model", kind)].split(":")
    cls = getattr(importlib.import_module(mod), attr)
    cfg = load_config(cls.config_cls, method_module=mod, backbone=backbone, config_file=config_file,
                      overrides=overrides, preset_prefix=f"{kind}_")
    return cls(), cfg


def run_reward_loop(trainer: Any, ledger: Ledger, *, start_step: int = 0, checkpoint: Any = None,
                    checkpoint_every: int = 100, stop_after: int | None = None, log: Any = print) -> int:
    """Train until done; every update is RM_TRAIN time. Returns the number of updates done."""
    step = start_step
    while not trainer.is_done(step):
        with ledger.phase(Phase.RM_TRAIN):
            logs = trainer.train_step(step)
        step += 1
        loss = logs.get("loss")
        if loss is not None and loss != loss:
            raise HarnessError(f"reward-model loss became NaN at update {step}; lower lr (--set lr=...) and rerun")
        if step % 50 == 0:
            log(f"[{trainer.kind}] update {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in logs.items()))
        if checkpoint is not None and step % checkpoint_every == 0:
            with ledger.phase(Phase.CHECKPOINT):
                checkpoint(step)
        if stop_after is not None and step >= stop_after:
            break
    return step


def train_reward_stage(ctx: Any, kind: str, *, overrides: dict[str, Any] | None = None) -> tuple[Path, list[dict]]:
    """First stage of a policy run: train the reward model inside ctx.ledger (RM_TRAIN).

    Writes the model to ``ctx.run_dir / kind`` and its validation rows to the run's measurements.
    """
    trainer, cfg = make_trainer(kind, ctx.backbone, None, dict(overrides or {}))
    sub = _sub_ctx(ctx, cfg)
    with ctx.ledger.phase(Phase.RM_TRAIN):
        trainer.setup(sub)
    run_reward_loop(trainer, ctx.ledger, log=ctx.log)
    with ctx.ledger.phase(Phase.RM_TRAIN):
        rows = trainer.validate()
        out = _save_atomically(trainer, ctx.run_dir / kind) if ctx.is_main else ctx.run_dir / kind
    if ctx.accelerator is not None:
        ctx.accelerator.wait_for_everyone()
    return out, rows


def finished_stage(ctx: Any, kind: str) -> Path | None:
    """The reward model a previous (interrupted) session of this run already trained, if any."""
    out = ctx.run_dir / kind
    return out if out.is_dir() else None


def _save_atomically(trainer: Any, out: Path) -> Path:
    """Save into a temporary directory, then rename: a crash never leaves a half-written model."""
    import shutil

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _sub_ctx(ctx: Any, cfg: Any) -> Any:
    from dataclasses import replace

    return replace(ctx, cfg=cfg)


def train_reward_run(opts: RewardOptions, *, log: Any = print) -> Path:
    """``lpo-bench train-reward``: a standalone reward-model run under ``runs/reward/<run_id>``."""
    import torch

    from lpo_bench.method import TrainContext
    from lpo_bench.runner import load_backbone, pick_device, seed_everything

    trainer, cfg = make_trainer(opts.kind, opts.backbone, opts.config_file, opts.overrides)
    if not opts.pairs:
        raise HarnessError("--pairs is required: a toy pairs directory (`lpo-bench toy make-pairs`) or a local "
                           "Pick-a-Pic copy")
    chash = records.sha256_of({"kind": opts.kind, "backbone": opts.backbone, "config": config_dict(cfg),
                               "seed": opts.seed, "pairs": str(opts.pairs)})
    run_id = f"{opts.kind}-{opts.backbone}-{chash[:8]}-s{opts.seed}"
    run_dir = records.prepare_run_dir(records.runs_root(opts.out_root), "reward", run_id,
                                      overwrite=opts.overwrite, resume=opts.resume)
    ckpt = run_dir / CHECKPOINT_FILE
    ledger = Ledger(run_dir / "ledger.jsonl")
    wall_start = ledger.now()
    device = pick_device(opts.device)
    with ledger.phase(Phase.SETUP):
        seed_everything(opts.seed)
        bundle = load_backbone(opts.backbone, weights_dir=opts.weights_dir, device=device)
        ctx = TrainContext(bundle=bundle, cfg=cfg, seed=opts.seed, ledger=ledger, run_dir=run_dir,
                           backbone=opts.backbone, data_dir=Path(opts.data_dir) if opts.data_dir else None,
                           weights_dir=Path(opts.weights_dir) if opts.weights_dir else None,
                           options={"pairs": opts.pairs}, log=log)
        prov = records.provenance()
    with ledger.phase(Phase.RM_TRAIN):
        trainer.setup(ctx)
    step = 0
    if opts.resume and ckpt.exists():
        with ledger.phase(Phase.CHECKPOINT):
            state = torch.load(ckpt, map_location="cpu", weights_only=False)
            trainer.load_state_dict(state["trainer"])
            step = int(state["step"])
            ledger.rewind(state["ledger_totals"])

    def save_ckpt(s: int) -> None:
        records.atomic_torch_save(ckpt, {"step": s, "trainer": trainer.state_dict(),
                                         "ledger_totals": ledger.totals_dict()})

    step = run_reward_loop(trainer, ledger, start_step=step, checkpoint=save_ckpt,
                           checkpoint_every=opts.checkpoint_every_updates, stop_after=opts.stop_after_updates, log=log)
    if opts.stop_after_updates is not None and not trainer.is_done(step):
        with ledger.phase(Phase.CHECKPOINT):
            save_ckpt(step)
        return run_dir
    with ledger.phase(Phase.EVAL):
        rows = trainer.validate()
    with ledger.phase(Phase.CHECKPOINT):
        save_ckpt(step)
        trainer.save(run_dir / "model")
    wall_s = ledger.now() - wall_start
    residual = check_identity(ledger.local_s, ledger.paused_s, wall_s)
    summary = ledger.summary()
    info = {"run_id": run_id, "kind": "reward", "reward_kind": opts.kind, "backbone": opts.backbone,
            "backbone_provenance": bundle.provenance, "seed": opts.seed, "config": config_dict(cfg),
            "config_hash": chash, "pairs": str(opts.pairs), "provenance": prov, "status": "done", "updates": step,
            "ledger": summary, "ledger_identity_residual": residual, "model_dir": str(run_dir / "model")}
    base = {"run_id": run_id, "method": opts.kind, "method_version": "1", "config_hash": chash,
            "backbone_id": str(bundle.provenance.get("backbone_id", opts.backbone)),
            "backbone_revision": str(bundle.provenance.get("backbone_revision", "")), "seed": opts.seed,
            **{k: prov[k] for k in records.PROVENANCE_KEYS}}
    cost = [{"kind": "train_cost", "metric": "gpu_h_rm", "value": summary["gpu_h_rm"], "gpu_h_rm": summary["gpu_h_rm"],
             "wall_s_total": wall_s, "train_step": step, "higher_is_better": False}]
    records.write_measurements(run_dir, rows + cost, base)
    records.atomic_write_json(run_dir / "run.json", info)
    records.mark_done(run_dir)
    log(f"reward model saved to {run_dir / 'model'} ({time.strftime('%H:%M:%S')})")
    return run_dir
