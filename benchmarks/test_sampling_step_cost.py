"""Acceptance benchmark (issue: per-step cost): at SD1.5 architecture shapes, LPO's cost per sampling step
at K = 4 is at most a quarter of SPO's, measured in one run.

Full-size SD1.5 UNet / VAE / CLIP-L and a CLIP ViT-H/14-sized SPM with random weights (no downloads).
Seconds on a GPU; about 15-20 minutes and ~12 GB of RAM on a 2-core CPU. Not part of the default test run
(pyproject's testpaths is tests/); run it with ``pytest benchmarks/test_sampling_step_cost.py -p no:cacheprovider``.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lpo_bench import bench  # noqa: E402


def test_lpo_sampling_step_is_at_most_a_quarter_of_spo_at_sd15_shapes(tmp_path):
    repeats = int(os.environ.get("LPO_BENCH_REPEATS", "1"))
    r = bench.run_bench(methods="lpo,spo", backbone="sd15", random_weights=True, repeats=repeats,
                        parts=["sampling_step"], out=tmp_path / "sd15-sampling-step.json")
    ss = r["sampling_step"]
    assert ss["ratios"]["reference"] == "lpo"
    assert ss["acceptance"]["applies"] and ss["acceptance"]["passed"], ss["ratios"]
