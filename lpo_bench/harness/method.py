"""The contract between the harness and a method (AlgoPerf's spec): the harness owns the loop, the clock and
the records; a method owns one optimiser update.

A method (``MethodSpec.method``) implements :class:`Method`; a step reward model's trainer
(``StepRewardModelSpec.trainer``) implements :class:`RewardTrainer`. Both are driven by the one loop in
``lpo_bench.harness.loop``. Methods never read clocks: they tag their work with ``ctx.ledger.phase(...)``
and count it with ``ctx.ledger.count(...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from lpo_bench.harness.dist import Dist
from lpo_bench.harness.precision import Precision
from lpo_bench.ledger import Ledger

C = TypeVar("C")


@dataclass(frozen=True)
class RunInputs:
    """The data a run reads besides the backbone; every field is part of the run identity.

    ``pairs``: preference pairs (a toy pairs directory or a local Pick-a-Pic copy); identified by
    ``pairs_sha256``, a manifest hash (shard names, sizes, parquet footers), so a moved copy keeps its identity.
    ``reward_model``: a trained step reward model to use instead of training one; identified by its files' hash.
    ``reward_stage_overrides``: config overrides of the reward-model stage (``--rm-set``).
    ``pair_scores``: a per-pair score table (``lpo-bench score-pairs``) joined onto the pairs' metadata for a
    reward model's data filter; identified by the manifest hash of its shards.
    """

    pairs: Path | None = None
    pairs_sha256: str | None = None
    reward_model: Path | None = None
    reward_model_sha256: str | None = None
    reward_stage_overrides: dict[str, Any] = field(default_factory=dict)
    pair_scores: Path | None = None
    pair_scores_sha256: str | None = None

    def identity(self) -> dict[str, Any]:
        """The hashed part: content identities, never paths."""
        return {"pairs": self.pairs_sha256, "reward_model": self.reward_model_sha256,
                "reward_stage_overrides": {k: str(v) for k, v in sorted(self.reward_stage_overrides.items())},
                **({"pair_scores": self.pair_scores_sha256} if self.pair_scores_sha256 else {})}


class PromptSource(Protocol):
    """The training prompts of a run (the toy train split, the LPO 4k prompts, or a test's list)."""

    def training_prompts(self, limit: int | None = None) -> list[str]: ...


@dataclass
class TrainContext(Generic[C]):
    """What the harness hands a method (or a reward trainer) at setup.

    ``precision``: the run's :class:`~lpo_bench.harness.precision.Precision` (fp32 unless ``--precision``): the
    harness autocasts each update; a method calls ``ctx.precision.backward(loss)`` and
    ``ctx.precision.clip_and_step(opt, params, max_norm)`` (needed for fp16's loss scaling) and
    ``ctx.precision.cast_frozen(module)`` on frozen models it owns. ``gradient_checkpointing``: ``--grad-ckpt``,
    already applied to ``bundle.unet`` by the harness (for models the method builds itself).
    """

    bundle: Any  # lpo_bench.models.bundle.ModelBundle
    cfg: C
    seed: int
    ledger: Ledger
    run_dir: Path
    inputs: RunInputs
    prompts: PromptSource
    dist: Dist
    weights_dir: Path | None = None
    reward_model_dir: Path | None = None  # set by the harness when the spec has a reward stage
    log: Callable[[str], None] = print
    precision: Precision = field(default_factory=Precision)
    gradient_checkpointing: bool = False

    @property
    def device(self) -> Any:
        return self.bundle.device

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def world_size(self) -> int:
        return self.dist.world_size

    @property
    def rank(self) -> int:
        return self.dist.rank


class Trainable(Protocol):
    """What the loop drives: one update per call, resumable state."""

    def train_step(self, step: int) -> dict[str, float]: ...

    def is_done(self, step: int) -> bool: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Method(Trainable, Protocol):
    """``setup`` builds optimiser, reference and data (PREP for preprocessing); ``train_step`` is exactly one
    optimiser update wrapped in SAMPLE / SCORE / UPDATE phases; ``state_dict`` holds tensors, numbers, strings
    and containers only (checkpoints load with ``weights_only=True``); ``policy_unet`` is the denoiser to sample
    from for evaluation; ``export`` writes the trained weights (a diffusers LoRA or a full UNet).

    Optional: ``pending_updates`` (updates the method can still run on data it already sampled; ``bench`` times one
    sampling round and the updates it feeds) and ``total_updates()`` (None when unknown in advance; progress bars
    use it for their ETA)."""

    version: ClassVar[str]

    def setup(self, ctx: TrainContext[Any]) -> None: ...

    def policy_unet(self) -> Any: ...

    def export(self, out_dir: Path) -> Path: ...


class RewardTrainer(Trainable, Protocol):
    """A step reward model's trainer: all its time is RM_TRAIN. ``validate`` returns measurement rows
    (kind "rm_val_acc", one per timestep); ``save`` writes the model in its documented layout."""

    def setup(self, ctx: TrainContext[Any]) -> None: ...

    def validate(self) -> list[dict[str, Any]]: ...

    def save(self, out_dir: Path) -> Path: ...
