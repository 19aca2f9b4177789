"""``lpo-bench train-reward``: a step reward model trained as a run of its own, under ``runs/reward/<run_id>``.

The same lifecycle (:class:`RunRecorder`) and loop (:func:`run_loop`, all time RM_TRAIN) as a policy run, so it
has the same accelerator handling, CUDA-synced ledger, finite-loss check, checkpoints, ``--resume`` and memory
options (``--precision``, ``--grad-ckpt``: ``lpo_bench.harness.precision``). The model
is written to ``<run>/model``; pass that directory to ``train --reward-model``. ``flops.json`` prices its ledger's
counters (``lpo_bench.harness.flop_probes``), measured at SETUP on a model built as the trainer builds it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpo_bench import records, registry
from lpo_bench.config import config_dict
from lpo_bench.errors import HarnessError
from lpo_bench.harness import flops, reward_stage
from lpo_bench.harness.dist import make_dist, pick_device, seed_everything
from lpo_bench.harness.identity import data_manifest_sha256
from lpo_bench.harness.loop import (
    CHECKPOINT_FILE,
    Checkpointer,
    LoopSettings,
    close_session,
    open_ledger,
    run_loop,
)
from lpo_bench.harness.method import RunInputs, TrainContext
from lpo_bench.harness.precision import Precision, check_precision, enable_gradient_checkpointing
from lpo_bench.harness.request import RunRequest
from lpo_bench.harness.run import RunRecorder
from lpo_bench.harness.score_run import pair_scores_inputs
from lpo_bench.ledger import Phase
from lpo_bench.toy.default_pairs import default_toy_pairs


@dataclass(kw_only=True)
class RewardRequest(RunRequest):
    """Everything ``lpo-bench train-reward`` is asked to do."""

    kind: str  # a name in registry.STEP_REWARD_MODELS
    checkpoint_every_updates: int = 100


def train_reward_run(req: RewardRequest, *, bundle: Any = None, clock: Any = time.perf_counter,
                     log: Any = print, default_pairs: Callable[..., Path] = default_toy_pairs) -> Path:
    """Train step reward model ``req.kind`` on ``req.pairs``; returns the run directory. On the toy backbone
    without ``--pairs``: on ``default_pairs(runs_root, log=log)``, the demo's pairs (built the first time)."""
    from lpo_bench.harness import flop_probes
    from lpo_bench.models.load import load_bundle

    stage = registry.reward_model_spec(registry.check_name("step-reward-model", req.kind))
    registry.check_name("backbone", req.backbone)
    cfg = reward_stage.stage_config(stage, req.backbone, config_file=req.config_file, overrides=req.overrides)
    device = pick_device(req.device)
    trainer_cls = registry.load_target(stage.trainer)
    check_precision(req.precision, device, loss_scaling={stage.name: bool(getattr(trainer_cls, "loss_scaling", False))})
    if req.pair_scores and "pair_scores" not in stage.inputs:
        raise HarnessError(f"--pair-scores feeds a data filter that {stage.name} does not have; drop --pair-scores")
    if not req.pairs and req.backbone != "toy":
        raise HarnessError("--pairs is required: a toy pairs directory (`lpo-bench toy make-pairs`) or a local "
                           "Pick-a-Pic copy")
    pairs = Path(req.pairs) if req.pairs else default_pairs(records.runs_root(req.out_root), log=log)
    inputs = RunInputs(pairs=pairs, pairs_sha256=data_manifest_sha256(pairs), **pair_scores_inputs(req.pair_scores))
    identity = {"kind": "reward", "reward_model": stage.name, "backbone": req.backbone, "seed": req.seed,
                "config": config_dict(cfg), "inputs": inputs.identity(), "precision": req.precision,
                "gradient_checkpointing": req.gradient_checkpointing}
    dist = make_dist(device)
    with RunRecorder("reward", f"{stage.name}-{req.backbone}", identity, out_root=req.out_root, seed=req.seed,
                     run_id=req.run_id, overwrite=req.overwrite, resume=req.resume, dist=dist) as run:
        ckpt = Checkpointer(run.dir / CHECKPOINT_FILE, write=dist.is_main)
        run.keep_on_error = ckpt.exists()
        ledger = open_ledger(run.dir, device=device, dist=dist, clock=clock)
        wall_start = ledger.now()
        with ledger.phase(Phase.SETUP):
            seed_everything(req.seed)
            if bundle is None:
                bundle = load_bundle(req.backbone, weights_dir=req.weights_dir, device=dist.device(device))
            if req.gradient_checkpointing:
                enable_gradient_checkpointing(bundle)
            flop_record = flop_probes.record_run(  # the model's counters on one built as the trainer builds it
                run.dir, bundle, is_main=dist.is_main, log=log, stage=stage, stage_cfg=cfg, devices=dist.world_size)
        precision = Precision(req.precision, dist.device(device))
        ctx = TrainContext(bundle=bundle, cfg=cfg, seed=req.seed, ledger=ledger, run_dir=run.dir, inputs=inputs,
                           prompts=_NoPrompts(), dist=dist,
                           weights_dir=Path(req.weights_dir) if req.weights_dir else None, log=log,
                           precision=precision, gradient_checkpointing=req.gradient_checkpointing)
        trainer = trainer_cls()
        with ledger.phase(Phase.RM_TRAIN):
            trainer.setup(ctx)
            precision.cast_frozen_bundle(bundle)
        ckpt.precision = precision
        step = ckpt.resume(trainer, ledger, resuming=run.resuming, log=log)
        with ledger.phase(Phase.CHECKPOINT):
            run.start({"reward_model": stage.name, "backbone": req.backbone, "seed": req.seed,
                       "config": config_dict(cfg), "config_hash": run.identity_sha256,
                       "inputs": {"pairs": str(inputs.pairs), "pairs_sha256": inputs.pairs_sha256,
                                  "pair_scores": str(inputs.pair_scores) if inputs.pair_scores else None},
                       "model_dir": str(run.dir / "model"), "precision": req.precision,
                       "gradient_checkpointing": req.gradient_checkpointing},
                      bundle_provenance=bundle.provenance, backbone=req.backbone,
                      base_extra={"method": stage.name, "method_version": "1", "seed": req.seed,
                                  "config_hash": run.identity_sha256})
        run.keep_on_error = True
        settings = LoopSettings(label=stage.name, phase=Phase.RM_TRAIN, stop_after_updates=req.stop_after_updates,
                                checkpoint_every_updates=max(1, req.checkpoint_every_updates),
                                train_log=run.dir / "train_log.jsonl", precision=precision)
        result = run_loop(trainer, ledger, settings, start_step=step, checkpointer=ckpt, write_logs=dist.is_main,
                          log=log)
        with ledger.phase(Phase.CHECKPOINT):
            ckpt.save(result.step, trainer, ledger)
        if result.interrupted:
            return run.dir
        with ledger.phase(Phase.EVAL), precision.autocast():
            rows = trainer.validate()
        with ledger.phase(Phase.CHECKPOINT):
            if dist.is_main:
                reward_stage.save_atomically(trainer, run.dir / "model")
        dist.barrier()
        if not dist.is_main:
            return run.dir
        wall_s, residual, summary = close_session(ledger, wall_start)
        if flop_record is not None:
            summary["flops"] = flops.summary(summary["counts_by_phase"], flop_record)
        cost = [{"kind": "train_cost", "metric": "gpu_h_rm", "value": summary["gpu_h_rm"],
                 "gpu_h_rm": summary["gpu_h_rm"], "wall_s_total": wall_s, "train_step": result.step,
                 "higher_is_better": False}]
        if "flops" in summary:
            cost += [{**r, "gpu_h_rm": summary["gpu_h_rm"], "wall_s_total": wall_s, "train_step": result.step,
                      "higher_is_better": False} for r in flops.cost_rows(summary["flops"])]
        run.write_measurements(rows + cost)
        run.finish(updates=result.step, ledger=summary, ledger_identity_residual=residual, wall_s=wall_s)
    log(f"reward model saved to {run.dir / 'model'}")
    return run.dir


class _NoPrompts:
    """Reward models train on pairs; their trainers never ask for training prompts."""

    def training_prompts(self, limit: int | None = None) -> list[str]:
        raise HarnessError("a step reward model trains on preference pairs, not on a prompt list")
