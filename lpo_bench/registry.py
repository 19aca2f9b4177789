"""Explicit registries: one table per kind, name -> "module:attr", loaded lazily.

No decorators, no import-time registration, no scanning. To add an entry, add one line to
the table below. ``lpo-bench list`` prints every entry with the file that implements it.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from typing import Any

from lpo_bench.errors import HarnessError

METHODS: dict[str, str] = {
    "lpo": "lpo_bench.methods.lpo.method:LPO",
    "diffusion-dpo": "lpo_bench.baselines.diffusion_dpo.method:DiffusionDPO",
    "spo": "lpo_bench.baselines.spo.method:SPO",
}

BACKBONES: dict[str, str] = {
    "toy": "lpo_bench.toy.models:load_toy_bundle",
    "sd15": "lpo_bench.backbones:load_sd15",
    "sd21": "lpo_bench.backbones:load_sd21",
    "sdxl": "lpo_bench.backbones:load_sdxl",
}

# Image-text metrics used for evaluation (and for MPCF gap columns).
REWARD_MODELS: dict[str, str] = {
    "pickscore": "lpo_bench.rewards.pickscore:PickScore",
    "hpsv2.0": "lpo_bench.rewards.hpsv2:HPSv20",
    "hpsv2.1": "lpo_bench.rewards.hpsv2:HPSv21",
    "imagereward": "lpo_bench.rewards.imagereward:ImageReward",
    "aesthetic": "lpo_bench.rewards.aesthetic:LaionAesthetic",
    "clipscore": "lpo_bench.rewards.clipscore:CLIPScore",
    "blip-vqa": "lpo_bench.rewards.blip_vqa:BlipVQA",
    "toy-oracle": "lpo_bench.toy.metrics:ToyOracle",
    "toy-aesthetic": "lpo_bench.toy.metrics:ToyAesthetic",
    "toy-clip": "lpo_bench.toy.metrics:ToyClip",
    "toy-vqa": "lpo_bench.toy.metrics:ToyVQA",
    "toy-compbench": "lpo_bench.toy.metrics:ToyCompBench",
}

# Step-level (noisy-input) reward models trained by the methods.
STEP_REWARD_MODELS: dict[str, str] = {
    "lrm": "lpo_bench.methods.lpo.lrm:LatentRewardModel",
    "spm": "lpo_bench.baselines.spo.spm:StepAwarePreferenceModel",
}

# Trainers of the step reward models (run by lpo_bench.reward_training, all time RM_TRAIN).
REWARD_TRAINERS: dict[str, str] = {
    "lrm": "lpo_bench.methods.lpo.lrm_train:LRMTrainer",
    "spm": "lpo_bench.baselines.spo.spm_train:SPMTrainer",
}

SUITES: dict[str, str] = {
    "compbench": "lpo_bench.suites:COMPBENCH",
    "general": "lpo_bench.suites:GENERAL",
    "toy-compbench": "lpo_bench.suites:TOY_COMPBENCH",
    "toy-general": "lpo_bench.suites:TOY_GENERAL",
}

TABLES: dict[str, dict[str, str]] = {
    "method": METHODS,
    "backbone": BACKBONES,
    "metric": REWARD_MODELS,
    "step-reward-model": STEP_REWARD_MODELS,
    "reward-trainer": REWARD_TRAINERS,
    "suite": SUITES,
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


def resolve(kind: str, name: str) -> Any:
    """Import and return the object registered as ``name`` in the ``kind`` table."""
    target = TABLES[kind][check_name(kind, name)]
    module_name, attr = target.split(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr)


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
