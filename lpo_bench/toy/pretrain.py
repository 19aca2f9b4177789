"""Deterministic CPU pretraining of the toy backbone on the toy world.

Stage 1 trains the VAE on rendered images (L1 + MSE reconstruction, tiny KL) and sets
``scaling_factor`` to 1/std of the latents. Stage 2 freezes the VAE and trains the text encoder
and UNet jointly with epsilon-prediction MSE over t ~ U{0..999}, dropping 10% of captions to ""
so classifier-free guidance works. The training images come from
``world.sample_training_example`` (a share of them defective), so the model is good but imperfect.

Determinism: step counts (not wall time) end each stage; fixed thread count, deterministic
algorithms, and one generator per purpose (data, noise, timesteps, dropout, posterior samples).
Same seed -> bitwise identical weights on the same software stack.

Usage: ``python -m lpo_bench.toy.pretrain OUT_DIR [--seed 0]`` (defaults are what ships).
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

from lpo_bench.toy import world
from lpo_bench.toy.models import (
    TOY_MODEL_VERSION,
    WEIGHT_FILES,
    build_toy_components,
    num_params,
)

STEPS_VAE = 700
STEPS_UNET = 1800
BATCH_VAE = 64
LR_VAE = 2e-3
LR_UNET = 1e-3
KL_WEIGHT = 1e-6
CAPTION_DROPOUT = 0.1
DEFECT_PROB = 0.3
NUM_THREADS = 2
SCALE_SAMPLES = 1024  # images used to measure the latent std


def _rng(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng([seed, *purpose.encode()])


def _gen(seed: int, purpose: str) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(int(_rng(seed, purpose).integers(0, 2**62)))


def _batch(rng: np.random.Generator, n: int) -> tuple[list[str], torch.Tensor]:
    """n (prompt, image) training pairs -> (texts, images [n,3,32,32] in [-1,1])."""
    texts, imgs = [], []
    for _ in range(n):
        text, img = world.sample_training_example(rng, defect_prob=DEFECT_PROB)
        texts.append(text)
        imgs.append(img)
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float()
    return texts, x * 2 - 1


def _lr(step: int, total: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def _train_vae(vae: Any, steps: int, seed: int, log: Callable[[str], None]) -> dict[str, float]:
    rng, gen = _rng(seed, "vae-data"), _gen(seed, "vae-posterior")
    opt = torch.optim.AdamW(vae.parameters(), lr=LR_VAE, weight_decay=0.0)
    vae.train()
    rec = kl = float("nan")
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, LR_VAE)
        _, x = _batch(rng, BATCH_VAE)
        dist = vae.encode(x).latent_dist
        recon = vae.decode(dist.sample(generator=gen)).sample
        rec_loss = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        kl_loss = dist.kl().mean()
        loss = rec_loss + KL_WEIGHT * kl_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rec, kl = float(rec_loss), float(kl_loss)
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} rec {rec:.4f} kl {kl:.1f}")
    vae.eval()
    return {"vae_rec_loss": rec, "vae_kl": kl}


@torch.no_grad()
def _measure_scale(vae: Any, seed: int) -> tuple[float, float]:
    """(1/std, mean) of posterior-sampled latents of fresh images."""
    rng, gen = _rng(seed, "scale-data"), _gen(seed, "scale-posterior")
    lat = []
    for _ in range(SCALE_SAMPLES // 128):
        _, x = _batch(rng, 128)
        lat.append(vae.encode(x).latent_dist.sample(generator=gen))
    z = torch.cat(lat)
    return float(1.0 / z.std()), float(z.mean())


def _train_unet(
    unet: Any, vae: Any, text_encoder: Any, tokenizer: Any, scheduler: Any,
    steps: int, batch_size: int, seed: int, log: Callable[[str], None],
) -> dict[str, float]:
    rng = _rng(seed, "unet-data")
    g_post, g_noise, g_t, g_drop = (_gen(seed, p) for p in ("unet-posterior", "noise", "timesteps", "dropout"))
    scale = float(vae.config.scaling_factor)
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=LR_UNET, weight_decay=1e-2)
    unet.train()
    text_encoder.train()
    alphas = scheduler.alphas_cumprod.float()
    ema = 0.0
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, LR_UNET)
        texts, x = _batch(rng, batch_size)
        drop = torch.rand(batch_size, generator=g_drop) < CAPTION_DROPOUT
        texts = ["" if d else s for s, d in zip(texts, drop.tolist())]
        with torch.no_grad():
            z0 = vae.encode(x).latent_dist.sample(generator=g_post) * scale
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        hidden = text_encoder(ids).last_hidden_state
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=g_t)
        eps = torch.randn(z0.shape, generator=g_noise)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        pred = unet(zt, t, encoder_hidden_states=hidden).sample
        loss = F.mse_loss(pred, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema = float(loss) if step == 0 else 0.98 * ema + 0.02 * float(loss)
        if step % 100 == 0 or step == steps - 1:
            log(f"unet step {step}/{steps} loss {float(loss):.4f} (smoothed {ema:.4f})")
    unet.eval()
    text_encoder.eval()
    return {"unet_loss_last": float(loss), "unet_loss_smoothed": ema}


def pretrain(
    out_dir: str | Path,
    *,
    seed: int = 0,
    budget_minutes: float = 18,
    steps_vae: int = STEPS_VAE,
    steps_unet: int = STEPS_UNET,
    batch_size: int = 128,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Pretrain the toy backbone into ``out_dir`` (the layout ``load_toy_bundle`` reads).

    Step counts fix the work, so the result is deterministic; ``budget_minutes`` only triggers a
    warning in the log when the measured pace would exceed it. Returns the report also written to
    ``out_dir/pretrain_report.json`` (steps, losses, seed, wall time, sha256 per weights file).
    """
    out = Path(out_dir)
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(NUM_THREADS)
    torch.use_deterministic_algorithms(True)
    t0 = time.time()
    try:
        unet, vae, text_encoder, tokenizer, scheduler = build_toy_components(seed)
        log(f"toy pretrain seed {seed}: unet {num_params(unet):,} vae {num_params(vae):,} "
            f"text encoder {num_params(text_encoder):,} params")
        vae_stats = _train_vae(vae, steps_vae, seed, log)
        t_vae = time.time() - t0
        if steps_vae and t_vae / steps_vae * (steps_vae + 2 * steps_unet) > budget_minutes * 60:
            log(f"warning: at this pace pretraining will take longer than {budget_minutes} min")
        inv_std, mean = _measure_scale(vae, seed)
        vae.register_to_config(scaling_factor=round(inv_std, 5))
        log(f"vae latents: mean {mean:.3f}, scaling_factor {vae.config.scaling_factor}")
        vae.requires_grad_(False)
        unet_stats = _train_unet(unet, vae, text_encoder, tokenizer, scheduler, steps_unet, batch_size, seed, log)
        out.mkdir(parents=True, exist_ok=True)
        unet.save_pretrained(out / "unet", safe_serialization=True)
        vae.save_pretrained(out / "vae", safe_serialization=True)
        text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)
    wall = time.time() - t0
    report = {
        "model_version": TOY_MODEL_VERSION,
        "seed": seed,
        "steps_vae": steps_vae,
        "steps_unet": steps_unet,
        "batch_size_vae": BATCH_VAE,
        "batch_size_unet": batch_size,
        "lr_vae": LR_VAE,
        "lr_unet": LR_UNET,
        "caption_dropout": CAPTION_DROPOUT,
        "defect_prob": DEFECT_PROB,
        "num_threads": NUM_THREADS,
        "torch_version": torch.__version__,
        "scaling_factor": float(vae.config.scaling_factor),
        "latent_mean": mean,
        **vae_stats,
        **unet_stats,
        "params": {"unet": num_params(unet), "vae": num_params(vae), "text_encoder": num_params(text_encoder)},
        "wall_time_s": round(wall, 1),
        "weights_sha256": {rel: hashlib.sha256((out / rel).read_bytes()).hexdigest() for rel in WEIGHT_FILES.values()},
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
    ap.add_argument("--batch-size", type=int, default=128)
    a = ap.parse_args(argv)
    pretrain(a.out_dir, seed=a.seed, steps_vae=a.steps_vae, steps_unet=a.steps_unet, batch_size=a.batch_size)


if __name__ == "__main__":
    main()
