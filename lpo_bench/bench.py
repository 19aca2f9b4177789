"""`lpo-bench bench`: what one sampling step and one training step cost, per method.

Three measurements (wall seconds, median over ``repeats``; CUDA is synchronised around every timer):

1. ``sampling_step``, the unit of the LPO paper's Tab. 5 (K candidates, one prompt): LPO = one CFG
   denoising step + the LRM scoring the K candidates (VFE: the trunk on cond + uncond); SPO = the same
   denoising step + x̂0 prediction of the K candidates (one CFG pass) + K VAE decodes + K SPM forwards.
   Each component is timed on its own under ``torch.inference_mode`` with the calls the methods' scorers
   make (``LPO.scorer``: ``lrm.score`` on cached text; ``SPO.scorer``: ``bundle.guided_eps`` ->
   ``ddim.predict_x0`` -> ``bundle.decode`` -> ``spm.score_images`` on cached text features), using the
   real :class:`LatentRewardModel` and :class:`StepAwarePreferenceModel` classes. Tab. 5 is printed beside.
   SPO's sampler reuses the candidates' x̂0 pass as the next denoising step, so its effective cost is
   the Tab. 5 total minus one denoising step; both are reported, the ratio uses the Tab. 5 definition.
2. ``train_step``: whole training updates through the harness (``ledger.step`` around
   ``method.train_step``, a file-backed ledger as in the runner) on a toy or tiny bundle. A *cycle* is
   one sampling round and the updates it feeds (LPO, SPO) or one update (Diffusion-DPO); seconds by
   ledger phase and the work counters of the ledger rows are reported per cycle, per update and per pair.
   Thresholds are 0 so every scored step yields a pair: a real valid fraction f divides per-pair costs by f.
3. ``overhead``: the same cycle, from the same restored method state, with a null ledger (no clock, no
   rows); the relative difference of the medians of the paired runs is the harness overhead (target 2 %).

Backbones: ``toy`` (the shipped toy model; ``--random-weights`` builds the toy architecture), ``tiny-sd15``,
``tiny-sdxl`` (``lpo_bench.models.tiny``), and ``sd15`` / ``sdxl`` (``--random-weights``: the full-size public
architectures below, randomly initialised, no hub access; without it the registry loaders need the weights).
Full-size SPMs use the CLIP ViT-H/14 vision tower (PickScore's image tower) with a 1-layer text tower:
text features are cached per prompt by SPO, so the text tower never runs in a sampling step.

Fast paths, as switches: ``autocast_dtype`` ("bf16" / "fp16", meant for GPUs; bench only: the methods
themselves run in the bundle's dtype), ``gradient_checkpointing`` (``unet.enable_gradient_checkpointing()``
before the method's setup; Diffusion-DPO also has its own ``gradient_checkpointing`` config key) and
``compile`` (``torch.compile`` of each timed component; ``unet.compile()`` after setup for training steps;
compile time falls in the untimed warm-up). Always on: inference mode for the sampling-step components,
SDPA attention (diffusers' ``AttnProcessor2_0``, transformers' ``sdpa``; the processors found are reported),
batched candidate scoring, one shared forward for winner and loser, cached prompt embeddings.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from lpo_bench.errors import HarnessError
from lpo_bench.ledger import Ledger

STEP_METHODS = ("lpo", "spo")
ALL_METHODS = ("lpo", "spo", "diffusion-dpo")
SMALL_BACKBONES = ("toy", "tiny-sd15", "tiny-sdxl")
RANDOM_FULL_BACKBONES = ("sd15", "sdxl")
PARTS = ("sampling_step", "train_step", "overhead")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
OVERHEAD_TARGET_PCT = 2.0
ACCEPTANCE_MIN_RATIO = 4.0  # issue: LPO's cost per sampling step at K=4 is at most a quarter of SPO's

# ---------------------------------------------------------------------------- full-size architectures
# From the public diffusers / transformers configs of the released checkpoints (weights not needed).
SD15_UNET_CONFIG: dict[str, Any] = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8,
)
SDXL_UNET_CONFIG: dict[str, Any] = dict(
    sample_size=128, in_channels=4, out_channels=4, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280), layers_per_block=2, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
    cross_attention_dim=2048, attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10),
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 6 time ids x 256 + 1280 pooled text_embeds
)
SD_VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
)
SDXL_VAE_CONFIG: dict[str, Any] = {**SD_VAE_CONFIG, "sample_size": 1024, "scaling_factor": 0.13025}
CLIP_L14_TEXT_CONFIG: dict[str, Any] = dict(  # SD1.5 text_encoder, SDXL text_encoder
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=0, eos_token_id=2,
    pad_token_id=1,
)
CLIP_BIGG14_TEXT_CONFIG: dict[str, Any] = dict(  # SDXL text_encoder_2 (OpenCLIP ViT-bigG/14)
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=1280, bos_token_id=0, eos_token_id=2,
    pad_token_id=1,
)
CLIP_H14_VISION_CONFIG: dict[str, Any] = dict(  # PickScore_v1 / LAION CLIP-ViT-H-14 image tower
    hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, image_size=224,
    patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5,
)
CLIP_H14_TEXT_CONFIG: dict[str, Any] = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5,
)
CLIP_H14_PROJECTION_DIM = 1024
FULL_SPM_TEXT_LAYERS = 1  # cached text features: the text tower is not part of a sampling step

# Toy-scale SPM (as baselines/spo/configs/spm_toy.toml) for toy and tiny bundles.
SMALL_SPM = dict(image_size=32, hidden=64, layers=3, patch_size=4)

# Bench settings per method on top of the method's defaults (the official SD1.5 settings). Every scored
# step gives a pair (threshold 0); enough prompts and epochs that a cycle never runs out of data.
TRAIN_OVERRIDES: dict[str, dict[str, Any]] = {
    "lpo": dict(num_inference_steps=20, num_candidates=4, prompts_per_round=2, train_batch_pairs=10,
                threshold_min=0.0, threshold_max=0.0, num_train_prompts=8, epochs=1000, lora_rank=4),
    "spo": dict(num_inference_steps=20, num_candidates=4, prompts_per_round=2, train_batch_pairs=10,
                micro_batch_pairs=10, threshold_spo=0.0, num_train_prompts=8, epochs=1000, lora_rank=4),
    "diffusion-dpo": dict(pairs_per_update=10, micro_batch_pairs=10, lr_warmup_updates=0, max_updates=10**9,
                          random_flip=False, max_pairs=16),
}
BENCH_PROMPT = "a photo of an astronaut riding a horse on the moon"
BENCH_PAIRS = 16


# ---------------------------------------------------------------------------- small helpers
def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def _sync_fn(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)


def _autocast(device: str, autocast_dtype: str | None) -> contextlib.AbstractContextManager:
    if autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=str(device).split(":")[0], dtype=AUTOCAST_DTYPES[autocast_dtype])


def time_call(fn: Callable[[], Any], *, repeats: int, warmup: int, sync: Callable[[], None]) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls (synchronised)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def parse_methods(method: str) -> list[str]:
    """"all", one method name, or a comma-separated list -> registry names (validated)."""
    from lpo_bench import registry

    if method.strip() == "all":
        return list(ALL_METHODS)
    names = [m.strip() for m in method.split(",") if m.strip()]
    if not names:
        raise HarnessError("--method is empty; pass lpo, spo, diffusion-dpo, a comma-separated list or all")
    return [registry.check_name("method", m) for m in names]


def attention_report(bundle: Any, spm_attention: str | None = None) -> dict[str, Any]:
    """Attention implementations in use: diffusers processors and transformers ``_attn_implementation``."""
    def procs(m: Any) -> list[str]:
        return sorted({type(p).__name__ for p in getattr(m, "attn_processors", {}).values()})

    rep: dict[str, Any] = {"unet": procs(bundle.unet), "vae": procs(bundle.vae),
                           "text_encoders": [getattr(e.config, "_attn_implementation", None)
                                             for e in bundle.text_encoders]}
    if spm_attention is not None:
        rep["spm_clip"] = spm_attention
    return rep


# ---------------------------------------------------------------------------- bundles and reward models
def _sd_scheduler() -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, steps_offset=1)


def full_size_bundle(family: str, *, seed: int = 0, device: str = "cpu") -> Any:
    """A full-size ``family`` ("sd15" | "sdxl") bundle with random weights, built from the configs above."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lpo_bench.models.tiny import bundle_from_components, clip_tokenizer

    if family not in RANDOM_FULL_BACKBONES:
        raise HarnessError(f"no full-size random-weight architecture for {family!r}; use one of "
                           f"{', '.join(RANDOM_FULL_BACKBONES)}")
    sdxl = family == "sdxl"
    torch.manual_seed(seed)
    comps: dict[str, Any] = {"tokenizer": clip_tokenizer(77, pad_token="<|endoftext|>"), "scheduler": _sd_scheduler()}
    if sdxl:
        comps["tokenizer_2"] = clip_tokenizer(77, pad_token="!")
    with torch.device(device):  # "meta": shapes only, for FLOP counting
        comps["unet"] = UNet2DConditionModel(**(SDXL_UNET_CONFIG if sdxl else SD15_UNET_CONFIG))
        comps["vae"] = AutoencoderKL(**(SDXL_VAE_CONFIG if sdxl else SD_VAE_CONFIG))
        comps["text_encoder"] = CLIPTextModel(CLIPTextConfig(**CLIP_L14_TEXT_CONFIG))
        if sdxl:
            comps["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG14_TEXT_CONFIG))
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if name in comps:
            comps[name].eval().requires_grad_(False)
    prov = {"backbone_id": f"{family}-architecture", "backbone_revision": f"random-weights-seed{seed}", "dtype": "fp32"}
    return bundle_from_components(family, comps, family=family, resolution=1024 if sdxl else 512, provenance=prov)


def build_bundle(backbone: str, *, random_weights: bool, device: str, seed: int = 0) -> Any:
    """The bench bundle for ``backbone`` (see the module docstring), on ``device``."""
    from lpo_bench.models import tiny

    if backbone in ("tiny-sd15", "tiny-sdxl"):
        return tiny.tiny_bundle(backbone.removeprefix("tiny-"), seed=seed).to(device)
    if backbone == "toy" and random_weights:
        from lpo_bench.models.bundle import ModelBundle
        from lpo_bench.toy import models

        unet, vae, te, tok, sched = models.build_toy_components(seed)
        for m in (unet, vae, te):
            m.eval().requires_grad_(False)
        return ModelBundle(name="toy", unet=unet, vae=vae, text_encoders=(te,), tokenizers=(tok,), scheduler=sched,
                           text_kind="sd", resolution=32,
                           provenance={"backbone_id": "toy-architecture", "backbone_revision": f"random-weights-seed{seed}",
                                       "dtype": "fp32"}).to(device)
    if random_weights:
        return full_size_bundle(backbone, seed=seed, device=device)
    from lpo_bench.runner import load_backbone

    return load_backbone(backbone, weights_dir=None, device=device)


def is_full_size(backbone: str) -> bool:
    return backbone not in SMALL_BACKBONES


def make_lrm(bundle: Any) -> Any:
    from lpo_bench.methods.lpo.lrm import LatentRewardModel

    return LatentRewardModel.from_bundle(bundle).to(bundle.device).eval().requires_grad_(False)


def make_spm(bundle: Any, *, full_size: bool, seed: int = 0) -> tuple[Any, str]:
    """(SPM, label): CLIP ViT-H/14-sized for full-size backbones, toy-sized otherwise (random weights)."""
    from lpo_bench.baselines.spo.spm import StepAwarePreferenceModel

    tok = bundle.tokenizers[0]
    if not full_size:
        spm = StepAwarePreferenceModel.tiny(tok, seed=seed, **SMALL_SPM)
        return spm.to(bundle.device).eval().requires_grad_(False), "toy-size SPM (tiny-clip, 32 px)"
    from transformers import CLIPConfig, CLIPModel

    text = {**CLIP_H14_TEXT_CONFIG, "num_hidden_layers": FULL_SPM_TEXT_LAYERS}
    torch.manual_seed(seed)
    with torch.device(bundle.device):
        clip = CLIPModel(CLIPConfig(text_config=text, vision_config=CLIP_H14_VISION_CONFIG,
                                    projection_dim=CLIP_H14_PROJECTION_DIM))
        spm = StepAwarePreferenceModel(clip.eval(), tok, base="clip-vit-h-14-architecture",
                                       base_checkpoint="random-weights")
    label = (f"SPM at CLIP ViT-H/14 vision size (1280 wide, 32 layers, patch 14, 224 px) + adaLN, random weights; "
             f"text tower {FULL_SPM_TEXT_LAYERS} layer (text features cached, not timed)")
    return spm.to(bundle.device).eval().requires_grad_(False), label


def _count_params(m: Any) -> int:
    return int(sum(p.numel() for p in m.parameters()))


# ---------------------------------------------------------------------------- 1. one sampling step
Component = tuple[str, Callable[[], Any], dict[str, int]]


def step_components(
    bundle: Any,
    methods: Sequence[str],
    *,
    full_size: bool,
    num_candidates: int = 4,
    guidance_scale: float = 5.0,
    num_inference_steps: int = 20,
    timestep: int = 501,
    info: dict[str, Any] | None = None,
    keep_models: bool = False,
) -> Iterator[Component]:
    """The components of one sampling step with K candidates for one prompt, in pipeline order, as
    (name, call, unit evaluations). Each call leaves its output for the next. Reward models are built just
    before their component and, unless ``keep_models`` (all calls stay usable after the generator ends, for
    interleaved timing), dropped after it (peak memory at full size). ``info`` receives labels."""
    from lpo_bench.diffusion import ddim

    k, info = num_candidates, info if info is not None else {}
    sched = bundle.ddim_scheduler(num_inference_steps)
    t_child = max(ddim.prev_timestep(sched, timestep, num_inference_steps), 0)
    std = ddim.ddim_step_std(sched, timestep, num_inference_steps, 1.0)
    gen = torch.Generator().manual_seed(0)
    state: dict[str, Any] = {}
    with torch.inference_mode():
        cond, uncond = bundle.encode_prompts([BENCH_PROMPT]), bundle.encode_negative(1)
        cond_k, uncond_k = cond.repeat(k), uncond.repeat(k)
        x = torch.randn(1, *bundle.latent_shape, generator=gen).to(bundle.device, bundle.dtype)
        noise = torch.randn(k, *bundle.latent_shape, generator=gen).to(bundle.device, bundle.dtype)
    info.update(child_timestep=t_child, labels={})
    cfg_mult = 2 if guidance_scale != 1 else 1

    def denoise() -> None:  # one CFG denoising step and the K candidates around its mean
        eps = bundle.guided_eps(x, timestep, cond, uncond, guidance_scale)
        mu = ddim.ddim_step_mean(sched, x, eps, timestep, num_inference_steps, std)
        state["cands"] = mu + std * noise

    yield "denoise", denoise, {"unet_fwd": cfg_mult}
    if "lpo" in methods:
        from lpo_bench.methods.lpo.lrm import LRMText

        lrm = make_lrm(bundle)
        with torch.inference_mode():
            text1 = lrm.encode_text([BENCH_PROMPT])  # cached per prompt, as LPO does
            text = LRMText(text1.embeds.repeat(k), text1.feature.repeat(k, 1))
            un = lrm.negative_embeds(1).repeat(k)
        t_lrm = torch.full((k,), timestep, device=bundle.device)  # official: the parent timestep
        info["labels"]["lrm"] = (f"LatentRewardModel.from_bundle ({_count_params(lrm) / 1e6:.4g} M params, "
                                 f"VFE gs {lrm.guidance_scale:g}: trunk on cond + uncond)")
        yield ("lrm_reward", lambda: lrm.score(state["cands"], t_lrm, text, un),
               {"reward_fwd": k, "lrm_trunk_fwd": k * (2 if lrm.guidance_scale != 1 else 1)})
        if not keep_models:
            del lrm, text, un
            gc.collect()
    if "spo" in methods:
        def x0_pred() -> None:
            eps = bundle.guided_eps(state["cands"], t_child, cond_k, uncond_k, guidance_scale)
            state["x0"] = ddim.predict_x0(bundle.scheduler, state["cands"], eps, t_child)

        yield "x0_pred", x0_pred, {"unet_fwd": k * cfg_mult}
        yield "vae_decode", lambda: state.__setitem__("images", bundle.decode(state["x0"])), {"vae_decode": k}
        spm, label = make_spm(bundle, full_size=full_size)
        info["labels"]["spm"] = f"{label} ({_count_params(spm) / 1e6:.4g} M params)"
        info["spm_attention"] = getattr(spm.clip.config, "_attn_implementation", None)
        if bundle.device.type == "meta":  # FLOP counting: the text side is cached, only its shape matters
            spm_text = torch.empty(k, spm.clip.config.projection_dim, device="meta")
        else:
            with torch.inference_mode():
                spm_text = spm.text_features([BENCH_PROMPT]).repeat(k, 1)  # cached per prompt, as SPO does
        yield "spm_reward", lambda: spm.score_images(state["images"], t_child, spm_text), {"reward_fwd": k}
        if not keep_models:
            del spm
            gc.collect()


def sampling_step_flops(backbone: str, methods: Sequence[str], *, random_weights: bool,
                        **step_kw: Any) -> dict[str, float]:
    """TFLOP of each component (``torch.utils.flop_counter``: matmul, conv and attention; 2 per multiply-add),
    counted on a meta-device copy of the bundle: no memory, no compute, machine independent."""
    from torch.utils.flop_counter import FlopCounterMode

    if random_weights and backbone in RANDOM_FULL_BACKBONES:
        bundle = full_size_bundle(backbone, device="meta")
    else:
        bundle = build_bundle(backbone, random_weights=random_weights, device="cpu").to("meta")
    out = {}
    for name, fn, _ in step_components(bundle, methods, full_size=is_full_size(backbone), **step_kw):
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            fn()
        out[name] = counter.get_total_flops() / 1e12
    return out


def sampling_step_costs(
    bundle: Any,
    methods: Sequence[str],
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
    flops: dict[str, float] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Per-component seconds of one sampling step (Tab. 5 unit), LPO and SPO totals and their ratio.

    ``interleave`` (default): all components are built first and each round runs the whole step once, in
    pipeline order, so a change of machine load hits LPO's and SPO's components alike; totals and the
    SPO/LPO ratio are computed per round and their medians reported. Otherwise each component is timed
    ``repeats`` times in a row and its model dropped before the next is built (lower peak memory: full-size
    SDXL on a 24 GiB CPU host); the ratio is then that of the summed component medians.
    """
    dev = str(bundle.device)
    sync = _sync_fn(dev)
    info: dict[str, Any] = {}
    comps: dict[str, dict[str, Any]] = {}

    def timed(fn: Callable[[], Any]) -> Callable[[], None]:
        call = torch.compile(fn) if compile else fn

        def run() -> None:
            with torch.inference_mode(), _autocast(dev, autocast_dtype):
                call()

        return run

    gen = step_components(bundle, methods, full_size=full_size, num_candidates=num_candidates,
                          guidance_scale=guidance_scale, timestep=timestep, info=info, keep_models=interleave)
    if interleave:
        built = [(name, timed(fn), evals) for name, fn, evals in gen]
        for _ in range(warmup):
            for _, run, _ in built:
                run()
        samples: dict[str, list[float]] = {name: [] for name, _, _ in built}
        for r in range(repeats):
            for name, run, _ in built:
                samples[name] += time_call(run, repeats=1, warmup=0, sync=sync)
            log(f"[bench] sampling step round {r + 1}/{repeats}: "
                + ", ".join(f"{n} {v[-1]:.4f} s" for n, v in samples.items()))
        for name, _, evals in built:
            comps[name] = {"median_s": _median(samples[name]), "samples_s": samples[name], "evals": evals}
    else:
        for name, fn, evals in gen:
            log(f"[bench] sampling step: {name} ...")
            xs = time_call(timed(fn), repeats=repeats, warmup=warmup, sync=sync)
            comps[name] = {"median_s": _median(xs), "samples_s": xs, "evals": evals}
            log(f"[bench]   {name}: {_median(xs):.4f} s")
    if flops:
        for name, c in comps.items():
            c["tflop"] = flops[name]
    k = num_candidates
    out: dict[str, Any] = {"num_candidates": k, "prompts": 1, "timestep": timestep,
                           "child_timestep": info["child_timestep"], "guidance_scale": guidance_scale,
                           "repeats": repeats, "warmup": warmup, "interleaved": interleave, "components": comps,
                           "labels": info["labels"], "attention": attention_report(bundle, info.get("spm_attention"))}
    lpo_parts = ("denoise", "lrm_reward") if "lrm_reward" in comps else ()
    spo_parts = ("denoise", "x0_pred", "vae_decode", "spm_reward") if "spm_reward" in comps else ()
    if interleave:  # per-round totals: seconds measured close together are compared with each other
        totals = {m: [sum(comps[c]["samples_s"][r] for c in parts) for r in range(repeats)]
                  for m, parts in (("lpo", lpo_parts), ("spo", spo_parts)) if parts}
        for m, xs in totals.items():
            out[f"{m}_total_s"], out[f"{m}_total_samples_s"] = _median(xs), xs
        if "spo" in totals:
            eff = [s - comps["denoise"]["samples_s"][r] for r, s in enumerate(totals["spo"])]
            out["spo_effective_s"] = _median(eff)
        if len(totals) == 2:
            rounds = [s / lp for s, lp in zip(totals["spo"], totals["lpo"], strict=True)]
            out["ratio_spo_over_lpo_rounds"] = rounds
            out["ratio_spo_over_lpo"] = _median(rounds)
            out["ratio_spo_effective_over_lpo"] = _median([e / lp for e, lp in zip(eff, totals["lpo"], strict=True)])
    units = (("tflop", "tflop"),) if interleave else (("s", "median_s"), ("tflop", "tflop"))
    for unit, key in units:
        if any(key not in c for c in comps.values()):
            continue
        if lpo_parts:
            out[f"lpo_total_{unit}"] = sum(comps[c][key] for c in lpo_parts)
        if spo_parts:
            out[f"spo_total_{unit}"] = sum(comps[c][key] for c in spo_parts)
            out[f"spo_effective_{unit}"] = out[f"spo_total_{unit}"] - comps["denoise"][key]  # x̂0 pass = next step
        if lpo_parts and spo_parts:
            sfx = "" if unit == "s" else "_flops"
            out[f"ratio_spo_over_lpo{sfx}"] = out[f"spo_total_{unit}"] / out[f"lpo_total_{unit}"]
            out[f"ratio_spo_effective_over_lpo{sfx}"] = out[f"spo_effective_{unit}"] / out[f"lpo_total_{unit}"]
    if "ratio_spo_over_lpo" in out:
        out["acceptance"] = {"criterion": "LPO per sampling step at K=4 <= SPO / 4 (wall seconds), at SD1.5 shapes",
                             "applies": bool(bundle.name == "sd15" and k == 4), "min_ratio": ACCEPTANCE_MIN_RATIO,
                             "passed": bool(out["ratio_spo_over_lpo"] >= ACCEPTANCE_MIN_RATIO)}
    out["paper_tab5"] = paper_tab5()
    return out


def paper_tab5() -> dict[str, dict[str, float]]:
    """Tab. 5 of the LPO paper (seconds per sampling step, one A100, K = 4) from data/published.toml."""
    from lpo_bench.published import load_published

    tab = next(t for t in load_published().tables if t.id == "tab5")
    keys = {"Denoising": "denoise", "x0": "x0_pred", "VAE": "vae_decode", "Reward": "reward", "Total": "total"}
    out: dict[str, dict[str, float]] = {"spo": {}, "lpo": {}}
    for row in tab.rows:
        key = next(v for p, v in keys.items() if row.label.startswith(p))
        out["spo"][key], out["lpo"][key] = row.values
    return out


# ---------------------------------------------------------------------------- 2./3. training steps
class NullLedger:
    """A ledger that does nothing: the bare loop of the overhead measurement."""

    def phase(self, phase: Any) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def step(self, step: int) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def count(self, name: str, n: float = 1) -> None:
        return None


class SelfTimedLedger(Ledger):
    """A file-backed ledger (as the runner's) that also sums the seconds spent in its own bookkeeping (clock
    reads, charging, row writes, counters): the harness overhead measured from the inside, free of the
    run-to-run noise of a shared machine."""

    def __init__(self, path: Path, sync: Callable[[], None] | None = None) -> None:
        super().__init__(path, sync=sync)
        self.self_s = 0.0

    @contextlib.contextmanager
    def _timed(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.self_s += time.perf_counter() - t0

    def now(self) -> float:
        if self.sync is not None:
            self.sync()  # waiting for queued GPU work is not bookkeeping; a lost overlap shows in the wall times
        with self._timed():
            return self.clock()

    def _charge(self, t: float) -> None:
        with self._timed():
            super()._charge(t)

    def _flush(self, row: dict[str, Any]) -> None:
        with self._timed():
            super()._flush(row)

    def count(self, name: str, n: float = 1) -> None:
        with self._timed():
            super().count(name, n)


def write_bench_pairs(out: Path, *, n: int, resolution: int, seed: int = 0) -> Path:
    """A Pick-a-Pic-schema train split of ``n`` random-image pairs (Diffusion-DPO's input; content is irrelevant
    to its cost). Labels alternate so no pair is a tie."""
    import numpy as np
    import pandas as pd

    from lpo_bench.data.pairs import encode_png

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"caption": f"{BENCH_PROMPT} {i}", "jpg_0": encode_png(rng.random((resolution, resolution, 3))),
             "jpg_1": encode_png(rng.random((resolution, resolution, 3))), "label_0": float(i % 2),
             "label_1": float(1 - i % 2)} for i in range(n)]
    pd.DataFrame(rows).to_parquet(out / "train.parquet", index=False)
    return out


def setup_method(name: str, bundle: Any, work: Path, *, full_size: bool, overrides: dict[str, Any] | None = None,
                 gradient_checkpointing: bool = False, compile: bool = False) -> Any:
    """``name`` set up on ``bundle`` with the bench settings; its reward model / pairs are made in ``work``."""
    from lpo_bench import registry
    from lpo_bench.config import build_config
    from lpo_bench.harness.method import TrainContext

    cls = registry.resolve("method", name)
    cfg = build_config(cls.config_cls, TRAIN_OVERRIDES[name], overrides or {})
    options: dict[str, Any] = {}
    if name == "lpo":
        options["lrm"] = str(make_lrm(bundle).save(work / "lrm"))
    elif name == "spo":
        options["spm"] = str(make_spm(bundle, full_size=full_size)[0].save(work / "spm"))
    else:
        options["pairs"] = str(write_bench_pairs(work / "pairs", n=BENCH_PAIRS, resolution=bundle.resolution))
    if gradient_checkpointing:
        bundle.unet.enable_gradient_checkpointing()
    # prompts come from the toy world's train split (ctx.backbone only selects them): no data files needed
    ctx = TrainContext(bundle=bundle, cfg=cfg, seed=0, ledger=Ledger(work / "setup-ledger.jsonl"), run_dir=work,
                       backbone="toy", options=options, log=lambda *_: None)
    method = cls()
    method.setup(ctx)
    if compile:
        bundle.unet.compile()
    return method


def run_cycle(method: Any, ledger: Any, start_step: int = 0) -> list[dict[str, float]]:
    """One sampling round and the updates it feeds (LPO, SPO), or one update (Diffusion-DPO), as the runner
    runs them: ``ledger.step`` around each ``train_step``."""
    logs, step = [], start_step
    while True:
        with ledger.step(step):
            logs.append(method.train_step(step))
        step += 1
        if getattr(method, "updates_left", 0) == 0 or logs[-1].get("skipped"):
            return logs


def _read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_step_costs(
    name: str,
    backbone: str,
    *,
    random_weights: bool,
    device: str,
    repeats: int = 3,
    warmup: int = 1,
    overhead: bool = True,
    overrides: dict[str, Any] | None = None,
    autocast_dtype: str | None = None,
    gradient_checkpointing: bool = False,
    compile: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Seconds by ledger phase, work counters and (optionally) the harness overhead of one cycle of ``name``."""
    from lpo_bench.config import config_dict

    sync = _sync_fn(device)
    bundle = build_bundle(backbone, random_weights=random_weights, device=device)  # fresh: setup adds LoRA
    with tempfile.TemporaryDirectory(prefix="lpo-bench-") as tmp:
        work = Path(tmp)
        method = setup_method(name, bundle, work, full_size=is_full_size(backbone), overrides=overrides,
                              gradient_checkpointing=gradient_checkpointing, compile=compile)
        snapshot = copy.deepcopy(method.state_dict())

        def cycle(ledger: Any) -> tuple[float, list[dict[str, float]]]:
            method.load_state_dict(copy.deepcopy(snapshot))  # identical work every time
            method.ctx.ledger = ledger
            sync()
            t0 = time.perf_counter()
            with _autocast(device, autocast_dtype):
                logs = run_cycle(method, ledger)
            sync()
            return time.perf_counter() - t0, logs

        def harness_ledger(i: int) -> SelfTimedLedger:
            return SelfTimedLedger(work / f"ledger-{i}.jsonl", sync=sync if device.startswith("cuda") else None)

        log(f"[bench] {name}: warm-up ...")
        for i in range(warmup):
            cycle(harness_ledger(-1 - i))
        harness_s, bare_s, self_s, phases, counts, logs = [], [], [], [], {}, []
        for r in range(repeats):
            order = ("harness", "bare") if r % 2 == 0 else ("bare", "harness")  # cancel drift on a busy machine
            for kind in order:
                if kind == "bare" and not overhead:
                    continue
                if kind == "bare":
                    s, _ = cycle(NullLedger())
                    bare_s.append(s)
                    continue
                ledger = harness_ledger(r)
                s, logs = cycle(ledger)
                harness_s.append(s)
                self_s.append(ledger.self_s)
                rows = [row for row in _read_rows(work / f"ledger-{r}.jsonl") if row.get("type") == "step"]
                ph: dict[str, float] = {}
                counts = {}
                for row in rows:
                    for p, v in row.get("seconds", {}).items():
                        ph[p] = ph.get(p, 0.0) + v
                    for c, v in row.get("counts", {}).items():
                        counts[c] = counts.get(c, 0) + v
                phases.append(ph)
            log(f"[bench] {name}: repeat {r + 1}/{repeats}: harness {harness_s[-1]:.3f} s"
                + (f", bare {bare_s[-1]:.3f} s" if bare_s else ""))
        cfg = method.cfg
    updates = len(logs)
    pairs = float(sum(x.get("pairs", 0.0) for x in logs)) if name != "diffusion-dpo" else float(
        cfg.pairs_per_update * updates)
    cycle_s = _median(harness_s)
    phase_names = sorted({p for ph in phases for p in ph})
    sec_by_phase = {p: _median([ph.get(p, 0.0) for ph in phases]) for p in phase_names}
    res: dict[str, Any] = {
        "method": name, "config": config_dict(cfg), "updates_per_cycle": updates, "pairs_per_cycle": pairs,
        "pairs_scored_per_cycle": float(sum(x.get("pairs_scored", 0.0) for x in logs)),
        "cycle_s": cycle_s, "cycle_samples_s": harness_s,
        "per_update_s": cycle_s / max(updates, 1), "per_pair_s": cycle_s / pairs if pairs else None,
        "seconds_by_phase": sec_by_phase,
        "seconds_by_phase_per_update": {p: s / max(updates, 1) for p, s in sec_by_phase.items()},
        "counts_per_cycle": counts,
        "counts_per_update": {c: v / max(updates, 1) for c, v in counts.items()},
        "counts_per_pair": {c: v / pairs for c, v in counts.items()} if pairs else {},
    }
    if overhead:
        ratios = [h / b for h, b in zip(harness_s, bare_s, strict=True)]
        res["overhead"] = {
            "harness_s": harness_s, "bare_s": bare_s, "harness_median_s": cycle_s, "bare_median_s": _median(bare_s),
            # paired runs (order alternating): median of harness/bare - 1, and the same from the fastest runs
            "overhead_pct": 100.0 * (_median(ratios) - 1.0),
            "overhead_min_pct": 100.0 * (min(harness_s) / min(bare_s) - 1.0),
            # the ledger's own bookkeeping seconds over the harness cycle
            "ledger_self_s": self_s, "ledger_self_pct": 100.0 * _median([a / b for a, b in zip(self_s, harness_s, strict=True)]),
            "target_pct": OVERHEAD_TARGET_PCT}
    return res


def _ratios(train: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """SPO/LPO and DPO/LPO of seconds and work counters, per update and per pair."""
    if "lpo" not in train:
        return {}
    base = train["lpo"]
    out: dict[str, dict[str, float]] = {}
    for other, key in (("spo", "spo_over_lpo"), ("diffusion-dpo", "dpo_over_lpo")):
        if other not in train:
            continue
        o = train[other]
        r = {"per_update_s": o["per_update_s"] / base["per_update_s"]}
        if o["per_pair_s"] and base["per_pair_s"]:
            r["per_pair_s"] = o["per_pair_s"] / base["per_pair_s"]
        for c in sorted(set(o["counts_per_pair"]) & set(base["counts_per_pair"])):  # counters both methods book
            r[f"{c}_per_pair"] = o["counts_per_pair"][c] / base["counts_per_pair"][c]
        out[key] = r
    return out


# ---------------------------------------------------------------------------- entry point
def run_bench(
    *,
    method: str,
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
    train_overrides: dict[str, dict[str, Any]] | None = None,
    log: Callable[[str], None] | None = None,
    console: Any = None,
) -> dict[str, Any]:
    """Run the requested parts for ``method`` on ``backbone``, print the tables, write JSON to ``out``.

    ``parts`` defaults to all three on toy/tiny backbones and to ``sampling_step`` on full-size ones;
    ``warmup`` defaults to one untimed call, none for full-size backbones on the CPU (minutes per call).
    ``interleave``: see :func:`sampling_step_costs`.
    """
    from lpo_bench import records
    from lpo_bench.runner import pick_device

    methods = parse_methods(method)
    if repeats < 1:
        raise HarnessError(f"--repeats {repeats} must be at least 1")
    if backbone not in SMALL_BACKBONES and random_weights and backbone not in RANDOM_FULL_BACKBONES:
        raise HarnessError(f"--random-weights builds {', '.join(SMALL_BACKBONES + RANDOM_FULL_BACKBONES)}, not "
                           f"{backbone!r}; pick one of those")
    if backbone in ("tiny-sd15", "tiny-sdxl") and random_weights:
        random_weights = False  # tiny bundles are random-weight models already
    if autocast_dtype is not None and autocast_dtype not in AUTOCAST_DTYPES:
        raise HarnessError(f"--autocast {autocast_dtype!r} is not one of {', '.join(AUTOCAST_DTYPES)}")
    full = is_full_size(backbone)
    parts = list(parts) if parts else (["sampling_step"] if full else list(PARTS))
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise HarnessError(f"unknown bench part(s) {bad}; choose from {', '.join(PARTS)}")
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
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # save/load bars of the reward models would drown the tables
    dev_name = torch.cuda.get_device_name(torch.device(dev)) if dev.startswith("cuda") else None
    result: dict[str, Any] = {
        "backbone": backbone, "random_weights": random_weights, "methods": methods, "repeats": repeats,
        "warmup": warmup, "device": dev, "torch_threads": torch.get_num_threads(), "parts": parts,
        "fast_paths": {"inference_mode_sampling_step": True, "autocast_dtype": autocast_dtype,
                       "gradient_checkpointing": gradient_checkpointing, "compile": compile},
        "provenance": records.provenance(dev_name, 1) if dev_name else records.provenance(),
    }
    step_methods = [m for m in methods if m in STEP_METHODS]
    if "sampling_step" in parts and step_methods:
        log(f"[bench] building {backbone} ({'random weights' if random_weights else 'weights'}) on {dev} ...")
        flops = sampling_step_flops(backbone, step_methods, random_weights=random_weights,
                                    num_candidates=num_candidates)
        bundle = build_bundle(backbone, random_weights=random_weights, device=dev)
        result["unet_params"] = _count_params(bundle.unet)
        result["sampling_step"] = sampling_step_costs(
            bundle, step_methods, full_size=full, num_candidates=num_candidates, repeats=repeats, warmup=warmup,
            autocast_dtype=autocast_dtype, compile=compile, interleave=interleave, flops=flops, log=log)
        del bundle
        gc.collect()
    if "train_step" in parts or "overhead" in parts:
        train = {}
        for m in methods:
            train[m] = train_step_costs(
                m, backbone, random_weights=random_weights, device=dev, repeats=repeats, warmup=warmup,
                overhead="overhead" in parts, overrides=(train_overrides or {}).get(m),
                autocast_dtype=autocast_dtype, gradient_checkpointing=gradient_checkpointing, compile=compile,
                log=log)
        result["train_step"] = train
        result["train_step_ratios"] = _ratios(train)
    render(result, console)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        records.atomic_write_json(Path(out), result)
    return result


# ---------------------------------------------------------------------------- tables
def render(result: dict[str, Any], console: Any = None) -> None:
    """Rich tables of a ``run_bench`` result."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 150)
    dev = result["provenance"]["device_name"]
    ss = result.get("sampling_step")
    if ss:
        _render_sampling_step(console, ss, result["backbone"], dev)
    train = result.get("train_step")
    if not train:
        return
    ph = sorted({p for r in train.values() for p in r["seconds_by_phase"]})
    t = Table(title=f"One training cycle through the harness: {result['backbone']} on {dev} "
                    f"(seconds, median of {result['repeats']})")
    for col in ("method", "updates", "pairs", "s/update", "s/pair", *(f"{p}/upd" for p in ph)):
        t.add_column(col, justify="left" if col == "method" else "right")
    for m, r in train.items():
        pu = r["seconds_by_phase_per_update"]
        t.add_row(m, str(r["updates_per_cycle"]), f"{r['pairs_per_cycle']:g}", f"{r['per_update_s']:.4f}",
                  f"{r['per_pair_s']:.5f}" if r["per_pair_s"] else "-", *(f"{pu.get(p, 0.0):.4f}" for p in ph))
    console.print(t)
    names = sorted({c for r in train.values() for c in r["counts_per_pair"]})
    t = Table(title="Work counters per pair (ledger rows; UNet counts are evaluations, a CFG pass on n latents = 2n)")
    t.add_column("method")
    for c in names:
        t.add_column(c, justify="right")
    for m, r in train.items():
        t.add_row(m, *(f"{r['counts_per_pair'].get(c, 0.0):.2f}" for c in names))
    console.print(t)
    for key, r in result.get("train_step_ratios", {}).items():
        console.print(f"{key}: " + ", ".join(f"{n} {v:.2f}x" for n, v in r.items()))
    if any("overhead" in r for r in train.values()):
        t = Table(title=f"Harness overhead: ledger vs null ledger, same cycle (target <= {OVERHEAD_TARGET_PCT:g} %)")
        for col in ("method", "harness s", "bare s", "median paired %", "fastest runs %", "ledger self-time %"):
            t.add_column(col, justify="left" if col == "method" else "right")
        for m, r in train.items():
            o = r.get("overhead")
            if o:
                t.add_row(m, f"{o['harness_median_s']:.4f}", f"{o['bare_median_s']:.4f}", f"{o['overhead_pct']:+.2f}",
                          f"{o['overhead_min_pct']:+.2f}", f"{o['ledger_self_pct']:.3f}")
        console.print(t)


def _render_sampling_step(console: Any, ss: dict[str, Any], backbone: str, dev: str) -> None:
    from rich.table import Table

    c, paper, k = ss["components"], ss["paper_tab5"], ss["num_candidates"]
    t = Table(title=f"One sampling step, K={k}, 1 prompt: {backbone} on {dev} (seconds, median of {ss['repeats']}"
                    f"{' interleaved rounds' if ss.get('interleaved') else ''}; "
                    f"TFLOP counted) | paper Tab. 5: one A100")
    for col in ("component", "LPO s", "SPO s", "s per candidate", "TFLOP", "paper LPO s", "paper SPO s"):
        t.add_column(col, justify="left" if col == "component" else "right")
    lpo, spo = "lrm_reward" in c, "spm_reward" in c

    def f(x: float | None, fmt: str = ".4f") -> str:
        return "-" if x is None else format(x, fmt)

    def g(name: str, key: str = "median_s") -> float | None:
        return c[name].get(key) if name in c else None

    rows = [("denoising step (CFG)", "denoise", "denoise"), ("x̂0 prediction (CFG, K)", "x0_pred", "x0_pred"),
            ("VAE decode (K)", "vae_decode", "vae_decode")]
    for label, name, pk in rows:
        shared = name == "denoise"
        t.add_row(label, f(g(name) if shared else 0.0) if lpo else "-", f(g(name)) if spo else "-",
                  "-" if shared or g(name) is None else f(g(name) / k), f(g(name, "tflop"), ".3g"),
                  f(paper["lpo"][pk]), f(paper["spo"][pk]))
    if lpo:
        t.add_row("reward LRM (K)", f(g("lrm_reward")), "-", f(g("lrm_reward") / k), f(g("lrm_reward", "tflop"), ".3g"),
                  f(paper["lpo"]["reward"]), "-")
    if spo:
        t.add_row("reward SPM (K)", "-", f(g("spm_reward")), f(g("spm_reward") / k), f(g("spm_reward", "tflop"), ".3g"),
                  "-", f(paper["spo"]["reward"]))
    t.add_row("total", f(ss.get("lpo_total_s")), f(ss.get("spo_total_s")), "-",
              " / ".join(f(ss.get(x), ".3g") for x in ("lpo_total_tflop", "spo_total_tflop") if x in ss),
              f(paper["lpo"]["total"]), f(paper["spo"]["total"]))
    console.print(t)
    if "ratio_spo_over_lpo" in ss:
        acc = ss["acceptance"]
        verdict = ("PASS" if acc["passed"] else "FAIL") if acc["applies"] else (
            f"{'yes' if acc['passed'] else 'no'} (the criterion is about SD1.5 shapes, not {backbone})")
        flops = (f"; in FLOPs {ss['ratio_spo_over_lpo_flops']:.2f}x" if "ratio_spo_over_lpo_flops" in ss else "")
        rounds = ss.get("ratio_spo_over_lpo_rounds")
        per_round = f" (median of rounds {', '.join(f'{x:.2f}' for x in rounds)})" if rounds else ""
        console.print(f"SPO/LPO per sampling step = {ss['ratio_spo_over_lpo']:.2f}x in seconds{per_round}{flops} (paper "
                      f"{paper['spo']['total'] / paper['lpo']['total']:.2f}x). With SPO's x̂0 pass reused as its next "
                      f"denoising step: {ss['ratio_spo_effective_over_lpo']:.2f}x. LPO <= SPO/4: {verdict}")
    for name, label in ss["labels"].items():
        console.print(f"  {name}: {label}")
    console.print(f"  attention: {ss['attention']}")
