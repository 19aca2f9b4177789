"""LPO: step-level Latent Preference Optimization with the LRM (lpo.md §4).

Per round: eta-DDIM with CFG over B prompts; at every step K candidates from one x_t are scored
by the frozen LRM at the PARENT timestep (official; ``lrm_timestep="child"`` switches), the
(max, min) pair is kept when p_w - p_l > th(t) (σ-shaped dynamic threshold computed from the
scheduler), and the trajectory continues from a uniformly random candidate. Pairs from all ranks
are gathered without dropping any; each minibatch is one optimiser update of LoRA on attention
q/k/v/out with the clipped step-DPO loss (beta_lpo 500, clip 0.1) on per-element-mean log-probs.

Deviations from the official code, each a named switch: ``grad_clip_norm`` really clips
(official: a no-op, ``official_grad_clip_noop=True`` restores it), ``drop_remainder_pairs=False``
(official drops N mod world_size pairs), one policy and one reference forward per pair
(winner and loser share x_t; mathematically identical to the official two), cached prompt
embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from lpo_bench import lora, steppo, steps
from lpo_bench.errors import HarnessError
from lpo_bench.ledger import Phase
from lpo_bench.methods.lpo.lrm import LatentRewardModel
from lpo_bench.prompts import training_prompts
from lpo_bench.sampling import seeded_init
from lpo_bench.step_rounds import StepRoundMethod, encode_prompts_chunked


@dataclass(frozen=True)
class LPOConfig:
    num_inference_steps: int = field(default=20, metadata={"help": "DDIM steps per trajectory"})
    guidance_scale: float = field(default=5.0, metadata={"help": "Policy CFG scale in sampling and in the loss"})
    eta: float = field(default=1.0, metadata={"help": "DDIM eta (1 = stochastic, needed for step log-probs)"})
    num_candidates: int = field(default=4, metadata={"help": "K candidates per step"})
    prompts_per_round: int = field(default=5, metadata={"help": "Prompts sampled per round per process"})
    lrm_timestep: Literal["parent", "child"] = field(
        default="parent", metadata={"help": "Timestep fed to the LRM: parent t (official) or the candidates' t'"})
    threshold_min: float = field(default=0.35, metadata={"help": "Dynamic threshold at the smallest t"})
    threshold_max: float = field(default=0.5, metadata={"help": "Dynamic threshold at the largest t"})
    threshold_shape: Literal["sigma", "sigma2", "linear", "constant"] = field(
        default="sigma", metadata={"help": "Threshold schedule; constant uses threshold_max"})
    min_train_timestep: int = field(default=0, metadata={"help": "Train steps with t >= this"})
    max_train_timestep: int = field(default=1000, metadata={"help": "Train steps with t <= this (all 20 by default)"})
    beta_lpo: float = field(default=500.0, metadata={"help": "DPO beta on per-element-mean log-probs"})
    ratio_clip: float = field(default=0.1, metadata={"help": "Likelihood-ratio clip epsilon: [1-e, 1+e]"})
    lr: float = field(default=6e-5, metadata={"help": "AdamW lr (official code 6e-5; paper table 5e-5)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    grad_clip_norm: float = field(default=1.0, metadata={"help": "Max grad norm"})
    official_grad_clip_noop: bool = field(default=False, metadata={"help": "Reproduce the official no-op clipping"})
    train_batch_pairs: int = field(default=10, metadata={"help": "Pairs per optimiser update per process"})
    lora_rank: int = field(default=4, metadata={"help": "LoRA rank (alpha = rank)"})
    epochs: int = field(default=5, metadata={"help": "Passes over the training prompts"})
    max_updates: int | None = field(default=None, metadata={"help": "Stop after this many updates (None: epochs)"})
    num_train_prompts: int | None = field(default=None, metadata={"help": "Use the first N training prompts"})
    drop_remainder_pairs: bool = field(default=False, metadata={"help": "Official: drop N mod world_size pairs"})
    lrm_guidance_scale: float = field(default=7.5, metadata={"help": "VFE scale when training the LRM here"})


class LPO(StepRoundMethod):
    name: ClassVar[str] = "lpo"
    version: ClassVar[str] = "1"
    config_cls: ClassVar[type] = LPOConfig

    # ------------------------------------------------------------------ setup
    def setup(self, ctx: Any) -> None:
        from lpo_bench.reward_training import finished_stage, train_reward_stage

        self.ctx, self.cfg = ctx, ctx.cfg
        bundle = ctx.bundle
        lrm_path = ctx.options.get("lrm")
        self.reward_rows: list[dict] = []
        if lrm_path is None:
            lrm_path = finished_stage(ctx, "lrm")  # resuming a run whose LRM stage had finished
        if lrm_path is None:
            lrm_path, self.reward_rows = train_reward_stage(ctx, "lrm", overrides=ctx.options.get("rm_overrides"))
        with ctx.ledger.phase(Phase.PREP):
            self.lrm = LatentRewardModel.load(lrm_path, bundle, device=bundle.device).eval().requires_grad_(False)
            self.prompts = training_prompts(ctx.backbone, data_dir=ctx.data_dir, limit=self.cfg.num_train_prompts)
            if not self.prompts:
                raise HarnessError("no training prompts; check --data-dir")
            # cached per prompt: policy conditioning and the LRM's text side (official recomputes per step)
            with torch.no_grad():
                self.cond = encode_prompts_chunked(bundle, self.prompts)
                self.uncond1 = bundle.encode_negative(1)
                self.lrm_text = _lrm_text_chunks(self.lrm, self.prompts)
                self.lrm_uncond1 = self.lrm.negative_embeds(1)
        with seeded_init(ctx.seed, "lpo-lora-init"):
            self.params = lora.add_lora(bundle.unet, rank=self.cfg.lora_rank, alpha=self.cfg.lora_rank)
        self.opt = torch.optim.AdamW(self.params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay,
                                     betas=(0.9, 0.999), eps=1e-8)
        self.settings = steppo.RoundSettings(
            num_inference_steps=self.cfg.num_inference_steps, guidance_scale=self.cfg.guidance_scale, eta=self.cfg.eta,
            num_candidates=self.cfg.num_candidates, max_train_timestep=self.cfg.max_train_timestep,
            min_train_timestep=self.cfg.min_train_timestep)
        self.sched = bundle.ddim_scheduler(self.cfg.num_inference_steps)
        self.init_rounds()

    # ------------------------------------------------------------------ reward side
    def threshold(self, t: int) -> float:
        c = self.cfg
        if c.threshold_shape == "constant":
            return c.threshold_max
        return steps.dynamic_threshold(t, self.sched, c.num_inference_steps, c.threshold_min, c.threshold_max,
                                       c.threshold_shape)

    def scorer(self, ids: list[int]) -> steppo.StepScorer:
        text_rows = torch.tensor(ids)

        def score(cands: torch.Tensor, t_parent: int, t_child: int, cond_k: Any, uncond_k: Any):
            with self.ctx.ledger.phase(Phase.SCORE), torch.no_grad():
                k = cands.shape[0] // len(ids)
                rows = text_rows.repeat(k)
                t = t_parent if self.cfg.lrm_timestep == "parent" else t_child
                text = _index_text(self.lrm_text, rows)
                un = self.lrm_uncond1.repeat(len(rows))
                s = self.lrm.score(cands.to(self.ctx.device), torch.full((len(rows),), t, device=self.ctx.device), text, un)
                self.ctx.ledger.count("reward_fwd", len(rows))
                self.ctx.ledger.count("lrm_trunk_fwd", len(rows) * (2 if self.lrm.guidance_scale != 1 else 1))
            return s, None

        return score

    def drop_remainder(self) -> bool:
        return self.cfg.drop_remainder_pairs

    # ------------------------------------------------------------------ one update
    def _update(self, batch: steppo.StepPairs) -> dict[str, float]:
        bundle, cfg = self.ctx.bundle, self.cfg
        if len(batch) == 0:  # only under multi-process: this rank has no pair in this update
            self.opt.zero_grad(set_to_none=True)
            n_global = steppo.global_pair_count(self.ctx, 0)
            steppo.sum_grads_over_ranks(self.ctx, self.params)
            self.opt.step()
            return {"pairs": 0.0, "pairs_global": float(n_global)}
        cond = self.cond.index(batch.prompt_idx)
        uncond = self.uncond1.repeat(len(batch))
        bundle.unet.train()
        logp_w, logp_l = steppo.step_pair_logps(bundle, bundle.unet, batch, cond, uncond, settings=self.settings)
        with torch.no_grad(), lora.reference_mode(bundle.unet):
            ref_w, ref_l = steppo.step_pair_logps(bundle, bundle.unet, batch, cond, uncond, settings=self.settings)
        cfg_mult = 2 if cfg.guidance_scale != 1 else 1
        self.ctx.ledger.count("unet_fwdbwd", len(batch) * cfg_mult)
        self.ctx.ledger.count("unet_fwd", len(batch) * cfg_mult)
        per = steps.step_dpo_loss(logp_w, logp_l, ref_w, ref_l, beta=cfg.beta_lpo, clip=cfg.ratio_clip)
        self.opt.zero_grad(set_to_none=True)
        n_global = steppo.global_pair_count(self.ctx, len(batch))
        # sum over local pairs / global pair count, then grads summed across ranks = the global mean loss
        (per.sum() / max(n_global, 1)).backward()
        steppo.sum_grads_over_ranks(self.ctx, self.params)
        loss = per.mean()
        self.pairs_global = n_global
        if cfg.official_grad_clip_noop or cfg.grad_clip_norm <= 0:
            gnorm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.params if p.grad is not None]))
        else:
            gnorm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip_norm)
        self.opt.step()
        bundle.unet.eval()  # sampling and evaluation run the UNet in eval mode
        with torch.no_grad():
            r_w, r_l = (logp_w - ref_w).exp(), (logp_l - ref_l).exp()
        return {"loss": loss.item(), "implicit_acc": float((r_w > r_l).float().mean()),
                "ratio_w": float(r_w.mean()), "ratio_l": float(r_l.mean()), "grad_norm": float(gnorm),
                "pairs": float(len(batch)), "pairs_global": float(n_global),
                "t_mean": float(batch.timesteps.float().mean())}


def _lrm_text_chunks(lrm: LatentRewardModel, prompts: list[str], chunk: int = 256) -> Any:
    from lpo_bench.bundle import PromptEmbeds
    from lpo_bench.methods.lpo.lrm import LRMText

    parts = [lrm.encode_text(prompts[s : s + chunk]) for s in range(0, len(prompts), chunk)]
    return LRMText(PromptEmbeds.cat([p.embeds for p in parts]), torch.cat([p.feature for p in parts]))


def _index_text(text: Any, rows: torch.Tensor) -> Any:
    from lpo_bench.methods.lpo.lrm import LRMText

    return LRMText(text.embeds.index(rows.to(text.feature.device)), text.feature[rows.to(text.feature.device)])
