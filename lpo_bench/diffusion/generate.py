"""Image generation with one generator per image, so batch size and sharding cannot change an image.

Seeds: ``sample_seed(seed_base, prompt_idx, image_idx)`` is a stable hash; each image draws its
initial noise (and, for eta > 0, its per-step noise) from its own ``torch.Generator``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lpo_bench.diffusion import ddim
from lpo_bench.models.bundle import ModelBundle


@torch.inference_mode()
def generate_latents(
    bundle: ModelBundle,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    num_inference_steps: int = 20,
    guidance_scale: float = 5.0,
    eta: float = 0.0,
    batch_size: int = 64,
    unet: Any = None,
) -> torch.Tensor:
    """DDIM sampling; prompts[i] with seeds[i] -> latents [n, c, h, w] (CPU float32)."""
    assert len(prompts) == len(seeds)
    out = []
    sched = bundle.ddim_scheduler(num_inference_steps)
    shape = bundle.latent_shape
    for s in range(0, len(prompts), batch_size):
        ps, ss = list(prompts[s : s + batch_size]), list(seeds[s : s + batch_size])
        gens = [torch.Generator("cpu").manual_seed(int(x)) for x in ss]
        x = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(bundle.device, bundle.dtype)
        cond = bundle.encode_prompts(ps)
        uncond = bundle.encode_negative(len(ps))
        for t in sched.timesteps.tolist():
            eps = bundle.guided_eps(x, t, cond, uncond, guidance_scale, unet=unet)
            std = ddim.ddim_step_std(sched, t, num_inference_steps, eta) if eta > 0 else 0.0
            x_next = ddim.ddim_step_mean(sched, x, eps, t, num_inference_steps, std)
            if std > 0:
                z = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(x)
                x_next = x_next + std * z
            x = x_next
        out.append(x.float().cpu())
    return torch.cat(out) if out else torch.empty(0, *shape)


@torch.inference_mode()
def generate_images(
    bundle: ModelBundle,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    num_inference_steps: int = 20,
    guidance_scale: float = 5.0,
    eta: float = 0.0,
    batch_size: int = 64,
    unet: Any = None,
) -> torch.Tensor:
    """As generate_latents, decoded: images [n, 3, H, W] in [0, 1] (CPU float32)."""
    lat = generate_latents(
        bundle, prompts, seeds, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
        eta=eta, batch_size=batch_size, unet=unet,
    )
    imgs = [bundle.decode(lat[s : s + batch_size].to(bundle.device)).cpu() for s in range(0, len(lat), batch_size)]
    return torch.cat(imgs) if imgs else torch.empty(0, 3, bundle.resolution, bundle.resolution)
