"""``lpo-bench train``: one policy run of a registered method, from a :class:`TrainRequest`.

Order: resolve the method's spec and config and the reward stage's config, hash every input into the run
identity (all before any model loads, so bad settings fail in seconds), open the run (:class:`RunRecorder`),
load the backbone (SETUP), get the reward model (given, already trained by an interrupted session, or trained
now: RM_TRAIN), let the method set itself up (PREP for its preprocessing), restore a checkpoint on ``--resume``,
then the one loop (:func:`run_loop`), export, a final evaluation (EVAL, off the clock), cost rows, DONE.
Memory options (``lpo_bench.harness.precision``): ``--grad-ckpt`` is applied to the bundle's UNet before the reward
stage; ``--precision bf16|fp16`` autocasts the updates and evaluations and, after the method's setup, casts the
bundle's frozen weights; the estimated peak memory (``lpo_bench.harness.memory``) is printed and recorded in
``run.json`` before the first update.
At the end the ledger identity (phases + paused = wall within 1%) is checked and stored. FLOPs: after the method's
setup (SETUP, off the clock) the per-call FLOPs of the ledger's counters are measured on the run's models and
written to ``flops.json`` (``lpo_bench.harness.flop_probes``); the end-of-run summary prices the counts
(``lpo_bench.harness.flops``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lpo_bench import records, registry
from lpo_bench.config import config_dict, load_target_config
from lpo_bench.errors import HarnessError
from lpo_bench.harness import flops, memory, reward_stage
from lpo_bench.harness.dist import make_dist, pick_device, seed_everything
from lpo_bench.harness.identity import data_manifest_sha256, dir_sha256
from lpo_bench.harness.loop import (
    CHECKPOINT_FILE,
    Checkpointer,
    LoopSettings,
    close_session,
    open_ledger,
    run_loop,
)
from lpo_bench.harness.method import PromptSource, RunInputs, TrainContext
from lpo_bench.harness.precision import Precision, check_precision, enable_gradient_checkpointing
from lpo_bench.harness.request import RunRequest
from lpo_bench.harness.run import RunRecorder
from lpo_bench.harness.score_run import pair_scores_inputs
from lpo_bench.ledger import COUNTED, Ledger, Phase
from lpo_bench.toy.default_pairs import default_toy_pairs


@dataclass(kw_only=True)
class TrainRequest(RunRequest):
    """Everything ``lpo-bench train`` is asked to do."""

    method: str
    reward_stage_overrides: dict[str, Any] = field(default_factory=dict)
    reward_model: str | None = None
    budget_gpu_h: float | None = None
    budget_flops: float | None = None  # counted FLOPs (the run's own models, lpo_bench.harness.flops)
    eval_suite: str | None = None
    eval_every_gpu_s: float | None = None
    eval_every_flops: float | None = None  # replaces eval_every_gpu_s: learning curves on a FLOP axis
    eval_prompts: int = 64
    data_dir: str | None = None
    control: str | None = None  # a control run's label ("flipped preferences"): reported as "<method> (<label>)"


def _prompts_sha256(prompts: PromptSource) -> str:
    return records.sha256_of(prompts.training_prompts())


@dataclass
class _Plan:
    """The resolved request: what runs and what identifies it."""

    spec: Any
    method_cls: Any
    cfg: Any
    stage: Any  # StepRewardModelSpec or None
    stage_cfg: Any
    inputs: RunInputs
    identity: dict[str, Any]
    released: Any = None  # a resolved `--reward-model released:<name>` (lpo_bench.models.released)


def plan_run(req: TrainRequest, prompts: PromptSource, *, log: Any = print,
             default_pairs: Callable[..., Path] = default_toy_pairs) -> _Plan:
    """Validate the request and build the run identity; loads no model. A toy run that needs pairs and has no
    ``--pairs`` reads ``default_pairs(runs_root, log=log)``: the demo's pairs, built the first time (minutes)."""
    spec = registry.method_spec(registry.check_name("method", req.method))
    registry.check_name("backbone", req.backbone)
    if req.eval_suite:
        registry.check_name("suite", req.eval_suite)
    for name in ("budget_gpu_h", "budget_flops", "eval_every_gpu_s", "eval_every_flops"):
        value = getattr(req, name)
        if value is not None and not value > 0:
            raise HarnessError(f"--{name.replace('_', '-')} must be > 0, got {value}")
    if req.eval_every_flops and not req.eval_suite:
        raise HarnessError("--eval-every-flops sets an evaluation cadence; name the suite with --eval-suite")
    # defaults -> configs/<backbone>.toml next to the config class -> --config -> --set
    cfg = load_target_config(spec.config, backbone=req.backbone, config_file=req.config_file, overrides=req.overrides)
    stage = registry.reward_model_spec(spec.reward_stage) if spec.reward_stage else None
    if req.reward_model and stage is None:
        raise HarnessError(f"method {spec.name} has no reward-model stage; drop --reward-model")
    train_stage = stage is not None and not req.reward_model
    if req.reward_stage_overrides and not train_stage:
        raise HarnessError("--rm-set configures a reward-model stage that this run does not train; drop it")
    stage_cfg = reward_stage.stage_config(stage, req.backbone, overrides=req.reward_stage_overrides) if train_stage else None
    scaling = {spec.name: bool(getattr(registry.load_target(spec.method), "loss_scaling", False))}
    if train_stage:
        scaling[stage.name] = bool(getattr(registry.load_target(stage.trainer), "loss_scaling", False))
    check_precision(req.precision, pick_device(req.device), loss_scaling=scaling)
    needs = set(spec.inputs) | (set(stage.inputs) if train_stage else set())
    if "pairs" in needs and not req.pairs and req.backbone != "toy":
        what = spec.name if "pairs" in spec.inputs else f"{spec.name}'s reward-model stage ({stage.name})"
        raise HarnessError(f"{what} needs preference pairs: pass --pairs DIR (toy pairs from `lpo-bench toy "
                           f"make-pairs`, or a local Pick-a-Pic copy)"
                           + (f", or a trained {stage.name} with --reward-model DIR" if train_stage else ""))
    if req.pair_scores and "pair_scores" not in needs:
        raise HarnessError(f"--pair-scores feeds a reward-model stage's data filter, and {spec.name} trains none that "
                           f"reads it here; drop --pair-scores")
    released = reward_stage.resolve_released(stage, req.reward_model, req.backbone, req.weights_dir) \
        if req.reward_model and reward_stage.is_released(req.reward_model) else None
    rm = Path(req.reward_model) if req.reward_model and released is None else None
    if rm is not None:
        reward_stage.check_reward_model_dir(stage, rm)
    pairs = None
    if "pairs" in needs:  # last, after every check: building the default toy pairs takes minutes
        pairs = Path(req.pairs) if req.pairs else default_pairs(records.runs_root(req.out_root), log=log)
    inputs = RunInputs(pairs=pairs, pairs_sha256=data_manifest_sha256(pairs) if pairs else None,
                       reward_model=rm, reward_model_sha256=released.sha256 if released else dir_sha256(rm) if rm else None,
                       reward_stage_overrides=dict(req.reward_stage_overrides),
                       **pair_scores_inputs(req.pair_scores))
    method_cls = registry.load_target(spec.method)
    identity = {
        "kind": "train", "method": spec.name, "method_version": str(getattr(method_cls, "version", "1")),
        "backbone": req.backbone, "seed": req.seed, "config": config_dict(cfg), "inputs": inputs.identity(),
        "prompts_sha256": _prompts_sha256(prompts) if "prompts" in needs else None,
        "reward_stage": None if stage is None else {
            "name": stage.name, "config": config_dict(stage_cfg) if stage_cfg is not None else None},
        "budget_gpu_h": req.budget_gpu_h,
        "precision": req.precision, "gradient_checkpointing": req.gradient_checkpointing,
        "eval": {"suite": req.eval_suite, "every_gpu_s": req.eval_every_gpu_s, "prompts": req.eval_prompts}
        if req.eval_suite else None,
    }
    if req.control:
        identity["control"] = req.control
    if req.budget_flops is not None:  # only when set: unset, identities stay as before FLOP budgets existed
        identity["budget_flops"] = req.budget_flops
    if req.eval_every_flops is not None and identity["eval"] is not None:
        identity["eval"]["every_flops"] = req.eval_every_flops
    return _Plan(spec, method_cls, cfg, stage, stage_cfg, inputs, identity, released)


