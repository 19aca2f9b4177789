"""Per-call FLOPs of the ledger's work counters, measured with torch's FLOP counter (``flops.json``).

:func:`run_record` measures, once per run (at SETUP, off the clock), the FLOPs of ONE count of each counter:
one sample (batch 1) at the run's resolution through the run's own models, with
``torch.utils.flop_counter.FlopCounterMode`` (matmul, convolution and attention; 2 FLOPs per multiply-add;
attention on PyTorch's math backend, see :func:`count_flops`; a backward is counted as torch runs it,
activation-gradient and weight-gradient kernels included). It also
prices the same counters at the full SD1.5 and SDXL architectures on the meta device (no memory, no compute:
"projected"), computed once per process and cached.

Generic counters, probed here on any bundle: ``unet_fwd`` (one conditional UNet call, no grad), ``unet_fwdbwd``
(the policy UNet in train mode, forward + backward into its trainable parameters), ``vae_encode`` (the encoder
to the posterior), ``vae_decode`` and ``text_fwd`` (one prompt through the text encoder(s)). The reward model's
counters come from its spec (``StepRewardModelSpec.flop_probes``). A probe that fails leaves its counter
unpriced, with the reason, rather than failing the run. Probing leaves the RNG state, the ``.grad`` of every
parameter and the train/eval modes as they were.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from lpo_bench import registry
from lpo_bench.harness.flops import PROJECTED_ARCHITECTURES, PROJECTED_ENV, FlopRecord, FlopTable
from lpo_bench.harness.spec import FlopProbe

COUNTER = ("torch.utils.flop_counter.FlopCounterMode: matmul, convolution and attention FLOPs (2 per multiply-add; "
           "attention on the math backend), batch of 1 sample")
PROBE_PROMPT = "a red square left of a blue circle"
PROBE_TIMESTEP = 500
GENERIC_COUNTERS = ("unet_fwd", "unet_fwdbwd", "vae_encode", "vae_decode", "text_fwd")
FULL_FINETUNE_FRACTION = 0.5  # a policy training more than this fraction of its UNet's parameters is "full"


def count_flops(call: Callable[[], Any]) -> float:
    """FLOPs of one ``call()`` as torch's FLOP counter counts them, attention on PyTorch's math backend: the
    counter has no formula for the CPU's fused attention kernel (it would count 0), and the math backend counts
    the same on every device, the meta device included (two batched matmuls forward, four backward)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        call()
    return float(counter.get_total_flops())


def fwd_bwd(forward: Callable[[], torch.Tensor], params: Sequence[torch.Tensor]) -> None:
    """``forward()``, then the backward of its output's sum into ``params`` (which must require grad); their
    ``.grad`` is restored afterwards, so a probe leaves no gradient behind."""
    saved = [p.grad for p in params]
    try:
        forward().float().sum().backward()
    finally:
        for p, g in zip(params, saved, strict=True):
            p.grad = g


@contextlib.contextmanager
def requires_grad(params: Sequence[torch.Tensor], flag: bool = True) -> Iterator[None]:
    """Set ``requires_grad`` of ``params`` for the block, then restore each one's."""
    before = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(flag)
        yield
    finally:
        for p, b in zip(params, before, strict=True):
            p.requires_grad_(b)


@contextlib.contextmanager
def train_mode(module: Any) -> Iterator[None]:
    """``module.train()`` for the block (dropout, gradient checkpointing as in training), then its mode back."""
    was = bool(module.training)
    module.train()
    try:
        yield
    finally:
        module.train(was)


def measure(probes: Iterable[FlopProbe], *, label: str, resolution: int | None) -> FlopTable:
    """Run each probe under the FLOP counter: FLOPs per call = FLOPs / samples, minus the ``net_of`` counters'
    FLOPs per call. A probe that raises leaves its counter unpriced (with the error)."""
    raw: dict[str, float] = {}
    how: dict[str, str] = {}
    unpriced: dict[str, str] = {}
    nets: dict[str, dict[str, float]] = {}
    for p in probes:
        try:
            raw[p.counter] = count_flops(p.call) / p.samples
        except Exception as exc:  # a FLOP probe must never fail the run it measures: recorded, then reported
            unpriced[p.counter] = f"probe failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            continue
        how[p.counter] = p.how + (f" (per sample of {p.samples})" if p.samples != 1 else "")
        nets[p.counter] = dict(p.net_of)
    per_call: dict[str, float] = {}
    for name, flops in raw.items():
        missing = [k for k in nets[name] if k not in raw]
        if missing:
            unpriced[name] = f"net of {', '.join(missing)}, which has no FLOPs per call"
            how.pop(name)
            continue
        per_call[name] = flops - sum(n * raw[k] for k, n in nets[name].items())
        if nets[name]:
            how[name] += " minus " + ", ".join(f"{n:g} x {k}" for k, n in nets[name].items())
    return FlopTable(label=label, flops_per_call=per_call, how=how, unpriced=unpriced, resolution=resolution)


