"""Explicit registries: one table per kind, name -> "module:attr", loaded lazily.

No decorators, no import-time registration, no scanning. To add an entry, add one line to
the table below (or, for a method kept outside this repository, wrap a call in :func:`extended`).
``lpo-bench list`` prints every entry with the file that implements it. This module is the only
place in the core that names a method: everything else reads :class:`MethodSpec` objects.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lpo_bench.errors import HarnessError

# name -> a MethodSpec exported by the method's folder (lpo_bench.harness.spec)
METHODS: dict[str, str] = {
    "lpo": "lpo_bench.methods.lpo:SPEC",
    "spo": "lpo_bench.baselines.spo:SPEC",
    "diffusion-dpo": "lpo_bench.baselines.diffusion_dpo:SPEC",
}

# name -> a BackboneSpec (lpo_bench.models.backbones) or a loader fn(weights_dir=, device=) -> ModelBundle
BACKBONES: dict[str, str] = {
    "toy": "lpo_bench.toy.models:load_toy_bundle",
    "sd15": "lpo_bench.models.backbones:SD15",
    "sd21": "lpo_bench.models.backbones:SD21",
    "sdxl": "lpo_bench.models.backbones:SDXL",
}

# Image-text metrics used for evaluation (and for MPCF gap columns).
METRICS: dict[str, str] = {
    "pickscore": "lpo_bench.metrics.pickscore:PickScore",
    "hpsv2.0": "lpo_bench.metrics.hpsv2:HPSv20",
    "hpsv2.1": "lpo_bench.metrics.hpsv2:HPSv21",
    "imagereward": "lpo_bench.metrics.imagereward:ImageReward",
    "aesthetic": "lpo_bench.metrics.aesthetic:LaionAesthetic",
    "clipscore": "lpo_bench.metrics.clipscore:CLIPScore",
    "blip-vqa": "lpo_bench.metrics.blip_vqa:BlipVQA",
    "toy-oracle": "lpo_bench.toy.metrics:ToyOracle",
    "toy-aesthetic": "lpo_bench.toy.metrics:ToyAesthetic",
    "toy-clip": "lpo_bench.toy.metrics:ToyClip",
    "toy-vqa": "lpo_bench.toy.metrics:ToyVQA",
    "toy-compbench": "lpo_bench.toy.metrics:ToyCompBench",
    "toy-geneval": "lpo_bench.toy.metrics:ToyGenEval",
}

# Step-level (noisy-input) reward models: a StepRewardModelSpec (model, trainer, config) each.
STEP_REWARD_MODELS: dict[str, str] = {
    "lrm": "lpo_bench.methods.lpo:LRM_SPEC",
    "spm": "lpo_bench.baselines.spo:SPM_SPEC",
}

SUITES: dict[str, str] = {
    "compbench": "lpo_bench.data.suites:COMPBENCH",
    "general": "lpo_bench.data.suites:GENERAL",
    "geneval": "lpo_bench.data.suites:GENEVAL",
    "geneval-20": "lpo_bench.data.suites:GENEVAL_20",
    "toy-compbench": "lpo_bench.data.suites:TOY_COMPBENCH",
    "toy-general": "lpo_bench.data.suites:TOY_GENERAL",
    "toy-geneval": "lpo_bench.data.suites:TOY_GENEVAL",
}

# The authors' released checkpoints, used as `released:<name>` (a ReleasedModel, lpo_bench.models.released, each).
RELEASED: dict[str, str] = {
    "lrm-sd15": "lpo_bench.methods.lpo.released:LRM_SD15",
    "lrm-sdxl": "lpo_bench.methods.lpo.released:LRM_SDXL",
    "lpo-sd15": "lpo_bench.methods.lpo.released:LPO_SD15",
    "lpo-sdxl": "lpo_bench.methods.lpo.released:LPO_SDXL",
    "spm-sd15": "lpo_bench.baselines.spo.released:SPM_SD15",
    "spm-sdxl": "lpo_bench.baselines.spo.released:SPM_SDXL",
    "spo-sd15": "lpo_bench.baselines.spo.released:SPO_SD15",
    "spo-sdxl": "lpo_bench.baselines.spo.released:SPO_SDXL",
    "diffusion-dpo-sd15": "lpo_bench.baselines.diffusion_dpo.released:DPO_SD15",
    "diffusion-dpo-sdxl": "lpo_bench.baselines.diffusion_dpo.released:DPO_SDXL",
}

TABLES: dict[str, dict[str, str]] = {
    "method": METHODS,
    "backbone": BACKBONES,
    "metric": METRICS,
    "step-reward-model": STEP_REWARD_MODELS,
    "suite": SUITES,
    "released": RELEASED,
}


def unknown_name_error(kind: str, name: str, known: list[str]) -> HarnessError:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return HarnessError(f"unknown {kind} '{name}'.{hint} Known {kind}s: {', '.join(sorted(known))}.")


def check_name(kind: str, name: str) -> str:
    """Validate ``name`` against the ``kind`` table without importing anything."""
    table = TABLES[kind]
    if name not in table:
        raise unknown_name_error(kind, name, list(table))
    return name


def load_target(target: str) -> Any:
    """Import ``"module:attr"`` and return the attribute."""
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)


def resolve(kind: str, name: str) -> Any:
    """Import and return the object registered as ``name`` in the ``kind`` table."""
    return load_target(TABLES[kind][check_name(kind, name)])


def method_spec(name: str) -> Any:
    """The MethodSpec registered as ``name`` (importing only its folder's ``__init__``: no torch)."""
    from lpo_bench.harness.spec import MethodSpec

    spec = resolve("method", name)
    if not isinstance(spec, MethodSpec) or spec.name != name:
        raise HarnessError(f"registry entry method '{name}' -> {METHODS[name]} is not a MethodSpec named '{name}'; "
                           f"fix the registry line")
    return spec


def reward_model_spec(name: str) -> Any:
    """The StepRewardModelSpec registered as ``name``."""
    from lpo_bench.harness.spec import StepRewardModelSpec

    spec = resolve("step-reward-model", name)
    if not isinstance(spec, StepRewardModelSpec) or spec.name != name:
        raise HarnessError(f"registry entry step-reward-model '{name}' is not a StepRewardModelSpec named '{name}'")
    return spec


def method_specs() -> list[Any]:
    return [method_spec(n) for n in METHODS]


@contextmanager
def extended(kind: str, entries: dict[str, str]) -> Iterator[None]:
    """Register ``entries`` (name -> "module:attr") in the ``kind`` table for the duration of the block.

    For methods kept outside this repository (and for tests); the table is restored afterwards.
    """
    table = TABLES[kind]
    clash = set(entries) & set(table)
    if clash:
        raise HarnessError(f"{kind} names {sorted(clash)} are already registered; pick other names")
    table.update(entries)
    try:
        yield
    finally:
        for name in entries:
            table.pop(name, None)


def origin(target: str) -> str:
    """File implementing ``"module:attr"``, found without importing the module."""
    module_name = target.split(":")[0]
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        return "(not found)"
    return spec.origin


def describe() -> list[dict[str, str]]:
    """Every entry of every table: kind, name, target and implementing file."""
    rows = []
    for kind, table in TABLES.items():
        for name, target in table.items():
            rows.append({"kind": kind, "name": name, "target": target, "file": origin(target)})
    return rows