def train_run(req: TrainRequest, *, bundle: Any = None, prompts: PromptSource | None = None,
              clock: Any = time.perf_counter, log: Any = print) -> Path:
    """Train ``req.method``; returns the run directory. ``bundle`` / ``prompts`` replace the registered
    backbone's model and training prompts (tests pass tiny seeded ones in)."""
    from lpo_bench.data.prompts import BackbonePrompts
    from lpo_bench.harness import flop_probes
    from lpo_bench.models.load import load_bundle

    prompts = prompts or BackbonePrompts(req.backbone, Path(req.data_dir) if req.data_dir else None)
    plan = plan_run(req, prompts, log=log)
    device = pick_device(req.device)
    dist = make_dist(device)
    with RunRecorder("train", f"{plan.spec.name}-{req.backbone}", plan.identity, out_root=req.out_root,
                     seed=req.seed, run_id=req.run_id, overwrite=req.overwrite, resume=req.resume,
                     dist=dist) as run:
        ckpt = Checkpointer(run.dir / CHECKPOINT_FILE, write=dist.is_main)
        run.keep_on_error = ckpt.exists()
        ledger = open_ledger(run.dir, device=device, dist=dist, clock=clock)
        wall_start = ledger.now()  # the outer wall clock of this session starts with the ledger
        with ledger.phase(Phase.SETUP):
            seed_everything(req.seed)
            if bundle is None:
                bundle = load_bundle(req.backbone, weights_dir=req.weights_dir, device=dist.device(device))
            if req.gradient_checkpointing:
                enable_gradient_checkpointing(bundle)
            precision = Precision(req.precision, dist.device(device))
            ctx = TrainContext(bundle=bundle, cfg=plan.cfg, seed=req.seed, ledger=ledger, run_dir=run.dir,
                               inputs=plan.inputs, prompts=prompts, dist=dist,
                               weights_dir=Path(req.weights_dir) if req.weights_dir else None, log=log,
                               precision=precision, gradient_checkpointing=req.gradient_checkpointing)
            rm_rows, rm_source = _reward_model(ctx, plan)
            method = plan.method_cls()
            method.setup(ctx)
            flop_record = flop_probes.record_run(  # per-call FLOPs of the ledger's counters, before any cast
                run.dir, bundle, is_main=dist.is_main, log=log, policy=method.policy_unet(), stage=plan.stage,
                stage_cfg=plan.stage_cfg, model_dir=ctx.reward_model_dir, devices=dist.world_size)
            exact = bool(getattr(method, "fp32_log_ratio", False))  # its loss passes stay fp32 (precision.py)
            precision.cast_frozen_bundle(bundle, keep_unet=exact)
            estimate = memory.estimate(bundle, method, plan.cfg, precision="fp32" if exact else req.precision,
                                       checkpointing=req.gradient_checkpointing, world_size=dist.world_size)
            if dist.is_main:
                log(f"[{plan.spec.name}] {estimate.line()}")
        ckpt.precision = precision
        step = ckpt.resume(method, ledger, resuming=run.resuming, log=log)
        with ledger.phase(Phase.CHECKPOINT):  # record keeping is off the headline clock but on the ledger
            info = _run_info(req, plan, ctx, rm_source, run.identity_sha256)
            info["memory_estimate"] = estimate.as_dict()
            run.start(info, bundle_provenance=bundle.provenance,
                      backbone=req.backbone, base_extra={"method": _reported_name(plan.spec, req), "seed": req.seed,
                                                         "method_version": plan.identity["method_version"],
                                                         "config_hash": run.identity_sha256})
            run.write_measurements(rm_rows)
        run.keep_on_error = True  # from here on a user error keeps the run for --resume
        counted_flops = _counted_flops(ledger, flop_record, dist)
        evaluate = (lambda s: _evaluate(ctx, method, req, run, ledger, s, counted_flops)) if req.eval_suite else None
        settings = LoopSettings(label=plan.spec.name, checkpoint_every_updates=max(1, req.checkpoint_every_updates),
                                budget_gpu_h=req.budget_gpu_h, stop_after_updates=req.stop_after_updates,
                                train_log=run.dir / "train_log.jsonl", eval_every_gpu_s=req.eval_every_gpu_s,
                                precision=precision, budget_flops=req.budget_flops,
                                eval_every_flops=req.eval_every_flops, counted_flops=counted_flops)
        result = run_loop(method, ledger, settings, start_step=step, checkpointer=ckpt, evaluate=evaluate,
                          write_logs=dist.is_main, log=log)
        with ledger.phase(Phase.CHECKPOINT):
            ckpt.save(result.step, method, ledger)
        if result.interrupted:
            return run.dir
        with ledger.phase(Phase.CHECKPOINT):
            if dist.is_main:
                method.export(run.dir / "export")
        if evaluate is not None:
            with ledger.phase(Phase.EVAL):
                evaluate(result.step)
        if not dist.is_main:
            return run.dir
        # Identity per session: a resumed run's earlier sessions were checked when they ran. Paused time is
        # the ledger's own row writes; everything else happens inside a phase.
        wall_s, residual, summary = close_session(ledger, wall_start)
        if flop_record is not None:
            summary["flops"] = flops.summary(summary["counts_by_phase"], flop_record)
        run.write_measurements(_cost_rows(summary, result.step, wall_s))
        run.finish(updates=result.step, ledger=summary, ledger_identity_residual=residual, wall_s=wall_s)
    return run.dir


