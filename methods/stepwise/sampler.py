"""Online step-level preference machinery shared by LPO and SPO (RockeyCoss/SPO@27a8642
spo_training_and_inference/; Kwai-Kolors/LPO@9c2e8b8 lpo/ is a light fork of it).

``sample_step_pairs`` runs one sampling round: eta-DDIM with CFG from x_T; at every trained step it
draws K candidates x_{t'} from the same x_t (shared mean, independent noise), scores them with a
method-supplied scorer, keeps the (argmax, argmin) pair when the softmax-probability gap exceeds
the threshold, and continues from a uniformly random candidate (not the winner). Every random draw of a
prompt's trajectory (x_T, step noise, candidate noise, continuation choice) comes from that prompt's own
generator, so a prompt yields the same pairs whichever process samples it and whatever batch it is in (up to
the float differences of batched UNet calls).

``step_pair_logps`` computes policy and reference log-probabilities of a batch of stored pairs with
ONE policy and ONE reference guided forward per pair (winner and loser share x_t, t and c; the
official code runs each twice).

``gather_round_pairs`` makes the round's pairs of all processes one global list, identical on every rank and
independent of the number of processes: canonical order (``canonical_order``), then one shuffle.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lpo_bench.diffusion import ddim
from lpo_bench.ledger import Ledger, Phase
from lpo_bench.models.bundle import ModelBundle, PromptEmbeds

# scorer(candidates [K*B,c,h,w], t_parent, t_child, embeds repeated K times) -> (scores [K*B], eps or None)
# eps, when given, is the guided epsilon of each candidate at t_child and is reused for the next step.
StepScorer = Callable[[torch.Tensor, int, int, PromptEmbeds, PromptEmbeds], tuple[torch.Tensor, "torch.Tensor | None"]]


@dataclass
class StepPairs:
    """Valid step pairs of one round. x_*: [N,c,h,w]; timesteps, prompt_idx: [N]; scores: [N]."""

    x_t: torch.Tensor
    x_w: torch.Tensor
    x_l: torch.Tensor
    timesteps: torch.Tensor
    prompt_idx: torch.Tensor
    score_w: torch.Tensor
    score_l: torch.Tensor

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])

    def index(self, idx: torch.Tensor) -> StepPairs:
        return StepPairs(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    @staticmethod
    def cat(parts: list[StepPairs]) -> StepPairs:
        return StepPairs(*(torch.cat([getattr(p, f) for p in parts]) for f in StepPairs.__dataclass_fields__))

    @staticmethod
    def empty(shape: tuple[int, ...]) -> StepPairs:
        z = torch.empty(0, *shape)
        e = torch.empty(0, dtype=torch.long)
        return StepPairs(z, z.clone(), z.clone(), e, e.clone(), torch.empty(0), torch.empty(0))


@dataclass(frozen=True)
class RoundSettings:
    num_inference_steps: int = 20
    guidance_scale: float = 5.0
    eta: float = 1.0
    num_candidates: int = 4
    max_train_timestep: int = 1000  # SPO trains only t <= 751; LPO all steps
    min_train_timestep: int = 0


@dataclass
class GapStats:
    """Per trained timestep, summed over the rounds it was passed to: steps scored, steps that passed the
    threshold, and the best gap p_w - p_l seen (what a run that forms no pair reports)."""

    scored: dict[int, int] = field(default_factory=dict)
    passed: dict[int, int] = field(default_factory=dict)
    best: dict[int, float] = field(default_factory=dict)

    def add(self, t: int, gap: torch.Tensor, ok: torch.Tensor) -> None:
        self.scored[t] = self.scored.get(t, 0) + len(gap)
        self.passed[t] = self.passed.get(t, 0) + int(ok.sum())
        self.best[t] = max(self.best.get(t, -1.0), float(gap.max()))

    @staticmethod
    def merge(parts: Sequence[GapStats]) -> GapStats:
        """The stats of several processes as one: counts summed, best gaps maxed, per timestep."""
        out = GapStats()
        for g in parts:
            for t, n in g.scored.items():
                out.scored[t] = out.scored.get(t, 0) + n
                out.passed[t] = out.passed.get(t, 0) + g.passed.get(t, 0)
                out.best[t] = max(out.best.get(t, -1.0), g.best[t])
        return out


# noise bands of the round logs: (lowest t, highest t, log name)
BANDS = ((751, 1000, "gt751"), (501, 750, "501_750"), (251, 500, "251_500"), (0, 250, "lt251"))


@dataclass
class RoundStats:
    """Counts of one sampling round, summable over processes (``vector`` / ``from_vector``): per noise band of
    ``BANDS`` the steps scored and the steps that formed a pair, and the count, sum and sum of squares of all
    candidates' scores. ``logs`` gives the round's log fields."""

    scored: list[float] = field(default_factory=lambda: [0.0] * len(BANDS))
    passed: list[float] = field(default_factory=lambda: [0.0] * len(BANDS))
    score_n: float = 0.0
    score_sum: float = 0.0
    score_sq: float = 0.0

    def add(self, t: int, scores: torch.Tensor, ok: torch.Tensor) -> None:
        """One scored step at timestep ``t``: ``scores`` [K,B] of the candidates, ``ok`` [B] pairs formed."""
        band = next(i for i, (lo, hi, _) in enumerate(BANDS) if lo <= t <= hi)
        self.scored[band] += float(ok.numel())
        self.passed[band] += float(ok.sum())
        s = scores.double()
        self.score_n += float(s.numel())
        self.score_sum += float(s.sum())
        self.score_sq += float((s * s).sum())

    def vector(self) -> torch.Tensor:
        """float64 [2 * len(BANDS) + 3]: scored, passed, score count, sum, sum of squares."""
        return torch.tensor([*self.scored, *self.passed, self.score_n, self.score_sum, self.score_sq],
                            dtype=torch.float64)

    @staticmethod
    def from_vector(v: torch.Tensor) -> RoundStats:
        x, nb = v.tolist(), len(BANDS)
        return RoundStats(x[:nb], x[nb : 2 * nb], *x[2 * nb :])

    def logs(self) -> dict[str, float]:
        """pairs_valid, pairs_scored; valid_frac_<band> = passed / scored in the bands that were scored;
        score_mean and score_std (sample std, n - 1) over every candidate score."""
        logs = {"pairs_valid": sum(self.passed), "pairs_scored": sum(self.scored)}
        for (_, _, name), n, ok in zip(BANDS, self.scored, self.passed):
            if n:
                logs[f"valid_frac_{name}"] = ok / n
        if self.score_n:
            mean = self.score_sum / self.score_n
            var = (self.score_sq - self.score_n * mean * mean) / (self.score_n - 1) if self.score_n > 1 else 0.0
            logs["score_mean"], logs["score_std"] = mean, math.sqrt(max(var, 0.0))
        return logs


def prob_gap(score_w: torch.Tensor, score_l: torch.Tensor) -> torch.Tensor:
    """p_w - p_l of softmax([s_w, s_l]) = tanh((s_w - s_l) / 2), the official pair-validity gap."""
    return torch.tanh((score_w - score_l) / 2)


def row_randn(generators: Sequence[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal [len(generators), *shape]: row i drawn from ``generators[i]`` alone, so a row's values do
    not depend on the other rows of the batch (CPU float32)."""
    return torch.stack([torch.randn(*shape, generator=g) for g in generators])


