"""The training loop. The harness owns the loop, the clock (the ledger) and the records.

``train_run`` resolves the method and its config, opens (or resumes) a run directory, loads the
backbone under SETUP, lets the method set itself up (its reward-model stage is RM_TRAIN, its
preprocessing PREP), then calls ``method.train_step`` once per optimiser update inside
``ledger.step``. Evaluation (EVAL) and checkpoints (CHECKPOINT) run with the headline clock off.
At the end it checks the ledger identity (phases + paused = wall within 1%) and writes DONE last.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpo_bench import records, registry
from lpo_bench.config import config_dict, load_config
from lpo_bench.errors import HarnessError
from lpo_bench.ledger import COUNTED, Ledger, Phase, check_identity

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainOptions:
    method: str
    backbone: str = "toy"
    seed: int = 0
    config_file: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    out_root: str | None = None
    run_id: str | None = None
    overwrite: bool = False
    resume: bool = False
    budget_gpu_h: float | None = None
    eval_suite: str | None = None
    eval_every_gpu_s: float | None = None
    eval_prompts: int = 64
    checkpoint_every_updates: int = 50
    weights_dir: str | None = None
    data_dir: str | None = None
    device: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # method options, e.g. {"lrm": path}
    stop_after_updates: int | None = None  # testing aid: simulate an interruption


def method_module(method: str) -> str:
    return registry.METHODS[registry.check_name("method", method)].split(":")[0]


def resolve_config(opts: TrainOptions) -> Any:
    cls = registry.resolve("method", opts.method).config_cls
    return load_config(
        cls,
        method_module=method_module(opts.method),
        backbone=opts.backbone,
        config_file=opts.config_file,
        overrides=opts.overrides,
    )


def config_hash(method: str, backbone: str, cfg: Any, seed: int) -> str:
    return records.sha256_of({"method": method, "backbone": backbone, "config": config_dict(cfg), "seed": seed})


def load_backbone(name: str, *, weights_dir: str | None, device: str) -> Any:
    registry.check_name("backbone", name)
    loader = registry.resolve("backbone", name)
    return loader(weights_dir=weights_dir, device=device)


def pick_device(device: str | None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def make_accelerator(device: str) -> Any:
    """An accelerate.Accelerator when running distributed or on GPU; None for a plain CPU process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or device.startswith("cuda"):
        from accelerate import Accelerator

        return Accelerator(cpu=device == "cpu")
    return None