def _reward_model(ctx: TrainContext[Any], plan: _Plan) -> tuple[list[dict[str, Any]], str | None]:
    """Set ``ctx.reward_model_dir``; returns (validation rows of a stage trained now, its source)."""
    if plan.stage is None:
        return [], None
    if plan.released is not None:  # imported into the stage's own layout, in SETUP like any weights loading
        ctx.reward_model_dir = reward_stage.materialise_released(ctx, plan.released)
        return [], plan.released.entry.ref
    if plan.inputs.reward_model is not None:
        ctx.reward_model_dir = plan.inputs.reward_model
        return [], "given"
    out = ctx.run_dir / plan.stage.name
    if out.is_dir():  # an interrupted session of this run had finished the stage
        ctx.reward_model_dir = out
        return [], "trained"
    ctx.reward_model_dir, rows = reward_stage.train_stage(ctx, plan.stage, plan.stage_cfg, out)
    return rows, "trained"


def _reported_name(spec: Any, req: TrainRequest) -> str:
    """The method name in records: a control run is "<method> (<control>)", its own row in every table."""
    return f"{spec.name} ({req.control})" if req.control else spec.name


def _run_info(req: TrainRequest, plan: _Plan, ctx: TrainContext[Any], rm_source: str | None,
              config_hash: str) -> dict[str, Any]:
    inputs = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(plan.inputs).items()}
    return {
        "method": _reported_name(plan.spec, req), "method_role": "control" if req.control else plan.spec.role,
        "method_version": plan.identity["method_version"], "control": req.control,
        "backbone": req.backbone, "seed": req.seed, "config": plan.identity["config"],
        "config_hash": config_hash, "inputs": inputs,
        "reward_stage": None if plan.stage is None else {
            "name": plan.stage.name, "source": rm_source, "model_dir": str(ctx.reward_model_dir),
            "config": plan.identity["reward_stage"]["config"],
            "released": plan.released.provenance() if plan.released is not None else None},
        "request": {k: v for k, v in asdict(req).items() if k not in ("overrides", "reward_stage_overrides")},
        "overrides": req.overrides,
    }


