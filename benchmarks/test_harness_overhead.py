"""Harness-overhead benchmark: the ledger's own bookkeeping costs at most 2 % of a training cycle.

Runs each method's cycle (one sampling round and its updates, or one DPO update) on the tiny SD1.5 bundle
through a file-backed ledger and through a null ledger. The assertion uses the ledger's self-time, which a
busy machine cannot blur; the paired wall-clock difference is printed beside it. Not collected by the
default test run; run with ``pytest benchmarks/test_harness_overhead.py -s -p no:cacheprovider``.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from lpo_bench import bench, registry  # noqa: E402

torch.set_num_threads(1)  # tiny models: one thread is fastest and least disturbed by a busy machine


@pytest.mark.parametrize("method", list(registry.METHODS))
def test_ledger_overhead_is_within_target(method):
    r = bench.train_step_costs(method, "tiny-sd15", random_weights=False, device="cpu", repeats=3)
    oh = r["overhead"]
    print(f"{method}: ledger self-time {oh['ledger_self_pct']:.3f} %, paired wall difference "
          f"{oh['overhead_pct']:+.2f} % (median), {oh['overhead_min_pct']:+.2f} % (fastest runs)")
    assert oh["ledger_self_pct"] <= bench.OVERHEAD_TARGET_PCT
