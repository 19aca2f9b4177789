"""A step-wise run whose threshold no gap can pass stops with one error naming the setting to change, instead of
sampling rounds silently until its prompt epochs run out."""

from __future__ import annotations

import pytest
from helpers import PROMPTS, method_ctx

from lpo_bench import registry
from lpo_bench.config import build_config
from lpo_bench.errors import HarnessError

# p_w - p_l = tanh(gap / 2) < 1: a threshold of 1 is never passed
IMPOSSIBLE = {"lpo": {"threshold_min": 0.9999, "threshold_max": 0.9999}, "spo": {"threshold_spo": 0.9999}}
# 2 prompts per round, 4 prompts: 2 rounds per epoch of 2 x 4 scored steps (t = 751, 501, 251, 1)
SMALL = {"num_inference_steps": 4, "prompts_per_round": 2, "num_train_prompts": 4, "num_candidates": 2,
         "lora_rank": 2, "max_updates": None}


def _rm_dir(name: str, tmp_path):
    from lpo_bench.models.tiny import tiny_bundle

    stage = registry.reward_model_spec(registry.method_spec(name).reward_stage)
    out = tmp_path / stage.name
    if not out.exists():
        registry.load_target(stage.random_model)(tiny_bundle("sd15", seed=0), full_size=False).save(out)
    return out


def _method(name: str, tmp_path, run: str, **over):
    from lpo_bench.models.tiny import tiny_bundle

    spec = registry.method_spec(name)
    cfg = build_config(registry.load_target(spec.config), {**SMALL, **IMPOSSIBLE[name], **over})
    ctx = method_ctx(tiny_bundle("sd15", seed=0), cfg, tmp_path / run, reward_model_dir=_rm_dir(name, tmp_path))
    method = registry.load_target(spec.method)()
    method.setup(ctx)
    return method, ctx


def _step(method, ctx, step):
    with ctx.ledger.step(step):
        return method.train_step(step)


@pytest.mark.parametrize("name", ["lpo", "spo"])
def test_rounds_without_pairs_stop_with_the_threshold_setting(name, tmp_path):
    method, ctx = _method(name, tmp_path, "run", epochs=1000, max_rounds_without_pairs=3)
    with pytest.raises(HarnessError) as err:
        _step(method, ctx, 0)
    msg = str(err.value)
    assert "\n" not in msg and method.rounds == 3
    assert f"[{name}] no training pair in the last 3 sampling rounds: 0 of 24 scored steps passed" in msg
    assert all(f"--set {k}=..." in msg for k in IMPOSSIBLE[name]) and "vs threshold 0.9999" in msg


def test_rounds_that_branch_no_step_name_the_timestep_range(tmp_path):
    method, ctx = _method("lpo", tmp_path, "run", epochs=1000, max_rounds_without_pairs=2, min_train_timestep=900)
    with pytest.raises(HarnessError, match="no step was scored.*min_train_timestep <= t <= max_train_timestep"):
        _step(method, ctx, 0)


def test_epochs_that_run_out_first_still_end_without_an_update(tmp_path):
    method, ctx = _method("lpo", tmp_path, "run", epochs=1, max_rounds_without_pairs=3)
    assert _step(method, ctx, 0) == {"skipped": 1.0}
    assert method.is_done(1) and method.rounds == method.rounds_without_pairs == 2


def test_the_count_of_empty_rounds_resumes(tmp_path):
    from lpo_bench.harness.loop import Checkpointer, load_checkpoint
    from lpo_bench.ledger import Ledger

    method, ctx = _method("lpo", tmp_path, "a", epochs=1, max_rounds_without_pairs=3)
    _step(method, ctx, 0)  # the one epoch: 2 empty rounds
    ck = Checkpointer(tmp_path / "checkpoint.pt")
    ck.save(1, method, Ledger(None))
    # more epochs on resume: the third empty round in a row, counted across the checkpoint, stops the run
    resumed, ctx2 = _method("lpo", tmp_path, "b", epochs=2, max_rounds_without_pairs=3)
    resumed.load_state_dict(load_checkpoint(ck.path)["state"])
    with pytest.raises(HarnessError, match="last 3 sampling rounds: 0 of 24 scored steps"):
        _step(resumed, ctx2, 1)


def test_a_run_that_forms_no_pair_fails_and_keeps_its_directory(tmp_path):
    from lpo_bench.data.prompts import PromptList
    from lpo_bench.harness.train import TrainRequest, train_run
    from lpo_bench.models.tiny import tiny_bundle

    over = {**SMALL, **IMPOSSIBLE["lpo"], "epochs": 1000, "max_rounds_without_pairs": 2}
    req = TrainRequest(method="lpo", backbone="sd15", overrides=over, reward_model=str(_rm_dir("lpo", tmp_path)),
                       out_root=str(tmp_path / "runs"))
    with pytest.raises(HarnessError, match="--set threshold_min=... / --set threshold_max=..."):
        train_run(req, bundle=tiny_bundle("sd15", seed=0), prompts=PromptList(PROMPTS), log=lambda *_: None)
    runs = list((tmp_path / "runs" / "train").iterdir())
    assert len(runs) == 1 and (runs[0] / "run.json").exists()
