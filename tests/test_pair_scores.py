"""The pair-score side table: streamed, sharded, resumable, keyed, joined strictly; its run is costed."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lpo_bench.data import pair_scores
from lpo_bench.data.pairs import open_pairs
from lpo_bench.errors import HarnessError


def _scorers():
    """Three hand-checkable scores: mean brightness, mean red, caption length (an image-independent score)."""
    return {"aesthetic": lambda im, caps: im.mean(dim=(1, 2, 3)),
            "clipscore": lambda im, caps: im[:, 0].mean(dim=(1, 2)),
            "vqascore": lambda im, caps: np.array([len(c) / 100 for c in caps])}


def test_scores_are_the_hand_computed_gaps(tiny_pairs, tmp_path):
    index = open_pairs(tiny_pairs, "train")
    written = pair_scores.write_scores(index, _scorers(), tmp_path / "s", shard_pairs=10, batch_pairs=4)
    assert written == 3  # 24 pairs in shards of 10
    df = pair_scores.read_scores(tmp_path / "s")
    assert list(df["key"]) == [f"row:{i}" for i in range(len(index))]
    im0, im1 = index.images(np.arange(len(index)), 0, resolution=None), index.images(np.arange(len(index)), 1,
                                                                                        resolution=None)
    b0, b1 = im0.mean(dim=(1, 2, 3)).numpy(), im1.mean(dim=(1, 2, 3)).numpy()
    lab = index.label_0
    want = np.where(lab == 1, b0 - b1, np.where(lab == 0, b1 - b0, np.abs(b0 - b1)))
    np.testing.assert_allclose(df["aesthetic_gap"].to_numpy(), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(df["score_0_aesthetic"].to_numpy(), b0, rtol=1e-5)
    np.testing.assert_array_equal(df["vqascore_gap"].to_numpy()[lab != 0.5], 0.0)  # same caption on both sides
    np.testing.assert_array_equal(df["different_flag"].to_numpy(), (lab != 0.5).astype(int))


def test_a_killed_pass_resumes_with_the_missing_shards_only(tiny_pairs, tmp_path):
    index = open_pairs(tiny_pairs, "train")
    out = tmp_path / "s"
    pair_scores.write_scores(index, _scorers(), out, shard_pairs=10)
    first = pair_scores.read_scores(out)
    (out / "part-00001.parquet").unlink()  # as if killed before shard 1 was written
    calls = []
    n = pair_scores.write_scores(index, _scorers(), out, shard_pairs=10, on_shard=lambda s, k: calls.append(s))
    assert n == 1 and calls == [1]
    pd.testing.assert_frame_equal(pair_scores.read_scores(out), first)


def test_ranks_split_the_shards(tiny_pairs, tmp_path):
    index = open_pairs(tiny_pairs, "train")
    got = [pair_scores.write_scores(index, _scorers(), tmp_path / "s", shard_pairs=5, rank=r, world_size=2)
           for r in (0, 1)]
    assert got == [3, 2]  # 5 shards: 0, 2, 4 and 1, 3
    assert len(pair_scores.read_scores(tmp_path / "s")) == len(index)


def test_attach_scores_is_strict(tiny_pairs, tmp_path):
    index = open_pairs(tiny_pairs, "train")
    pair_scores.write_scores(index, _scorers(), tmp_path / "s", shard_pairs=100)
    df = pair_scores.read_scores(tmp_path / "s")
    keys = pair_scores.pair_keys(index)
    cols = ["aesthetic_gap", "clipscore_gap", "vqascore_gap", "different_flag"]
    out = pair_scores.attach_scores(index.extra, keys, df.iloc[::-1], cols)  # order of the table does not matter
    np.testing.assert_allclose(out["aesthetic_gap"].to_numpy(), df["aesthetic_gap"].to_numpy())
    with pytest.raises(HarnessError, match="no row for 1 of 24 pairs"):
        pair_scores.attach_scores(index.extra, keys, df.iloc[1:], cols)
    with pytest.raises(HarnessError, match="lacks the columns"):
        pair_scores.attach_scores(index.extra, keys, df.drop(columns=["vqascore_gap"]), cols)
    with pytest.raises(HarnessError, match="twice"):
        pd.concat([df, df.iloc[:1]]).to_parquet(tmp_path / "s" / "part-00009.parquet")
        pair_scores.read_scores(tmp_path / "s")


def test_official_csv_is_read_by_split_row(tmp_path):
    csv = pd.DataFrame({"different_flag": [1, 0, 1, 1], "aesthetic_gap": [0.1, 0.2, 0.3, 0.4],
                        "clipscore_gap": [1.0, 2.0, 3.0, 4.0], "vqascore_gap": [0.5, 0.6, 0.7, 0.8]})
    csv.to_csv(tmp_path / "mp.csv", index=False)
    out = pair_scores.official_csv_scores(tmp_path / "mp.csv", ["a", "b"], [3, 1])
    assert list(out["key"]) == ["a", "b"] and list(out["aesthetic_gap"]) == [0.4, 0.2]
    with pytest.raises(HarnessError, match="row-aligned"):
        pair_scores.official_csv_scores(tmp_path / "mp.csv", ["a"], [4])


def test_score_pairs_run_records_its_cost_and_resumes(tiny_pairs, tmp_path):
    from lpo_bench.data.pair_scores import table_dir as scores_dir
    from lpo_bench.harness.score_run import ScorePairsRequest, score_pairs_run

    req = ScorePairsRequest(pairs=str(tiny_pairs), out_root=str(tmp_path / "runs"), shard_pairs=8)
    run = score_pairs_run(req, scorers=_scorers(), log=lambda m: None)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "done" and info["n_pairs"] == 24 and info["gpu_h_pair_scores"] > 0
    assert len(pair_scores.read_scores(scores_dir(run))) == 24
    with pytest.raises(HarnessError, match="already exists and is finished"):
        score_pairs_run(req, scorers=_scorers(), log=lambda m: None)  # the same inputs give the same run id
    (run / "DONE").unlink()  # as if killed after shard 1 ...
    (scores_dir(run) / "part-00002.parquet").unlink()  # ... before shard 2 was written
    calls = []

    def counted(fn):
        def score(im, caps):
            calls.append(len(caps))
            return fn(im, caps)
        return score

    scorers = {k: counted(fn) for k, fn in _scorers().items()}
    again = ScorePairsRequest(pairs=str(tiny_pairs), out_root=str(tmp_path / "runs"), shard_pairs=8, resume=True)
    resumed = score_pairs_run(again, scorers=scorers, log=lambda m: None)
    assert resumed == run and (run / "DONE").exists()
    assert sum(calls) == 3 * 2 * 8  # only the 8 pairs of shard 2: 3 scores x 2 images
    assert len(pair_scores.read_scores(scores_dir(run))) == 24
    with pytest.raises(HarnessError, match="not a score-pairs run"):
        scores_dir(tmp_path)


def test_split_rows_count_across_shards(tmp_path):
    from helpers import write_pairs_dir

    src = write_pairs_dir(tmp_path / "p", n_per_split=(10, 4, 4))
    df = pd.read_parquet(src / "train.parquet")
    (tmp_path / "hf" / "data").mkdir(parents=True)
    df.iloc[:6].to_parquet(tmp_path / "hf" / "data" / "train-00000-of-00002.parquet")
    bad = df.iloc[6:].copy()
    bad.loc[bad.index[0], "label_0"] = 7.0  # a broken row: filtered, but it still counts in the split's rows
    bad.to_parquet(tmp_path / "hf" / "data" / "train-00001-of-00002.parquet")
    index = open_pairs(tmp_path / "hf", "train", max_bad_frac=0.2)
    assert list(pair_scores.split_rows(index)) == [0, 1, 2, 3, 4, 5, 7, 8, 9]


def test_reward_model_trains_on_scored_pairs_and_the_table_is_in_its_identity(tiny_pairs, tmp_path):
    """Pick-a-Pic-like pairs without MPCF columns: refused with a hint; scored by `score-pairs` with the toy metrics,
    then the LRM filters on the joined table, whose hash is part of the run identity and whose cost compare finds."""
    from lpo_bench.harness.reward_run import RewardRequest, train_reward_run
    from lpo_bench.harness.score_run import ScorePairsRequest, score_pairs_run
    from lpo_bench.models import tiny

    bare = tmp_path / "bare"
    bare.mkdir()
    for split in ("train", "val"):
        df = pd.read_parquet(tiny_pairs / f"{split}.parquet")
        df.drop(columns=["different_flag", "aesthetic_gap", "clipscore_gap", "vqascore_gap"]).to_parquet(
            bare / f"{split}.parquet")
    over = {"max_updates": "1", "batch_pairs": "4", "warmup_updates": "1", "max_val_pairs": "4",
            "timestep_stride": "475", "mpcf_strategy": "2"}

    def lrm(root, **kw):
        req = RewardRequest(kind="lrm", backbone="sd15", pairs=str(bare), out_root=str(root), overrides=dict(over), **kw)
        return train_reward_run(req, bundle=tiny.tiny_bundle("sd15", seed=0), log=lambda *_: None)

    with pytest.raises(HarnessError, match="lpo-bench score-pairs"):
        lrm(tmp_path / "r0")
    scores = score_pairs_run(ScorePairsRequest(pairs=str(bare), metrics={"aesthetic": "toy-aesthetic", "clipscore":
                                               "toy-clip", "vqascore": "toy-vqa"}, out_root=str(tmp_path / "s")),
                             log=lambda m: None)
    table = pair_scores.read_scores(scores / "scores")
    assert table[["aesthetic_gap", "clipscore_gap", "vqascore_gap"]].notna().all().all()
    run = lrm(tmp_path / "r1", pair_scores=str(scores))
    info = json.loads((run / "run.json").read_text())
    assert info["inputs"]["pair_scores"] == str(scores)
    assert info["identity"]["inputs"]["pair_scores"]  # the table's hash moves the run id
    with pytest.raises(HarnessError, match="does not have; drop --pair-scores"):
        train_reward_run(RewardRequest(kind="spm", backbone="sd15", pairs=str(bare), out_root=str(tmp_path / "r2"),
                                       pair_scores=str(scores)), bundle=tiny.tiny_bundle("sd15", seed=0))


def test_a_batch_whose_pairs_all_fail_to_decode_is_skipped_and_left_nan(tiny_pairs, tmp_path):
    df = pd.read_parquet(tiny_pairs / "train.parquet")
    df.loc[3, "jpg_0"] = b"not an image"
    (tmp_path / "p").mkdir()
    df.to_parquet(tmp_path / "p" / "train.parquet")
    index = open_pairs(tmp_path / "p", "train")

    def strict(im, caps):  # the real adapters fail on an empty batch (torch.cat of nothing)
        assert len(caps) > 0, "a scorer was called with an empty batch"
        return im.mean(dim=(1, 2, 3))

    out = pair_scores.score_positions(index, np.arange(len(index)), {"aesthetic": strict}, batch_pairs=1,
                                      resolution=None)
    assert np.isnan(out.loc[3, "score_0_aesthetic"]) and out["score_0_aesthetic"].drop(index=3).notna().all()
    assert index.decode_failures == 1


def test_score_pairs_refuses_empty_shards(tiny_pairs, tmp_path):
    from lpo_bench.harness.score_run import ScorePairsRequest, score_pairs_run

    with pytest.raises(HarnessError, match="must be >= 1"):
        score_pairs_run(ScorePairsRequest(pairs=str(tiny_pairs), shard_pairs=0, out_root=str(tmp_path)),
                        scorers=_scorers())



def test_a_process_keeps_a_bounded_number_of_shards_open(tiny_pairs, tmp_path):
    from lpo_bench.data import stream

    df = pd.read_parquet(tiny_pairs / "train.parquet")
    (tmp_path / "hf" / "data").mkdir(parents=True)
    n = stream.MAX_OPEN_SHARDS + 8
    for s in range(n):
        df.iloc[[s % len(df)]].to_parquet(tmp_path / "hf" / "data" / f"train-{s:05d}-of-{n:05d}.parquet")
    index = open_pairs(tmp_path / "hf", "train")
    assert not any(sh._src is not None for sh in index.shards)  # the metadata pass closes what it opened
    got = sum(len(b.idx) for b in index.batches(np.arange(n)[::-1], batch_pairs=3, resolution=None))
    got += sum(len(b.idx) for k in range(n) for b in index.batches([k], batch_pairs=1, resolution=None))
    assert got == 2 * n  # one pass in one call, then one call per pair (as the trainers read their updates)
    assert sum(sh._src is not None for sh in index.shards) == stream.MAX_OPEN_SHARDS


def test_lrm_validates_on_validation_unique_when_the_data_has_it(tiny_pairs, tmp_path):
    """As the official LRM trainer: Pick-a-Pic's validation_unique when present (auto), else the val split."""
    from lpo_bench.harness.reward_run import RewardRequest, train_reward_run
    from lpo_bench.models import tiny

    src = tmp_path / "p"
    src.mkdir()
    for split in ("train", "val"):
        (src / f"{split}.parquet").write_bytes((tiny_pairs / f"{split}.parquet").read_bytes())
    pd.read_parquet(tiny_pairs / "test.parquet").iloc[:5].to_parquet(src / "validation_unique.parquet")
    lines = []
    over = {"max_updates": "1", "batch_pairs": "4", "warmup_updates": "1", "timestep_stride": "475"}
    train_reward_run(RewardRequest(kind="lrm", backbone="sd15", pairs=str(src), out_root=str(tmp_path / "r"),
                                   overrides=over), bundle=tiny.tiny_bundle("sd15", seed=0), log=lines.append)
    assert any("validation pairs (validation_unique)" in x for x in lines)
