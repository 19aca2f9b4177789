"""Image generation with one generator per image, so batch size and sharding cannot change an image.

Seeds: ``sample_seed(seed_base, prompt_idx, image_idx)`` is a stable hash; each image draws its
initial noise (and, for eta > 0, its per-step noise) from its own ``torch.Generator``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch

from lpo_bench import steps
from lpo_bench.bundle import ModelBundle


def sample_seed(seed_base: int, prompt_idx: int | str, image_idx: int) -> int:
    """A 63-bit seed derived from (seed_base, prompt_idx, image_idx) by sha256 (stable across runs).

    ``prompt_idx`` may be a suite's stable string prompt id ("color/0007")."""
    h = hashlib.sha256(f"{seed_base}/{prompt_idx}/{image_idx}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def purpose_generator(seed: int, purpose: str, *extra: int) -> torch.Generator:
    """A CPU generator for one purpose ("data", "noise", "timesteps", ...), derived from the seed."""
    h = hashlib.sha256(f"{seed}/{purpose}/{'/'.join(map(str, extra))}".encode()).digest()
    return torch.Generator("cpu").manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))


def purpose_seed(seed: int, purpose: str) -> int:
    h = hashlib.sha256(f"{seed}/{purpose}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


class seeded_init:  # noqa: N801 - used as a context manager
    """Run weight initialisation under a purpose-specific seed without touching the global RNG stream.

    Whatever ran before (a reward-model stage, a resumed session that skipped it) cannot change the
    initial weights: deterministic by construction.
    """

    def __init__(self, seed: int, purpose: str) -> None:
        self.seed = purpose_seed(seed, purpose)
        self._fork: Any = None

    def __enter__(self) -> None:
        self._fork = torch.random.fork_rng(devices=[])
        self._fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: Any) -> None:
        self._fork.__exit__(*exc)


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
            std = steps.ddim_step_std(sched, t, num_inference_steps, eta) if eta > 0 else 0.0
            x_next = steps.ddim_step_mean(sched, x, eps, t, num_inference_steps, std)
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
