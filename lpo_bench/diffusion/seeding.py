"""Deterministic seeds by construction: one generator per image and one per purpose.

``sample_seed(seed_base, prompt_idx, image_idx)`` is a stable sha256 hash, so batch size and sharding
cannot change an image; ``purpose_generator`` gives each purpose ("noise", "order", ...) its own stream.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch


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
