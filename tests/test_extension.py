"""Adding a method takes one folder and one registry entry: a method registered only in this test (its folder is
tests/throwaway_method) runs through ``train``, ``bench``, ``demo --quick`` and ``compare`` with no core edit."""

from __future__ import annotations

import json

from lpo_bench import records, registry
from lpo_bench.cli import main

THROWAWAY = {"winner-sft": "throwaway_method:SPEC"}


def test_a_method_registered_in_a_test_runs_through_train_bench_demo_and_compare(tiny_pairs, tmp_path, capsys):
    with registry.extended("method", THROWAWAY):
        argv = ["train", "--method", "winner-sft", "--pairs", str(tiny_pairs), "--out-root", str(tmp_path / "t"),
                "--set", "max_updates=2", "--set", "max_pairs=8"]
        assert main(argv) == 0
        run_dir = next((tmp_path / "t" / "train").iterdir())
        assert records.is_done(run_dir) and (run_dir / "export" / "pytorch_lora_weights.safetensors").exists()
        assert json.loads((run_dir / "run.json").read_text())["method_role"] == "baseline"

        out = tmp_path / "bench.json"
        assert main(["bench", "--method", "winner-sft", "--backbone", "toy", "--repeats", "1", "--warmup", "0",
                     "--parts", "sampling_step,train_step", "--out", str(out)]) == 0
        bench = json.loads(out.read_text())
        assert "winner-sft" in json.dumps(bench)

        report = tmp_path / "report"
        assert main(["demo", "--quick", "--methods", "winner-sft", "--pairs", str(tiny_pairs), "--out-root",
                     str(tmp_path / "demo"), "--report", str(report)]) == 0
    md = (report / "report.md").read_text()
    assert "winner-sft" in md
    capsys.readouterr()
