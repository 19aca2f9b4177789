"""Run records: directories, provenance, atomic writes, the measurement schema.

Layout::

    runs/<kind>/<run_id>/
      run.json              provenance + resolved config + status + ledger summary
      ledger.jsonl          append-only phase rows (seconds, work counts per phase)
      flops.json            FLOPs of one call of each work counter (train and reward runs; lpo_bench.harness.flops)
      measurements.parquet  one row per measurement (MEASUREMENT_COLUMNS, schema_version)
      per_sample.parquet    one row per (sample, metric)
      DONE                  written last; a finished run is never overwritten without --overwrite

Every write is atomic (temporary file + rename), so a crash never leaves a truncated file.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lpo_bench import __version__
from lpo_bench.errors import HarnessError

SCHEMA_VERSION = 1

MEASUREMENT_COLUMNS: dict[str, str] = {
    "schema_version": "int",
    "run_id": "str",
    "measurement_id": "str",
    "created_utc": "str",
    "kind": "str",  # eval_metric | step_reward_acc | train_cost | train_log | rm_val_acc
    "method": "str",
    "method_version": "str",
    "config_hash": "str",
    "backbone_id": "str",
    "backbone_revision": "str",
    "dtype": "str",
    "suite": "str",
    "suite_version": "str",
    "inputs_sha256": "str",
    "category": "str",  # suite category (T2I-CompBench++ category, toy family, prompt source) or "all"
    "n_prompts": "int",
    "images_per_prompt": "int",
    "sampler": "str",
    "num_inference_steps": "int",
    "guidance_scale": "float",
    "metric": "str",
    "metric_version": "str",
    "scorer_checkpoint": "str",
    "scorer_sha256": "str",
    "higher_is_better": "bool",
    "value": "float",
    "ci_low": "float",
    "ci_high": "float",
    "n": "int",
    "timestep": "int",
    "input_mode": "str",
    "train_step": "int",
    "gpu_h_at_measurement": "float",
    "flops_at_measurement": "float",  # counted FLOPs of the run when an in-training evaluation was taken
    "gpu_h_counted": "float",
    "gpu_h_rm": "float",
    "wall_s_total": "float",
    "seed": "int",
    "sample_seed_base": "int",
    "git_commit": "str",
    "git_dirty": "bool",
    "lpo_bench_version": "str",
    "python": "str",
    "torch": "str",
    "diffusers": "str",
    "transformers": "str",
    "device_name": "str",
    "device_count": "int",
    "batch_size": "int",
    "command": "str",
}
PROVENANCE_KEYS = (
    "git_commit",
    "git_dirty",
    "lpo_bench_version",
    "python",
    "torch",
    "diffusers",
    "transformers",
    "device_name",
    "device_count",
    "command",
)


# ---------------------------------------------------------------------------- atomic I/O
def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _disk_error(path, exc) from None


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_write_parquet(path: Path, df: Any) -> None:
    import io

    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def atomic_torch_save(path: Path, obj: Any) -> None:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _disk_error(path: Path, exc: OSError) -> HarnessError:
    import errno

    if exc.errno == errno.ENOSPC:
        return HarnessError(
            f"no space left on the device while writing {path}; free disk space or point --out-root at a "
            f"larger disk, then rerun with --resume (nothing was overwritten)"
        )
    return HarnessError(f"could not write {path}: {exc.strerror or exc}; check the path and permissions")


# ---------------------------------------------------------------------------- provenance
def git_info(repo: Path | None = None) -> tuple[str, bool]:
    """(commit, dirty) of the lpo-bench source tree, or ("unknown", False) outside git."""
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return (commit or "unknown"), bool(status)
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def _version(mod: str) -> str:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return "absent"


def provenance(device_name: str | None = None, device_count: int | None = None) -> dict[str, Any]:
    """Provenance stamped on every run and every measurement row (no hostname, as AlgoPerf)."""
    commit, dirty = git_info()
    if device_name is None:
        device_name, device_count = device_description()
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "lpo_bench_version": __version__,
        "python": platform.python_version(),
        "torch": _version("torch"),
        "diffusers": _version("diffusers"),
        "transformers": _version("transformers"),
        "device_name": device_name,
        "device_count": int(device_count or 1),
        "command": " ".join(["lpo-bench", *sys.argv[1:]]) if sys.argv else "",
    }


def device_description() -> tuple[str, int]:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0), torch.cuda.device_count()
    except Exception:
        pass
    return f"cpu:{platform.machine()}:{os.cpu_count()}cores", 1


# ---------------------------------------------------------------------------- run dirs
def runs_root(out_root: str | Path | None = None) -> Path:
    return Path(out_root or os.environ.get("LPO_BENCH_RUNS", "runs"))


def prepare_run_dir(root: Path, kind: str, run_id: str, *, overwrite: bool, resume: bool,
                    resumable: bool = True) -> Path:
    """Create (or reopen for --resume) ``root/kind/run_id``; never clobber a finished run."""
    run_dir = Path(root) / kind / run_id
    if run_dir.exists():
        done = (run_dir / "DONE").exists()
        if overwrite:
            shutil.rmtree(run_dir)
        elif resume:
            if done:
                raise HarnessError(f"run {run_dir} is already finished (DONE); pass --overwrite to redo it")
            return run_dir
        elif done:
            raise HarnessError(f"run {run_dir} already exists and is finished; pass --overwrite to replace it")
        elif resumable:
            raise HarnessError(
                f"run {run_dir} exists but is unfinished; pass --resume to continue it or --overwrite to restart"
            )
        else:
            raise HarnessError(f"run {run_dir} exists but is unfinished (interrupted); pass --overwrite to redo it")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def mark_done(run_dir: Path) -> None:
    atomic_write_bytes(Path(run_dir) / "DONE", datetime.now(timezone.utc).isoformat().encode())


def is_done(run_dir: Path) -> bool:
    return (Path(run_dir) / "DONE").exists()


def read_run(run_dir: Path) -> dict[str, Any]:
    p = Path(run_dir) / "run.json"
    if not p.exists():
        raise HarnessError(f"{run_dir} is not a run directory (no run.json); pass a directory under runs/")
    return json.loads(p.read_text())


# ---------------------------------------------------------------------------- hashing
def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def sha256_of(obj: Any) -> str:
    data = obj if isinstance(obj, bytes) else canonical_json(obj).encode()
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------- measurements
def measurement_rows(rows: Iterable[dict[str, Any]], base: dict[str, Any]) -> list[dict[str, Any]]:
    """Stamp schema version, ids, time and run-level fields onto measurement rows."""
    now = datetime.now(timezone.utc).isoformat()
    out = []
    for r in rows:
        row = {k: None for k in MEASUREMENT_COLUMNS}
        row.update({k: v for k, v in base.items() if k in MEASUREMENT_COLUMNS})
        row.update(r)
        unknown = set(row) - set(MEASUREMENT_COLUMNS)
        if unknown:
            raise ValueError(f"unknown measurement columns: {sorted(unknown)}")
        row["schema_version"] = SCHEMA_VERSION
        row["measurement_id"] = uuid.uuid4().hex
        row["created_utc"] = now
        out.append(row)
    return out


def _frame(rows: list[dict[str, Any]]) -> Any:
    import pandas as pd

    df = pd.DataFrame(rows, columns=list(MEASUREMENT_COLUMNS))
    for col, kind in MEASUREMENT_COLUMNS.items():
        if kind == "float":
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
        elif kind == "int":
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
        elif kind == "bool":
            df[col] = df[col].astype("boolean")
        else:
            df[col] = df[col].astype("string")
    return df


def write_measurements(run_dir: Path, rows: list[dict[str, Any]], base: dict[str, Any]) -> None:
    """Append rows to ``measurements.parquet`` (atomic rewrite; the only way to write measurements)."""
    import pandas as pd

    path = Path(run_dir) / "measurements.parquet"
    new = _frame(measurement_rows(rows, base))
    if path.exists():
        new = pd.concat([read_measurements(path), new], ignore_index=True)
    atomic_write_parquet(path, new)


def read_measurements(path: Path) -> Any:
    import pandas as pd

    df = pd.read_parquet(path)
    validate(df, source=str(path))
    return df


def validate(df: Any, source: str = "measurements") -> None:
    missing = [c for c in MEASUREMENT_COLUMNS if c not in df.columns]
    if missing:
        raise HarnessError(f"{source} lacks columns {missing[:5]}; it was written by another lpo-bench version")
    bad = set(df["schema_version"].dropna().astype(int)) - {SCHEMA_VERSION}
    if bad:
        raise HarnessError(
            f"{source} has schema_version {sorted(bad)}, this lpo-bench reads {SCHEMA_VERSION}; "
            f"use the matching lpo-bench version"
        )


def write_per_sample(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Append per-sample rows (prompt_id, image_idx, sample_seed, metric, score, ...) atomically."""
    import pandas as pd

    path = Path(run_dir) / "per_sample.parquet"
    df = pd.DataFrame(rows)
    if path.exists():
        df = pd.concat([pd.read_parquet(path), df], ignore_index=True)
    atomic_write_parquet(path, df)
