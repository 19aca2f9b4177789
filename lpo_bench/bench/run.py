"""``run_bench``: the entry point of ``lpo-bench bench``."""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lpo_bench import registry
from lpo_bench.bench.backbones import TINY_BACKBONES, build_bundle, check_backbone, count_params, is_full_size
from lpo_bench.bench.ratios import reference_method, train_ratios
from lpo_bench.bench.render import render
from lpo_bench.bench.sampling_step import sampling_step_costs, sampling_step_flops
from lpo_bench.bench.timing import AUTOCAST_DTYPES
from lpo_bench.bench.train_step import train_step_costs
from lpo_bench.errors import HarnessError
from lpo_bench.harness.method import PromptSource

PARTS = ("sampling_step", "train_step", "overhead")


def parse_methods(methods: str | Sequence[str]) -> list[str]:
    """"all" (every registered method), a name, a comma-separated list or a sequence -> registered names."""
    names = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else [m.strip() for m in methods]
    names = [m for m in names if m]
    if names == ["all"]:
        return list(registry.METHODS)
    if not names:
        raise HarnessError("--method is empty; pass a registered method (lpo-bench list), a comma-separated "
                           "list of them, or all")
    return list(dict.fromkeys(registry.check_name("method", m) for m in names))


def _check(backbone: str, random_weights: bool, repeats: int, autocast_dtype: str | None,
           parts: Sequence[str]) -> None:
    if repeats < 1:
        raise HarnessError(f"--repeats {repeats} must be at least 1")
    check_backbone(backbone, random_weights)
    if autocast_dtype is not None and autocast_dtype not in AUTOCAST_DTYPES:
        raise HarnessError(f"--autocast {autocast_dtype!r} is not one of {', '.join(AUTOCAST_DTYPES)}")
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise HarnessError(f"unknown bench part(s) {bad}; choose from {', '.join(PARTS)}")


def run_bench(
    *,
    methods: str | Sequence[str] = "all",
    backbone: str = "toy",
    random_weights: bool = False,
    repeats: int = 3,
    device: str | None = None,
    out: str | Path | None = None,
    parts: Sequence[str] | None = None,
    num_candidates: int = 4,
    warmup: int | None = None,
    autocast_dtype: str | None = None,
    gradient_checkpointing: bool = False,
    compile: bool = False,
    threads: int | None = None,
    interleave: bool = True,
    train_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    prompts: PromptSource | None = None,
    log: Callable[[str], None] | None = None,
    console: Any = None,
) -> dict[str, Any]:
    """Run the requested ``parts`` for ``methods`` (see :func:`parse_methods`) on ``backbone``, print the tables,
    write the result as JSON to ``out``, and return it.

    ``parts`` defaults to all three on toy/tiny backbones and to ``sampling_step`` on full-size ones (only
    methods whose spec has ``bench_components`` have a sampling step). ``warmup`` defaults to one untimed call,
    none for full-size backbones on a CPU (minutes per call). ``interleave``: see :func:`sampling_step_costs`.
    ``train_overrides``: config overrides per method name, on top of its spec's ``bench`` settings.
    ``prompts``: the training prompts (default: the toy world's train split).
    """
    from transformers.utils import logging as hf_logging

    from lpo_bench import records
    from lpo_bench.harness.dist import pick_device

    names = parse_methods(methods)
    full = is_full_size(backbone)
    parts = list(parts) if parts else (["sampling_step"] if full else list(PARTS))
    _check(backbone, random_weights, repeats, autocast_dtype, parts)
    specs = [registry.method_spec(n) for n in names]
    if backbone in TINY_BACKBONES:
        random_weights = False  # tiny bundles are random-weight models already
    dev = pick_device(device)
    if warmup is None:
        warmup = 0 if full and not dev.startswith("cuda") else 1
    if compile:
        warmup = max(warmup, 1)  # compilation happens in the first call: keep it off the clock
    if threads:
        torch.set_num_threads(int(threads))
    if not dev.startswith("cuda"):
        torch.set_flush_denormal(True)  # random weights can produce denormals, which are very slow on CPUs
    log = log or (lambda s: print(s, flush=True))
    hf_logging.disable_progress_bar()  # save/load bars of the reward models would drown the tables
    dev_name = torch.cuda.get_device_name(torch.device(dev)) if dev.startswith("cuda") else None
    result: dict[str, Any] = {
        "backbone": backbone, "random_weights": random_weights, "methods": names, "repeats": repeats,
        "warmup": warmup, "device": dev, "torch_threads": torch.get_num_threads(), "parts": parts,
        "fast_paths": {"inference_mode_sampling_step": True, "autocast_dtype": autocast_dtype,
                       "gradient_checkpointing": gradient_checkpointing, "compile": compile},
        "provenance": records.provenance(dev_name, 1) if dev_name else records.provenance(),
    }
    step_specs = [s for s in specs if s.bench_components]
    if "sampling_step" in parts and step_specs:
        log(f"[bench] building {backbone} ({'random weights' if random_weights else 'weights'}) on {dev} ...")
        flops = sampling_step_flops(backbone, step_specs, random_weights=random_weights,
                                    num_candidates=num_candidates)
        bundle = build_bundle(backbone, random_weights=random_weights, device=dev)
        result["unet_params"] = count_params(bundle.unet)
        result["sampling_step"] = sampling_step_costs(
            bundle, step_specs, full_size=full, num_candidates=num_candidates, repeats=repeats, warmup=warmup,
            autocast_dtype=autocast_dtype, compile=compile, interleave=interleave, flops=flops, log=log)
        del bundle
        gc.collect()  # full-size models: free the memory before the next part builds its own
    if "train_step" in parts or "overhead" in parts:
        train = {s.name: train_step_costs(
            s.name, backbone, random_weights=random_weights, device=dev, prompts=prompts, repeats=repeats,
            warmup=warmup, overhead="overhead" in parts, overrides=(train_overrides or {}).get(s.name),
            autocast_dtype=autocast_dtype, gradient_checkpointing=gradient_checkpointing, compile=compile, log=log)
            for s in specs}
        result["train_step"] = train
        result["train_step_ratios"] = train_ratios(train, reference_method(specs))
    render(result, console)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        records.atomic_write_json(Path(out), result)
    return result
