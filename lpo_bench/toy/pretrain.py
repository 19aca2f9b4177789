"""Deterministic CPU pretraining of the toy backbone on the toy world.

Stage 1 trains the VAE on rendered images (L1 + MSE reconstruction, tiny KL) and sets
``scaling_factor`` to 1/std of the latents. Stage 2 freezes the VAE and trains the text encoder
and UNet jointly with epsilon-prediction MSE over t ~ U{0..999} (Min-SNR-5 weighted, Hang et
al. 2023), dropping 10% of captions to "" so classifier-free guidance works; the saved UNet and text encoder are
the EMA (decay 0.999) of their weights. Training pairs come from ``world.sample_training_batch`` (15% of them
defective, like noisy web captions), so the model is good but imperfect. The pairs are
rendered once into a pool and mirrored (with "left"/"right" swapped in the prompt).

Determinism: step counts (not wall time) end each stage; fixed thread count, deterministic
algorithms, and one generator per purpose (data, noise, timesteps, dropout, posterior samples).
Same seed -> bitwise identical weights on the same software stack. The shipped weights are exactly
``lpo-bench toy pretrain`` with its defaults (seed 0, one thread; ~34 minutes on the 2-core development machine).

Usage: ``python -m lpo_bench.toy.pretrain OUT_DIR [--seed 0]`` or ``lpo-bench toy pretrain --out OUT_DIR``.
The shipped weights record how they were made in ``assets/base/pretrain_report.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lpo_bench import progress
from lpo_bench.toy import world
from lpo_bench.toy.models import (
    TOY_MODEL_VERSION,
    WEIGHT_FILES,
    build_toy_components,
    combined_sha256,
    num_params,
)

STEPS_VAE = 1000
STEPS_UNET = 6000
BATCH_SIZE = 64
POOL_IMAGES = 24000  # rendered once (~0.6 ms per image); mirroring doubles it
LR_VAE = 2e-3
LR_UNET = 1.5e-3
MIN_SNR_GAMMA = 5.0
KL_WEIGHT = 1e-6
CAPTION_DROPOUT = 0.1
DEFECT_PROB = 0.15
EMA_DECAY = 0.999  # the saved UNet and text encoder are the EMA of their weights
NUM_THREADS = 1  # one intra-op thread: reproducible, and immune to oversubscription on shared machines
_FLIP_WORDS = {"left": "right", "right": "left"}


def _rng(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng([seed, *purpose.encode()])


def _gen(seed: int, purpose: str) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(int(_rng(seed, purpose).integers(0, 2**62)))


def flip_prompt(text: str) -> str:
    """The prompt of the horizontally mirrored image: "left" and "right" swap, nothing else changes.

    Mirroring keeps every toy shape (apex-up triangles are symmetric) and the horizontal stripes.
    """
    return " ".join(_FLIP_WORDS.get(w, w) for w in text.split(" "))


def _make_pool(n: int, seed: int, defect_prob: float = DEFECT_PROB) -> tuple[list[str], torch.Tensor]:
    """n training pairs plus their mirror images -> (2n texts, images [2n,3,32,32] in [-1,1])."""
    rng = _rng(seed, "pool")
    texts, imgs = [], []
    with progress.task("toy pretrain: render", total=n, unit="image") as bar:
        for start in range(0, n, 512):
            t, im = world.sample_training_batch(rng, min(512, n - start), defect_prob=defect_prob)
            texts += t
            imgs.append(torch.from_numpy(im).permute(0, 3, 1, 2))
            bar.advance(len(t))
    x = torch.cat(imgs) * 2 - 1
    return texts + [flip_prompt(t) for t in texts], torch.cat([x, x.flip(-1)])


def _batches(n: int, batch_size: int, steps: int, gen: torch.Generator):
    """``steps`` index batches drawn epoch by epoch from seeded permutations of range(n)."""
    perm, pos = torch.randperm(n, generator=gen), 0
    for _ in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        yield perm[pos : pos + batch_size]
        pos += batch_size


def min_snr_weights(alphas_cumprod_t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample loss weights [b] for epsilon prediction: min(SNR_t, gamma) / SNR_t.

    SNR_t = ᾱ_t / (1 - ᾱ_t); Min-SNR-γ weighting (Hang et al. 2023, arXiv 2303.09556, Eq. 9 for
    the ε-parameterisation). Low-noise steps (SNR > γ) are down-weighted, the rest keep weight 1.
    """
    snr = alphas_cumprod_t / (1 - alphas_cumprod_t)
    return torch.clamp(snr, max=gamma) / snr