def row_randint(generators: Sequence[torch.Generator], high: int) -> torch.Tensor:
    """[len(generators)] integers uniform on {0, ..., high - 1}: entry i drawn from ``generators[i]`` alone."""
    return torch.cat([torch.randint(0, high, (1,), generator=g) for g in generators])


@torch.no_grad()
def sample_step_pairs(
    bundle: ModelBundle,
    unet: Any,
    cond: PromptEmbeds,
    uncond: PromptEmbeds,
    *,
    settings: RoundSettings,
    scorer: StepScorer,
    threshold: Callable[[int], float],
    generators: Sequence[torch.Generator],
    ledger: Ledger,
    gaps: GapStats | None = None,
) -> tuple[StepPairs, RoundStats]:
    """One round over B prompts, ``generators[i]`` drawing all of prompt i's randomness (x_T, step noise, its K
    candidates' noise, its continuation choice, in that order along the trajectory). Returns the valid pairs
    (``prompt_idx``: row in this batch) and the round's counts; ``gaps``, when given, also collects each trained
    timestep's scored / passed counts and best gap."""
    n = settings.num_inference_steps
    k = settings.num_candidates
    sched = bundle.ddim_scheduler(n)
    b = len(cond)
    if len(generators) != b:
        raise ValueError(f"one generator per prompt: got {len(generators)} for {b} prompts")
    shape = bundle.latent_shape
    dev, dt = bundle.device, bundle.dtype

    def randn(*s: int) -> torch.Tensor:  # [B, *s], row i from prompt i's generator
        return row_randn(generators, s).to(dev, dt)

    parts: list[StepPairs] = []
    stats = RoundStats()
    eps_next: torch.Tensor | None = None
    cond_k, uncond_k = cond.repeat(k), uncond.repeat(k)
    with ledger.phase(Phase.SAMPLE):
        x = randn(*shape)
    for t in sched.timesteps.tolist():
        t_child = max(ddim.prev_timestep(sched, t, n), 0)
        with ledger.phase(Phase.SAMPLE):
            if eps_next is None:
                eps = bundle.guided_eps(x, t, cond, uncond, settings.guidance_scale, unet=unet)
                ledger.count("unet_fwd", b * (2 if settings.guidance_scale != 1 else 1))
            else:
                eps = eps_next
            eps_next = None
            std = ddim.ddim_step_std(sched, t, n, settings.eta)
            mu = ddim.ddim_step_mean(sched, x, eps, t, n, std)
        trained = settings.min_train_timestep <= t <= settings.max_train_timestep
        if not trained or k < 2:
            with ledger.phase(Phase.SAMPLE):
                x = mu + std * randn(*shape)
            continue
        with ledger.phase(Phase.SAMPLE):
            cands = mu.unsqueeze(0) + std * randn(k, *shape).transpose(0, 1)  # [K,B,...] shared mean, own noise
        flat = cands.reshape(k * b, *shape)  # k-major, as the official code
        scores, eps_c = scorer(flat, t, t_child, cond_k, uncond_k)
        scores = scores.float().view(k, b).cpu()
        w = scores.argmax(0)
        lo = scores.argmin(0)
        ar = torch.arange(b)
        s_w, s_l = scores[w, ar], scores[lo, ar]
        gap = prob_gap(s_w, s_l)
        ok = (gap > threshold(t)) & (w != lo)
        if gaps is not None:
            gaps.add(t, gap, ok)
        stats.add(t, scores, ok)
        if ok.any():
            idx = ar[ok]
            parts.append(
                StepPairs(
                    x_t=x[idx].float().cpu(),
                    x_w=cands[w[idx], idx].float().cpu(),
                    x_l=cands[lo[idx], idx].float().cpu(),
                    timesteps=torch.full((len(idx),), t, dtype=torch.long),
                    prompt_idx=idx.clone(),
                    score_w=s_w[idx],
                    score_l=s_l[idx],
                )
            )
        # random continuation, independent of the scores (SPO's step-wise resampler; LPO keeps it)
        u = row_randint(generators, k)
        x = cands[u.to(dev), ar.to(dev)]
        if eps_c is not None:
            eps_next = eps_c.view(k, b, *shape)[u.to(dev), ar.to(dev)]
    pairs = StepPairs.cat(parts) if parts else StepPairs.empty(shape)
    return pairs, stats


