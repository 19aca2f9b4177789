"""The cost of one sampling step: K candidates around one CFG denoising step of one prompt, then each method's
own work on them (``MethodSpec.bench_components``), timed per component and counted in FLOPs.

The shared denoising step leaves the K candidates in ``state["cands"]`` and the prompt's conditioning repeated
K times in ``state["cond_k"]`` / ``state["uncond_k"]``; a method's components read and write the same ``state``.
A method's total is the shared step plus its own components.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from lpo_bench import progress, registry
from lpo_bench.bench.backbones import attention_report, is_full_size, meta_bundle
from lpo_bench.bench.ratios import acceptance, reference_method, step_ratios, step_totals
from lpo_bench.bench.timing import autocast, median, sync_fn, time_call
from lpo_bench.harness.spec import BenchComponent, SamplingStepSetting

BENCH_PROMPT = "a photo of an astronaut riding a horse on the moon"
SHARED = "denoise"

# (method name, component); the method is None for the shared denoising step
Part = tuple[str | None, BenchComponent]


def make_setting(bundle: Any, *, num_candidates: int, full_size: bool, keep_models: bool,
                 guidance_scale: float = 5.0, num_inference_steps: int = 20, timestep: int = 501) -> SamplingStepSetting:
    from lpo_bench.diffusion import ddim

    sched = bundle.ddim_scheduler(num_inference_steps)
    child = max(ddim.prev_timestep(sched, timestep, num_inference_steps), 0)
    return SamplingStepSetting(prompt=BENCH_PROMPT, num_candidates=num_candidates, guidance_scale=guidance_scale,
                               num_inference_steps=num_inference_steps, timestep=timestep, child_timestep=child,
                               full_size=full_size, keep_models=keep_models)


def step_components(bundle: Any, specs: Sequence[Any], setting: SamplingStepSetting,
                    state: dict[str, Any]) -> Iterator[Part]:
    """The shared denoising step, then each spec's components, in pipeline order. A method's generator builds
    its models just before its components (and frees them after, unless ``setting.keep_models``)."""
    from lpo_bench.diffusion import ddim

    k, t, steps, gs = setting.num_candidates, setting.timestep, setting.num_inference_steps, setting.guidance_scale
    sched = bundle.ddim_scheduler(steps)
    std = ddim.ddim_step_std(sched, t, steps, 1.0)
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        cond, uncond = bundle.encode_prompts([setting.prompt]), bundle.encode_negative(1)
        state["cond_k"], state["uncond_k"] = cond.repeat(k), uncond.repeat(k)
        x = torch.randn(1, *bundle.latent_shape, generator=gen).to(bundle.device, bundle.dtype)
        noise = torch.randn(k, *bundle.latent_shape, generator=gen).to(bundle.device, bundle.dtype)

    def denoise() -> None:  # one CFG denoising step and the K candidates around its mean
        eps = bundle.guided_eps(x, t, cond, uncond, gs)
        state["cands"] = ddim.ddim_step_mean(sched, x, eps, t, steps, std) + std * noise

    yield None, BenchComponent(SHARED, denoise, {"unet_fwd": 2 if gs != 1 else 1})
    for spec in specs:
        for comp in registry.load_target(spec.bench_components)(bundle, setting, state):
            yield spec.name, comp


def sampling_step_flops(backbone: str, specs: Sequence[Any], *, random_weights: bool, num_candidates: int = 4,
                        **setting_kw: Any) -> dict[str, Any]:
    """TFLOP of each component as ``{"denoise": x, "methods": {method: {component: x}}}``
    (``torch.utils.flop_counter``: matmul, conv and attention; 2 per multiply-add), counted on a meta-device
    bundle: no memory, no compute, machine independent."""
    from torch.utils.flop_counter import FlopCounterMode

    bundle = meta_bundle(backbone, random_weights=random_weights)
    setting = make_setting(bundle, num_candidates=num_candidates, full_size=is_full_size(backbone),
                           keep_models=False, **setting_kw)
    out: dict[str, Any] = {"methods": {s.name: {} for s in specs}}
    for owner, comp in step_components(bundle, specs, setting, {}):
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            comp.call()
        tflop = counter.get_total_flops() / 1e12
        if owner is None:
            out[comp.name] = tflop
        else:
            out["methods"][owner][comp.name] = tflop
    return out


def _time_parts(parts: Iterator[Part], *, repeats: int, warmup: int, interleave: bool, sync: Callable[[], None],
                wrap: Callable[[Callable[[], Any]], Callable[[], None]],
                log: Callable[[str], None]) -> list[tuple[str | None, BenchComponent, list[float]]]:
    """Seconds of each part. Interleaved: every part is built first and each round runs the whole step once,
    in pipeline order; sequential: each part is timed ``repeats`` times in a row as the generator yields it
    (a method's generator frees its models before the next method's are built)."""
    if not interleave:
        out = []
        with progress.task("bench sampling step", unit="component") as bar:
            for owner, comp in parts:
                log(f"[bench] sampling step: {owner or 'shared'} {comp.name} ...")
                xs = time_call(wrap(comp.call), repeats=repeats, warmup=warmup, sync=sync)
                log(f"[bench]   {comp.name}: {median(xs):.4f} s")
                out.append((owner, comp, xs))
                bar.advance(1, last=comp.name)
        return out
    built = [(owner, comp, wrap(comp.call)) for owner, comp in parts]
    samples: list[list[float]] = [[] for _ in built]
    with progress.task("bench sampling step", total=warmup + repeats, unit="round") as bar:
        for _ in range(warmup):
            for _, _, run in built:
                run()
            bar.advance(1, round="warm-up")
        for r in range(repeats):
            for xs, (_, _, run) in zip(samples, built, strict=True):
                xs += time_call(run, repeats=1, warmup=0, sync=sync)
            log(f"[bench] sampling step round {r + 1}/{repeats}: "
                + ", ".join(f"{c.name} {xs[-1]:.4f} s" for (_, c, _), xs in zip(built, samples, strict=True)))
            bar.advance(1, round="timed")
    return [(owner, comp, xs) for (owner, comp, _), xs in zip(built, samples, strict=True)]


def sampling_step_costs(
    bundle: Any,
    specs: Sequence[Any],
    *,
    full_size: bool,
    num_candidates: int = 4,
    repeats: int = 3,
    warmup: int = 1,
    guidance_scale: float = 5.0,
    timestep: int = 501,
    autocast_dtype: str | None = None,
    compile: bool = False,
    interleave: bool = True,
    flops: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Per-component seconds of one sampling step of each spec, each method's total and its ratio to the
    reference method's (see :mod:`lpo_bench.bench.ratios`).

    ``interleave`` (default) pairs the methods within each round, so a change of machine load hits all of them
    alike: totals and ratios are per-round values, then their medians. Otherwise (lower peak memory: one
    method's models at a time) totals are sums of component medians. ``flops``: from :func:`sampling_step_flops`.
    """
    dev = str(bundle.device)
    setting = make_setting(bundle, num_candidates=num_candidates, full_size=full_size, keep_models=interleave,
                           guidance_scale=guidance_scale, timestep=timestep)

    def wrap(fn: Callable[[], Any]) -> Callable[[], None]:
        call = torch.compile(fn) if compile else fn

        def run() -> None:
            with torch.inference_mode(), autocast(dev, autocast_dtype):
                call()

        return run

    timed = _time_parts(step_components(bundle, specs, setting, {}), repeats=repeats, warmup=warmup,
                        interleave=interleave, sync=sync_fn(dev), wrap=wrap, log=log)
    out: dict[str, Any] = {
        "num_candidates": num_candidates, "prompts": 1, "timestep": timestep,
        "child_timestep": setting.child_timestep, "guidance_scale": guidance_scale, "repeats": repeats,
        "warmup": warmup, "interleaved": interleave, "methods": {s.name: {"components": {}} for s in specs},
        "labels": {}, "attention": attention_report(bundle),
    }
    for owner, comp, xs in timed:
        rec: dict[str, Any] = {"median_s": median(xs), "samples_s": xs, "evals": dict(comp.counts)}
        if flops:
            rec["tflop"] = flops[comp.name] if owner is None else flops["methods"][owner][comp.name]
        if owner is None:
            out[comp.name] = rec
        else:
            out["methods"][owner]["components"][comp.name] = rec
        out["labels"].update(comp.labels)
    for m in out["methods"].values():
        m.update(step_totals(out[SHARED], m["components"], interleave=interleave))
    out["ratios"] = step_ratios(out["methods"], reference_method(specs), interleave=interleave)
    if out["ratios"]["over_reference"]:
        out["acceptance"] = acceptance(out["ratios"], applies=full_size and num_candidates == 4)
    out["published"] = published_step_costs()
    return out


def published_step_costs() -> list[dict[str, Any]]:
    """The published per-sampling-step cost tables (``data/published.toml``, kind "step_cost"), as printed
    beside the measurement: columns and rows as labelled in the paper."""
    from lpo_bench.published import load_published

    return [{"id": t.id, "title": t.title, "units": t.units, "note": t.note,
             "columns": [c.label for c in t.columns],
             "rows": [{"label": r.label, "values": list(r.values)} for r in t.rows]}
            for t in load_published().tables if t.kind == "step_cost"]
