"""One-GPU check: full-size SD1.5 then SDXL (released architectures, random weights), bf16: one sampling step and
one training step of every registered method, seconds and peak memory per component.

Each result is one JSON line appended to ``benchmarks/results/gpu_check-<device name>.jsonl`` and flushed (fsync)
as soon as it is measured, so a crash or a timeout keeps everything measured before it. Run through
``benchmarks/gpu_check.sh`` (offline, strict shell); ``--tiny --device cpu`` is the dry run on tiny bundles.

Per backbone (sd15, then sdxl):

* ``build``: the bundle on the device (random weights, no download).
* ``sampling_step``: ``lpo_bench.bench.sampling_step.step_components``: the shared CFG denoising step of K = 4
  candidates, then each method's own components (its reward model built just before, freed after), under
  ``torch.inference_mode`` and bf16 autocast with the bundle's frozen weights cast to bf16.
* ``train_step``: per method, a fresh bundle and its backbone preset (``configs/<backbone>.toml``: LoRA rank,
  micro-batch per GPU, gradient checkpointing as the official code on SDXL) with the thresholds at 0, one prompt
  per round and 16 pairs at most, set up as ``train`` does it (random reward model, ``--precision bf16``
  semantics), then ONE call of ``train_step``: for a step-wise method one sampling round plus its first update.
  Seconds (and seconds by ledger phase), peak memory, and the harness's memory estimate beside it.

Peak memory: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` before each component (the
models already resident are included); null on the CPU. ``--max-seconds`` (default 240) stops starting new
components once that much time has passed and records the rest as skipped.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lpo_bench import records, registry
from lpo_bench.bench.backbones import build_bundle, is_full_size
from lpo_bench.bench.sampling_step import make_setting, step_components
from lpo_bench.bench.train_step import random_reward_model_dir, write_bench_pairs
from lpo_bench.config import load_target_config
from lpo_bench.data.prompts import BackbonePrompts
from lpo_bench.harness import memory
from lpo_bench.harness.dist import Dist
from lpo_bench.harness.method import RunInputs, TrainContext
from lpo_bench.harness.precision import Precision, enable_gradient_checkpointing
from lpo_bench.ledger import Ledger

ROOT = Path(__file__).resolve().parents[1]
# one training step, cheap but at the per-GPU batch of the preset: every scored step forms a pair, one prompt per
# round (up to 20 pairs, enough for a full micro-batch), few training prompts, few preference pairs
TRAIN_OVERRIDES = {"threshold_min": 0.0, "threshold_max": 0.0, "threshold_spo": 0.0, "prompts_per_round": 1,
                   "num_train_prompts": 8, "epochs": 1000, "max_pairs": 16, "lr_warmup_updates": 0,
                   "random_flip": False}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


class Results:
    """JSON lines appended to ``path``, each flushed to disk when written."""

    def __init__(self, path: Path, common: dict[str, Any]) -> None:
        self.path, self.common = path, common
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, row: dict[str, Any]) -> None:
        line = json.dumps({**self.common, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **row}, sort_keys=True)
        with open(self.path, "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        print(line if len(line) < 400 else line[:400] + " ...", flush=True)


class Meter:
    """Seconds and peak device memory of one call (CUDA-synchronised)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def __call__(self, fn: Callable[[], Any]) -> tuple[Any, float, int | None]:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = fn()
        if self.cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        return out, seconds, torch.cuda.max_memory_allocated() if self.cuda else None


def free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def sampling_step(backbone: str, args: argparse.Namespace, res: Results, meter: Meter, budget: Callable[[], bool]) -> None:
    specs = [s for s in map(registry.method_spec, args.methods) if s.bench_components]
    bundle, s, peak = meter(lambda: build_bundle(backbone, random_weights=True, device=args.device))
    res.write({"backbone": backbone, "part": "build", "component": "bundle", "seconds": s, "peak_bytes": peak,
               "unet_params": sum(p.numel() for p in bundle.unet.parameters())})
    amp = Precision(args.precision, args.device)
    amp.cast_frozen_bundle(bundle)
    setting = make_setting(bundle, num_candidates=4, full_size=is_full_size(backbone), keep_models=False)
    for owner, comp in step_components(bundle, specs, setting, {}):
        if budget():
            res.write({"backbone": backbone, "part": "sampling_step", "method": owner, "component": comp.name,
                       "skipped": "--max-seconds reached"})
            continue

        def call(c=comp) -> None:
            with torch.inference_mode(), amp.autocast():
                c.call()

        try:
            _, s, peak = meter(call)
        except torch.OutOfMemoryError as exc:
            res.write({"backbone": backbone, "part": "sampling_step", "method": owner or "shared",
                       "component": comp.name, "error": "out of memory", "detail": str(exc).splitlines()[0][:300]})
            free(args.device)
            continue
        res.write({"backbone": backbone, "part": "sampling_step", "method": owner or "shared", "component": comp.name,
                   "seconds": s, "peak_bytes": peak, "evals": dict(comp.counts)})
    del bundle
    free(args.device)