def policy_info(policy: Any) -> dict[str, Any]:
    """Parameter counts of the policy UNet and whether it trains as an adapter (few parameters) or in full."""
    if policy is None:
        return {"params": None, "trainable_params": None, "mode": None}
    n = sum(p.numel() for p in policy.parameters())
    k = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    mode = None if k == 0 else "full" if k > FULL_FINETUNE_FRACTION * n else "adapter"
    return {"params": int(n), "trainable_params": int(k), "mode": mode}


def generic_probes(bundle: Any, *, policy: Any = None, fwdbwd: str | None = None) -> list[FlopProbe]:
    """Probes of the generic counters on ``bundle``, one sample each.

    ``policy``: the policy UNet (its trainable parameters get the backward of ``unet_fwdbwd``; default the
    bundle's UNet). ``fwdbwd`` without a policy: "full" (every UNet parameter trains), "adapter" (weights frozen:
    the backward into the activations only; an adapter's own FLOPs are left out) or None (no ``unet_fwdbwd``).
    """
    dev, dt = bundle.device, bundle.dtype
    unet = policy if policy is not None else bundle.unet
    x = torch.zeros(1, *bundle.latent_shape, device=dev, dtype=dt)
    t = torch.full((1,), PROBE_TIMESTEP, device=dev)
    images = torch.zeros(1, 3, bundle.resolution, bundle.resolution, device=dev, dtype=bundle.vae.dtype)
    with torch.no_grad():
        cond = bundle.encode_prompts([PROBE_PROMPT])
    which = "the policy UNet" if policy is not None else "the UNet"

    def unet_fwd() -> None:
        with torch.no_grad():
            bundle.unet_forward(x, t, cond, unet)

    def encode() -> None:
        with torch.no_grad():
            d = bundle.vae.encode(images * 2 - 1).latent_dist
            d.mean, d.std  # noqa: B018 (the posterior's moments, as the trainers cache them)

    def decode() -> None:
        with torch.no_grad():
            bundle.decode(x)

    def text() -> None:
        bundle.encode_prompts([PROBE_PROMPT])

    probes = [FlopProbe("unet_fwd", unet_fwd, f"{which}, one conditional call, no grad"),
              FlopProbe("vae_encode", encode, "VAE encoder to the posterior (mean, std)"),
              FlopProbe("vae_decode", decode, "VAE decoder"),
              FlopProbe("text_fwd", text, f"text encoder(s), one prompt ({len(bundle.text_encoders)} encoder(s))")]
    if policy is not None:
        params = [p for p in policy.parameters() if p.requires_grad]
        info = policy_info(policy)
        if params:
            def policy_fwdbwd() -> None:
                with train_mode(policy):
                    fwd_bwd(lambda: bundle.unet_forward(x, t, cond, policy), params)

            probes.append(FlopProbe("unet_fwdbwd", policy_fwdbwd,
                                    f"the policy UNet in train mode, forward + backward into its trainable parameters "
                                    f"({info['mode']}: {info['trainable_params']:,} of {info['params']:,})"))
    elif fwdbwd is not None:
        probes.append(_projected_fwdbwd(bundle, x, t, cond, fwdbwd))
    return probes


def _projected_fwdbwd(bundle: Any, x: torch.Tensor, t: torch.Tensor, cond: Any, mode: str) -> FlopProbe:
    params = list(bundle.unet.parameters())

    def full() -> None:
        with requires_grad(params), train_mode(bundle.unet):
            fwd_bwd(lambda: bundle.unet_forward(x, t, cond), params)

    def adapter() -> None:
        xi = x.detach().clone().requires_grad_(True)
        with train_mode(bundle.unet):
            fwd_bwd(lambda: bundle.unet_forward(xi, t, cond), [xi])

    if mode == "full":
        return FlopProbe("unet_fwdbwd", full, "the UNet in train mode, forward + backward into every parameter (the "
                                              "run trained its UNet in full)")
    return FlopProbe("unet_fwdbwd", adapter, "the UNet in train mode, forward + backward into the activations, weights "
                                             "frozen (the run trained an adapter; the adapter's own FLOPs left out)")


def stage_probes(stage: Any, bundle: Any, *, model_dir: Path | None, cfg: Any, full_size: bool,
                 device: Any = None) -> list[FlopProbe]:
    """The reward model's probes from its spec (none without ``stage`` or ``stage.flop_probes``)."""
    if stage is None or not getattr(stage, "flop_probes", None):
        return []
    return list(registry.load_target(stage.flop_probes)(bundle, model_dir=model_dir, cfg=cfg, full_size=full_size,
                                                         device=device))


