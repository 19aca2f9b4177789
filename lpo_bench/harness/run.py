"""One run lifecycle for every run kind (train, reward, eval, step_accuracy): :class:`RunRecorder`.

It owns the run id (``<name>-<identity hash[:8]>[-s<seed>]``; the identity holds every input that can move a
number), the directory (never clobbering a finished run; ``--resume`` refuses a run whose identity changed,
naming the fields), provenance, ``run.json``, the measurement base stamped on every row, and ``DONE``
(written last). Only the main process writes; the others wait for the directory. A user error raised before
anything worth keeping exists removes the half-made directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lpo_bench import records
from lpo_bench.errors import HarnessError
from lpo_bench.harness.dist import Dist

RUN_ID_FORMAT = 2  # 2: the identity includes typed inputs (pairs manifest, reward model, reward-stage config)


def identity_hash(identity: dict[str, Any]) -> str:
    return records.sha256_of({"run_id_format": RUN_ID_FORMAT, **identity})


def _changed_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _changed_fields(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if records.canonical_json(old) == records.canonical_json(new) else [prefix.rstrip(".")]


class RunRecorder:
    """Records of one run; use as ``with RunRecorder(...) as run:``.

    Args:
        kind: directory under the runs root ("train", "reward", "eval", "step_accuracy").
        name: readable run-id prefix, e.g. "lpo-toy".
        identity: JSON-able dict of everything that determines the run's numbers (hashed into the id).
        seed: appended to the id as ``-s<seed>`` when given.
        run_id: an explicit id (the identity is still stored and checked on resume).
        resumable: whether this kind of run can continue from a checkpoint (worded into the refusal messages).
    Set ``keep_on_error`` once the directory holds something worth keeping (a checkpoint, a started record).
    """

    def __init__(self, kind: str, name: str, identity: dict[str, Any], *, out_root: str | Path | None = None,
                 seed: int | None = None, run_id: str | None = None, overwrite: bool = False, resume: bool = False,
                 resumable: bool = True, dist: Dist | None = None) -> None:
        self.kind, self.identity, self.dist = kind, identity, dist or Dist(None)
        self.identity_sha256 = identity_hash(identity)
        suffix = "" if seed is None else f"-s{seed}"
        self.run_id = run_id or f"{name}-{self.identity_sha256[:8]}{suffix}"
        self.root = records.runs_root(out_root)
        self.dir = self.root / kind / self.run_id
        self.overwrite, self.resume, self.resumable = overwrite, resume, resumable
        self.resuming = False
        self.info: dict[str, Any] = {}
        self.base: dict[str, Any] = {}
        self.keep_on_error = False

    # ------------------------------------------------------------------ directory
    def __enter__(self) -> RunRecorder:
        if self.dist.is_main:
            existed = self.dir.exists()
            if existed and self.resume and not self.overwrite:
                self._check_identity()
            records.prepare_run_dir(self.root, self.kind, self.run_id, overwrite=self.overwrite, resume=self.resume,
                                    resumable=self.resumable)
            self.resuming = existed and self.resume and not self.overwrite
        self.dist.barrier()
        if not self.dist.is_main:
            self.resuming = self.resume and self.dir.exists()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and issubclass(exc_type, HarnessError) and self.dist.is_main:
            if not self.resuming and not self.keep_on_error:
                shutil.rmtree(self.dir, ignore_errors=True)  # nothing trained: leave no half-made run behind

    def _check_identity(self) -> None:
        path = self.dir / "run.json"
        if not path.exists():
            return  # interrupted before its first record: nothing to compare
        old = records.read_run(self.dir)
        if "identity" not in old:
            raise HarnessError(f"run {self.dir} was written by an older lpo-bench (no identity record); "
                               f"pass --overwrite to restart it")
        changed = _changed_fields(old["identity"], self.identity)
        if changed:
            raise HarnessError(f"cannot resume {self.dir}: its inputs changed ({', '.join(changed[:6])}); "
                               f"drop --run-id to start a new run or pass --overwrite")

    # ------------------------------------------------------------------ records
    def start(self, info: dict[str, Any], *, bundle_provenance: dict[str, Any] | None = None,
              backbone: str = "", base_extra: dict[str, Any] | None = None) -> None:
        """Write run.json (status "running") with provenance and the identity; fix the measurement base."""
        prov = records.provenance()
        bp = bundle_provenance or {}
        self.info = {"run_id": self.run_id, "kind": self.kind, **info, "identity": self.identity,
                     "identity_sha256": self.identity_sha256, "run_id_format": RUN_ID_FORMAT,
                     "backbone_provenance": bp, "provenance": prov, "status": "running"}
        self.base = {"run_id": self.run_id, "backbone_id": str(bp.get("backbone_id", backbone)),
                     "backbone_revision": str(bp.get("backbone_revision", "")), "dtype": str(bp.get("dtype", "fp32")),
                     **{k: prov[k] for k in records.PROVENANCE_KEYS}, **(base_extra or {})}
        self.write_info()

    def write_info(self, **update: Any) -> None:
        self.info.update(update)
        if self.dist.is_main:
            records.atomic_write_json(self.dir / "run.json", self.info)

    def write_measurements(self, rows: list[dict[str, Any]]) -> None:
        if self.dist.is_main and rows:
            records.write_measurements(self.dir, rows, self.base)

    def write_per_sample(self, rows: list[dict[str, Any]]) -> None:
        if self.dist.is_main and rows:
            records.write_per_sample(self.dir, rows)

    def finish(self, **update: Any) -> None:
        """Status "done" in run.json, then DONE, written last."""
        self.write_info(status="done", **update)
        if self.dist.is_main:
            records.mark_done(self.dir)
