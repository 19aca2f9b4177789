"""Shared fixtures: offline by default, tiny seeded models built in-process."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_runs(tmp_path, monkeypatch):
    """Every test writes runs under its own tmp dir and never touches ./runs."""
    monkeypatch.setenv("LPO_BENCH_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("LPO_BENCH_CACHE", str(tmp_path / "cache"))
    yield


@pytest.fixture(scope="session", autouse=True)
def _threads():
    try:
        import torch

        torch.set_num_threads(1)  # tiny models: one thread is fastest and immune to oversubscription
    except ImportError:  # pragma: no cover
        pass


def write_pairs_dir(out, n_per_split=(24, 12, 12), seed=0):
    """A tiny Pick-a-Pic-schema pairs dir from toy renders: the winner satisfies its prompt, the loser is a
    corrupted scene; every fourth pair is a tie (two satisfying scenes). MPCF gap columns are consistent."""
    import numpy as np
    import pandas as pd

    from lpo_bench.data.pairs import encode_png
    from lpo_bench.toy import world

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "val", "test"), n_per_split):
        rows = []
        for i in range(n):
            spec = world.sample_prompt(rng)
            good = world.scene_for(spec, rng)
            tie = i % 4 == 3
            bad = world.scene_for(spec, rng) if tie else world.corrupt(
                good, spec, rng, world.applicable_corruptions(spec)[0])
            a, b = world.render(good), world.render(bad)
            flip = rng.random() < 0.5
            label0 = 0.5 if tie else (0.0 if flip else 1.0)
            if flip:
                a, b = b, a
            rows.append({"caption": spec.text, "jpg_0": encode_png(a), "jpg_1": encode_png(b), "label_0": label0,
                         "label_1": 1 - label0, "num_example_per_prompt": 1, "different_flag": int(not tie),
                         "aesthetic_gap": 0.01 if tie else 0.1, "clipscore_gap": 0.01 if tie else 0.2,
                         "vqascore_gap": 0.01 if tie else 0.3})
        pd.DataFrame(rows).to_parquet(out / f"{split}.parquet", index=False)
    return out


@pytest.fixture(scope="session")
def tiny_pairs(tmp_path_factory):
    return write_pairs_dir(tmp_path_factory.mktemp("pairs"))
