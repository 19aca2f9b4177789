"""The Method interface: the harness owns the loop, the clock and the records; a method owns its step.

A method is a class registered in ``registry.METHODS`` with::

    name: ClassVar[str]; version: ClassVar[str]; config_cls: ClassVar[type]
    setup(ctx)            build optimiser, reference, reward model (RM stage under Phase.RM_TRAIN,
                          method-specific preprocessing under Phase.PREP)
    train_step(step)      exactly one optimiser update; wraps its work in ledger phases
                          (SAMPLE / SCORE / UPDATE); returns scalar logs
    is_done(step)         whether training is complete (epochs or update count reached)
    state_dict() / load_state_dict(state)
                          everything needed to resume bit-exactly (weights, optimiser, LR schedule,
                          RNG states, data position)
    policy_unet()         the UNet to sample from for evaluation (LoRA active)
    export(out_dir)       writes the trained weights (diffusers LoRA, optional merged UNet)

Methods never read clocks: only ``ctx.ledger.phase(...)`` and ``ctx.ledger.count(...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from lpo_bench.bundle import ModelBundle
from lpo_bench.ledger import Ledger


@dataclass
class TrainContext:
    """What the runner hands a method."""

    bundle: ModelBundle
    cfg: Any
    seed: int
    ledger: Ledger
    run_dir: Path
    backbone: str
    accelerator: Any = None
    data_dir: Path | None = None
    weights_dir: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)
    log: Callable[[str], None] = print

    @property
    def device(self) -> Any:
        return self.bundle.device

    @property
    def is_main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    @property
    def world_size(self) -> int:
        return 1 if self.accelerator is None else int(self.accelerator.num_processes)

    @property
    def rank(self) -> int:
        return 0 if self.accelerator is None else int(self.accelerator.process_index)


class Method(Protocol):
    name: ClassVar[str]
    version: ClassVar[str]
    config_cls: ClassVar[type]

    def setup(self, ctx: TrainContext) -> None: ...

    def train_step(self, step: int) -> dict[str, float]: ...

    def is_done(self, step: int) -> bool: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def policy_unet(self) -> Any: ...

    def export(self, out_dir: Path) -> Path: ...
