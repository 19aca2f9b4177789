"""Interruption and resume: a killed run resumes to the same final weights (bitwise on the CPU) and the
same counted GPU-hours up to the time lost since the last checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from resume_settings import lpo_request, tiny_inputs
from safetensors.torch import load_file

from lpo_bench import records
from lpo_bench.errors import HarnessError
from lpo_bench.harness.train import train_run


class Killed(BaseException):
    """Stands in for SIGKILL in-process: nothing after the raise runs, no checkpoint is written."""


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "export" / "pytorch_lora_weights.safetensors"))


def _counted(run_dir: Path) -> float:
    return json.loads((run_dir / "run.json").read_text())["ledger"]["gpu_h_counted"]


@pytest.fixture(scope="module")
def reference_run(tiny_pairs, tmp_path_factory):
    """One uninterrupted run (module-scoped: several kill points compare against it)."""
    return train_run(lpo_request(tiny_pairs, tmp_path_factory.mktemp("ref")), **tiny_inputs(), log=lambda *_: None)


@pytest.mark.parametrize("kill_at", [1, 5])
def test_killed_run_resumes_bitwise(kill_at, tiny_pairs, tmp_path, monkeypatch, reference_run):
    from lpo_bench.methods.lpo.method import LPO

    orig = LPO.train_step
    calls = {"n": 0}

    def dying(self, step):
        calls["n"] += 1
        if calls["n"] > kill_at:
            raise Killed()
        return orig(self, step)

    monkeypatch.setattr(LPO, "train_step", dying)
    with pytest.raises(Killed):
        train_run(lpo_request(tiny_pairs, tmp_path), **tiny_inputs(), log=lambda *_: None)
    run_dir = tmp_path / "train" / "lpo-tiny"
    assert not records.is_done(run_dir)
    with pytest.raises(HarnessError, match="--resume"):
        train_run(lpo_request(tiny_pairs, tmp_path), **tiny_inputs(), log=lambda *_: None)
    monkeypatch.setattr(LPO, "train_step", orig)
    resumed = train_run(lpo_request(tiny_pairs, tmp_path, resume=True), **tiny_inputs(), log=lambda *_: None)
    assert records.is_done(resumed)
    ref, got = _weights(reference_run), _weights(resumed)
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    info = json.loads((resumed / "run.json").read_text())
    assert info["updates"] == json.loads((reference_run / "run.json").read_text())["updates"]
    # counted time: same work counted once; the lost part is recorded separately, not in the headline
    rows = [json.loads(x) for x in (resumed / "ledger.jsonl").read_text().splitlines()]
    # killed after the first checkpoint (every 2 updates): totals were rewound to it; before it: a fresh start
    assert any(r["type"] == "rewind" for r in rows) == (kill_at >= 2)
    assert info["ledger"]["lost_s"] >= 0


def test_sigkill_subprocess_then_resume(tiny_pairs, tmp_path, reference_run):
    """A real SIGKILL mid-training (after the first checkpoint), then --resume in a new process."""
    script = Path(__file__).parent / "scripts" / "train_tiny.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_pairs), str(tmp_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run_dir = tmp_path / "train" / "lpo-tiny"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "checkpoint.pt").exists() and (run_dir / "ledger.jsonl").exists():
            steps = sum('"type": "step"' in x for x in (run_dir / "ledger.jsonl").read_text().splitlines())
            if steps >= 3:
                break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not records.is_done(run_dir)
    res = subprocess.run([sys.executable, str(script), str(tiny_pairs), str(tmp_path), "--resume"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    ref, got = _weights(reference_run), _weights(run_dir)
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    lost = json.loads((run_dir / "run.json").read_text())["ledger"]["lost_s"]
    # same counted hours as the uninterrupted run, within the time lost since the last checkpoint
    # (machines differ in speed run to run, so compare against a generous bound, not a timing)
    assert _counted(run_dir) <= _counted(reference_run) * 3 + lost / 3600


def test_reward_model_run_resumes_bitwise(tiny_pairs, tmp_path):
    """`train-reward` interrupted mid-way and resumed gives the same LRM as an uninterrupted run."""
    from lpo_bench.harness.reward_run import RewardRequest, train_reward_run
    from lpo_bench.models import tiny

    over = {"max_updates": "4", "batch_pairs": "4", "warmup_updates": "1", "max_val_pairs": "4",
            "timestep_stride": "475"}

    def run(root, **kw):
        req = RewardRequest(kind="lrm", backbone="sd15", pairs=str(tiny_pairs), out_root=str(root),
                            overrides=dict(over), checkpoint_every_updates=1, **kw)
        return train_reward_run(req, bundle=tiny.tiny_bundle("sd15", seed=0), log=lambda *_: None)

    ref = run(tmp_path / "ref")
    part = run(tmp_path / "cut", stop_after_updates=2)
    assert not records.is_done(part)
    done = run(tmp_path / "cut", resume=True)
    assert records.is_done(done)
    a = load_file(str(ref / "model" / "heads.safetensors"))
    b = load_file(str(done / "model" / "heads.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ua = load_file(str(ref / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    ub = load_file(str(done / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(ua[k], ub[k]) for k in ua)