def _phase_seconds(ledger_path: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in ledger_path.read_text().splitlines():
        row = json.loads(line)
        for k, v in row.get("seconds", {}).items() if row.get("type") == "step" else ():
            out[k] = out.get(k, 0.0) + v
    return out


def train_step(backbone: str, name: str, args: argparse.Namespace, res: Results, meter: Meter) -> None:
    spec = registry.method_spec(name)
    ckpt = args.grad_ckpt == "on" or (args.grad_ckpt == "auto" and "sdxl" in backbone)
    preset = backbone.removeprefix("tiny-")
    cls = registry.load_target(spec.config)
    overrides = {k: v for k, v in TRAIN_OVERRIDES.items() if k in cls.__dataclass_fields__}
    cfg = load_target_config(spec.config, backbone=preset, overrides=overrides)
    if hasattr(cfg, "pairs_per_update") and hasattr(cfg, "micro_batch_pairs"):  # one micro-batch per update
        cfg = load_target_config(spec.config, backbone=preset, overrides={**overrides,
                                 "pairs_per_update": cfg.micro_batch_pairs})
    bundle, s_build, _ = meter(lambda: build_bundle(backbone, random_weights=True, device=args.device))
    if ckpt:
        enable_gradient_checkpointing(bundle)
    amp = Precision(args.precision, args.device)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        n_pairs = max(4, int(getattr(cfg, "micro_batch_pairs", None) or 4))  # one full micro-batch
        pairs = write_bench_pairs(work / "pairs", n=n_pairs, resolution=bundle.resolution) \
            if "pairs" in spec.inputs else None
        rm = random_reward_model_dir(spec, bundle, work, full_size=is_full_size(backbone))
        ledger = Ledger(work / "ledger.jsonl", sync=torch.cuda.synchronize if meter.cuda else None)
        ctx = TrainContext(bundle=bundle, cfg=cfg, seed=0, ledger=ledger, run_dir=work, inputs=RunInputs(pairs=pairs),
                           prompts=BackbonePrompts("toy"), dist=Dist(None), reward_model_dir=rm,
                           log=lambda *_: None, precision=amp, gradient_checkpointing=ckpt)
        method = registry.load_target(spec.method)()
        _, s_setup, peak_setup = meter(lambda: method.setup(ctx))
        exact = bool(getattr(method, "fp32_log_ratio", False))  # as the harness: its log-ratio passes stay fp32
        amp.cast_frozen_bundle(bundle, keep_unet=exact)
        est = memory.estimate(bundle, method, cfg, precision="fp32" if exact else args.precision, checkpointing=ckpt)

        def one_update() -> dict[str, float]:
            with ledger.step(0), amp.autocast():
                return method.train_step(0)

        logs, s, peak = meter(one_update)
        res.write({"backbone": backbone, "part": "train_step", "method": name, "component": "train_step",
                   "seconds": s, "peak_bytes": peak, "seconds_build": s_build, "seconds_setup": s_setup,
                   "peak_bytes_setup": peak_setup, "seconds_by_phase": _phase_seconds(work / "ledger.jsonl"),
                   "gradient_checkpointing": ckpt, "logs": {k: float(v) for k, v in logs.items()},
                   "estimate_bytes": est.total_bytes, "estimate": est.as_dict(),
                   "config": {k: getattr(cfg, k) for k in ("lora_rank", "micro_batch_pairs", "train_batch_pairs",
                                                           "pairs_per_update", "optimizer") if hasattr(cfg, k)}})
    del bundle
    free(args.device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny-sd15 / tiny-sdxl bundles (a dry run, e.g. on the CPU)")
    ap.add_argument("--device", default=None, help="cuda (default when available) | cpu | cuda:N")
    ap.add_argument("--backbones", default="sd15,sdxl", help="in this order; tiny-* with --tiny")
    ap.add_argument("--methods", default="all", help="comma-separated registered methods, or all")
    ap.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--grad-ckpt", default="auto", choices=("auto", "on", "off"), help="auto: on for SDXL only")
    ap.add_argument("--parts", default="sampling_step,train_step")
    ap.add_argument("--max-seconds", type=float, default=240.0, help="start no component after this many seconds")
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results/gpu_check-<device>.jsonl")
    args = ap.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.methods = list(registry.METHODS) if args.methods == "all" else [m.strip() for m in args.methods.split(",")]
    for m in args.methods:
        registry.check_name("method", m)
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    if args.tiny:
        backbones = [b if b.startswith("tiny-") else f"tiny-{b}" for b in backbones]
    parts = {p.strip() for p in args.parts.split(",")}
    cuda = args.device.startswith("cuda")
    device_name = torch.cuda.get_device_name(torch.device(args.device)) if cuda else "cpu"
    out = args.out or ROOT / "benchmarks" / "results" / f"gpu_check-{slug(device_name)}{'-tiny' if args.tiny else ''}.jsonl"
    if not cuda:
        torch.set_flush_denormal(True)
    prov = records.provenance(device_name if cuda else None, 1 if cuda else None)
    res = Results(out, {"check_id": uuid.uuid4().hex[:12], "device_name": device_name})
    res.write({"part": "start", "device": args.device, "precision": args.precision, "grad_ckpt": args.grad_ckpt,
               "backbones": backbones, "methods": args.methods, "provenance": prov,
               "device_memory_bytes": torch.cuda.get_device_properties(torch.device(args.device)).total_memory
               if cuda else None})
    t0 = time.perf_counter()

    def over_budget() -> bool:
        return time.perf_counter() - t0 > args.max_seconds

    meter = Meter(args.device)
    for backbone in backbones:
        if "sampling_step" in parts:
            sampling_step(backbone, args, res, meter, over_budget)
        for name in args.methods if "train_step" in parts else ():
            if over_budget():
                res.write({"backbone": backbone, "part": "train_step", "method": name, "skipped": "--max-seconds reached"})
                continue
            try:
                train_step(backbone, name, args, res, meter)
            except torch.OutOfMemoryError as exc:  # recorded, and the check goes on with the next method
                res.write({"backbone": backbone, "part": "train_step", "method": name, "error": "out of memory",
                           "detail": str(exc).splitlines()[0][:300]})
                free(args.device)
    res.write({"part": "end", "seconds_total": time.perf_counter() - t0})
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
