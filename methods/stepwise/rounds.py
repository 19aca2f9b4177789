"""The round loop and the one policy update shared by the step-level methods (LPO, SPO).

Recipes are global, so a run trains on the same pairs, in the same order, with the same weights on any number
of processes P (up to float differences of batched UNet calls and of the gradient sum):

* a round takes the next ``prompts_per_round`` prompts (over all processes) of a shuffled per-epoch order that
  every rank draws identically; rank r samples the round positions r, r + P, ...; each prompt's randomness comes
  from a generator keyed by (seed, purpose, epoch, prompt id) (``seeding.purpose_generator``), so it does not
  depend on the rank or the batch that samples it;
* the valid step pairs of all ranks are gathered into one global list (``sampler.gather_round_pairs``: canonical
  order, then one shuffle every rank draws identically), held whole by every rank;
* each update takes the next ``train_batch_pairs`` pairs of that list (the last one of a round may be smaller),
  rank r holding the contiguous slice ``global_batch.rank_slice`` gives it (possibly none); the loss of a pair is
  divided by the global batch size, gradients are summed over ranks, and every rank clips and steps the same
  summed gradient; a round feeds ``ceil(pairs / train_batch_pairs)`` updates, then the next round is sampled.

Each update is the clipped step-DPO loss (``losses.step_dpo_loss``) on policy and reference step
log-probabilities, accumulated over micro-batches of at most ``micro_batch_pairs`` pairs per process, one AdamW
step. Its logs are global (summed over ranks): the same numbers whatever P.

A round whose pairs feed no update samples the next one; ``max_rounds_without_pairs`` such rounds in a row stop
the run with a :class:`HarnessError` that reports the gaps against the threshold (otherwise a threshold no gap can
pass samples silently until the prompt epochs run out).

A method subclasses :class:`StepwiseMethod` and supplies only its reward side (``scorer``, ``threshold``,
``threshold_settings``) and its ``beta``; the state kept here is exactly what a checkpoint needs to resume
bit-identically (it holds the round's whole global pair list, so it does not depend on the rank that wrote it).
The subclass's ``setup`` sets ``ctx``, ``cfg`` (a ``StepwiseConfig``), ``prompts``, ``cond`` (one row per prompt),
``uncond1``, ``settings``, ``params`` and ``opt``, then calls :meth:`StepwiseMethod.init_rounds`.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import torch

from lpo_bench.data.global_batch import rank_slice
from lpo_bench.diffusion.seeding import purpose_generator
from lpo_bench.errors import HarnessError
from lpo_bench.ledger import Phase
from lpo_bench.methods.stepwise import sampler
from lpo_bench.methods.stepwise.losses import step_dpo_loss
from lpo_bench.models import lora
from lpo_bench.models.bundle import ModelBundle, PromptEmbeds


def encode_prompts_chunked(bundle: ModelBundle, prompts: list[str], chunk: int = 256) -> PromptEmbeds:
    """The policy's conditioning for every training prompt, cached once per run (encoded ``chunk`` at a time)."""
    return PromptEmbeds.cat([bundle.encode_prompts(prompts[s : s + chunk]) for s in range(0, len(prompts), chunk)])


