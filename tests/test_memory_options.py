"""Memory options (``--precision``, ``--grad-ckpt``, micro-batch accumulation) and the peak-memory estimate.

Every registered method and step reward model trainer, on tiny bundles: a bf16-autocast update has a loss within
2 % of the fp32 one on the same batch; gradient checkpointing and micro-batching give the same update as the plain
run. The Precision object: fp32 is plain backward / clip / step; fp16 scales the loss, skips an update on an
inf gradient and logs it, and its state survives a checkpoint. The estimate's formula against hand-computed values.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from typing import Any

import pytest
import torch
from helpers import PROMPTS, method_ctx

from lpo_bench import registry
from lpo_bench.config import build_config
from lpo_bench.errors import HarnessError
from lpo_bench.harness import memory
from lpo_bench.harness.precision import Precision, check_precision, enable_gradient_checkpointing

THROWAWAY = {"winner-sft": "throwaway_method:SPEC"}


# ---------------------------------------------------------------------------- helpers
def _quick_cfg(cls_target: str, quick: dict[str, Any], extra: dict[str, Any]) -> Any:
    cls = registry.load_target(cls_target)
    fields = set(cls.__dataclass_fields__)
    return build_config(cls, quick, {k: v for k, v in extra.items() if k in fields})


def _method(name: str, pairs, run_dir, *, ckpt: bool = False, extra: dict[str, Any] | None = None):
    """Method ``name`` set up on a fresh tiny SD1.5 bundle with its quick settings (+ ``extra`` where it has
    those keys); a random reward model when it has a reward stage."""
    from lpo_bench.models.tiny import tiny_bundle

    spec = registry.method_spec(name)
    bundle = tiny_bundle("sd15", seed=0)
    if ckpt:
        enable_gradient_checkpointing(bundle)
    rm_dir = None
    if spec.reward_stage:
        stage = registry.reward_model_spec(spec.reward_stage)
        rm_dir = run_dir.parent / f"rm-{name}"
        if not rm_dir.exists():
            registry.load_target(stage.random_model)(tiny_bundle("sd15", seed=0), full_size=False).save(rm_dir)
    cfg = _quick_cfg(spec.config, spec.quick, extra or {})
    ctx = method_ctx(bundle, cfg, run_dir, pairs=pairs if "pairs" in spec.inputs else None, reward_model_dir=rm_dir)
    method = registry.load_target(spec.method)()
    method.setup(ctx)
    return method, ctx


def _trainer(name: str, pairs, run_dir, *, ckpt: bool = False, extra: dict[str, Any] | None = None):
    from lpo_bench.harness.reward_stage import stage_config
    from lpo_bench.models.tiny import tiny_bundle

    stage = registry.reward_model_spec(name)
    quick = next(s.quick_reward_stage for s in map(registry.method_spec, registry.METHODS) if s.reward_stage == name)
    fields = set(registry.load_target(stage.config).__dataclass_fields__)
    cfg = stage_config(stage, "toy", overrides={**quick, "max_updates": 3,
                                                **{k: v for k, v in (extra or {}).items() if k in fields}})
    bundle = tiny_bundle("sd15", seed=0)
    if ckpt:
        enable_gradient_checkpointing(bundle)
    ctx = method_ctx(bundle, cfg, run_dir, pairs=pairs)
    trainer = registry.load_target(stage.trainer)()
    trainer.setup(ctx)
    return trainer, ctx


def _params(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters() if v.requires_grad}


def _trained_module(obj) -> Any:
    return obj.policy_unet() if hasattr(obj, "policy_unet") else obj.model


def _step(obj, ctx, step: int, amp=None) -> dict[str, float]:
    with ctx.ledger.step(step), (amp or Precision()).autocast():
        return obj.train_step(step)


def _same_batch_start(obj, ctx) -> tuple[int, dict[str, Any]]:
    """(1, state after one fp32 update): the next update reads a batch already fixed (a method that samples has
    its round buffered; the others draw from generators in the state), and the policy differs from its reference
    (at update 0 a LoRA policy equals it exactly and a DPO-style loss is log 2 in any precision)."""
    _step(obj, ctx, 0)
    if hasattr(obj, "pending_updates"):
        assert obj.pending_updates > 0, "the round fed one update only; the test needs two"
    return 1, copy.deepcopy(obj.state_dict())


ALL = [("method", n) for n in registry.METHODS] + [("trainer", n) for n in registry.STEP_REWARD_MODELS]
# LPO's and Diffusion-DPO's losses are beta x a difference of policy and reference passes of the same UNet. Under bf16
# autocast the rounding of those two passes decided the logit (measured on these tiny bundles one update from the
# reference: LPO 0.645 -> 10.5, Diffusion-DPO 0.693 -> 0.613), so they declare ``fp32_log_ratio`` and run those
# passes in fp32 (Precision.exact); the autocast variant is kept below as the measured failure it is.
SMALL_BATCH = {"train_batch_pairs": 1, "threshold_min": 0.0, "threshold_max": 0.0, "prompts_per_round": 2,
               "lr_warmup_updates": 0}


def _build(kind: str, name: str, pairs, run_dir, **kw):
    return (_method if kind == "method" else _trainer)(name, pairs, run_dir, **kw)


# ---------------------------------------------------------------------------- bf16 against fp32
def _bf16_loss(obj, ctx, step, state, *, exact: bool) -> float:
    amp = Precision("bf16", "cpu")
    amp.cast_frozen_bundle(ctx.bundle, keep_unet=exact)  # as the harness does after setup
    assert ctx.bundle.dtype == torch.float32  # activations (latents, embeddings) stay fp32
    if not exact:
        amp.exact = contextlib.nullcontext  # the log-ratio passes under autocast too (the measured failure)
    obj.load_state_dict(copy.deepcopy(state))
    ctx.precision = amp  # what the method's exact() / backward() read
    return _step(obj, ctx, step, amp)["loss"]


@pytest.mark.parametrize(("kind", "name"), ALL)
def test_bf16_loss_is_within_2_percent_of_fp32_on_the_same_batch(kind, name, tiny_pairs, tmp_path):
    obj, ctx = _build(kind, name, tiny_pairs, tmp_path / "a", extra=SMALL_BATCH)
    step, state = _same_batch_start(obj, ctx)
    loss32 = _step(obj, ctx, step)["loss"]
    exact = bool(getattr(obj, "fp32_log_ratio", False))
    loss16 = _bf16_loss(obj, ctx, step, state, exact=exact)
    if not exact:
        assert loss32 != loss16, "bf16 autocast changed nothing: the update did not run under it"
    assert abs(loss16 - loss32) <= 0.02 * abs(loss32), f"{name}: fp32 loss {loss32:.6g}, bf16 {loss16:.6g}"


@pytest.mark.parametrize("name", [pytest.param("lpo", marks=pytest.mark.slow), "diffusion-dpo"])
def test_the_log_ratio_under_bf16_autocast_is_the_measured_failure(name, tiny_pairs, tmp_path):
    """Why ``fp32_log_ratio`` exists: with the policy/reference passes under bf16 autocast too, the loss moves by far
    more than 2 % (rounding, not the policy, decides it)."""
    obj, ctx = _build("method", name, tiny_pairs, tmp_path / "a", extra=SMALL_BATCH)
    assert obj.fp32_log_ratio
    step, state = _same_batch_start(obj, ctx)
    loss32 = _step(obj, ctx, step)["loss"]
    loss16 = _bf16_loss(obj, ctx, step, state, exact=False)
    assert abs(loss16 - loss32) > 0.05 * abs(loss32), f"{name}: fp32 loss {loss32:.6g}, bf16 autocast {loss16:.6g}"


# ---------------------------------------------------------------------------- checkpointing, accumulation
@pytest.mark.parametrize(("kind", "name"), ALL)
def test_gradient_checkpointing_gives_the_same_update(kind, name, tiny_pairs, tmp_path):
    plain, ctx_p = _build(kind, name, tiny_pairs, tmp_path / "p", extra=SMALL_BATCH)
    ckpt, ctx_c = _build(kind, name, tiny_pairs, tmp_path / "c", ckpt=True, extra=SMALL_BATCH)
    assert ctx_c.bundle.unet.is_gradient_checkpointing and not ctx_p.bundle.unet.is_gradient_checkpointing
    before = _params(_trained_module(plain))
    for s in range(2):
        _step(plain, ctx_p, s)
        _step(ckpt, ctx_c, s)
    a, b = _params(_trained_module(plain)), _params(_trained_module(ckpt))
    assert a.keys() == b.keys() and any(not torch.equal(before[k], a[k]) for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=f"{name}: {k}")


def _record_grads(obj) -> list[dict[int, torch.Tensor]]:
    """The gradients each ``obj.opt.step()`` call sees (after any clipping), in parameter order."""
    seen: list[dict[int, torch.Tensor]] = []
    step = obj.opt.step

    def recording_step(*args, **kwargs):
        params = [p for g in obj.opt.param_groups for p in g["params"]]
        seen.append({i: p.grad.detach().clone() for i, p in enumerate(params) if p.grad is not None})
        return step(*args, **kwargs)

    obj.opt.step = recording_step
    return seen


@pytest.mark.parametrize(("kind", "name"), ALL)
def test_micro_batches_accumulate_to_the_one_batch_update(kind, name, tiny_pairs, tmp_path):
    spec = registry.method_spec(name) if kind == "method" else registry.reward_model_spec(name)
    fields = registry.load_target(spec.config).__dataclass_fields__
    assert "micro_batch_pairs" in fields, f"{name} has no micro_batch_pairs: no gradient accumulation"
    key = next(k for k in ("train_batch_pairs", "pairs_per_update", "batch_pairs") if k in fields)
    batch = 4
    extra = {key: batch, "threshold_min": 0.0, "threshold_max": 0.0, "prompts_per_round": 4}
    whole, ctx_w = _build(kind, name, tiny_pairs, tmp_path / "w", extra={**extra, "micro_batch_pairs": batch})
    split, ctx_s = _build(kind, name, tiny_pairs, tmp_path / "s", extra={**extra, "micro_batch_pairs": 1})
    grads_w, grads_s = _record_grads(whole), _record_grads(split)
    logs_w, logs_s = _step(whole, ctx_w, 0), _step(split, ctx_s, 0)
    assert logs_w.get("pairs", batch) > 1, f"{name}: the update had one pair; nothing was split"
    # the gradient the optimiser steps with (AdamW's first step is about lr * sign(g), so the weights would magnify
    # float noise in near-zero gradient entries into differences of up to 2 lr)
    (gw,), (gs,) = grads_w, grads_s
    assert gw.keys() == gs.keys()
    scale = max(float(g.abs().max()) for g in gw.values())
    assert scale > 0
    for k in gw:  # float summation order differs; a wrong accumulation (e.g. a missed 1/n) is off by >= 2x
        torch.testing.assert_close(gs[k], gw[k], rtol=1e-3, atol=1e-4 * scale)
    assert logs_s["loss"] == pytest.approx(logs_w["loss"], rel=1e-5)
    assert logs_s["grad_norm"] == pytest.approx(logs_w["grad_norm"], rel=1e-5)


# ---------------------------------------------------------------------------- the Precision object
def _linear(seed: int = 0) -> tuple[torch.nn.Linear, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    m = torch.nn.Linear(8, 4)
    return m, torch.optim.AdamW(m.parameters(), lr=1e-2)


def _loss(m: torch.nn.Module) -> torch.Tensor:
    x = torch.linspace(-1, 1, 16).reshape(2, 8)
    return m(x).float().pow(2).mean()  # the loss in fp32, as methods compute it: its gradient 2^16 fits fp32


def test_fp32_is_plain_backward_clip_and_step_bitwise():
    a, opt_a = _linear()
    b, opt_b = _linear()
    amp = Precision("fp32")
    with amp.autocast():
        assert not torch.is_autocast_enabled("cpu")
        loss_b = _loss(b)
    for _ in range(3):
        opt_a.zero_grad()
        _loss(a).backward()
        norm_a = torch.nn.utils.clip_grad_norm_(list(a.parameters()), 0.05)
        opt_a.step()
        opt_b.zero_grad()
        amp.backward(_loss(b))
        norm_b = amp.clip_and_step(opt_b, list(b.parameters()), 0.05)
        assert norm_b == float(norm_a)
    assert loss_b.dtype == torch.float32
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert amp.step_logs() == {} and amp.state_dict() == {}


def test_fp16_scales_the_loss_and_matches_the_fp32_update():
    """The scale is a power of two: scaling the loss and unscaling the gradients is exact."""
    a, opt_a = _linear()
    b, opt_b = _linear()
    amp = Precision("fp16", "cpu")
    opt_a.zero_grad()
    _loss(a).backward()
    norm_a = torch.nn.utils.clip_grad_norm_(list(a.parameters()), 1.0)
    opt_a.step()
    amp.backward(_loss(b))
    assert b.weight.grad.abs().max() > 1000 * a.weight.grad.abs().max()  # scaled by 2^16
    norm_b = amp.clip_and_step(opt_b, list(b.parameters()), 1.0)
    assert norm_b == pytest.approx(float(norm_a), rel=1e-6)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert amp.step_logs() == {"loss_scale": 65536.0, "skipped_update": 0.0, "skipped_updates": 0.0}


def test_fp16_skips_an_update_with_an_inf_gradient_and_logs_it(tmp_path):
    m, opt = _linear()
    amp = Precision("fp16", "cpu")
    before = [p.detach().clone() for p in m.parameters()]
    amp.backward(_loss(m))
    m.weight.grad[0, 0] = float("inf")
    amp.clip_and_step(opt, list(m.parameters()), 1.0)
    assert all(torch.equal(p, q) for p, q in zip(before, m.parameters()))
    assert amp.step_logs() == {"loss_scale": 32768.0, "skipped_update": 1.0, "skipped_updates": 1.0}
    opt.zero_grad()
    amp.backward(_loss(m))
    amp.clip_and_step(opt, list(m.parameters()), 1.0)
    assert not torch.equal(before[0], m.weight) and amp.step_logs()["skipped_update"] == 0.0
    # the scaler state is plain values: a checkpoint loads it with weights_only=True
    torch.save(amp.state_dict(), tmp_path / "amp.pt")
    again = Precision("fp16", "cpu")
    again.load_state_dict(torch.load(tmp_path / "amp.pt", weights_only=True))
    assert again.step_logs()["loss_scale"] == 32768.0 and again.skipped_updates == 1


def test_clip_and_step_without_gradients_steps_nothing():
    m, opt = _linear()
    amp = Precision("fp16", "cpu")
    assert amp.clip_and_step(opt, list(m.parameters()), 1.0) == 0.0
    assert amp.skipped_updates == 0


def test_cast_frozen_keeps_trainable_parameters_fp32():
    from lpo_bench.models import lora
    from lpo_bench.models.tiny import tiny_bundle

    bundle = tiny_bundle("sd15", seed=0)
    params = lora.add_lora(bundle.unet, rank=2)
    Precision("fp32").cast_frozen_bundle(bundle)
    assert bundle.unet.conv_in.weight.dtype == torch.float32 and bundle.activation_dtype is None
    Precision("bf16", "cpu").cast_frozen_bundle(bundle)
    assert all(p.dtype == torch.float32 for p in params)
    frozen = [p for m in (bundle.unet, bundle.vae, *bundle.text_encoders) for p in m.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert bundle.dtype == torch.float32  # latents and embeddings stay fp32
    assert bundle.encode_prompts(["a cat"]).hidden.dtype == torch.float32


def test_check_precision_refuses_before_any_model_loads():
    check_precision("fp32", "cpu")
    check_precision("bf16", "cpu")
    check_precision("fp16", "cpu", loss_scaling={"m": True})
    with pytest.raises(HarnessError, match="not one of fp32, bf16, fp16"):
        check_precision("fp8", "cpu")
    with pytest.raises(HarnessError, match="needs loss scaling, which b does not do"):
        check_precision("fp16", "cpu", loss_scaling={"a": True, "b": False})


def test_train_refuses_fp16_for_a_method_without_loss_scaling(tiny_pairs, tmp_path):
    from lpo_bench.harness.train import TrainRequest, train_run

    with registry.extended("method", THROWAWAY):
        req = TrainRequest(method="winner-sft", pairs=str(tiny_pairs), out_root=str(tmp_path), precision="fp16")
        with pytest.raises(HarnessError, match="winner-sft does not do"):
            train_run(req, bundle=object(), log=lambda *_: None)  # refused before the bundle is touched
    assert not list(tmp_path.rglob("run.json"))


class _Scaled:
    """A trainable that adopts the loss-scaling API (``ctx.precision``), for the loop and checkpoint tests."""

    loss_scaling = True

    def __init__(self, amp: Precision, inf_at: int | None = None) -> None:
        self.m, self.opt = _linear()
        self.amp, self.inf_at = amp, inf_at

    def train_step(self, step: int) -> dict[str, float]:
        self.opt.zero_grad()
        loss = _loss(self.m)
        assert torch.is_autocast_enabled("cpu") == self.amp.low  # the loop autocasts the update
        self.amp.backward(loss)
        if step == self.inf_at:
            self.m.weight.grad[0, 0] = float("nan")
        return {"loss": float(loss.detach()), "grad_norm": self.amp.clip_and_step(self.opt, list(self.m.parameters()), 1.0)}

    def is_done(self, step: int) -> bool:
        return step >= 4

    def state_dict(self) -> dict[str, Any]:
        return {"m": copy.deepcopy(self.m.state_dict()), "opt": copy.deepcopy(self.opt.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.m.load_state_dict(state["m"])
        self.opt.load_state_dict(state["opt"])


def _loop(trainable, tmp_path, amp, **kw):
    from lpo_bench.harness.loop import Checkpointer, LoopSettings, run_loop
    from lpo_bench.ledger import Ledger

    ck = Checkpointer(tmp_path / "checkpoint.pt", precision=amp)
    settings = LoopSettings(label="t", checkpoint_every_updates=1, train_log=tmp_path / "log.jsonl", precision=amp,
                            **kw)
    run_loop(trainable, Ledger(None), settings, checkpointer=ck, log=lambda *_: None)
    return ck, [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]


def test_loop_with_fp32_precision_is_bitwise_the_plain_loop(tmp_path):
    from lpo_bench.harness.loop import LoopSettings, run_loop
    from lpo_bench.ledger import Ledger

    a, b = _Scaled(Precision()), _Scaled(Precision())
    run_loop(a, Ledger(None), LoopSettings(label="t", train_log=tmp_path / "plain.jsonl"), log=lambda *_: None)
    (tmp_path / "b").mkdir()
    _, logs = _loop(b, tmp_path / "b", Precision())
    assert all(torch.equal(p, q) for p, q in zip(a.m.parameters(), b.m.parameters()))
    plain = [json.loads(x) for x in (tmp_path / "plain.jsonl").read_text().splitlines()]
    assert [{k: r[k] for k in ("step", "loss", "grad_norm")} for r in plain] == \
           [{k: r[k] for k in ("step", "loss", "grad_norm")} for r in logs]
    assert "precision" not in torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)


def test_loop_logs_fp16_skips_and_checkpoints_the_scaler(tmp_path):
    from lpo_bench.harness.loop import load_checkpoint
    from lpo_bench.ledger import Ledger

    amp = Precision("fp16", "cpu")
    ck, logs = _loop(_Scaled(amp, inf_at=2), tmp_path, amp)
    assert [r["skipped_update"] for r in logs] == [0.0, 0.0, 1.0, 0.0]
    assert [r["loss_scale"] for r in logs] == [65536.0, 65536.0, 32768.0, 32768.0]
    assert load_checkpoint(ck.path)["precision"] == {"scaler": amp.scaler.state_dict(), "skipped_updates": 1}
    fresh = Precision("fp16", "cpu")
    ck.precision = fresh
    ck.resume(_Scaled(fresh), Ledger(None), resuming=True, log=lambda *_: None)
    assert fresh.skipped_updates == 1 and fresh.scaler.get_scale() == 32768.0


def test_train_reward_fp16_logs_the_loss_scale_and_resumes_bitwise(tiny_pairs, tmp_path):
    """``train-reward --kind lrm --precision fp16``: the trainer loss-scales through ``ctx.precision``; an
    interrupted run resumes (scaler state from the checkpoint) to the uninterrupted run's weights."""
    from safetensors.torch import load_file

    from lpo_bench import records
    from lpo_bench.harness.reward_run import RewardRequest, train_reward_run
    from lpo_bench.models.tiny import tiny_bundle

    over = {"max_updates": "3", "batch_pairs": "4", "warmup_updates": "1", "max_val_pairs": "4",
            "timestep_stride": "475"}

    def run(root, **kw):
        req = RewardRequest(kind="lrm", backbone="sd15", pairs=str(tiny_pairs), out_root=str(root), precision="fp16",
                            overrides=dict(over), checkpoint_every_updates=1, **kw)
        return train_reward_run(req, bundle=tiny_bundle("sd15", seed=0), log=lambda *_: None)

    ref = run(tmp_path / "ref")
    logs = [json.loads(x) for x in (ref / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 3] and all(r["loss_scale"] > 0 for r in logs)
    assert json.loads((ref / "run.json").read_text())["identity"]["precision"] == "fp16"
    part = run(tmp_path / "cut", stop_after_updates=2)
    assert not records.is_done(part) and "precision" in torch.load(part / "checkpoint.pt", weights_only=True)
    done = run(tmp_path / "cut", resume=True)
    a, b = load_file(str(ref / "model" / "heads.safetensors")), load_file(str(done / "model" / "heads.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------- tiny SDXL, bf16, checkpointed
def test_lpo_sdxl_bf16_grad_ckpt_builds_and_updates_on_a_tiny_bundle(tmp_path):
    """``lpo-bench train --method lpo --backbone sdxl --precision bf16 --grad-ckpt`` on a tiny SDXL-shaped bundle:
    the estimate is printed before the first update, both options are in the identity and the record."""
    from lpo_bench.data.prompts import PromptList
    from lpo_bench.harness.train import TrainRequest, train_run
    from lpo_bench.models.tiny import tiny_bundle

    spec = registry.method_spec("lpo")
    stage = registry.reward_model_spec(spec.reward_stage)
    rm = tmp_path / "rm"
    registry.load_target(stage.random_model)(tiny_bundle("sdxl", seed=0), full_size=False).save(rm)
    lines: list[str] = []
    req = TrainRequest(method="lpo", backbone="sdxl", precision="bf16", gradient_checkpointing=True,
                       reward_model=str(rm), out_root=str(tmp_path / "runs"), stop_after_updates=1,
                       overrides={**spec.quick, "threshold_min": 0.0, "threshold_max": 0.0})
    bundle = tiny_bundle("sdxl", seed=0)
    run_dir = train_run(req, bundle=bundle, prompts=PromptList(PROMPTS), log=lines.append)
    assert bundle.unet.is_gradient_checkpointing
    # LPO's log-ratio passes stay fp32 (fp32_log_ratio): its UNet is kept fp32, the other frozen weights go bf16
    assert bundle.unet.conv_in.weight.dtype == torch.float32 and bundle.dtype == torch.float32
    assert next(bundle.vae.parameters()).dtype == torch.bfloat16
    assert all(next(e.parameters()).dtype == torch.bfloat16 for e in bundle.text_encoders)
    est = next(i for i, x in enumerate(lines) if "estimated peak memory" in x)
    assert est < next(i for i, x in enumerate(lines) if "stopped at update 1" in x)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["request"]["precision"] == "bf16" and info["request"]["gradient_checkpointing"] is True
    assert info["memory_estimate"]["precision"] == "fp32" and info["memory_estimate"]["total_bytes"] > 0  # activations
    assert info["identity"]["precision"] == "bf16" and info["identity"]["gradient_checkpointing"] is True
    logs = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert len(logs) == 1 and torch.isfinite(torch.tensor(logs[0]["loss"]))


# ---------------------------------------------------------------------------- the estimate
TINY_CONFIG = {"block_out_channels": (4, 8), "layers_per_block": 1,
               "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
               "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "mid_block_type": "UNetMidBlock2DCrossAttn",
               "transformer_layers_per_block": 1}


def test_layer_counts_by_level():
    assert memory.unet_layer_counts(TINY_CONFIG) == [
        {"c": 4, "resnets": 3, "transformer_blocks": 3, "transformers": 3},  # down 1 + up 2
        {"c": 8, "resnets": 5, "transformer_blocks": 1, "transformers": 1},  # down 1 + up 2 + mid 2; mid attention
    ]
    sdxl_like = {**TINY_CONFIG, "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
                 "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "transformer_layers_per_block": (1, 3)}
    assert memory.unet_layer_counts(sdxl_like) == [
        {"c": 4, "resnets": 3, "transformer_blocks": 0, "transformers": 0},
        {"c": 8, "resnets": 5, "transformer_blocks": 3 + 2 * 3 + 3, "transformers": 1 + 2 + 1},
    ]


def test_activation_elements_by_hand():
    # level 0: c=4, p=16, R=3, T=3, X=3; level 1: c=8, p=4, R=5, T=1, X=1; 77 context tokens
    plain = 4 * (16 * (6 * 3 + 30 * 3 + 3 * 3) + 2 * 77 * 3) + 8 * (4 * (6 * 5 + 30 * 1 + 3 * 1) + 2 * 77 * 1)
    assert plain == 12584
    assert memory.unet_activation_elements(TINY_CONFIG, (4, 4), checkpointing=False) == plain
    kept = 4 * 16 * (1.5 * 6 + 6 * 3) + 8 * 4 * (1.5 * 6 + 6 * 1)  # 1728 + 480
    recompute = max(4 * 16 * 30, 8 * 4 * 30)  # the largest block recomputed in the backward pass
    assert memory.unet_activation_elements(TINY_CONFIG, (4, 4), checkpointing=True) == kept + recompute == 4128


def test_activation_samples_from_config_keys():
    from types import SimpleNamespace as C

    assert memory.activation_samples(C(micro_batch_pairs=3, train_batch_pairs=40, guidance_scale=5.0)) == 12
    assert memory.activation_samples(C(micro_batch_pairs=None, train_batch_pairs=40, guidance_scale=5.0),
                                     world_size=4) == 40  # 10 pairs per rank x 2 images x CFG 2
    assert memory.activation_samples(C(micro_batch_pairs=2, pairs_per_update=2048)) == 4  # no CFG: 2 images
    assert memory.activation_samples(C(batch_pairs=128, guidance_scale=1.0), world_size=8) == 32
    assert memory.activation_samples(C()) == 2


def test_peak_is_weights_plus_16_bytes_per_trainable_plus_activations():
    assert memory.peak_bytes(1000, 10, 500) == 1000 + 12 * 10 + 500
    from types import SimpleNamespace as C

    from lpo_bench.models.tiny import tiny_bundle

    bundle = tiny_bundle("sd15", seed=0)
    ref = torch.nn.Linear(10, 10).requires_grad_(False).to(torch.bfloat16)  # a method-held frozen model: 110 x 2 B
    head = torch.nn.Linear(3, 2)  # a trainable head: 8 params x 4 B
    holder = C(ref=ref, head=head, shared=bundle.unet, cfg=None)
    est = memory.estimate(bundle, holder, C(micro_batch_pairs=1), precision="fp32", checkpointing=False)
    n = {k: sum(p.numel() for p in m.parameters()) for k, m in
         (("unet", bundle.unet), ("vae", bundle.vae), ("text_encoder", bundle.text_encoders[0]))}
    assert est.weights_by_model == {"unet": 4 * n["unet"], "vae": 4 * n["vae"], "text_encoder": 4 * n["text_encoder"],
                                    "head": 4 * 8, "ref": 2 * 110}  # the shared UNet counted once
    assert est.dtypes_by_model["ref"] == "bf16" and est.trainable_params == 8
    a = memory.unet_activation_elements(bundle.unet.config, (8, 8), checkpointing=False)
    assert est.samples == 2 and est.activation_bytes == 2 * a * 4
    assert est.total_bytes == sum(est.weights_by_model.values()) + 12 * 8 + 2 * a * 4
    assert "estimated peak memory" in est.line() and est.as_dict()["total_bytes"] == est.total_bytes


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_activation_estimate_is_near_the_saved_tensors_of_a_tiny_unet(family):
    """The formula against the tensors autograd actually keeps (weights excluded), one fp32 sample."""
    from lpo_bench.models.tiny import tiny_bundle

    b = tiny_bundle(family, seed=0)
    unet = b.unet.requires_grad_(True)
    params = {p.untyped_storage().data_ptr() for p in unet.parameters()}
    seen, total = set(), [0]

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if t.untyped_storage().data_ptr() not in params and key not in seen:
            seen.add(key)
            total[0] += t.numel()
        return t

    x = torch.randn(1, *b.latent_shape, generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        b.unet_forward(x, torch.tensor([500]), b.encode_prompts(["a cat"]))
    est = memory.unet_activation_elements(unet.config, b.latent_shape[1:], checkpointing=False)
    assert 0.75 * total[0] <= est <= 1.35 * total[0], (est, total[0])


# ---------------------------------------------------------------------------- the GPU check, dry run
@pytest.mark.slow
def test_gpu_check_dry_run_on_tiny_bundles_writes_every_component(tmp_path):
    """``benchmarks/gpu_check.sh --tiny --device cpu``: every line is JSON, flushed as measured, in order."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "gpu_check.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([str(root / "benchmarks" / "gpu_check.sh"), "--tiny", "--device", "cpu", "--out", str(out)],
                   check=True, env=env, timeout=300, capture_output=True)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0]["part"] == "start" and rows[-1]["part"] == "end" and len({r["check_id"] for r in rows}) == 1
    assert [r["backbone"] for r in rows if r["part"] == "build"] == ["tiny-sd15", "tiny-sdxl"]
    trained = [(r["backbone"], r["method"]) for r in rows if r["part"] == "train_step"]
    assert trained == [(b, m) for b in ("tiny-sd15", "tiny-sdxl") for m in registry.METHODS]
    for r in rows:
        if r["part"] == "train_step":
            assert r["seconds"] > 0 and r["estimate_bytes"] > 0 and math.isfinite(r["logs"]["loss"])
            assert r["gradient_checkpointing"] == (r["backbone"] == "tiny-sdxl")
    step = {r["method"] for r in rows if r["part"] == "sampling_step"}
    assert step == {"shared"} | {m for m in registry.METHODS if registry.method_spec(m).bench_components}


def test_fp16_step_on_a_rank_that_never_scaled_a_loss():
    """Under several processes a rank whose first update holds no pair gets summed (zero) gradients without having
    scaled a loss; the scaler must set its scale up instead of failing in unscale_."""
    m, opt = _linear()
    amp = Precision("fp16", "cpu")
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    assert amp.clip_and_step(opt, list(m.parameters()), 1.0) == 0.0
    assert not amp.last_skipped and amp.scaler.get_scale() > 0
