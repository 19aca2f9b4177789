"""Toy runs without --pairs read the demo's toy pairs, built once under the runs root and reused (tiny sizes here:
the real default build takes minutes)."""

from __future__ import annotations

import json
from functools import partial

import pytest
from helpers import PROMPTS

from lpo_bench.data.prompts import PromptList
from lpo_bench.errors import HarnessError
from lpo_bench.harness.identity import data_manifest_sha256
from lpo_bench.toy.default_pairs import cache_key, default_toy_pairs

TINY = {"n_train": 4, "n_val": 2, "n_test": 2, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    lines: list[str] = []
    return root, default_toy_pairs(root, log=lines.append, settings=TINY), lines


def test_default_pairs_are_built_once_then_reused(built):
    root, out, lines = built
    assert (out / "pairs.json").exists() and "building the default toy pairs" in lines[0]
    assert [p.name for p in (root / "toy-pairs").iterdir()] == [out.name]  # the build dir was renamed into place
    stamp = (out / "pairs.json").stat().st_mtime_ns
    again: list[str] = []
    assert default_toy_pairs(root, log=again.append, settings=TINY) == out
    assert len(again) == 1 and "using the default toy pairs" in again[0]
    assert (out / "pairs.json").stat().st_mtime_ns == stamp


def test_the_cache_key_follows_every_input():
    base = {"version": "pairs-1/toy-1/toy-v1", "base_sha256": "a" * 64, "settings": TINY, "seed": 0}
    key = cache_key(**base)
    assert cache_key(**base) == key
    for change in ({"version": "pairs-2/toy-1/toy-v1"}, {"base_sha256": "b" * 64}, {"seed": 1},
                   {"settings": {**TINY, "n_train": 5}}):
        assert cache_key(**{**base, **change}) != key


def test_a_failed_build_leaves_nothing_to_reuse(tmp_path):
    with pytest.raises(HarnessError, match="fewer than"):
        default_toy_pairs(tmp_path, log=lambda *_: None, settings={**TINY, "n_train": 10**6})
    assert list((tmp_path / "toy-pairs").iterdir()) == []


def test_a_toy_train_plan_without_pairs_reads_the_default_pairs(built):
    from lpo_bench.harness.train import TrainRequest, plan_run

    root, out, _ = built
    default = partial(default_toy_pairs, settings=TINY)
    plan = plan_run(TrainRequest(method="lpo", backbone="toy", out_root=str(root)), PromptList(PROMPTS),
                    log=lambda *_: None, default_pairs=default)
    assert plan.inputs.pairs == out and plan.identity["inputs"]["pairs"] == data_manifest_sha256(out)
    with pytest.raises(HarnessError, match="needs preference pairs: pass --pairs"):  # only toy has a default
        plan_run(TrainRequest(method="lpo", backbone="sd15", out_root=str(root)), PromptList(PROMPTS),
                 default_pairs=default)


def test_a_toy_reward_run_without_pairs_reads_the_default_pairs(built, tmp_path):
    from lpo_bench.harness.reward_run import RewardRequest, train_reward_run
    from lpo_bench.models.tiny import tiny_bundle

    _, out, _ = built
    over = {"max_updates": 2, "batch_pairs": 4, "warmup_updates": 1, "max_val_pairs": 4, "timestep_stride": 475}
    req = RewardRequest(kind="lrm", backbone="toy", overrides=over, out_root=str(tmp_path), stop_after_updates=1)
    run_dir = train_reward_run(req, bundle=tiny_bundle("sd15", seed=0), log=lambda *_: None,
                               default_pairs=lambda root, log: out)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["inputs"] == {"pairs": str(out), "pairs_sha256": data_manifest_sha256(out), "pair_scores": None}
