"""Registry, config resolution, records, and CLI error behaviour (fast, no models)."""

import dataclasses
import json
import subprocess
import sys
from typing import Literal

import pytest

from lpo_bench import config, records, registry
from lpo_bench.cli import main
from lpo_bench.errors import HarnessError


def test_import_does_not_pull_torch():
    out = subprocess.run([sys.executable, "-c", "import lpo_bench, lpo_bench.registry, lpo_bench.errors, sys; "
                          "print('torch' in sys.modules)"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_registry_lists_required_entries_with_files():
    rows = registry.describe()
    names = {(r["kind"], r["name"]) for r in rows}
    for kind, name in [("method", "lpo"), ("method", "diffusion-dpo"), ("method", "spo"), ("backbone", "toy"),
                       ("backbone", "sd15"), ("backbone", "sd21"), ("backbone", "sdxl"), ("suite", "compbench")]:
        assert (kind, name) in names
    for r in rows:
        if r["kind"] in ("method", "backbone"):
            assert r["file"].endswith(".py"), r


def test_unknown_name_has_did_you_mean_and_known_list():
    with pytest.raises(HarnessError) as ei:
        registry.check_name("method", "lpoo")
    msg = str(ei.value)
    assert "Did you mean 'lpo'" in msg and "diffusion-dpo" in msg and "\n" not in msg


@dataclasses.dataclass(frozen=True)
class _Cfg:
    beta_lpo: float = 500.0
    steps: int = 20
    flag: bool = False
    shape: Literal["sigma", "linear"] = "sigma"
    grid: tuple[int, ...] = (1, 2)
    cap: int | None = None


def test_config_layers_and_coercion(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("steps = 10\nshape = 'linear'\n")
    cfg = config.load_config(_Cfg, config_file=f, overrides=config.parse_set(["beta_lpo=250", "flag=true",
                                                                           "grid=3,4", "cap=none"]))
    assert cfg == _Cfg(beta_lpo=250.0, steps=10, flag=True, shape="linear", grid=(3, 4), cap=None)


@pytest.mark.parametrize("bad", [["beta=1"], ["novalue"], ["steps=abc"], ["shape=cubic"], ["flag=maybe"]])
def test_bad_overrides_are_one_line_harness_errors(bad):
    with pytest.raises(HarnessError) as ei:
        config.load_config(_Cfg, overrides=config.parse_set(bad))
    assert "\n" not in str(ei.value)


def test_unknown_key_suggests_the_scoped_name():
    with pytest.raises(HarnessError, match="Did you mean 'beta_lpo'"):
        config.build_config(_Cfg, {"beta_lp": 1})


def test_malformed_toml(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("steps = = 3")
    with pytest.raises(HarnessError, match="not valid TOML"):
        config.read_toml(f)
    with pytest.raises(HarnessError, match="does not exist"):
        config.read_toml(tmp_path / "missing.toml")


def test_run_dir_protection(tmp_path):
    d = records.prepare_run_dir(tmp_path, "train", "r1", overwrite=False, resume=False)
    with pytest.raises(HarnessError, match="--resume"):
        records.prepare_run_dir(tmp_path, "train", "r1", overwrite=False, resume=False)
    assert records.prepare_run_dir(tmp_path, "train", "r1", overwrite=False, resume=True) == d
    records.mark_done(d)
    with pytest.raises(HarnessError, match="--overwrite"):
        records.prepare_run_dir(tmp_path, "train", "r1", overwrite=False, resume=True)
    (d / "keep.txt").write_text("x")
    d2 = records.prepare_run_dir(tmp_path, "train", "r1", overwrite=True, resume=False)
    assert d2 == d and not (d / "keep.txt").exists()


def test_measurements_round_trip_and_schema(tmp_path):
    base = {"run_id": "r", "method": "lpo", **records.provenance("cpu", 1)}
    records.write_measurements(tmp_path, [{"kind": "eval_metric", "metric": "m", "value": 1.5, "n": 3}], base)
    records.write_measurements(tmp_path, [{"kind": "eval_metric", "metric": "m", "value": 2.5, "n": 3}], base)
    df = records.read_measurements(tmp_path / "measurements.parquet")
    assert list(df["value"]) == [1.5, 2.5]
    assert set(df["schema_version"]) == {records.SCHEMA_VERSION}
    assert df["measurement_id"].nunique() == 2
    with pytest.raises(ValueError, match="unknown measurement columns"):
        records.measurement_rows([{"bogus": 1}], base)
    bad = df.assign(schema_version=99)
    with pytest.raises(HarnessError, match="schema_version"):
        records.validate(bad)


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import os

    target = tmp_path / "run.json"
    records.atomic_write_json(target, {"a": 1})

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(HarnessError, match="no space left"):
        records.atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_cli_user_errors_exit_2_without_traceback(capsys):
    assert main(["train", "--method", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'nope'" in err and "Traceback" not in err
    assert main(["train", "--method", "lpo", "--backbone", "sdxll"]) == 2
    assert "Did you mean 'sdxl'" in capsys.readouterr().err
    assert main(["eval", "--suite", "compbenhc"]) == 2
    assert main(["train", "--method", "lpo", "--set", "oops"]) == 2
    assert main(["frobnicate"]) == 2


def test_cli_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "diffusion-dpo" in out and "sdxl" in out
