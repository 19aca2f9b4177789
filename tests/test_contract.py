"""The method contract, checked for every registered method (and the test-only one) and every step reward model's
trainer: two updates change the trained parameters, the state round-trips bitwise through a checkpoint loaded
with ``weights_only=True`` (resuming from it repeats the same update), the quick and bench presets build valid
configs, and the declared sampling-step components run."""

from __future__ import annotations

import pytest
import torch
from helpers import method_ctx

from lpo_bench import registry
from lpo_bench.config import build_config
from lpo_bench.harness.spec import MethodSpec, SamplingStepSetting

THROWAWAY = {"winner-sft": "throwaway_method:SPEC"}


@pytest.fixture(scope="module", autouse=True)
def _throwaway_registered():
    with registry.extended("method", THROWAWAY):
        yield


ALL_METHODS = [*registry.METHODS, *THROWAWAY]


def _setup(spec: MethodSpec, pairs, tmp_path):
    from lpo_bench.models.tiny import tiny_bundle

    bundle = tiny_bundle("sd15", seed=0)
    rm_dir = None
    if spec.reward_stage:
        stage = registry.reward_model_spec(spec.reward_stage)
        rm_dir = tmp_path / "rm"
        if not rm_dir.exists():
            registry.load_target(stage.random_model)(tiny_bundle("sd15", seed=0), full_size=False).save(rm_dir)
    cfg = build_config(registry.load_target(spec.config), spec.quick)
    ctx = method_ctx(bundle, cfg, tmp_path / f"run{len(list(tmp_path.glob('run*')))}",
                     pairs=pairs if "pairs" in spec.inputs else None, reward_model_dir=rm_dir)
    method = registry.load_target(spec.method)()
    method.setup(ctx)
    return method, ctx


def _trained(method, ctx) -> dict[str, torch.Tensor]:
    unet = method.policy_unet()
    return {k: v.detach().clone() for k, v in unet.named_parameters() if v.requires_grad}


def _update(method, ctx, step):
    with ctx.ledger.step(step):
        return method.train_step(step)


def _through_checkpoint(trainable, tmp_path):
    """The state as a resumed run sees it: saved by the harness, loaded with weights_only=True."""
    from lpo_bench.harness.loop import Checkpointer, load_checkpoint
    from lpo_bench.ledger import Ledger

    ck = Checkpointer(tmp_path / "checkpoint.pt")
    ck.save(1, trainable, Ledger(None))
    return load_checkpoint(ck.path)["state"]


@pytest.mark.parametrize("name", ALL_METHODS)
def test_updates_change_parameters_and_state_resumes_bitwise(name, tiny_pairs, tmp_path):
    spec = registry.method_spec(name)
    method, ctx = _setup(spec, tiny_pairs, tmp_path)
    before = _trained(method, ctx)
    _update(method, ctx, 0)
    state = _through_checkpoint(method, tmp_path)
    _update(method, ctx, 1)
    after = _trained(method, ctx)
    assert any(not torch.equal(before[k], after[k]) for k in before), f"{name}: 2 updates changed nothing"

    resumed, ctx2 = _setup(spec, tiny_pairs, tmp_path)
    resumed.load_state_dict(state)
    _update(resumed, ctx2, 1)
    again = _trained(resumed, ctx2)
    assert after.keys() == again.keys()
    assert all(torch.equal(after[k], again[k]) for k in after), f"{name}: resuming did not repeat the update"


@pytest.mark.parametrize("name", ALL_METHODS)
def test_presets_build_valid_configs(name):
    spec = registry.method_spec(name)
    cls = registry.load_target(spec.config)
    build_config(cls, spec.quick)
    build_config(cls, spec.bench)
    if spec.reward_stage:
        stage = registry.reward_model_spec(spec.reward_stage)
        build_config(registry.load_target(stage.config), spec.quick_reward_stage)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_declared_bench_components_run(name):
    from lpo_bench.models.tiny import tiny_bundle

    spec = registry.method_spec(name)
    if spec.bench_components is None:
        pytest.skip(f"{name} declares no sampling step")
    bundle = tiny_bundle("sd15", seed=0)
    k = 2
    setting = SamplingStepSetting(prompt="a red circle", num_candidates=k, guidance_scale=5.0, num_inference_steps=4,
                                  timestep=501, child_timestep=251, full_size=False)
    with torch.inference_mode():
        cond, uncond = bundle.encode_prompts([setting.prompt]), bundle.encode_negative(1)
        state = {"cands": torch.randn(k, *bundle.latent_shape, generator=torch.Generator().manual_seed(0)),
                 "cond_k": cond.repeat(k), "uncond_k": uncond.repeat(k)}
        parts = 0
        for part in registry.load_target(spec.bench_components)(bundle, setting, state):
            part.call()  # before the next part: a component may free its model once the generator moves on
            assert part.counts and all(v > 0 for v in part.counts.values())
            parts += 1
        assert parts, f"{name} declares bench components but yields none"


@pytest.mark.parametrize("name", list(registry.STEP_REWARD_MODELS))
def test_reward_trainers_update_and_resume_bitwise(name, tiny_pairs, tmp_path):
    from lpo_bench.harness.reward_stage import stage_config
    from lpo_bench.models.tiny import tiny_bundle

    stage = registry.reward_model_spec(name)
    quick = next(s.quick_reward_stage for s in map(registry.method_spec, registry.METHODS) if s.reward_stage == name)
    cfg = stage_config(stage, "toy", overrides={**quick, "max_updates": 3})  # the toy preset: no hub weights

    def setup(i):
        ctx = method_ctx(tiny_bundle("sd15", seed=0), cfg, tmp_path / f"r{i}", pairs=tiny_pairs)
        trainer = registry.load_target(stage.trainer)()
        trainer.setup(ctx)
        return trainer, ctx

    def params(trainer):
        return {k: v.detach().clone() for k, v in trainer.model.named_parameters() if v.requires_grad}

    trainer, ctx = setup(0)
    before = params(trainer)
    trainer.train_step(0)
    state = _through_checkpoint(trainer, tmp_path)
    trainer.train_step(1)
    after = params(trainer)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    resumed, _ = setup(1)
    resumed.load_state_dict(state)
    resumed.train_step(1)
    again = params(resumed)
    assert all(torch.equal(after[k], again[k]) for k in after), f"{name}: resuming did not repeat the update"
