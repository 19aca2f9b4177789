"""Controls that prove the harness can rank: flipped preferences (negative) and best-of-N sampling (positive)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from lpo_bench import evaluation
from lpo_bench.cli import main
from lpo_bench.data import suites
from lpo_bench.data.pairs import FLIPPED_MANIFEST, flip_preferences
from lpo_bench.errors import HarnessError
from lpo_bench.evaluation.evaluate import best_of_images
from lpo_bench.evaluation.models import resolve_model
from lpo_bench.toy.models import load_toy_bundle


def _pairs(tmp_path):
    src = tmp_path / "pairs"
    (src / "data").mkdir(parents=True)
    df = pd.DataFrame({"caption": ["a", "b", "c"], "label_0": [1.0, 0.0, 0.5], "label_1": [0.0, 1.0, 0.5],
                       "aesthetic_gap": [0.3, 0.2, 0.1], "clipscore_gap": [0.05, -0.01, 0.0], "reward_0": [1.0, 0.2, 0.5]})
    df.to_parquet(src / "data" / "train-00000.parquet")
    (src / "pairs.json").write_text('{"version": "x"}')
    return src, df


def test_flip_preferences_reverses_decided_pairs_only(tmp_path):
    src, df = _pairs(tmp_path)
    dst = flip_preferences(src, tmp_path / "flipped")
    got = pd.read_parquet(dst / "data" / "train-00000.parquet")
    assert got["label_0"].tolist() == [0.0, 1.0, 0.5] and got["label_1"].tolist() == [1.0, 0.0, 0.5]
    assert got["aesthetic_gap"].tolist() == [-0.3, -0.2, 0.1]  # winner minus loser; the tie keeps |gap|
    assert got["clipscore_gap"].tolist() == [-0.05, 0.01, 0.0]
    assert got["reward_0"].tolist() == df["reward_0"].tolist() and got["caption"].tolist() == df["caption"].tolist()
    assert (dst / "pairs.json").read_text() == '{"version": "x"}'
    manifest = json.loads((dst / FLIPPED_MANIFEST).read_text())
    assert set(manifest["source_sha256"]) == {"pairs.json", "data/train-00000.parquet"}
    back = pd.read_parquet(flip_preferences(dst, tmp_path / "twice") / "data" / "train-00000.parquet")
    pd.testing.assert_frame_equal(back, df)
    with pytest.raises(HarnessError, match="--overwrite"):
        flip_preferences(src, dst)
    with pytest.raises(HarnessError, match="no parquet"):
        flip_preferences(tmp_path / "twice" / "nothing-here", tmp_path / "x")


def test_flip_pairs_cli(tmp_path, capsys):
    src, _ = _pairs(tmp_path)
    assert main(["flip-pairs", "--pairs", str(src), "--out", str(tmp_path / "f")]) == 0
    assert (tmp_path / "f" / FLIPPED_MANIFEST).exists()
    assert main(["flip-pairs", "--pairs", str(src), "--out", str(tmp_path / "f")]) == 2
    assert "--overwrite" in capsys.readouterr().err


class _Mean:
    higher_is_better = True

    def score(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


def test_best_of_images_picks_the_best_candidate_and_its_seed():
    items = suites.get_suite("toy-general").prompts("test")[:3]
    jobs = [(items[0], 0), (items[1], 0), (items[2], 1)]
    brightness = {}

    def sample(seeds):
        out = []
        for s in seeds:
            brightness.setdefault(s, float(np.random.default_rng(s % 2**32).random()))
            out.append(torch.full((3, 2, 2), brightness[s]))
        return torch.stack(out)

    own = [11, 12, 13]
    sel = evaluation.LoadedMetric("m", _Mean(), None, True)
    imgs, chosen = best_of_images(sample, jobs, own, ["p"] * 3, 42, 4, sel)
    for i in range(3):
        assert brightness[chosen[i]] == max(brightness[s] for s in brightness if s in set(_cands(jobs[i], own[i])))
        assert float(imgs[i].mean()) == pytest.approx(brightness[chosen[i]])
    ties = best_of_images(lambda seeds: torch.zeros(len(seeds), 3, 2, 2), jobs, own, ["p"] * 3, 42, 3, sel)[1]
    assert ties == own  # ties keep candidate 0: the model's own image


def _cands(job, own_seed):
    from lpo_bench.diffusion.seeding import sample_seed

    it, k = job
    return [own_seed] + [sample_seed(42, f"{it.prompt_id}/best-of/{j}", k) for j in range(1, 4)]


def test_best_of_model_names():
    spec = resolve_model("best-of-4:toy-oracle:base:toy")
    assert (spec.best_of_n, spec.best_of_metric, spec.kind, spec.tag) == (4, "toy-oracle", "base",
                                                                           "best-of-4-toy-oracle-base-toy")
    assert spec.identity()["best_of"] == {"n": 4, "metric": "toy-oracle"}
    assert "best_of" not in resolve_model("base:toy").identity()
    for bad, why in (("best-of-1:toy-oracle:base:toy", "N >= 2"), ("best-of-4:toy-orakle:base:toy", "unknown metric"),
                     ("best-of-2:toy-oracle:best-of-2:toy-oracle:base:toy", "nests")):
        with pytest.raises(HarnessError, match=why):
            resolve_model(bad)


def test_best_of_oracle_never_scores_below_the_model_it_selects_from(tmp_path):
    suite = dataclasses.replace(suites.get_suite("toy-general"), sampler=suites.SamplerSpec("DDIMScheduler", 2, 5.0, 0.0))
    bundle = load_toy_bundle()
    runs = [evaluation.eval_run(m, suite, max_prompts=6, images_per_prompt=1, out_root=tmp_path, bundle=bundle,
                                log=lambda s: None) for m in ("base:toy", "best-of-3:toy-oracle:base:toy")]
    base, best = (pd.read_parquet(r / "per_sample.parquet").query("metric == 'toy-oracle'") for r in runs)
    m = base.merge(best, on=["prompt_id", "image_idx"], suffixes=("_base", "_best"))
    assert len(m) == 6 and (m["score_best"] >= m["score_base"] - 1e-9).all()
    assert m["score_best"].mean() > m["score_base"].mean()
    info = json.loads((runs[1] / "run.json").read_text())
    assert info["model_spec"]["best_of"] == {"n": 3, "metric": "toy-oracle"}


def test_a_control_run_is_its_own_row(tiny_pairs, tmp_path):
    """A run on flipped preferences is reported as "<method> (flipped preferences)" with role "control", and its
    identity differs from the same run without the label."""
    from lpo_bench.data.prompts import PromptList
    from lpo_bench.harness.train import TrainRequest, train_run

    flipped = flip_preferences(tiny_pairs, tmp_path / "flipped")
    req = TrainRequest(method="diffusion-dpo", backbone="toy", pairs=str(flipped), out_root=str(tmp_path / "r"),
                       overrides={"max_updates": 1, "pairs_per_update": 4, "micro_batch_pairs": 4},
                       control="flipped preferences")
    d = train_run(req, bundle=load_toy_bundle(), prompts=PromptList(["one circle"]), log=lambda *_: None)
    info = json.loads((d / "run.json").read_text())
    assert info["method"] == "diffusion-dpo (flipped preferences)" and info["method_role"] == "control"
    assert info["control"] == "flipped preferences"
    ev = evaluation.eval_run(str(d), dataclasses.replace(suites.get_suite("toy-general"),
                                                         sampler=suites.SamplerSpec("DDIMScheduler", 2, 5.0, 0.0)),
                             max_prompts=2, images_per_prompt=1, out_root=tmp_path / "r", bundle=load_toy_bundle(),
                             log=lambda s: None)
    from lpo_bench.analysis.runs import load_run

    assert load_run(ev).model()[0] == "diffusion-dpo (flipped preferences)"