def _lr(step: int, total: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def _train_vae(
    vae: Any, images: torch.Tensor, steps: int, batch_size: int, seed: int, log: Callable[[str], None]
) -> dict[str, float]:
    gen_post = _gen(seed, "vae-posterior")
    opt = torch.optim.AdamW(vae.parameters(), lr=LR_VAE, weight_decay=0.0, foreach=True)
    vae.train()
    rec = kl = float("nan")
    with progress.task("toy pretrain: vae", total=steps, unit="step") as bar:
        for step, idx in enumerate(_batches(len(images), batch_size, steps, _gen(seed, "vae-order"))):
            for g in opt.param_groups:
                g["lr"] = _lr(step, steps, LR_VAE)
            x = images[idx]
            dist = vae.encode(x).latent_dist
            recon = vae.decode(dist.sample(generator=gen_post)).sample
            rec_loss = F.l1_loss(recon, x) + F.mse_loss(recon, x)
            kl_loss = dist.kl().mean()
            loss = rec_loss + KL_WEIGHT * kl_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            rec, kl = rec_loss.item(), kl_loss.item()
            bar.advance(1, rec=rec, kl=kl)
            if step == steps - 1:
                log(f"vae step {step}/{steps} rec {rec:.4f} kl {kl:.1f}")
    vae.eval()
    return {"vae_rec_loss": rec, "vae_kl": kl}


@torch.no_grad()
def _encode_pool(vae: Any, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior (mean, std) of every pool image, unscaled latents [n,4,8,8] each."""
    means, stds = [], []
    for start in range(0, len(images), 512):
        dist = vae.encode(images[start : start + 512]).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


class EMA:
    """Exponential moving average of parameters, decay ``min(decay, (1 + step) / (10 + step))`` (warm-up as in
    diffusers' EMAModel); ``copy_to`` writes the averages into the parameters (what is saved)."""

    def __init__(self, params: list[torch.Tensor], decay: float) -> None:
        self.params, self.decay = params, decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for s, p in zip(self.shadow, self.params, strict=True):
            s.lerp_(p.detach(), 1 - d)

    @torch.no_grad()
    def copy_to(self) -> None:
        for p, s in zip(self.params, self.shadow, strict=True):
            p.copy_(s)


def _train_unet(
    unet: Any, text_encoder: Any, tokenizer: Any, scheduler: Any, pool: tuple[list[str], torch.Tensor, torch.Tensor],
    scale: float, steps: int, batch_size: int, seed: int, log: Callable[[str], None],
    budget: tuple[float, float], ema_decay: float = 0.0,
) -> dict[str, float]:
    texts, lat_mean, lat_std = pool

    def tokenize(t: list[str]) -> torch.Tensor:
        return tokenizer(t, padding="max_length", max_length=tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids

    ids_all, ids_empty = tokenize(texts), tokenize([""])
    g_post, g_noise, g_t, g_drop = (_gen(seed, p) for p in ("unet-posterior", "noise", "timesteps", "dropout"))
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=LR_UNET, weight_decay=1e-2, foreach=True)
    ema = EMA(params, ema_decay) if ema_decay > 0 else None
    unet.train()
    text_encoder.train()
    alphas = scheduler.alphas_cumprod.float()
    smoothed = last = float("nan")
    t_loop = time.time()
    with progress.task("toy pretrain: unet", total=steps, unit="step") as bar:
        for step, idx in enumerate(_batches(len(texts), batch_size, steps, _gen(seed, "unet-order"))):
            for g in opt.param_groups:
                g["lr"] = _lr(step, steps, LR_UNET)
            drop = torch.rand(len(idx), generator=g_drop) < CAPTION_DROPOUT
            ids = torch.where(drop[:, None], ids_empty, ids_all[idx])
            z0 = (lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=g_post)) * scale
            t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=g_t)
            eps = torch.randn(z0.shape, generator=g_noise)
            a = alphas[t].view(-1, 1, 1, 1)
            zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
            hidden = text_encoder(ids).last_hidden_state
            err = (unet(zt, t, encoder_hidden_states=hidden).sample - eps).pow(2).mean(dim=(1, 2, 3))
            loss = (min_snr_weights(alphas[t], MIN_SNR_GAMMA) * err).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if ema is not None:
                ema.update(step)
            last = loss.item()
            smoothed = last if step == 0 else 0.98 * smoothed + 0.02 * last
            bar.advance(1, loss=last, smoothed=smoothed)
            if step == steps - 1:
                log(f"unet step {step}/{steps} loss {last:.4f} (smoothed {smoothed:.4f})")
            if step == 50:
                t_start, minutes = budget
                eta_s = (time.time() - t_start) + (time.time() - t_loop) / 51 * (steps - 51)
                if eta_s > minutes * 60:
                    log(f"warning: at this pace pretraining takes ~{eta_s / 60:.0f} min, over the {minutes} min budget")
    if ema is not None:
        ema.copy_to()
    unet.eval()
    text_encoder.eval()
    return {"unet_loss_last": last, "unet_loss_smoothed": smoothed}


def pretrain(
    out_dir: str | Path,
    *,
    seed: int = 0,
    budget_minutes: float = 40,
    steps_vae: int = STEPS_VAE,
    steps_unet: int = STEPS_UNET,
    batch_size: int = BATCH_SIZE,
    num_threads: int = NUM_THREADS,
    ema_decay: float = EMA_DECAY,
    defect_prob: float = DEFECT_PROB,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Pretrain the toy backbone into ``out_dir`` (the layout ``load_toy_bundle`` reads).

    The VAE and the UNet train with batches of ``batch_size``, on a
    pool of min(POOL_IMAGES, what the steps consume) rendered pairs and their mirror images.
    Step counts and ``num_threads`` fix the work, so the result is deterministic (bitwise for the
    same seed, thread count and software stack); ``budget_minutes`` only triggers a
    warning in the log when the measured pace would exceed it. Returns the report also written to
    ``out_dir/pretrain_report.json`` (steps, losses, seed, wall time, sha256 per weights file and
    ``sha256``, the combined digest that ``load_toy_bundle`` records as ``weights_sha256``).
    """
    out = Path(out_dir)
    batch_vae = batch_size
    n_pool = min(POOL_IMAGES, max(steps_vae * batch_vae, steps_unet * batch_size, 1))
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True)
    t0 = time.time()
    try:
        unet, vae, text_encoder, tokenizer, scheduler = build_toy_components(seed)
        log(f"toy pretrain seed {seed}: unet {num_params(unet):,} vae {num_params(vae):,} "
            f"text encoder {num_params(text_encoder):,} params; rendering {n_pool} images")
        texts, images = _make_pool(n_pool, seed, defect_prob)
        t_pool = time.time() - t0
        vae_stats = _train_vae(vae, images, steps_vae, batch_vae, seed, log)
        t_vae = time.time() - t0 - t_pool
        vae.requires_grad_(False)
        lat_mean, lat_std = _encode_pool(vae, images)
        del images
        z = lat_mean + lat_std * torch.randn(lat_mean.shape, generator=_gen(seed, "scale"))
        vae.register_to_config(scaling_factor=round(float(1.0 / z.std()), 5))
        log(f"vae latents: mean {float(z.mean()):.3f}, scaling_factor {vae.config.scaling_factor}")
        unet_stats = _train_unet(unet, text_encoder, tokenizer, scheduler, (texts, lat_mean, lat_std),
                                 float(vae.config.scaling_factor), steps_unet, batch_size, seed, log,
                                 (t0, budget_minutes), ema_decay)
        out.mkdir(parents=True, exist_ok=True)
        unet.save_pretrained(out / "unet", safe_serialization=True)
        vae.save_pretrained(out / "vae", safe_serialization=True)
        text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)
    wall = time.time() - t0
    shas = {k: hashlib.sha256((out / rel).read_bytes()).hexdigest() for k, rel in WEIGHT_FILES.items()}
    report = {
        "model_version": TOY_MODEL_VERSION,
        "seed": seed,
        "steps_vae": steps_vae,
        "steps_unet": steps_unet,
        "batch_size_vae": batch_vae,
        "batch_size_unet": batch_size,
        "pool_images": n_pool,
        "lr_vae": LR_VAE,
        "lr_unet": LR_UNET,
        "min_snr_gamma": MIN_SNR_GAMMA,
        "kl_weight": KL_WEIGHT,
        "caption_dropout": CAPTION_DROPOUT,
        "defect_prob": defect_prob,
        "ema_decay": ema_decay,
        "num_threads": num_threads,
        "torch_version": torch.__version__,
        "scaling_factor": float(vae.config.scaling_factor),
        **vae_stats,
        **unet_stats,
        "params": {"unet": num_params(unet), "vae": num_params(vae), "text_encoder": num_params(text_encoder)},
        "wall_time_s": {"render": round(t_pool, 1), "vae": round(t_vae, 1), "total": round(wall, 1)},
        "weights_sha256": shas,
        "sha256": combined_sha256(shas),
    }
    (out / "pretrain_report.json").write_text(json.dumps(report, indent=1) + "\n")
    log(f"toy pretrain done in {wall / 60:.1f} min -> {out}")
    return report


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Pretrain the toy backbone (deterministic, CPU).")
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps-vae", type=int, default=STEPS_VAE)
    ap.add_argument("--steps-unet", type=int, default=STEPS_UNET)
    ap.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    ap.add_argument("--num-threads", type=int, default=NUM_THREADS)
    ap.add_argument("--ema-decay", type=float, default=EMA_DECAY)
    ap.add_argument("--defect-prob", type=float, default=DEFECT_PROB)
    a = ap.parse_args(argv)
    pretrain(a.out_dir, seed=a.seed, steps_vae=a.steps_vae, steps_unet=a.steps_unet, batch_size=a.batch_size,
             num_threads=a.num_threads, ema_decay=a.ema_decay, defect_prob=a.defect_prob)


if __name__ == "__main__":
    main()
