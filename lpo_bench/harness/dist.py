"""Device, seeding and multi-process helpers: the one place that talks to ``accelerate`` and global RNGs.

Multi-GPU runs go through ``accelerate launch`` (or ``torchrun``); a plain CPU process has no accelerator.
Collectives are explicit sums/maxima so an update is the same whatever the number of processes.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any


def pick_device(device: str | None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Dist:
    """The process group of a run: ``accelerator`` is None for a single plain process."""

    accelerator: Any = None

    @property
    def world_size(self) -> int:
        return 1 if self.accelerator is None else int(self.accelerator.num_processes)

    @property
    def rank(self) -> int:
        return 0 if self.accelerator is None else int(self.accelerator.process_index)

    @property
    def is_main(self) -> bool:
        return self.accelerator is None or bool(self.accelerator.is_main_process)

    def device(self, default: str) -> str:
        return default if self.accelerator is None else str(self.accelerator.device)

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def sum_int(self, n_local: int) -> int:
        """``n_local`` summed over processes."""
        if self.world_size == 1:
            return n_local
        import torch

        t = torch.tensor([float(n_local)], device=self.accelerator.device)
        return int(self.accelerator.reduce(t, reduction="sum").item())

    def reduce_(self, tensors: list[Any], reduction: str = "sum") -> None:
        """In-place all-reduce ("sum" or "mean") of each tensor."""
        if self.world_size == 1:
            return
        for t in tensors:
            t.copy_(self.accelerator.reduce(t, reduction=reduction))

    def sum_grads_(self, params: list[Any], bucket_numel: int = 1 << 24) -> None:
        """All-reduce (sum) gradients as one process holding every rank's data would have them: a parameter with a
        gradient on any rank gets the sum (ranks without one add zeros); one with none anywhere keeps ``grad=None``
        (AdamW then skips it, as in one process). Sums flattened buckets of <= ``bucket_numel`` elements."""
        if self.world_size == 1:
            return
        import torch

        has = torch.tensor([float(p.grad is not None) for p in params], device=self.accelerator.device)
        self.reduce_([has], "sum")
        grads = []
        for p, n in zip(params, has.tolist(), strict=True):
            if n > 0:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                grads.append(p.grad)
        buckets: list[list[Any]] = []
        size = 0
        for g in grads:  # consecutive gradients of one dtype, up to bucket_numel elements per bucket
            if not buckets or g.dtype != buckets[-1][0].dtype or size + g.numel() > bucket_numel:
                buckets.append([])
                size = 0
            buckets[-1].append(g)
            size += g.numel()
        for bucket in buckets:
            flat = torch.cat([b.reshape(-1) for b in bucket])
            self.reduce_([flat], "sum")
            for b, part in zip(bucket, flat.split([b.numel() for b in bucket]), strict=True):
                b.copy_(part.view_as(b))

    def gather_objects(self, objs: list[Any]) -> list[Any]:
        if self.world_size == 1:
            return list(objs)
        from accelerate.utils import gather_object

        return gather_object(objs)

    def reduce_max_fn(self) -> Any:
        """For the ledger: element-wise max of per-phase seconds over processes (None on one process)."""
        if self.world_size == 1:
            return None
        import torch

        acc = self.accelerator

        def reduce_max(values: list[float]) -> list[float]:
            t = torch.tensor([values], dtype=torch.float64, device=acc.device)
            return acc.gather(t).max(dim=0).values.tolist()

        return reduce_max


def make_dist(device: str) -> Dist:
    """An accelerate.Accelerator when launched on several processes or a GPU; none for a plain CPU process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or device.startswith("cuda"):
        from accelerate import Accelerator

        return Dist(Accelerator(cpu=device == "cpu"))
    return Dist(None)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Global RNG states as tensors and plain values (loadable with ``torch.load(weights_only=True)``)."""
    import numpy as np
    import torch

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"python": [version, list(internal), gauss_next],
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
