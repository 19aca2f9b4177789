"""What a method folder tells the harness about itself: :class:`MethodSpec` and :class:`StepRewardModelSpec`.

Every method-specific fact the core needs lives here, as data: the harness, ``bench``, ``demo``,
``compare`` and ``step-accuracy`` read specs through ``lpo_bench.registry`` and never name a method.
Targets are ``"module:attr"`` strings, imported only when used (importing a spec imports no torch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# The inputs a method (or its reward-model stage) can read; each is a typed field of the run identity.
INPUT_KINDS = ("pairs", "prompts", "reward_model", "pair_scores")


@dataclass(frozen=True)
class MethodSpec:
    """One method, as the harness sees it (AlgoPerf's submission spec).

    ``method``: ``"module:Class"`` implementing :class:`lpo_bench.harness.method.Method`.
    ``config``: ``"module:Class"`` of its frozen config dataclass; presets are ``configs/<backbone>.toml``
    next to the config's module.
    ``role``: "proposed" methods are the reference of ``compare``'s speed-up tables.
    ``reward_stage``: a name in ``registry.STEP_REWARD_MODELS`` trained (or passed with ``--reward-model``)
    before the method's own setup, or None.
    ``inputs``: what the run needs besides the backbone ("pairs": preference pairs, for the method or its
    reward stage; "prompts": the backbone's training prompts).
    ``quick`` / ``quick_reward_stage``: config overrides for ``demo --quick`` (seconds on a CPU).
    ``bench``: config overrides for ``bench``'s training-step measurement (thresholds 0, enough data).
    ``budget_overrides``: config overrides that make a run longer than any budget it is given, so that the budget
    (``--budget-flops`` / ``--budget-gpu-h``), not the preset's length, ends it (the demo's equal-budget curves).
    ``bench_components``: ``"module:fn"``, ``fn(bundle, setting, state) -> iterator of BenchComponent``: the
    work of one sampling step beyond the shared denoising step, which leaves the K candidates in
    ``state["cands"]`` (None: the method has no sampling step).
    """

    name: str
    method: str
    config: str
    role: Literal["proposed", "baseline"]
    summary: str
    reward_stage: str | None = None
    inputs: frozenset[str] = frozenset()
    quick: Mapping[str, object] = field(default_factory=dict)
    quick_reward_stage: Mapping[str, object] = field(default_factory=dict)
    bench: Mapping[str, object] = field(default_factory=dict)
    bench_components: str | None = None
    budget_overrides: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.inputs) - set(INPUT_KINDS)
        if unknown:
            raise ValueError(f"MethodSpec {self.name}: unknown inputs {sorted(unknown)}; known: {INPUT_KINDS}")


@dataclass(frozen=True)
class StepRewardModelSpec:
    """A step-level (noisy-input) reward model: trained by a method's reward stage, measured by step-accuracy.

    ``model``: ``"module:Class"`` with ``load(path, bundle, device=...)``, ``score_noisy(x_t, t, prompts)``,
    ``save(dir)`` and ``input_mode`` ("noisy_latent" or "x0_pred_decoded").
    ``trainer``: ``"module:Class"`` implementing :class:`lpo_bench.harness.method.RewardTrainer`.
    ``config``: ``"module:Class"`` of the trainer's config; presets ``configs/<name>_<backbone>.toml``.
    ``marker_file``: the file that identifies a saved model directory of this kind.
    ``random_model``: ``"module:fn"``, ``fn(bundle, *, full_size, seed) -> model`` with random weights, for
    ``bench`` (costs do not depend on the weights).
    ``flop_probes``: ``"module:fn"``, ``fn(bundle, *, model_dir, cfg, full_size, device) -> iterable of FlopProbe``:
    the work behind the model's ledger counters (``reward_fwd``, ``reward_fwdbwd``, ...) for pricing them in FLOPs
    (``lpo_bench.harness.flops``). ``model_dir``: the run's trained model (None: random weights at ``bundle``'s
    size, the released models' size when ``full_size``); ``cfg``: the trainer config (which parts train; None:
    its defaults); ``device``: where the model is built or loaded ("meta": shapes only; None: the bundle's). None:
    those counters stay unpriced.
    """

    name: str
    model: str
    trainer: str
    config: str
    marker_file: str
    random_model: str
    summary: str
    inputs: frozenset[str] = frozenset({"pairs"})
    flop_probes: str | None = None


@dataclass(frozen=True)
class FlopProbe:
    """The work of ``samples`` counts of ledger counter ``counter`` (one count = one sample through a component),
    for measuring its FLOPs per call (``lpo_bench.harness.flops``).

    ``call()`` does that work once, as the run does it (a ``*_fwdbwd`` counter runs the backward too);
    ``how``: what it runs, in words; ``net_of``: {other counter: its calls per sample of this one}: work inside
    ``call`` that the run also counts under those counters, subtracted so that no work is priced twice (FLOPs per
    call = FLOPs of ``call`` / ``samples`` - sum of calls x the other counter's FLOPs per call).
    """

    counter: str
    call: Callable[[], Any]
    how: str
    samples: int = 1
    net_of: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SamplingStepSetting:
    """Where ``bench`` measures one sampling step: K candidates around one CFG denoising step of one prompt,
    from the parent timestep ``timestep`` to ``child_timestep``. ``full_size``: build reward models at the size
    of the released ones (random weights). ``keep_models``: keep them alive after the generator ends (for
    interleaved timing rounds) instead of freeing each after its component."""

    prompt: str
    num_candidates: int
    guidance_scale: float
    num_inference_steps: int
    timestep: int
    child_timestep: int
    full_size: bool
    keep_models: bool = False


@dataclass
class BenchComponent:
    """One timed part of a sampling step: ``call()`` does the work (reading and writing the shared ``state``),
    ``counts`` are its unit evaluations (e.g. {"unet_fwd": 8}), ``labels`` describe the models it uses."""

    name: str
    call: Callable[[], Any]
    counts: Mapping[str, int]
    labels: Mapping[str, Any] = field(default_factory=dict)