@contextlib.contextmanager
def _no_side_effects(device: torch.device) -> Iterator[None]:
    """The global RNGs as they were after the block (probes never move a run's random stream)."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


def run_record(bundle: Any, *, policy: Any = None, stage: Any = None, stage_cfg: Any = None,
               model_dir: Path | None = None, devices: int = 1, projected: bool | None = None) -> FlopRecord:
    """The run's ``flops.json``: its own models measured (``model_dir``: its trained reward model, else one built
    from ``stage_cfg``), and, with ``projected``, the full SD1.5 and SDXL architectures (cached per process;
    None: unless the environment sets ``LPO_BENCH_PROJECTED_FLOPS=0``)."""
    with _no_side_effects(bundle.device):
        try:
            probes = generic_probes(bundle, policy=policy)
        except Exception as exc:  # e.g. a bundle whose text encoder cannot run on one prompt: all unpriced
            probes = [FlopProbe(c, _raise(exc), "generic probe") for c in GENERIC_COUNTERS]
        # a reward model loaded for probing on an accelerator would take its memory: off the CPU it is probed on
        # the meta device (the same FLOPs, no memory, no compute)
        where = None if bundle.device.type == "cpu" else "meta"
        try:
            probes += stage_probes(stage, bundle, model_dir=model_dir, cfg=stage_cfg, full_size=False, device=where)
        except Exception as exc:  # its counters stay unpriced; the reason is recorded
            failed = _failed_table("the run's own models", bundle.resolution, stage, exc)
        else:
            failed = None
        measured = measure(probes, label="the run's own models", resolution=int(bundle.resolution))
        del probes
        if failed is not None:
            measured = measured.merged(failed)
    info = policy_info(policy)
    if projected is None:
        projected = os.environ.get(PROJECTED_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
    proj = projected_tables(policy_mode=info["mode"], stage=stage, stage_cfg=stage_cfg) if projected else {}
    return FlopRecord(torch=torch.__version__, counter=COUNTER, devices=int(devices), measured=measured,
                      projected=proj, policy=info,
                      projected_skipped="" if projected else f"not computed ({PROJECTED_ENV}=0 or projected=False)")


def _raise(exc: Exception) -> Callable[[], None]:
    def call() -> None:
        raise exc

    return call


def _failed_table(label: str, resolution: int | None, stage: Any, exc: Exception) -> FlopTable:
    why = f"the reward model's probes could not be built: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return FlopTable(label, {}, {}, {f"{stage.name} (all its counters)": why}, resolution)


# ---------------------------------------------------------------------------- projected (full size, meta)
_GENERIC: dict[tuple[str, str | None], FlopTable] = {}
_STAGE: dict[tuple[str, str, str], FlopTable] = {}
_BUNDLES: dict[str, Any] = {}


def projected_bundle(arch: str) -> Any:
    """The released ``arch`` architecture on the meta device (shapes only), built once per process."""
    if arch not in _BUNDLES:
        from lpo_bench.models.full_size import full_size_bundle

        _BUNDLES[arch] = full_size_bundle(arch, device="meta")
    return _BUNDLES[arch]


def clear_cache() -> None:
    _GENERIC.clear()
    _STAGE.clear()
    _BUNDLES.clear()


def projected_tables(*, policy_mode: str | None, stage: Any, stage_cfg: Any) -> dict[str, FlopTable]:
    """Per-call FLOPs at each of ``PROJECTED_ARCHITECTURES`` (full size, meta device): the generic counters
    (``unet_fwdbwd`` as the run trained: ``policy_mode``) and the reward model's (its spec at full size, with
    the run's trainer config). Cached per process."""
    from lpo_bench.config import config_dict
    from lpo_bench.records import canonical_json

    out = {}
    for arch in PROJECTED_ARCHITECTURES:
        label = f"{arch} architecture (projected, meta device)"
        if (arch, policy_mode) not in _GENERIC:
            bundle = projected_bundle(arch)
            _GENERIC[(arch, policy_mode)] = measure(generic_probes(bundle, fwdbwd=policy_mode), label=label,
                                                    resolution=int(bundle.resolution))
        table = _GENERIC[(arch, policy_mode)]
        if stage is not None and getattr(stage, "flop_probes", None):
            key = (arch, stage.name, canonical_json(config_dict(stage_cfg)) if stage_cfg is not None else "")
            if key not in _STAGE:
                bundle = projected_bundle(arch)
                try:
                    probes = stage_probes(stage, bundle, model_dir=None, cfg=stage_cfg, full_size=True)
                    _STAGE[key] = measure(probes, label=label, resolution=int(bundle.resolution))
                except Exception as exc:
                    _STAGE[key] = _failed_table(label, int(bundle.resolution), stage, exc)
            table = table.merged(_STAGE[key])
        out[arch] = table
    return out


def record_run(run_dir: Path, bundle: Any, *, is_main: bool, log: Callable[[str], None] = print,
               **kw: Any) -> FlopRecord | None:
    """:func:`run_record` written to ``run_dir/flops.json`` by the main process (None elsewhere): the harness's
    one call, at SETUP. ``kw``: :func:`run_record`'s."""
    from lpo_bench.harness.flops import write_record

    if not is_main:
        return None
    record = run_record(bundle, **kw)
    write_record(run_dir, record)
    gaps = {**record.measured.unpriced, **{f"{k} ({a})": v for a, t in record.projected.items()
                                           for k, v in t.unpriced.items()}}
    if gaps:
        log("[flops] unpriced counters: " + "; ".join(f"{k}: {v}" for k, v in gaps.items()))
    return record
