"""Online step-level preference machinery shared by LPO and SPO (RockeyCoss/SPO@27a8642
spo_training_and_inference/; Kwai-Kolors/LPO@9c2e8b8 lpo/ is a light fork of it).

``sample_step_pairs`` runs one sampling round: eta-DDIM with CFG from x_T; at every trained step it
draws K candidates x_{t'} from the same x_t (shared mean, independent noise), scores them with a
method-supplied scorer, keeps the (argmax, argmin) pair when the softmax-probability gap exceeds
the threshold, and continues from a uniformly random candidate (not the winner).

``step_pair_logps`` computes policy and reference log-probabilities of a batch of stored pairs with
ONE policy and ONE reference guided forward per pair (winner and loser share x_t, t and c; the
official code runs each twice).
"""

from __future__ import annotations

from collections.abc import Callable
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


def prob_gap(score_w: torch.Tensor, score_l: torch.Tensor) -> torch.Tensor:
    """p_w - p_l of softmax([s_w, s_l]) = tanh((s_w - s_l) / 2), the official pair-validity gap."""
    return torch.tanh((score_w - score_l) / 2)


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
    generator: torch.Generator,
    ledger: Ledger,
    gaps: GapStats | None = None,
) -> tuple[StepPairs, dict[str, float]]:
    """One round over B prompts. Returns valid pairs and logs (valid fraction per noise band, scores);
    ``gaps``, when given, also collects each trained timestep's scored / passed counts and best gap."""
    n = settings.num_inference_steps
    k = settings.num_candidates
    sched = bundle.ddim_scheduler(n)
    b = len(cond)
    shape = bundle.latent_shape
    dev, dt = bundle.device, bundle.dtype

    def randn(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=generator).to(dev, dt)

    parts: list[StepPairs] = []
    n_scored = 0
    valid_by_t: dict[int, float] = {}
    all_scores = []
    eps_next: torch.Tensor | None = None
    cond_k, uncond_k = cond.repeat(k), uncond.repeat(k)
    with ledger.phase(Phase.SAMPLE):
        x = randn(b, *shape)
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
                x = mu + std * randn(b, *shape)
            continue
        with ledger.phase(Phase.SAMPLE):
            cands = mu.unsqueeze(0) + std * randn(k, b, *shape)  # [K,B,...] shared mean, independent noise
        flat = cands.reshape(k * b, *shape)  # k-major, as the official code
        scores, eps_c = scorer(flat, t, t_child, cond_k, uncond_k)
        scores = scores.float().view(k, b).cpu()
        all_scores.append(scores.flatten())
        w = scores.argmax(0)
        lo = scores.argmin(0)
        ar = torch.arange(b)
        s_w, s_l = scores[w, ar], scores[lo, ar]
        gap = prob_gap(s_w, s_l)
        ok = (gap > threshold(t)) & (w != lo)
        if gaps is not None:
            gaps.add(t, gap, ok)
        n_scored += b
        valid_by_t[t] = float(ok.float().mean())
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
        u = torch.randint(0, k, (b,), generator=generator)
        x = cands[u.to(dev), ar.to(dev)]
        if eps_c is not None:
            eps_next = eps_c.view(k, b, *shape)[u.to(dev), ar.to(dev)]
    pairs = StepPairs.cat(parts) if parts else StepPairs.empty(shape)
    logs = {"pairs_valid": float(len(pairs)), "pairs_scored": float(n_scored)}
    for lo_t, hi_t, name in ((751, 1000, "gt751"), (501, 750, "501_750"), (251, 500, "251_500"), (0, 250, "lt251")):
        vals = [v for tt, v in valid_by_t.items() if lo_t <= tt <= hi_t]
        if vals:
            logs[f"valid_frac_{name}"] = sum(vals) / len(vals)
    if all_scores:
        s = torch.cat(all_scores)
        logs["score_mean"], logs["score_std"] = float(s.mean()), float(s.std()) if s.numel() > 1 else 0.0
    return pairs, logs


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


# ---------------------------------------------------------------------------- multi-process
def gather_step_pairs(
    ctx: Any, pairs: StepPairs, gen: torch.Generator, *, drop_remainder: bool = False
) -> tuple[StepPairs, int]:
    """All ranks' valid pairs, shuffled by a permutation every rank draws identically from ``gen``, then this
    rank's share: rows r, r+P, r+2P, ... No pair is dropped (shares differ by at most one); with
    ``drop_remainder`` the official behaviour (N mod P pairs dropped) is reproduced.
    Returns (this rank's share, the largest share over ranks).
    """
    import math

    if ctx.world_size == 1:
        perm = torch.randperm(len(pairs), generator=gen) if len(pairs) else torch.empty(0, dtype=torch.long)
        return pairs.index(perm), len(pairs)
    fields = list(pairs.__dataclass_fields__)
    allp = ctx.dist.gather_objects([{f: getattr(pairs, f)[i] for f in fields} for i in range(len(pairs))])
    if not allp:
        return StepPairs.empty(ctx.bundle.latent_shape), 0
    merged = StepPairs(*(torch.stack([row[f] for row in allp]) for f in fields))
    perm = torch.randperm(len(merged), generator=gen)
    p = ctx.world_size
    if drop_remainder:
        per = len(merged) // p
        return merged.index(perm[ctx.rank * per : (ctx.rank + 1) * per]), per
    return merged.index(perm[ctx.rank :: p]), math.ceil(len(merged) / p)
