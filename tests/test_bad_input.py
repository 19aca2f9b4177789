"""Bad input gives one line on stderr, exit code 2, no traceback, and overwrites nothing."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from resume_settings import lpo_request, tiny_inputs

from lpo_bench import records
from lpo_bench.cli import main
from lpo_bench.data.pairs import encode_png, load_pairs
from lpo_bench.errors import HarnessError
from lpo_bench.harness.train import train_run


def _err_line(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def _pairs(path, n=20, bad=0, bad_label=0):
    img = encode_png(np.full((8, 8, 3), 0.5, dtype=np.float32))
    rows = [{"caption": f"a red circle {i}", "jpg_0": img, "jpg_1": img, "label_0": 1.0} for i in range(n)]
    for i in range(bad):
        rows[i]["jpg_1"] = b"not an image"
    for i in range(bad, bad + bad_label):
        rows[i]["label_0"] = 0.7
    path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path / "train.parquet", index=False)
    return path


def test_broken_pairs_are_skipped_and_counted(tmp_path):
    ps = load_pairs(_pairs(tmp_path / "p", n=100, bad=2, bad_label=1), "train")
    assert len(ps) == 97 and ps.skipped == 3


def test_too_many_broken_pairs_are_refused(tmp_path):
    with pytest.raises(HarnessError, match="broken.*threshold"):
        load_pairs(_pairs(tmp_path / "p", n=20, bad=3, bad_label=2), "train")


def test_pairs_schema_and_missing_dirs(tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    pd.DataFrame({"caption": ["x"]}).to_parquet(d / "train.parquet")
    with pytest.raises(HarnessError, match="lacks columns"):
        load_pairs(d, "train")
    with pytest.raises(HarnessError, match="no 'val' split"):
        load_pairs(d, "val")
    with pytest.raises(HarnessError, match="does not exist"):
        load_pairs(tmp_path / "nope", "train")
    (d / "train.parquet").write_bytes(b"garbage")
    with pytest.raises(HarnessError, match="corrupt"):
        load_pairs(d, "train")


@pytest.mark.parametrize("argv,needle", [
    (["train", "--method", "lpo", "--config", "/nonexistent.toml"], "does not exist"),
    (["train", "--method", "lpo", "--set", "beta=3"], "unknown config key 'beta'"),
    (["train", "--method", "lpo", "--set", "beta_lpo=abc"], "invalid"),
    (["step-accuracy", "--pairs", "/nonexistent", "--timesteps", "1,x"], "comma-separated"),
    (["train-reward", "--kind", "lrn"], "Did you mean 'lrm'"),
    (["demo", "--seeds", "a,b"], "comma-separated"),
])
def test_cli_bad_arguments(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in _err_line(capsys)


def test_malformed_config_file_via_cli(tmp_path, capsys):
    f = tmp_path / "c.toml"
    f.write_text("beta_lpo = [unclosed")
    assert main(["train", "--method", "lpo", "--config", str(f)]) == 2
    assert "not valid TOML" in _err_line(capsys)


def test_nan_loss_stops_with_diagnostics_and_keeps_last_checkpoint(tiny_pairs, tmp_path, monkeypatch):
    from lpo_bench.methods.lpo.method import LPO

    orig = LPO._update

    def update(self, batch, n_global):
        logs = orig(self, batch, n_global)
        if self.updates_done >= 3:
            logs["loss"] = math.nan
        self.updates_done += 1
        return logs

    monkeypatch.setattr(LPO, "updates_done", 0, raising=False)
    monkeypatch.setattr(LPO, "_update", update)
    with pytest.raises(HarnessError, match="loss became nan at update 3.*--resume"):
        train_run(lpo_request(tiny_pairs, tmp_path), **tiny_inputs(), log=lambda *_: None)
    run_dir = tmp_path / "train" / "lpo-tiny"
    assert (run_dir / "checkpoint.pt").exists() and not records.is_done(run_dir)
    import torch

    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 2  # the last good one


def test_finished_run_is_not_overwritten(tmp_path, capsys, tiny_pairs):
    d = records.prepare_run_dir(tmp_path, "train", "lpo-toy-x-s0", overwrite=False, resume=False)
    records.atomic_write_json(d / "run.json", {"keep": True})
    records.mark_done(d)
    assert main(["train", "--method", "lpo", "--out-root", str(tmp_path), "--run-id", "lpo-toy-x-s0",
                 "--pairs", str(tiny_pairs)]) == 2
    assert "--overwrite" in _err_line(capsys)
    assert json.loads((d / "run.json").read_text()) == {"keep": True}