class StepwiseMethod:
    name: ClassVar[str]
    version: ClassVar[str] = "2"  # 2: global recipes, per-prompt sampling generators
    loss_scaling: ClassVar[bool] = True  # backward and step go through ctx.precision (fp16 loss scaling)
    fp32_log_ratio: ClassVar[bool] = True  # the policy and reference log-prob passes run in fp32 (precision.py)

    # ------------------------------------------------------------------ hooks
    def scorer(self, ids: list[int]) -> sampler.StepScorer:
        """Scores of the K candidates of one denoising step for the round's prompts ``ids``."""
        raise NotImplementedError

    def threshold(self, t: int) -> float:
        """Minimum best-minus-worst score gap at timestep t for the step to yield a pair."""
        raise NotImplementedError

    def threshold_settings(self) -> tuple[str, ...]:
        """The config keys that set ``threshold`` (named in the error of a run that forms no pair)."""
        raise NotImplementedError

    def beta(self) -> float:
        """The DPO beta of this method's loss (scoped in its config: ``beta_lpo``, ``beta_spo``)."""
        raise NotImplementedError

    def drop_remainder(self) -> bool:
        """Drop the pairs that do not divide evenly over the ranks (official LPO and SPO); default: keep them all."""
        return self.cfg.drop_remainder_pairs

    # ------------------------------------------------------------------ one update
    def _update(self, batch: sampler.StepPairs, n_global: int) -> dict[str, float]:
        """One optimiser update on ``batch``, this rank's share (possibly empty) of a global batch of ``n_global``
        pairs. Each pair's loss is divided by ``n_global`` and the gradients are summed over ranks, so every rank
        holds the gradient of the global mean loss; every rank then clips and steps that same gradient (a rank's
        parameters get a gradient exactly when some rank's do: ``Dist.sum_grads_``).

        Logs, summed over ranks then divided by ``n_global``: loss, implicit_acc (winner's log-ratio above the
        loser's, ties 1/2), ratio_w / ratio_l (likelihood ratios to the reference), clipped (fraction of ratios
        outside the clip range); grad_norm (of the summed gradient, before clipping); pairs (this rank's share),
        pairs_global, t_mean."""
        ctx, cfg, bundle = self.ctx, self.cfg, self.ctx.bundle
        self.opt.zero_grad(set_to_none=True)
        keys = ("loss", "implicit_acc", "ratio_w", "ratio_l", "clipped", "t_sum")
        sums = torch.zeros(len(keys), dtype=torch.float64)
        cfg_mult = 2 if cfg.guidance_scale != 1 else 1
        lo, hi = math.log(1 - cfg.ratio_clip), math.log(1 + cfg.ratio_clip)
        micro = cfg.micro_batch_pairs or max(len(batch), 1)
        bundle.unet.train()
        for s in range(0, len(batch), micro):
            mb = batch.index(torch.arange(s, min(s + micro, len(batch))))
            cond, uncond = self.cond.index(mb.prompt_idx), self.uncond1.repeat(len(mb))
            with ctx.precision.exact():  # beta x (policy - reference): bf16 rounding would exceed the difference
                logp_w, logp_l = sampler.step_pair_logps(bundle, bundle.unet, mb, cond, uncond, settings=self.settings)
                with torch.no_grad(), lora.reference_mode(bundle.unet):
                    ref_w, ref_l = sampler.step_pair_logps(bundle, bundle.unet, mb, cond, uncond,
                                                           settings=self.settings)
            ctx.ledger.count("unet_fwdbwd", len(mb) * cfg_mult)
            ctx.ledger.count("unet_fwd", len(mb) * cfg_mult)
            per = step_dpo_loss(logp_w, logp_l, ref_w, ref_l, beta=self.beta(), clip=cfg.ratio_clip)
            # sum over local pairs / global pair count; gradients summed over ranks give the global mean
            ctx.precision.backward(per.sum() / n_global)
            with torch.no_grad():
                lr_w, lr_l = logp_w - ref_w, logp_l - ref_l
                out_w, out_l = (lr_w < lo) | (lr_w > hi), (lr_l < lo) | (lr_l > hi)
                dev_sums = torch.stack([
                    per.sum(), (lr_w > lr_l).float().sum() + 0.5 * (lr_w == lr_l).float().sum(), lr_w.exp().sum(),
                    lr_l.exp().sum(), (out_w.float().sum() + out_l.float().sum()) / 2]).double().cpu()
                sums += torch.cat([dev_sums, mb.timesteps.double().sum().view(1)])
        bundle.unet.eval()  # sampling and evaluation run the UNet in eval mode
        ctx.dist.sum_grads_(self.params)
        sums = self._sum_over_ranks(sums)
        no_clip = cfg.official_grad_clip_noop or cfg.grad_clip_norm <= 0
        gnorm = ctx.precision.clip_and_step(self.opt, self.params, float("inf") if no_clip else cfg.grad_clip_norm)
        logs = {k: float(v) / n_global for k, v in zip(keys, sums)}
        logs["t_mean"] = logs.pop("t_sum")
        logs.update(grad_norm=float(gnorm), pairs=float(len(batch)), pairs_global=float(n_global))
        return logs

    def _sum_over_ranks(self, v: torch.Tensor) -> torch.Tensor:
        """``v`` (a small CPU tensor) summed over ranks, on the CPU (the collective runs on the run's device)."""
        if self.ctx.world_size == 1:
            return v
        t = v.to(self.ctx.device)
        self.ctx.dist.reduce_([t], "sum")
        return t.cpu()

    # ------------------------------------------------------------------ rounds
    def init_rounds(self) -> None:
        ctx, cfg = self.ctx, self.cfg
        self.gen_order = purpose_generator(ctx.seed, f"{self.name}-order")  # identical on every rank
        self.order: list[list[int]] = []  # [epoch, prompt id] of the prompts still to sample, in order
        self.epoch = 0
        self.buffer: sampler.StepPairs | None = None  # the round's global pair list (the same on every rank)
        self.buffer_pos = 0
        self.updates_left = 0  # updates still to run on the current round's pairs (equal on every rank)
        self.rounds = 0
        self.rounds_without_pairs = 0  # consecutive rounds that fed no update, and their gaps
        self.gaps = sampler.GapStats()
        self.last_round_logs: dict[str, float] = {}
        p = ctx.world_size
        if p > 1:
            ctx.log(f"[{self.name}] {p} processes: {cfg.prompts_per_round} prompts per round and "
                    f"{cfg.train_batch_pairs} pairs per update in all, about {cfg.prompts_per_round / p:.3g} and "
                    f"{cfg.train_batch_pairs / p:.3g} per process")

    def _next_round(self) -> list[list[int]]:
        """[epoch, prompt id] of the next round's ``prompts_per_round`` prompts (over all processes), from a
        shuffled per-epoch order every rank draws identically."""
        per_round = self.cfg.prompts_per_round
        if len(self.order) < per_round and self.epoch < self.cfg.epochs:
            perm = torch.randperm(len(self.prompts), generator=self.gen_order).tolist()
            self.order += [[self.epoch, i] for i in perm]
            self.epoch += 1
        take, self.order = self.order[:per_round], self.order[per_round:]
        return take

    def prompt_generator(self, epoch: int, prompt_id: int) -> torch.Generator:
        """The generator of every random draw of prompt ``prompt_id``'s trajectory in ``epoch``: the same on any
        rank and in any batch."""
        return purpose_generator(self.ctx.seed, f"{self.name}-sample", epoch, prompt_id)

    def _sample_round(self) -> sampler.StepPairs:
        """Sample this rank's prompts of the next round; returns the round's global pair list."""
        ctx = self.ctx
        take = self._next_round()
        mine = list(range(ctx.rank, len(take), ctx.world_size))  # round positions this rank samples
        ids = [take[j][1] for j in mine]
        pairs, stats = sampler.StepPairs.empty(ctx.bundle.latent_shape), sampler.RoundStats()
        positions = torch.empty(0, dtype=torch.long)
        if ids:
            pairs, stats = sampler.sample_step_pairs(
                ctx.bundle, ctx.bundle.unet, self.cond.index(ids), self.uncond1.repeat(len(ids)),
                settings=self.settings, scorer=self.scorer(ids), threshold=self.threshold,
                generators=[self.prompt_generator(*take[j]) for j in mine], ledger=ctx.ledger, gaps=self.gaps)
            positions = torch.tensor(mine, dtype=torch.long)[pairs.prompt_idx]
            pairs.prompt_idx = torch.tensor(ids, dtype=torch.long)[pairs.prompt_idx]
        self.rounds += 1
        with ctx.ledger.phase(Phase.SAMPLE):
            self.last_round_logs = sampler.RoundStats.from_vector(self._sum_over_ranks(stats.vector())).logs()
            return sampler.gather_round_pairs(ctx.dist, pairs, positions, self.gen_order,
                                              drop_remainder=self.drop_remainder())

    def _exhausted(self) -> bool:
        return self.epoch >= self.cfg.epochs and len(self.order) == 0

    def train_step(self, step: int) -> dict[str, float]:
        logs: dict[str, float] = {}
        while self.updates_left == 0:
            if self._exhausted():
                return {"skipped": 1.0}  # the last rounds gave no valid pair: nothing left to train on
            self.buffer, self.buffer_pos = self._sample_round(), 0
            self.updates_left = math.ceil(len(self.buffer) / self.cfg.train_batch_pairs)
            logs.update(self.last_round_logs)
            self._count_empty_round()
        assert self.buffer is not None
        n = min(self.cfg.train_batch_pairs, len(self.buffer) - self.buffer_pos)  # this global batch's size
        mine = rank_slice(n, self.ctx.rank, self.ctx.world_size)
        batch = self.buffer.index(torch.arange(self.buffer_pos + mine.start, self.buffer_pos + mine.stop))
        self.buffer_pos += n
        self.updates_left -= 1
        with self.ctx.ledger.phase(Phase.UPDATE):
            logs.update(self._update(batch, n))
        return logs

    def _count_empty_round(self) -> None:
        """Reset on a round that feeds updates; stop after ``max_rounds_without_pairs`` in a row that feed none."""
        if self.updates_left:
            self.rounds_without_pairs, self.gaps = 0, sampler.GapStats()
            return
        self.rounds_without_pairs += 1
        if self.rounds_without_pairs >= self.cfg.max_rounds_without_pairs:  # on every rank at once
            if self.ctx.world_size > 1:  # report the steps of all ranks
                self.gaps = sampler.GapStats.merge(self.ctx.dist.gather_objects([self.gaps]))
            raise HarnessError(self._no_pairs_message())

    def _no_pairs_message(self) -> str:
        n, g, cfg = self.rounds_without_pairs, self.gaps, self.cfg
        head = f"[{self.name}] no training pair in the last {n} sampling rounds"
        if not g.scored:  # no step was branched: nothing to compare with the threshold
            return (f"{head}: no step was scored; branching needs num_candidates >= 2 (now {cfg.num_candidates}) "
                    f"and steps with min_train_timestep <= t <= max_train_timestep (now {cfg.min_train_timestep}"
                    f"..{cfg.max_train_timestep}); fix them with --set")
        ts = sorted(g.scored, reverse=True)
        closest = sorted(ts, key=lambda t: self.threshold(t) - g.best[t])[:3]
        near = ", ".join(f"t={t}: best gap {g.best[t]:.3g} vs threshold {self.threshold(t):.4g}" for t in closest)
        fix = " / ".join(f"--set {k}=..." for k in self.threshold_settings())
        return (f"{head}: {sum(g.passed.values())} of {sum(g.scored.values())} scored steps passed the threshold "
                f"(t = {ts[0]}..{ts[-1]}; closest: {near}); lower the threshold with {fix}, "
                f"or raise --set max_rounds_without_pairs")

    @property
    def pending_updates(self) -> int:
        """Updates left on the pairs already sampled (``bench`` times one round and the updates it feeds)."""
        return self.updates_left

    def total_updates(self) -> int | None:
        """Known only with ``max_updates``: with epochs the update count depends on the pairs each round forms."""
        return self.cfg.max_updates

    def is_done(self, step: int) -> bool:
        if self.cfg.max_updates is not None and step >= self.cfg.max_updates:
            return True
        return self._exhausted() and self.updates_left == 0

    # ------------------------------------------------------------------ state / export
    def policy_unet(self) -> Any:
        return self.ctx.bundle.unet

    def export(self, out_dir: Path) -> Path:
        return lora.export_lora(self.ctx.bundle.unet, out_dir)

    def state_dict(self) -> dict[str, Any]:
        buf = None if self.buffer is None else {f: getattr(self.buffer, f).clone() for f in self.buffer.__dataclass_fields__}
        return {
            "lora": {k: v.detach().clone() for k, v in lora.lora_state(self.ctx.bundle.unet).items()},
            "opt": self.opt.state_dict(), "gen_order": self.gen_order.get_state(),
            "order": [list(e) for e in self.order], "epoch": self.epoch, "buffer": buf,
            "buffer_pos": self.buffer_pos, "updates_left": self.updates_left, "rounds": self.rounds,
            "rounds_without_pairs": self.rounds_without_pairs, "gaps": asdict(self.gaps),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unet = self.ctx.bundle.unet
        if set(state["lora"]) != set(lora.lora_state(unet)):
            raise HarnessError("the checkpoint's LoRA does not match this model (different rank or targets?); "
                               "rerun with --overwrite")
        with torch.no_grad():
            params = dict(unet.named_parameters())
            for k, v in state["lora"].items():
                params[k].copy_(v)
        self.opt.load_state_dict(state["opt"])
        self.gen_order.set_state(state["gen_order"])
        self.order, self.epoch = [[int(e), int(i)] for e, i in state["order"]], int(state["epoch"])
        self.buffer = None if state["buffer"] is None else sampler.StepPairs(**state["buffer"])
        self.buffer_pos, self.rounds = int(state["buffer_pos"]), int(state["rounds"])
        self.updates_left = int(state["updates_left"])
        self.rounds_without_pairs = int(state["rounds_without_pairs"])
        # the main process's gaps were saved; the others restart theirs, so the merged report counts each step once
        self.gaps = sampler.GapStats(**state["gaps"]) if self.ctx.rank == 0 else sampler.GapStats()
