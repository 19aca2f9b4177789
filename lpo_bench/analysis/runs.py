"""Finished run records as the analysis reads them: discovery, loading, and what a record says about its
method, hardware and reward model."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lpo_bench import records
from lpo_bench.analysis.render import MIXED
from lpo_bench.errors import HarnessError

TIMED_KINDS = ("train", "reward")  # runs whose GPU-hours are compared (hardware must match)
KNOWN_KINDS = ("train", "eval", "step_accuracy", "reward")


@dataclass
class Run:
    path: Path
    info: dict[str, Any]
    meas: Any  # pandas DataFrame of measurement rows (MEASUREMENT_COLUMNS)

    @property
    def kind(self) -> str:
        return str(self.info.get("kind", ""))

    @property
    def run_id(self) -> str:
        return str(self.info.get("run_id", self.path.name))

    @property
    def method(self) -> str:
        return str(self.info.get("method"))

    @property
    def prov(self) -> dict[str, Any]:
        return self.info.get("provenance") or {}

    @property
    def device(self) -> tuple[str, int]:
        return str(self.prov.get("device_name", "unknown")), int(self.prov.get("device_count") or 1)

    @property
    def backbone(self) -> str:
        return str(self.info.get("backbone", ""))

    @property
    def backbone_id(self) -> str:
        bp = self.info.get("backbone_provenance") or {}
        if bp.get("backbone_id"):
            return str(bp["backbone_id"])
        ids = self.meas["backbone_id"].dropna().astype(str) if len(self.meas) else []
        return str(ids.iloc[0]) if len(ids) else self.backbone

    @property
    def seed(self) -> int | None:
        s = self.info.get("seed")
        return None if s is None else int(s)

    @property
    def subject(self) -> Any:
        """What the run trained or evaluated: a method, a model, or a reward model."""
        info = self.info
        return info.get("method") or info.get("model") or info.get("reward_model") or info.get("reward_kind")

    def rows(self, kind: str) -> Any:
        return self.meas[self.meas["kind"].astype(object) == kind]

    def per_sample(self) -> Any:
        """The eval run's per-image scores (None when it wrote none)."""
        import pandas as pd

        p = self.path / "per_sample.parquet"
        return pd.read_parquet(p) if p.exists() else None

    def model(self) -> tuple[str, str, int | None]:
        """(method, label, training seed) of the model an eval run evaluated ("base" for the backbone)."""
        spec = self.info.get("model_spec") or {}
        tr = spec.get("train_run") or {}
        best = spec.get("best_of")
        if isinstance(best, dict):  # a sampling control: its own row, named after what it selects with
            inner_spec = {k: v for k, v in spec.items() if k != "best_of"}
            inner = replace(self, info={**self.info, "model_spec": inner_spec}).model()
            name = f"best-of-{best.get('n')} {best.get('metric')}"
            return name, f"{name} of {inner[1]}", inner[2]
        if spec.get("kind") == "base":
            return "base", f"base ({self.backbone})", None
        if spec.get("kind") == "released":  # released:<name>, its own row in every table
            name = str((spec.get("released") or {}).get("name") or self.run_id)
            return name, name, None
        if tr.get("method"):
            seed = tr.get("seed")
            return str(tr["method"]), f"{tr['method']} s{seed} ({tr.get('run_id', '')})", seed
        return str(spec.get("kind", "model")), self.run_id, None


def discover(paths: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Run directories under ``paths`` (a run dir, or a folder searched recursively) in the order given;
    unfinished ones are skipped with a note."""
    found: list[Path] = []
    seen: set[Path] = set()
    notes: list[str] = []
    for p in map(Path, paths):
        if not p.exists():
            raise HarnessError(f"{p} does not exist; pass run directories or a folder holding them (e.g. runs/)")
        cands = [p] if (p / "run.json").exists() else []
        if not cands:
            for root, dirs, files in os.walk(p):
                if "run.json" in files:
                    cands.append(Path(root))
                    dirs[:] = []  # a run's own subfolders (images, checkpoints) hold no runs
                else:
                    dirs.sort()
        for c in cands:
            if not records.is_done(c):
                notes.append(f"skipped unfinished run {c} (no DONE marker)")
            elif c.resolve() not in seen:
                seen.add(c.resolve())
                found.append(c)
    if not found:
        raise HarnessError(f"no finished runs (with a DONE marker) under {', '.join(map(str, paths))}; "
                           f"pass finished run directories or the runs/ folder")
    return found, notes


def load_run(path: Path) -> Run:
    import pandas as pd

    info = records.read_run(path)
    mp = Path(path) / "measurements.parquet"
    meas = records.read_measurements(mp) if mp.exists() else pd.DataFrame(columns=list(records.MEASUREMENT_COLUMNS))
    return Run(Path(path), info, meas)


def to_float(x: Any) -> float:
    """A record value as a float; nan when missing or not a number."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def check_hardware(runs: list[Run], allow_mixed: bool) -> bool:
    """True when timed runs (train, reward) come from different devices; refuses unless allowed."""
    devices = sorted({r.device for r in runs if r.kind in TIMED_KINDS})
    if len(devices) > 1 and not allow_mixed:
        desc = "; ".join(f"{n} x{c}" for n, c in devices)
        raise HarnessError(f"the runs were timed on different hardware ({desc}), so their GPU-hours are not "
                           f"comparable; compare runs from one device type and count, or pass "
                           f"--allow-mixed-hardware to get a report labelled {MIXED}")
    return len(devices) > 1


def given_reward_run(run: Run) -> Run | None:
    """The finished standalone reward run whose model a train run was given (``reward_stage.source ==
    "given"``), found at ``inputs.reward_model`` or its parent (the run dir holds ``model/``)."""
    stage = run.info.get("reward_stage") or {}
    given = (run.info.get("inputs") or {}).get("reward_model")
    if stage.get("source") != "given" or not given:
        return None
    for cand in (Path(given), Path(given).parent):
        if (cand / "run.json").exists() and records.is_done(cand):
            r = load_run(cand)
            if r.kind == "reward":
                return r
    return None


def reference_method(train_runs: list[Run], notes: list[str]) -> str | None:
    """The method speed-ups are relative to: the one whose runs have ``method_role == "proposed"``. When
    none or several are, the first of those (else of all methods) in the order given, with a note."""
    methods = list(dict.fromkeys(r.method for r in train_runs))
    proposed = list(dict.fromkeys(r.method for r in train_runs if r.info.get("method_role") == "proposed"))
    if len(proposed) == 1 or not methods:
        return proposed[0] if proposed else None
    ref = (proposed or methods)[0]
    why = (f"several methods are marked proposed ({', '.join(proposed)})" if proposed
           else "no train run is marked method_role 'proposed'")
    first = "the first of those" if proposed else "the first method"
    notes.append(f"{why}, so speed-ups are relative to {ref}, {first} in the order the runs were given")
    return ref
