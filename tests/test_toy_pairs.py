"""Toy Pick-a-Pic pairs: k images per prompt give every k(k-1)/2 pair, in the Pick-a-Pic schema."""

import json

import numpy as np
import pandas as pd
import pytest

from lpo_bench.data.prompts import toy_prompt_splits
from lpo_bench.errors import HarnessError
from lpo_bench.toy.pairs import make_pairs


@pytest.fixture(scope="module")
def three_per_prompt(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy-pairs")
    make_pairs(out, n_train=4, n_val=2, n_test=2, images_per_prompt=3, num_inference_steps=2, log=lambda *_: None)
    return out


def test_all_pairs_of_k_images_per_prompt(three_per_prompt):
    meta = json.loads((three_per_prompt / "pairs.json").read_text())
    assert meta["counts"]["train"]["pairs"] == 4 * 3 and meta["counts"]["train"]["images_per_prompt"] == 3
    df = pd.read_parquet(three_per_prompt / "train.parquet")
    assert list(df["caption"]) == toy_prompt_splits()["train"][:4] * 3  # combos (0,1), (0,2), (1,2), prompt-major
    assert (df["num_example_per_prompt"] == 3).all()
    # image a of prompt i is one image in every pair it belongs to: (0,1) and (0,2) share image 0, etc.
    a01, a02, a12 = (df.iloc[4 * c: 4 * c + 4].reset_index(drop=True) for c in range(3))
    assert (a01["jpg_0"] == a02["jpg_0"]).all() and (a01["jpg_1"] == a12["jpg_0"]).all()
    assert (a02["jpg_1"] == a12["jpg_1"]).all() and (a01["reward_1"] == a12["reward_0"]).all()
    assert not (a01["jpg_0"] == a01["jpg_1"]).any()  # independent seeds per image
    np.testing.assert_array_equal(df["label_0"] + df["label_1"], 1.0)
    ties = df["label_0"] == 0.5
    assert ((df["reward_0"] - df["reward_1"]).abs()[ties] < meta["oracle"]["tie_margin"]).all()


def test_pairs_refuse_to_overwrite(three_per_prompt):
    with pytest.raises(HarnessError, match="--overwrite"):
        make_pairs(three_per_prompt, n_train=4, n_val=2, n_test=2)