def step_pair_logps(
    bundle: ModelBundle,
    unet: Any,
    pairs: StepPairs,
    cond: PromptEmbeds,
    uncond: PromptEmbeds,
    *,
    settings: RoundSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp_w, logp_l) [N] of the guided eta-DDIM transition x_t -> x_w / x_l under ``unet``.

    One guided forward per pair: winner and loser share (x_t, t, c), so μ and σ are shared.
    ``cond``/``uncond`` are row-aligned with ``pairs``.
    """
    sched = bundle.ddim_scheduler(settings.num_inference_steps)
    n = settings.num_inference_steps
    dev, dt = bundle.device, bundle.dtype
    x_t = pairs.x_t.to(dev, dt)
    ts = pairs.timesteps.to(dev)
    eps = bundle.guided_eps(x_t, ts, cond, uncond, settings.guidance_scale, unet=unet)
    mus, stds = [], []
    # timesteps differ per row: compute per-row scalars (cheap) and apply elementwise
    for i, t in enumerate(pairs.timesteps.tolist()):
        std = ddim.ddim_step_std(sched, t, n, settings.eta)
        mus.append(ddim.ddim_step_mean(sched, x_t[i : i + 1], eps[i : i + 1], t, n, std))
        stds.append(std)
    mu = torch.cat(mus).float()
    std_t = torch.tensor(stds, device=dev, dtype=torch.float32)
    logp_w = ddim.step_log_prob(pairs.x_w.to(dev).float(), mu, std_t)
    logp_l = ddim.step_log_prob(pairs.x_l.to(dev).float(), mu, std_t)
    return logp_w, logp_l


# ---------------------------------------------------------------------------- one global list per round
def canonical_order(positions: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Permutation [N] that sorts pairs by the position of their prompt in the round, then in sampling order
    (t descending): key = position * 1000 + (999 - t), stable. ``positions``, ``timesteps``: [N] integers,
    0 <= t < 1000."""
    return torch.argsort(positions.long() * 1000 + (999 - timesteps.long()), stable=True)


def gather_round_pairs(dist: Any, pairs: StepPairs, positions: torch.Tensor, gen: torch.Generator, *,
                       drop_remainder: bool = False) -> StepPairs:
    """The round's pairs of all processes as one list, identical on every rank and the same for any number of
    processes P: every rank's ``pairs`` (``positions`` [N]: the round position of each pair's prompt) are
    gathered, put in ``canonical_order``, then shuffled by one permutation drawn from ``gen``, a generator every
    rank holds in the same state. ``drop_remainder`` (official) cuts the list to a multiple of P: the official code
    drops the N mod P pairs at the end of its permutation (so its pair count depends on P)."""
    if dist.world_size > 1:
        fields = list(StepPairs.__dataclass_fields__)
        parts = dist.gather_objects([{"pairs": {f: getattr(pairs, f) for f in fields}, "positions": positions}])
        pairs = StepPairs.cat([StepPairs(**part["pairs"]) for part in parts])
        positions = torch.cat([part["positions"] for part in parts])
    pairs = pairs.index(canonical_order(positions, pairs.timesteps))
    perm = torch.randperm(len(pairs), generator=gen)
    if drop_remainder:
        perm = perm[: len(perm) - len(perm) % dist.world_size]
    return pairs.index(perm)
