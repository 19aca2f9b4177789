"""LPO: step-level Latent Preference Optimization with the LRM (arXiv 2502.01051 Sec. 4; Kwai-Kolors/LPO@9c2e8b8).

The harness trains the LRM first (RM_TRAIN, unless ``--reward-model DIR`` gives one). Per round: eta-DDIM with CFG
over ``prompts_per_round`` prompts (global, split over ranks); at every step K candidates from one x_t are scored
by the frozen LRM at the PARENT timestep (official; ``lrm_timestep="child"`` switches), the
(max, min) pair is kept when p_w - p_l > th(t) (σ-shaped dynamic threshold computed from the
scheduler), and the trajectory continues from a uniformly random candidate. The pairs of all ranks form one
global list without dropping any; each global batch of ``train_batch_pairs`` is one optimiser update of LoRA on
attention q/k/v/out, the update shared with SPO (``StepwiseMethod._update``: the clipped step-DPO loss, beta_lpo
500, clip 0.1, on per-element-mean log-probs). The rounds and updates are the same on any number of processes
(``lpo_bench.methods.stepwise.rounds``).

Deviations from the official code, each a named switch: ``grad_clip_norm`` really clips
(official: a no-op, ``official_grad_clip_noop=True`` restores it), ``drop_remainder_pairs=False``
(official drops N mod world_size pairs), one policy and one reference forward per pair
(winner and loser share x_t; mathematically identical to the official two), cached prompt
embeddings.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from lpo_bench.diffusion import ddim
from lpo_bench.diffusion.seeding import seeded_init
from lpo_bench.errors import HarnessError
from lpo_bench.harness.method import TrainContext
from lpo_bench.ledger import Phase
from lpo_bench.methods.lpo.config import LPOConfig
from lpo_bench.methods.lpo.lrm import LatentRewardModel
from lpo_bench.methods.stepwise import sampler
from lpo_bench.methods.stepwise.rounds import StepwiseMethod, encode_prompts_chunked
from lpo_bench.models import lora


class LPO(StepwiseMethod):
    name: ClassVar[str] = "lpo"
    version: ClassVar[str] = "2"  # 2: global recipes, per-prompt sampling generators

    # ------------------------------------------------------------------ setup
    def setup(self, ctx: TrainContext[LPOConfig]) -> None:
        """The harness has trained (or been given) the LRM in ``ctx.reward_model_dir`` (its RM_TRAIN stage)."""
        self.ctx, self.cfg = ctx, ctx.cfg
        bundle = ctx.bundle
        with ctx.ledger.phase(Phase.PREP):
            self.lrm = LatentRewardModel.load(ctx.reward_model_dir, bundle, device=bundle.device).eval()
            self.lrm.requires_grad_(False)
            self.prompts = ctx.prompts.training_prompts(limit=self.cfg.num_train_prompts)
            if not self.prompts:
                raise HarnessError("no training prompts; check --data-dir")
            # cached per prompt: policy conditioning and the LRM's text side (official recomputes per step)
            with torch.no_grad():
                self.cond = encode_prompts_chunked(bundle, self.prompts)
                self.uncond1 = bundle.encode_negative(1)
                self.lrm_text = _lrm_text_chunks(self.lrm, self.prompts)
                self.lrm_uncond1 = self.lrm.negative_embeds(1)
            ctx.precision.cast_frozen(self.lrm)  # after the cached text features, which are computed in fp32
        with seeded_init(ctx.seed, "lpo-lora-init"):
            self.params = lora.add_lora(bundle.unet, rank=self.cfg.lora_rank, alpha=self.cfg.lora_rank)
        self.opt = torch.optim.AdamW(self.params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay,
                                     betas=(0.9, 0.999), eps=1e-8)
        self.settings = sampler.RoundSettings(
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
        return ddim.dynamic_threshold(t, self.sched, c.num_inference_steps, c.threshold_min, c.threshold_max,
                                       c.threshold_shape)

    def threshold_settings(self) -> tuple[str, ...]:
        return ("threshold_max",) if self.cfg.threshold_shape == "constant" else ("threshold_min", "threshold_max")

    def scorer(self, ids: list[int]) -> sampler.StepScorer:
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

    def beta(self) -> float:
        return self.cfg.beta_lpo


def _lrm_text_chunks(lrm: LatentRewardModel, prompts: list[str], chunk: int = 256) -> Any:
    from lpo_bench.methods.lpo.lrm import LRMText
    from lpo_bench.models.bundle import PromptEmbeds

    parts = [lrm.encode_text(prompts[s : s + chunk]) for s in range(0, len(prompts), chunk)]
    return LRMText(PromptEmbeds.cat([p.embeds for p in parts]), torch.cat([p.feature for p in parts]))


def _index_text(text: Any, rows: torch.Tensor) -> Any:
    from lpo_bench.methods.lpo.lrm import LRMText

    return LRMText(text.embeds.index(rows.to(text.feature.device)), text.feature[rows.to(text.feature.device)])
