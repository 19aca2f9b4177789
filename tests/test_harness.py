"""The harness's run lifecycle: typed inputs in the run identity, --resume refusing changed inputs or unsafe
checkpoints, half-made runs removed on user errors, and the data manifest hash."""

from __future__ import annotations

import json
import pickle
import shutil

import pandas as pd
import pytest
from helpers import write_pairs_dir

from lpo_bench import records, registry
from lpo_bench.cli import main
from lpo_bench.errors import HarnessError
from lpo_bench.harness.identity import data_manifest_sha256, dir_sha256
from lpo_bench.harness.run import RunRecorder
from lpo_bench.harness.train import TrainRequest, train_run

DPO = {"pairs_per_update": 4, "micro_batch_pairs": 4, "max_updates": 2, "lr": 1e-3, "scale_lr": False,
       "lr_warmup_updates": 0, "lora_rank": 2, "random_flip": False, "max_pairs": 16}


def _dpo(pairs, root, **kw):
    return TrainRequest(method="diffusion-dpo", backbone="toy", overrides=dict(DPO), pairs=str(pairs),
                        out_root=str(root), **kw)


def _train(req):
    from lpo_bench.models.tiny import tiny_bundle

    return train_run(req, bundle=tiny_bundle("sd15", seed=0), log=lambda *_: None)


def test_runs_that_differ_only_in_pairs_get_different_run_ids(tiny_pairs, tmp_path):
    other = write_pairs_dir(tmp_path / "other-pairs", seed=1)
    a, b = _train(_dpo(tiny_pairs, tmp_path / "runs")), _train(_dpo(other, tmp_path / "runs"))
    assert records.is_done(a) and records.is_done(b)
    assert a.name != b.name
    ia, ib = (json.loads((r / "run.json").read_text()) for r in (a, b))
    assert ia["identity"]["inputs"]["pairs"] != ib["identity"]["inputs"]["pairs"]
    assert ia["inputs"]["pairs"] == str(tiny_pairs)  # the path is provenance, not identity


def test_a_moved_copy_of_the_data_keeps_its_identity_and_an_edit_changes_it(tiny_pairs, tmp_path):
    copy = shutil.copytree(tiny_pairs, tmp_path / "elsewhere" / "pairs")
    assert data_manifest_sha256(copy) == data_manifest_sha256(tiny_pairs)
    df = pd.read_parquet(copy / "train.parquet")
    df.loc[0, "label_0"] = 1.0 - df.loc[0, "label_0"] if df.loc[0, "label_0"] != 0.5 else 1.0
    df.to_parquet(copy / "train.parquet", index=False)
    assert data_manifest_sha256(copy) != data_manifest_sha256(tiny_pairs)
    (copy / "train.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(HarnessError, match="not a parquet file"):
        data_manifest_sha256(copy)


def test_resume_refuses_a_run_whose_inputs_changed(tiny_pairs, tmp_path):
    other = write_pairs_dir(tmp_path / "other-pairs", seed=1)
    part = _train(_dpo(tiny_pairs, tmp_path, run_id="dpo-x", stop_after_updates=1))
    assert not records.is_done(part)
    with pytest.raises(HarnessError, match=r"inputs changed \(inputs\.pairs\)") as ei:
        _train(_dpo(other, tmp_path, run_id="dpo-x", resume=True))
    assert "\n" not in str(ei.value)
    done = _train(_dpo(tiny_pairs, tmp_path, run_id="dpo-x", resume=True))
    assert records.is_done(done) and json.loads((done / "run.json").read_text())["updates"] == 2


def test_a_crafted_pickle_in_the_checkpoint_is_refused(tiny_pairs, tmp_path, capsys):
    """Checkpoints load with weights_only=True: a pickle that would run code on load is refused in one line."""
    run_dir = train_run(_dpo(tiny_pairs, tmp_path, run_id="dpo-evil", stop_after_updates=1), log=lambda *_: None)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (run_dir / "checkpoint.pt").write_bytes(pickle.dumps({"step": Payload()}))
    argv = ["train", "--method", "diffusion-dpo", "--pairs", str(tiny_pairs), "--out-root", str(tmp_path),
            "--run-id", "dpo-evil", "--resume", *[a for k, v in DPO.items() for a in ("--set", f"{k}={v}")]]
    assert main(argv) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1 and err[0].startswith("error:") and "refusing" in err[0], err
    assert not marker.exists()


def test_a_user_error_before_anything_is_kept_removes_the_half_made_run(tmp_path):
    with pytest.raises(HarnessError), RunRecorder("train", "x", {"a": 1}, out_root=tmp_path) as run:
        assert run.dir.is_dir()
        raise HarnessError("bad setting")
    assert not run.dir.exists()
    with pytest.raises(HarnessError), RunRecorder("train", "x", {"a": 1}, out_root=tmp_path) as run:
        run.keep_on_error = True  # e.g. a checkpoint exists: keep it for --resume
        raise HarnessError("loss became nan")
    assert run.dir.is_dir()


def test_reward_model_identity_is_its_files(tmp_path):
    d = tmp_path / "m"
    (d / "sub").mkdir(parents=True)
    (d / "a.json").write_text("{}")
    (d / "sub" / "w.bin").write_bytes(b"\x00\x01")
    h = dir_sha256(d)
    moved = shutil.copytree(d, tmp_path / "moved")
    assert dir_sha256(moved) == h
    (moved / "sub" / "w.bin").write_bytes(b"\x00\x02")
    assert dir_sha256(moved) != h


def test_reward_model_of_the_wrong_kind_is_refused_before_loading(tmp_path):
    (tmp_path / "notanlrm").mkdir()
    req = TrainRequest(method="lpo", reward_model=str(tmp_path / "notanlrm"), out_root=str(tmp_path))
    with pytest.raises(HarnessError, match="is not a saved lrm"):
        train_run(req, log=lambda *_: None)
    with pytest.raises(HarnessError, match="has no reward-model stage"):
        train_run(_dpo(tmp_path, tmp_path, reward_model=str(tmp_path / "notanlrm")), log=lambda *_: None)


def test_registry_extension_is_scoped_and_refuses_clashes():
    with registry.extended("method", {"winner-sft": "throwaway_method:SPEC"}):
        assert registry.method_spec("winner-sft").name == "winner-sft"
        with pytest.raises(HarnessError, match="already registered"), registry.extended("method", {"lpo": "x:y"}):
            pass
    with pytest.raises(HarnessError, match="unknown method"):
        registry.check_name("method", "winner-sft")


class _Diverging:
    """A trainable whose loss turns infinite at its third update."""

    def train_step(self, step):
        return {"loss": float("inf") if step == 2 else 1.0}

    def is_done(self, step):
        return step >= 5

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


@pytest.mark.parametrize("phase", [None, "RM_TRAIN"])
def test_the_one_loop_stops_on_an_infinite_loss_for_policies_and_reward_models(phase, tmp_path):
    from lpo_bench.harness.loop import LoopSettings, run_loop
    from lpo_bench.ledger import Ledger, Phase

    settings = LoopSettings(label="x", phase=Phase(phase) if phase else None, train_log=tmp_path / "log.jsonl")
    with pytest.raises(HarnessError, match="loss became inf at update 2"):
        run_loop(_Diverging(), Ledger(tmp_path / "l.jsonl"), settings, log=lambda *_: None)
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 2  # the two good updates were logged