def _cost_rows(summary: dict[str, Any], step: int, wall_s: float) -> list[dict[str, Any]]:
    rows = [{"kind": "train_cost", "metric": m, "value": summary[m]}
            for m in ("gpu_h_counted", "gpu_h_rm", "gpu_h_total_incl_rm")]
    rows.append({"kind": "train_cost", "metric": "updates", "value": float(step)})
    rows += [{"kind": "train_cost", "metric": f"seconds_{p}", "value": s} for p, s in summary["seconds_by_phase"].items()]
    if "flops" in summary:
        rows += flops.cost_rows(summary["flops"])
    for r in rows:
        r.update(gpu_h_counted=summary["gpu_h_counted"], gpu_h_rm=summary["gpu_h_rm"], wall_s_total=wall_s,
                 train_step=step, higher_is_better=False)
    return rows


def _counted_flops(ledger: Ledger, record: Any, dist: Any) -> Callable[[], float]:
    """Counted FLOPs so far, the same number on every process (the max over processes of each one's pricing of
    its ledger with the main process's per-call table); nan when a counter is unpriced."""
    table = next((t for t in dist.gather_objects([record.measured if record is not None else None]) if t), None)
    devices = dist.world_size
    reduce_max = dist.reduce_max_fn()

    def counted() -> float:
        if table is None:
            return math.nan
        value = flops.price(ledger.counts_by_phase(), table, devices).counted
        return value if reduce_max is None else float(reduce_max([value])[0])

    return counted


def _evaluate(ctx: TrainContext[Any], method: Any, req: TrainRequest, run: RunRecorder, ledger: Ledger,
              step: int, counted_flops: Callable[[], float]) -> None:
    from lpo_bench.evaluation import evaluate_unet

    with ctx.precision.autocast():  # the frozen weights may be bf16/fp16 (--precision): evaluate as trained
        rows, _ = evaluate_unet(ctx.bundle, method.policy_unet(), req.eval_suite, split="val",
                                max_prompts=req.eval_prompts, data_dir=Path(req.data_dir) if req.data_dir else None,
                                weights_dir=ctx.weights_dir)
    for r in rows:
        r.update(train_step=step, gpu_h_at_measurement=ledger.gpu_h(COUNTED), gpu_h_rm=ledger.gpu_h((Phase.RM_TRAIN,)),
                 flops_at_measurement=counted_flops())
    run.write_measurements(rows)
