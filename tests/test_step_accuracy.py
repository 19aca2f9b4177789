"""Step-level reward accuracy: shared-noise pairing, winner orientation, ties, records and plot.

The bundle is the tiny SD1.5 UNet/text encoder with a transparent "VAE" (4x4 average pooling
into latents, nearest up-sampling back), so a pixel scorer's ordering survives encode/decode
and the tests can say exactly which accuracy is right.
"""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from lpo_bench import records
from lpo_bench.analysis import stats
from lpo_bench.data.pairs import encode_png
from lpo_bench.errors import HarnessError
from lpo_bench.evaluation import step_accuracy as sa
from lpo_bench.metrics.base import ScorerProvenance
from lpo_bench.models.tiny import tiny_bundle

TOY_PROMPTS = ["a red circle and a blue square", "two green triangles", "a small circle and a large red square",
               "a red circle on the left of a blue square", "a striped circle and a solid orange triangle"]


class PoolVAE(torch.nn.Module):
    """Images [b,3,32,32] -> latents [b,4,8,8] (4x4 mean of RGB + a zero channel); decode up-samples."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(block_out_channels=(8, 8, 8), scaling_factor=1.0)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def encode(self, x: torch.Tensor) -> SimpleNamespace:
        z = F.avg_pool2d(x, 4)
        z = torch.cat([z, torch.zeros_like(z[:, :1])], dim=1)
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=z))

    def decode(self, z: torch.Tensor, return_dict: bool = False) -> tuple[torch.Tensor]:
        return (F.interpolate(z[:, :3], scale_factor=4, mode="nearest"),)


class Brightness:
    """A 'perfect' pixel scorer when winners are the brighter images."""

    id = "brightness"
    version = "1"
    higher_is_better = True

    def load(self, device: str = "cpu") -> ScorerProvenance:
        return ScorerProvenance("brightness", "1", "test", "0")

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return images.float().mean(dim=(1, 2, 3))


@pytest.fixture(scope="module")
def bundle():
    torch.manual_seed(0)
    return dataclasses.replace(tiny_bundle("sd15", resolution=32), vae=PoolVAE())


def _images(n: int, lo: float, hi: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(n, 3, 32, 32, generator=g)


def test_perfect_pixel_scorer_and_shared_noise(bundle):
    n = 4
    bright, dark = _images(n, 0.6, 0.9, 1), _images(n, 0.1, 0.4, 2)
    views = sa.pixel_views("brightness", Brightness(), {})
    rows = sa.score_pairs(bundle, TOY_PROMPTS[:1] * n, bright, dark, views, [1, 951], batch_size=4)
    acc = pd.DataFrame(sa.accuracy_rows(rows, {})).set_index(["input_mode", "timestep"])["value"]
    assert acc[("x0_pred_decoded", 1)] == 1.0
    assert acc[("noisy_decoded", 1)] == 1.0
    # Winner and loser share eps, so x_t,w - x_t,l = sqrt(abar)(z_w - z_l) > 0 everywhere even at t = 951:
    # a brightness scorer stays perfect on decoded x_t. With independent noise it would not.
    assert acc[("noisy_decoded", 951)] == 1.0
    # Swapping the roles gives accuracy 0 (orientation is the caller's; nothing is symmetrised).
    rows = sa.score_pairs(bundle, TOY_PROMPTS[:1] * n, dark, bright, views[1:], [1])
    assert sa.accuracy_rows(rows, {})[0]["value"] == 0.0


def test_pair_noise_is_seeded_by_pair_and_timestep():
    a = sa.pair_noise([0, 1], 5, (4, 8, 8))
    assert torch.equal(a, sa.pair_noise([0, 1], 5, (4, 8, 8)))
    assert torch.equal(a[1], sa.pair_noise([1], 5, (4, 8, 8))[0])  # independent of batch composition
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a[0], sa.pair_noise([0], 6, (4, 8, 8))[0])


def test_x0_from_prompts_inverts_add_noise_for_the_true_eps(bundle):
    z = torch.randn(2, 4, 8, 8)
    eps = torch.randn_like(z)
    x_t = bundle.scheduler.add_noise(z, eps, torch.tensor([501, 501]))
    oracle = dataclasses.replace(bundle)
    oracle.guided_eps = lambda *args, **kwargs: eps  # a denoiser that knows the true noise
    assert torch.allclose(sa.x0_from_prompts(oracle, x_t, 501, TOY_PROMPTS[:2]), z, atol=1e-4)
    assert sa.x0_from_prompts(bundle, x_t, 501, TOY_PROMPTS[:2]).shape == z.shape


def _write_pairs(path, images_0, images_1, labels, captions, **extra):
    rows = [{"caption": c, "jpg_0": encode_png(a.permute(1, 2, 0).numpy()), "jpg_1": encode_png(b.permute(1, 2, 0).numpy()),
             "label_0": float(lab)} for a, b, lab, c in zip(images_0, images_1, labels, captions, strict=True)]
    path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).assign(**extra).to_parquet(path / "test.parquet")
    return path


def test_run_identical_images_give_exactly_one_half(bundle, tmp_path):
    from lpo_bench.baselines.spo.spm import StepAwarePreferenceModel
    from lpo_bench.methods.lpo.lrm import LatentRewardModel

    lrm_dir = LatentRewardModel.from_bundle(bundle, guidance_scale=1.0).save(tmp_path / "lrm")
    spm_dir = StepAwarePreferenceModel.tiny(bundle.tokenizers[0], hidden=32, layers=1).save(tmp_path / "spm")
    imgs = _images(5, 0.0, 1.0, 3)
    # Row 2 is a tie (dropped); labels mix both orientations.
    pairs = _write_pairs(tmp_path / "pairs", imgs, imgs.clone(), [1, 0, 0.5, 1, 0], TOY_PROMPTS)
    grid = [999, 1]
    run = sa.step_accuracy_run(pairs_dir=pairs, backbone="toy", reward_models=[lrm_dir, spm_dir],
                               metrics=["toy-clip"], timesteps=grid, max_pairs=10, batch_size=4, bundle=bundle,
                               log=lambda m: None)
    df = records.read_measurements(run / "measurements.parquet")
    assert len(df) == 6 * 2  # 6 (reward model, input mode) views x 2 timesteps; no oracle parts: only "all"
    assert set(df["kind"]) == {"step_reward_acc"} and set(df["category"]) == {"all"}
    assert (df["value"] == 0.5).all() and (df["n"] == 4).all()  # ties count one half; the tie pair was dropped
    assert set(zip(df["metric"], df["input_mode"], strict=True)) == {
        ("lrm", "noisy_latent"), ("spm", "x0_pred_decoded"), ("toy-clip", "x0_pred_decoded"),
        ("toy-clip", "noisy_decoded"), ("lrm+shuffled-prompt", "noisy_latent"),
        ("spm+shuffled-prompt", "x0_pred_decoded")}
    info = json.loads((run / "run.json").read_text())
    assert info["timesteps"] == [1, 999] and info["num_train_timesteps"] == 1000
    assert info["pairs"]["n_pairs"] == 4 and info["status"] == "done"
    assert info["subsets"]["definition"] is None and info["subsets"]["sizes"] == {"all": 4}
    ctl = info["shuffled_prompt_control"]
    assert ctl["enabled"] and ctl["same_prompt_fraction"] == 0.0
    assert ctl["views"] == ["lrm+shuffled-prompt", "spm+shuffled-prompt"]
    assert (run / "step_accuracy.png").stat().st_size > 0 and records.is_done(run)
    per_pair = pd.read_parquet(run / "per_sample.parquet")
    assert (per_pair["s_w"] == per_pair["s_l"]).all() and per_pair["category"].isna().all()
    own = per_pair["view_role"] != "shuffled_prompt_control"
    assert (per_pair.loc[own, "scored_prompt"] == per_pair.loc[own, "prompt"]).all()
    assert (per_pair.loc[~own, "scored_prompt"] != per_pair.loc[~own, "prompt"]).all()
    with pytest.raises(HarnessError, match="already exists"):
        sa.step_accuracy_run(pairs_dir=pairs, backbone="toy", reward_models=[lrm_dir, spm_dir],
                             metrics=["toy-clip"], timesteps=grid, max_pairs=10, log=lambda m: None)


def test_accuracy_rows_hand_values():
    per_pair = [
        {"reward_model": "m", "input_mode": "noisy_latent", "timestep": t, "acc": a}
        for t, accs in ((1, [1.0, 1.0, 0.5, 0.0]), (501, [0.0, 0.0, 0.5, 1.0])) for a in accs
    ]
    rows = sa.accuracy_rows(per_pair, {"m": {"metric_version": "3", "checkpoint": "ck", "sha256": "ab"}})
    assert [r["value"] for r in rows] == [0.625, 0.375]
    assert rows[0]["n"] == 4 and rows[0]["scorer_checkpoint"] == "ck" and rows[0]["timestep"] == 1
    assert (rows[0]["ci_low"], rows[0]["ci_high"]) == stats.mean_ci([1.0, 1.0, 0.5, 0.0])[1:]


def test_bad_inputs_are_harness_errors(bundle, tmp_path):
    with pytest.raises(HarnessError, match="nothing to measure"):
        sa.step_accuracy_run(pairs_dir=tmp_path, backbone="toy", timesteps=[1])
    with pytest.raises(HarnessError, match="outside"):
        sa.score_pairs(bundle, ["x"], torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32), [], [1000])
    assert np.array_equal(stats.pairwise_accuracy([1, 1], [1, 0]), [0.5, 1.0])


def test_reward_model_kind_comes_from_the_registered_marker_files(tmp_path):
    from lpo_bench import registry

    kinds = list(registry.STEP_REWARD_MODELS)
    twice = kinds[0]  # a kind passed twice is told apart by content hash
    dirs = []
    for i, kind in enumerate([*kinds, twice]):
        d = tmp_path / f"rm{i}"
        d.mkdir()
        (d / registry.reward_model_spec(kind).marker_file).write_text(f"{{\"copy\": {i}}}")
        dirs.append(d)
    got = sa.reward_model_dirs(dirs)
    assert [rm.spec.name for rm in got] == [*kinds, twice]
    assert [rm.name for rm in got] == [f"{twice}@{got[0].sha256[:8]}", *kinds[1:], f"{twice}@{got[-1].sha256[:8]}"]
    with pytest.raises(HarnessError, match="passed twice"):
        sa.reward_model_dirs([dirs[0], dirs[0]])


def test_step_accuracy_refuses_a_directory_that_is_no_registered_reward_model(tmp_path):
    from lpo_bench import registry

    not_rm = tmp_path / "not-a-reward-model"
    not_rm.mkdir()
    (not_rm / "config.json").write_text("{}")
    with pytest.raises(HarnessError, match="no saved step reward model of a known kind") as err:
        sa.step_accuracy_run(pairs_dir=tmp_path / "no-pairs", backbone="toy", reward_models=[not_rm], timesteps=[1])
    msg = str(err.value)
    assert "\n" not in msg and err.value.exit_code == 2
    assert all(f"{registry.reward_model_spec(n).marker_file} for {n}" in msg for n in registry.STEP_REWARD_MODELS)
    run_dir = tmp_path / "reward-run"
    marker = registry.reward_model_spec(next(iter(registry.STEP_REWARD_MODELS))).marker_file
    (run_dir / "model").mkdir(parents=True)
    (run_dir / "model" / marker).write_text("{}")
    with pytest.raises(HarnessError, match="did you mean"):
        sa.step_accuracy_run(pairs_dir=tmp_path, backbone="toy", reward_models=[run_dir], timesteps=[1])
    with pytest.raises(HarnessError, match="is not a directory"):
        sa.step_accuracy_run(pairs_dir=tmp_path, backbone="toy", reward_models=[tmp_path / "missing"], timesteps=[1])


# ---------------------------------------------------------------------------- subsets, controls, paired differences
def test_pair_subsets_follow_the_alignment_dominance_rule():
    from lpo_bench.evaluation import step_subsets as ss

    # |Δalignment| vs 0.5 |Δaesthetic|: 0.5 > 0.25 | 0 < 0.4 | 0.25 = 0.25 (not >) | 0.25 > 0.125
    extra = pd.DataFrame({"alignment_0": [1.0, 0.5, 0.75, 0.25], "alignment_1": [0.5, 0.5, 0.5, 0.5],
                          "oracle_aesthetic_0": [0.0, 0.9, 1.0, 0.25], "oracle_aesthetic_1": [0.5, 0.1, 0.5, 0.5]})
    got = ss.pair_subsets(extra, aesthetic_weight=0.5)
    assert got == ["alignment-decided", "aesthetic-decided", "aesthetic-decided", "alignment-decided"]
    assert ss.pair_subsets(extra) == got  # the toy oracle's weight is 0.5
    assert ss.pair_subsets(extra.drop(columns=["alignment_1"])) is None  # e.g. Pick-a-Pic: no oracle parts
    summary = ss.subset_summary(got, 4)
    assert summary["sizes"] == {"all": 4, "alignment-decided": 2, "aesthetic-decided": 2}
    assert summary["aesthetic_weight"] == 0.5 and "dominates" in summary["definition"]
    assert ss.subset_summary(None, 7)["sizes"] == {"all": 7}


def test_shuffled_prompts_are_a_deterministic_derangement():
    from lpo_bench.evaluation import step_subsets as ss

    assert ss.shuffled_prompt_index(list("abcde")) == [2, 3, 4, 0, 1]  # roll by n // 2
    # the roll lands on the same text: skip to the next pair whose prompt differs
    assert ss.shuffled_prompt_index(["x", "y", "x", "y"]) == [3, 0, 1, 2]
    # toy pairs with 3 images per prompt: the prompt list repeats 3 times (pairs (0,1), (0,2), (1,2))
    prompts = [f"prompt {i}" for i in range(50)] * 3
    idx = ss.shuffled_prompt_index(prompts)
    assert idx == ss.shuffled_prompt_index(list(prompts))
    assert all(j != i and prompts[j] != prompts[i] for i, j in enumerate(idx))
    assert ss.same_prompt_fraction(prompts, idx) == 0.0
    assert ss.shuffled_prompt_index(["x", "x"]) == [1, 0] and ss.same_prompt_fraction(["x", "x"], [1, 0]) == 1.0


def test_a_prompt_reading_model_flips_under_the_shuffled_prompt(bundle):
    # A model preferring the brighter image for "bright" prompts and the darker one otherwise, on pairs whose
    # winner follows the prompt: own prompts give 1.0; the derangement of [b, d, b, d] hands every pair the
    # other word, so the control gives 0.0.
    prompts = ["bright", "dark", "bright", "dark"]
    bright, dark = _images(4, 0.6, 0.9, 1), _images(4, 0.1, 0.4, 2)
    is_bright = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(-1, 1, 1, 1)
    images_w, images_l = is_bright * bright + (1 - is_bright) * dark, is_bright * dark + (1 - is_bright) * bright

    def reader(x, t, ps):
        sign = torch.tensor([1.0 if p == "bright" else -1.0 for p in ps])
        return sign * x.mean(dim=(1, 2, 3))

    view = sa.AccuracyView("reader", "noisy_latent", "latent", reader, {}, role="step_reward_model")
    shuffled = [prompts[j] for j in [3, 0, 1, 2]]
    rows = sa.score_pairs(bundle, prompts, images_w, images_l, [view, sa.shuffled_prompt_view(view)], [1, 951],
                          shuffled_prompts=shuffled, batch_size=4)
    acc = pd.DataFrame(sa.accuracy_rows(rows, {})).set_index(["metric", "timestep"])["value"]
    assert acc[("reader", 1)] == acc[("reader", 951)] == 1.0
    assert acc[("reader+shuffled-prompt", 1)] == acc[("reader+shuffled-prompt", 951)] == 0.0
    ctl = [r for r in rows if r["view_role"] == "shuffled_prompt_control"]
    assert [r["scored_prompt"] for r in ctl[:4]] == shuffled and [r["prompt"] for r in ctl[:4]] == prompts
    with pytest.raises(HarnessError, match="shuffled_prompts"):
        sa.score_pairs(bundle, prompts, images_w, images_l, [sa.shuffled_prompt_view(view)], [1])


def _acc_rows(view, correct, timesteps, n=4, category=None):
    return [{"pair_id": i, "timestep": t, "reward_model": view, "input_mode": "noisy_latent",
             "acc": float(i in correct), "category": None if category is None else category[i]}
            for t in timesteps for i in range(n)]


def test_paired_accuracy_difference_hand_values():
    from lpo_bench.analysis.step_accuracy import paired_accuracy_diff

    # A correct on pairs {0, 1, 2}, B on {0}, at t = 501 and 951 (and the reverse at t = 1, outside t >= 500):
    # per-pair differences 0, 1, 1, 0 -> 0.5, CI the bootstrap of those four values.
    rows = _acc_rows("A", {0, 1, 2}, [501, 951]) + _acc_rows("B", {0}, [501, 951])
    rows += _acc_rows("A", set(), [1]) + _acc_rows("B", {0, 1, 2, 3}, [1])
    d = paired_accuracy_diff(rows, "A", "B")
    assert (d["diff"], d["acc_a"], d["acc_b"], d["n_pairs"], d["n_timesteps"]) == (0.5, 0.75, 0.25, 4, 2)
    assert (d["ci_low"], d["ci_high"]) == stats.mean_ci([0.0, 1.0, 1.0, 0.0])[1:] and d["timesteps"] == "501,951"
    low = paired_accuracy_diff(rows, "A", "B", t_min=None, t_max=200)  # t = 1 only: B always, A never
    assert (low["diff"], low["ci_low"], low["ci_high"], low["n_timesteps"]) == (-1.0, -1.0, -1.0, 1)
    # every pair agrees: a zero-width CI; pairs are averaged over timesteps before the bootstrap
    same = _acc_rows("A", {0, 1, 2, 3}, [501, 951]) + _acc_rows("B", set(), [501, 951])
    s = paired_accuracy_diff(same, "A", "B")
    assert (s["diff"], s["ci_low"], s["ci_high"]) == (1.0, 1.0, 1.0)
    half = _acc_rows("A", {0, 1, 2, 3}, [501]) + _acc_rows("A", set(), [951]) + _acc_rows("B", set(), [501, 951])
    h = paired_accuracy_diff(half, "A", "B")
    assert (h["diff"], h["ci_low"], h["ci_high"]) == (0.5, 0.5, 0.5)
    # only the timesteps both views scored count; a subset restricts the pairs
    cat = ["alignment-decided", "alignment-decided", "aesthetic-decided", "aesthetic-decided"]
    part = _acc_rows("A", {0, 1, 2}, [501, 951], category=cat) + _acc_rows("B", {0}, [501], category=cat)
    p = paired_accuracy_diff(part, "A", "B", category="alignment-decided")
    assert (p["diff"], p["n_pairs"], p["n_timesteps"]) == (0.5, 2, 1)  # pairs 0, 1: differences 0 and 1
    assert paired_accuracy_diff(part, "A", "B", category="missing")["n_pairs"] == 0
    two_modes = rows + [{**r, "input_mode": "x0_pred_decoded"} for r in rows if r["reward_model"] == "B"]
    with pytest.raises(ValueError, match="several input modes"):
        paired_accuracy_diff(two_modes, "A", "B")
    assert paired_accuracy_diff(two_modes, "A", ("B", "noisy_latent"))["diff"] == 0.5


def test_run_reports_subsets_controls_and_paired_differences(bundle, tmp_path):
    from lpo_bench.analysis.runs import load_run
    from lpo_bench.analysis.step_accuracy import paired_accuracy_diff, step_accuracy_section
    from lpo_bench.baselines.spo.spm import StepAwarePreferenceModel
    from lpo_bench.methods.lpo.lrm import LatentRewardModel

    lrm_dir = LatentRewardModel.from_bundle(bundle, guidance_scale=1.0).save(tmp_path / "lrm")
    spm_dir = StepAwarePreferenceModel.tiny(bundle.tokenizers[0], hidden=32, layers=1).save(tmp_path / "spm")
    # oracle parts: pairs 0-3 alignment-decided (|Δa| 0.5 > 0.5 * 0.2), pairs 4-5 aesthetic-decided
    parts = {"alignment_0": [1.0] * 4 + [0.5] * 2, "alignment_1": [0.5] * 4 + [0.5] * 2,
             "oracle_aesthetic_0": [0.5] * 6, "oracle_aesthetic_1": [0.3] * 4 + [0.0] * 2}
    pairs = _write_pairs(tmp_path / "pairs", _images(6, 0.0, 1.0, 3), _images(6, 0.0, 1.0, 4), [1, 0, 1, 0, 1, 0],
                         [*TOY_PROMPTS, "three blue circles"], **parts)
    run = sa.step_accuracy_run(pairs_dir=pairs, backbone="toy", reward_models=[lrm_dir, spm_dir], timesteps=[1, 501],
                               max_pairs=6, batch_size=8, bundle=bundle, log=lambda m: None)
    info = json.loads((run / "run.json").read_text())
    assert info["subsets"]["sizes"] == {"all": 6, "alignment-decided": 4, "aesthetic-decided": 2}
    df = records.read_measurements(run / "measurements.parquet")
    assert len(df) == 4 * 2 * 3  # (lrm, spm and their shuffled controls) x 2 timesteps x 3 categories
    assert df.groupby("category")["n"].max().to_dict() == {"all": 6, "alignment-decided": 4, "aesthetic-decided": 2}
    assert {"lrm+shuffled-prompt", "spm+shuffled-prompt"} <= set(df["metric"])
    per_pair = pd.read_parquet(run / "per_sample.parquet")
    assert per_pair.groupby("category")["pair_id"].nunique().to_dict() == {"aesthetic-decided": 2,
                                                                          "alignment-decided": 4}

    sec, recs = step_accuracy_section([load_run(run)], False, tmp_path / "report")
    tables = {b.name: b for b in sec.blocks if hasattr(b, "df")}
    assert set(tables) == {"step_accuracy", "step_accuracy_aesthetic-decided", "step_accuracy_alignment-decided",
                           "step_accuracy_diff"}
    cols = list(tables["step_accuracy"].show.columns)
    assert cols.index(f"lrm+shuffled-prompt [noisy_latent] ({run.name})") == \
        cols.index(f"lrm [noisy_latent] ({run.name})") + 1  # the control sits beside its model
    diff = tables["step_accuracy_diff"].df
    assert len(diff) == 3 * 2 * 3  # (lrm - spm, each minus its control) x 2 t ranges x 3 categories
    row = diff[(diff["a"] == "lrm") & (diff["b"] == "spm") & (diff["category"] == "all")
               & (diff["t_range"] == "t >= 500")].iloc[0]
    by_pair = per_pair[per_pair["timestep"] == 501].pivot(index="pair_id", columns="reward_model", values="acc")
    assert row["diff"] == pytest.approx((by_pair["lrm"] - by_pair["spm"]).mean())
    assert row["n_pairs"] == 6 and row.to_dict().items() >= {
        k: v for k, v in paired_accuracy_diff(per_pair, "lrm", "spm").items() if k != "t_max"}.items()
    assert {r["category"] for r in recs} == {"all", "alignment-decided", "aesthetic-decided"}
