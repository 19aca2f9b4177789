"""SPO: Step-by-step Preference Optimization with the step-aware preference model
(arXiv 2406.04314; RockeyCoss/SPO@27a8642).

Stage 1, run by the harness (RM_TRAIN, unless ``--reward-model DIR`` gives a trained one): the SPM (``spm_train``).
Stage 2, per round: eta-DDIM with CFG over ``prompts_per_round`` prompts (global, split over ranks) via
``lpo_bench.methods.stepwise.sampler``; from
the first step with t <= ``max_train_timestep`` (751, official divert_start_step 4) on, K candidates
x_{t'} share the mean of x_t and are scored by the scorer below; the (max, min) pair is kept when
p_w - p_l > ``threshold_spo`` (fixed 0.3); the trajectory continues from a uniformly random
candidate. The pairs of all ranks form one global list (no pair dropped), shuffled identically on every
rank; each global batch of ``train_batch_pairs`` is one optimiser update of LoRA (q/k/v/out), the update shared
with LPO (``StepwiseMethod._update``: the clipped step-DPO loss, β_spo = 10, clip 0.1, on per-element-mean
log-probs). The rounds and updates are the same on any number of processes (``lpo_bench.methods.stepwise.rounds``).

Scorer (all under Phase.SCORE): one CFG pass of the policy UNet on the K candidates at their own
(child) timestep t' gives ε̂ and x̂0; the ε̂ is handed back to the sampler, which reuses it as the next
denoising step of the continued candidate (as in the official pipeline, so only K-1 passes per step
are extra); x̂0 is VAE-decoded and scored by the SPM at t'. After the last step (t' = 0) the
candidates are final samples: decoded directly, scored at t = 0, no UNet pass.

Counters: SAMPLE ``unet_fwd`` (sampler's own passes); SCORE ``unet_fwd`` (candidate passes),
``vae_decode``, ``reward_fwd``; UPDATE ``unet_fwdbwd`` (policy) and ``unet_fwd`` (reference), all
in UNet evaluations (a CFG pass on n latents = 2n). Deviations from the official code: the gradient
norm is really clipped (official: a no-op; ``official_grad_clip_noop=true`` restores it), no pair is dropped when gathering (official drops
N mod world_size; ``drop_remainder_pairs=true`` restores it), one policy and one reference CFG forward per pair (winner and loser share x_t),
cached prompt embeddings. SDXL's "multi-step" variant (inner steps) is not implemented.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from lpo_bench.baselines.spo.config import SPOConfig
from lpo_bench.baselines.spo.spm import StepAwarePreferenceModel
from lpo_bench.diffusion import ddim
from lpo_bench.diffusion.seeding import seeded_init
from lpo_bench.errors import HarnessError
from lpo_bench.harness.method import TrainContext
from lpo_bench.ledger import Phase
from lpo_bench.methods.stepwise import sampler
from lpo_bench.methods.stepwise.rounds import StepwiseMethod, encode_prompts_chunked
from lpo_bench.models import lora
from lpo_bench.models.bundle import PromptEmbeds


class SPO(StepwiseMethod):
    name: ClassVar[str] = "spo"
    version: ClassVar[str] = "2"  # 2: global recipes, per-prompt sampling generators

    # ------------------------------------------------------------------ setup
    def setup(self, ctx: TrainContext[SPOConfig]) -> None:
        """The harness has trained (or been given) the SPM in ``ctx.reward_model_dir`` (its RM_TRAIN stage)."""
        self.ctx, self.cfg = ctx, ctx.cfg
        cfg, bundle = ctx.cfg, ctx.bundle
        with ctx.ledger.phase(Phase.PREP):
            self.spm = StepAwarePreferenceModel.load(ctx.reward_model_dir, bundle, device=bundle.device)
            self.spm.requires_grad_(False)
            self.prompts = ctx.prompts.training_prompts(limit=cfg.num_train_prompts)
            if not self.prompts:
                raise HarnessError("no training prompts; check --data-dir")
            with torch.no_grad():
                self.cond = encode_prompts_chunked(bundle, self.prompts)
                self.uncond1 = bundle.encode_negative(1)
                self.spm_text = torch.cat([self.spm.text_features(self.prompts[s : s + 256])
                                           for s in range(0, len(self.prompts), 256)])
            ctx.precision.cast_frozen(self.spm)  # after the cached text features, which are computed in fp32
            ctx.ledger.count("text_fwd", len(self.prompts))
            ctx.ledger.count("reward_text_fwd", len(self.prompts))
        with seeded_init(ctx.seed, "spo-lora-init"):  # the same A on every rank, whatever ran before
            self.params = lora.add_lora(bundle.unet, rank=cfg.lora_rank, alpha=cfg.lora_alpha)
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999), eps=1e-8)
        self.settings = sampler.RoundSettings(
            num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale, eta=cfg.eta,
            num_candidates=cfg.num_candidates, max_train_timestep=cfg.max_train_timestep,
            min_train_timestep=cfg.min_train_timestep)
        self.init_rounds()
        ctx.log(f"[spo] {len(self.prompts)} prompts × {cfg.epochs} epochs, K={cfg.num_candidates}, "
                f"t <= {cfg.max_train_timestep}, threshold {cfg.threshold_spo}, β_spo={cfg.beta_spo:g}, "
                f"LoRA r={cfg.lora_rank}, SPM {self.spm.base_checkpoint}")

    # ------------------------------------------------------------------ reward side
    def threshold(self, t: int) -> float:
        return self.cfg.threshold_spo

    def threshold_settings(self) -> tuple[str, ...]:
        return ("threshold_spo",)

    def beta(self) -> float:
        return self.cfg.beta_spo

    def scorer(self, ids: list[int]) -> sampler.StepScorer:
        """Scorer for a round over prompts ``ids``: decode x̂0 of each candidate, SPM at the child timestep."""
        ctx, cfg, bundle = self.ctx, self.cfg, self.ctx.bundle
        text_rows = torch.tensor(ids)

        def score(cands: torch.Tensor, t_parent: int, t_child: int, cond_k: PromptEmbeds,
                  uncond_k: PromptEmbeds) -> tuple[torch.Tensor, torch.Tensor | None]:
            with ctx.ledger.phase(Phase.SCORE), torch.no_grad():
                n = cands.shape[0]
                eps = None
                x0 = cands
                if t_child > 0:
                    eps = bundle.guided_eps(cands, t_child, cond_k, uncond_k, cfg.guidance_scale, unet=bundle.unet)
                    ctx.ledger.count("unet_fwd", n * (2 if cfg.guidance_scale != 1 else 1))
                    x0 = ddim.predict_x0(bundle.scheduler, cands, eps, t_child)
                text = self.spm_text[text_rows.repeat(n // len(ids)).to(self.spm_text.device)]  # k-major rows
                scores = []
                for s in range(0, n, cfg.score_batch):
                    images = bundle.decode(x0[s : s + cfg.score_batch])
                    scores.append(self.spm.score_images(images, t_child, text[s : s + cfg.score_batch]).float())
                ctx.ledger.count("vae_decode", n)
                ctx.ledger.count("reward_fwd", n)
            return torch.cat(scores), eps

        return score