def _reduce_max_fn(accelerator: Any) -> Any:
    if accelerator is None or accelerator.num_processes == 1:
        return None
    import torch

    def reduce_max(values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
        return accelerator.reduce(t, reduction="max").tolist() if hasattr(accelerator, "reduce") else values

    def reduce_max_gather(values: list[float]) -> list[float]:
        t = torch.tensor([values], dtype=torch.float64, device=accelerator.device)
        return accelerator.gather(t).max(dim=0).values.tolist()

    return reduce_max_gather if accelerator.num_processes > 1 else reduce_max


def _rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def train_run(opts: TrainOptions, *, clock: Any = time.perf_counter, log: Any = print) -> Path:
    """Train ``opts.method`` on ``opts.backbone``; returns the run directory."""
    import torch

    from lpo_bench.method import TrainContext

    registry.check_name("method", opts.method)
    registry.check_name("backbone", opts.backbone)
    if opts.eval_suite:
        registry.check_name("suite", opts.eval_suite)
    method_cls = registry.resolve("method", opts.method)
    cfg = resolve_config(opts)
    chash = config_hash(opts.method, opts.backbone, cfg, opts.seed)
    run_id = opts.run_id or f"{opts.method}-{opts.backbone}-{chash[:8]}-s{opts.seed}"
    device = pick_device(opts.device)
    accelerator = make_accelerator(device)
    is_main = accelerator is None or accelerator.is_main_process
    root = records.runs_root(opts.out_root)
    if is_main:
        run_dir = records.prepare_run_dir(root, "train", run_id, overwrite=opts.overwrite, resume=opts.resume)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    run_dir = root / "train" / run_id
    ckpt_path = run_dir / CHECKPOINT_FILE
    resuming = opts.resume and ckpt_path.exists()

    ledger = Ledger(
        run_dir / "ledger.jsonl",
        clock=clock,
        sync=torch.cuda.synchronize if device.startswith("cuda") else None,
        devices=1 if accelerator is None else accelerator.num_processes,
        reduce_max=_reduce_max_fn(accelerator),
        write=is_main,
    )
    wall_start = ledger.now()  # the outer wall clock of this session starts with the ledger
    try:
        with ledger.phase(Phase.SETUP):
            prov = records.provenance()
            seed_everything(opts.seed)
            bundle = load_backbone(
                opts.backbone, weights_dir=opts.weights_dir, device=str(accelerator.device) if accelerator else device
            )
            ctx = TrainContext(
                bundle=bundle, cfg=cfg, seed=opts.seed, ledger=ledger, run_dir=run_dir, backbone=opts.backbone,
                accelerator=accelerator, data_dir=Path(opts.data_dir) if opts.data_dir else None,
                weights_dir=Path(opts.weights_dir) if opts.weights_dir else None, options=dict(opts.extra), log=log,
            )
            method = method_cls()
            method.setup(ctx)
    except HarnessError:
        if is_main and not resuming and not ckpt_path.exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing was trained: leave no half-made run behind
        raise
    step = 0
    if resuming:
        with ledger.phase(Phase.CHECKPOINT):
            state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            method.load_state_dict(state["method"])
            _set_rng_state(state["rng"])
            step = int(state["step"])
            ledger.rewind(state["ledger_totals"])
        log(f"resumed {run_id} at update {step}")
    with ledger.phase(Phase.CHECKPOINT):  # record keeping is off the headline clock but on the ledger
        run_info = {
            "run_id": run_id,
            "kind": "train",
            "method": opts.method,
            "method_version": getattr(method_cls, "version", "1"),
            "backbone": opts.backbone,
            "backbone_provenance": bundle.provenance,
            "seed": opts.seed,
            "config": config_dict(cfg),
            "config_hash": chash,
            "options": {k: v for k, v in opts.__dict__.items() if k not in ("overrides",)},
            "overrides": opts.overrides,
            "provenance": prov,
            "status": "running",
        }
        if is_main:
            records.atomic_write_json(run_dir / "run.json", run_info)
        base = _measurement_base(run_info, bundle)
        if is_main and getattr(method, "reward_rows", None) and not resuming:
            # validation of a reward model trained as this run's first stage (RM_TRAIN)
            records.write_measurements(run_dir, list(method.reward_rows), base)
    train_log = run_dir / "train_log.jsonl"
    next_eval_s = _next_eval(ledger, opts)
    interrupted = False
    while not method.is_done(step):
        if opts.budget_gpu_h is not None and ledger.gpu_h(COUNTED) >= opts.budget_gpu_h:
            log(f"budget of {opts.budget_gpu_h} GPU-h reached at update {step}")
            break
        with ledger.step(step):
            logs = method.train_step(step)
        _check_finite(logs, step, run_dir)
        step += 1
        with ledger.phase(Phase.CHECKPOINT):  # every rank enters each phase: row flushes are collective
            if is_main:
                with open(train_log, "a") as fh:
                    fh.write(json.dumps({"step": step, "gpu_h": ledger.gpu_h(COUNTED), **logs}) + "\n")
        if step % max(1, opts.checkpoint_every_updates) == 0:
            with ledger.phase(Phase.CHECKPOINT):
                _save_checkpoint(ckpt_path, method, step, ledger, is_main)
        if next_eval_s is not None and ledger.counted_s() >= next_eval_s:
            with ledger.phase(Phase.EVAL):
                _eval(ctx, method, opts, run_dir, base, step, ledger, is_main)
            next_eval_s += float(opts.eval_every_gpu_s or 0)
        if opts.stop_after_updates is not None and step >= opts.stop_after_updates:
            interrupted = True
            break
    if interrupted:
        with ledger.phase(Phase.CHECKPOINT):
            _save_checkpoint(ckpt_path, method, step, ledger, is_main)
        return run_dir
    with ledger.phase(Phase.CHECKPOINT):
        _save_checkpoint(ckpt_path, method, step, ledger, is_main)
        if is_main:
            method.export(run_dir / "export")
    if opts.eval_suite:
        with ledger.phase(Phase.EVAL):
            _eval(ctx, method, opts, run_dir, base, step, ledger, is_main)
    if not is_main:
        return run_dir
    # Identity per session: a resumed run's earlier sessions were checked when they ran. Paused time is
    # the ledger's own row writes; everything else the runner does happens inside a phase.
    wall_s = ledger.now() - wall_start
    residual = check_identity(ledger.local_s, ledger.paused_s, wall_s)
    summary = ledger.summary()
    cost_rows = [
        {"kind": "train_cost", "metric": "gpu_h_counted", "value": summary["gpu_h_counted"]},
        {"kind": "train_cost", "metric": "gpu_h_rm", "value": summary["gpu_h_rm"]},
        {"kind": "train_cost", "metric": "gpu_h_total_incl_rm", "value": summary["gpu_h_total_incl_rm"]},
        {"kind": "train_cost", "metric": "updates", "value": float(step)},
    ] + [
        {"kind": "train_cost", "metric": f"seconds_{p}", "value": s} for p, s in summary["seconds_by_phase"].items()
    ]
    for r in cost_rows:
        r.update(gpu_h_counted=summary["gpu_h_counted"], gpu_h_rm=summary["gpu_h_rm"], wall_s_total=wall_s,
                 train_step=step, higher_is_better=False)
    records.write_measurements(run_dir, cost_rows, base)
    run_info.update(status="done", updates=step, ledger=summary, ledger_identity_residual=residual, wall_s=wall_s)
    records.atomic_write_json(run_dir / "run.json", run_info)
    records.mark_done(run_dir)
    return run_dir


def _next_eval(ledger: Ledger, opts: TrainOptions) -> float | None:
    if not opts.eval_suite or not opts.eval_every_gpu_s:
        return None
    k = int(ledger.counted_s() // opts.eval_every_gpu_s) + 1
    return k * float(opts.eval_every_gpu_s)


def _check_finite(logs: dict[str, float], step: int, run_dir: Path) -> None:
    import math

    loss = logs.get("loss")
    if loss is not None and not math.isfinite(float(loss)):
        raise HarnessError(
            f"loss became {loss} at update {step}; the last good checkpoint is kept in {run_dir}. "
            f"Lower the learning rate (--set lr=...) and rerun with --resume, or inspect train_log.jsonl"
        )


def _save_checkpoint(path: Path, method: Any, step: int, ledger: Ledger, is_main: bool) -> None:
    if not is_main:
        return
    state = {"step": step, "method": method.state_dict(), "rng": _rng_state(), "ledger_totals": ledger.totals_dict()}
    records.atomic_torch_save(path, state)


def _measurement_base(run_info: dict[str, Any], bundle: Any) -> dict[str, Any]:
    prov = run_info["provenance"]
    bp = bundle.provenance or {}
    return {
        "run_id": run_info["run_id"],
        "method": run_info["method"],
        "method_version": str(run_info["method_version"]),
        "config_hash": run_info["config_hash"],
        "backbone_id": str(bp.get("backbone_id", run_info["backbone"])),
        "backbone_revision": str(bp.get("backbone_revision", "")),
        "dtype": str(bp.get("dtype", "fp32")),
        "seed": run_info["seed"],
        **{k: prov[k] for k in records.PROVENANCE_KEYS},
    }


def _eval(ctx: Any, method: Any, opts: TrainOptions, run_dir: Path, base: dict, step: int, ledger: Ledger,
          is_main: bool) -> None:
    from lpo_bench import evaluation

    rows, per_sample = evaluation.evaluate_unet(
        ctx.bundle, method.policy_unet(), opts.eval_suite, split="val", max_prompts=opts.eval_prompts,
        data_dir=ctx.data_dir, weights_dir=ctx.weights_dir,
    )
    if not is_main:
        return
    for r in rows:
        r.update(train_step=step, gpu_h_at_measurement=ledger.gpu_h(COUNTED), gpu_h_rm=ledger.gpu_h((Phase.RM_TRAIN,)))
    records.write_measurements(run_dir, rows, base)
