"""Two CPU processes (gloo) train on exactly as many LPO pairs as one process: none is dropped."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "lpo_ddp.py"


def _run(cmd, env, timeout=240):
    """Run in a new process group so a hang kills torchrun's workers too."""
    import signal

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_two_processes_train_on_all_pairs(tiny_pairs, tmp_path):
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # 3 prompts x 3 trained steps, threshold 0 -> 9 pairs (odd: the official code would drop one under 2 GPUs)
    one = _run([sys.executable, str(SCRIPT), str(tiny_pairs), str(tmp_path / "one"), "4"], env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run([torchrun, "--nproc_per_node", "2", "--master_port", "29517", str(SCRIPT),
                str(tiny_pairs), str(tmp_path / "two"), "2"], env)
    assert two.returncode == 0, two.stderr[-3000:]
    c1 = json.loads((tmp_path / "one" / "pairs_count.json").read_text())
    c2 = json.loads((tmp_path / "two" / "pairs_count.json").read_text())
    assert c1["pairs_global"] == 9
    assert c2["pairs_global"] == c1["pairs_global"]
