"""Shared fixtures: offline by default, tiny seeded models built in-process."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from helpers import write_pairs_dir  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_runs(tmp_path, monkeypatch):
    """Every test writes runs under its own tmp dir and never touches ./runs. Train runs skip the projected
    (full SD1.5/SDXL) FLOP tables, about 10 s per process; tests/test_flops.py turns them back on."""
    monkeypatch.setenv("LPO_BENCH_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("LPO_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LPO_BENCH_PROJECTED_FLOPS", "0")
    yield


@pytest.fixture(scope="session", autouse=True)
def _threads():
    try:
        import torch

        torch.set_num_threads(1)  # tiny models: one thread is fastest and immune to oversubscription
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture(scope="session")
def tiny_pairs(tmp_path_factory):
    return write_pairs_dir(tmp_path_factory.mktemp("pairs"))
