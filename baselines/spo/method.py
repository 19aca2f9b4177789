"""SPO: Step-by-step Preference Optimization with the step-aware preference model (baselines.md §2).

Stage 1 (RM_TRAIN, unless ``--spm DIR`` gives a trained one): train the SPM (``spm_train``).
Stage 2, per round: eta-DDIM with CFG over this process's prompts via ``lpo_bench.steppo``; from
the first step with t <= ``max_train_timestep`` (751, official divert_start_step 4) on, K candidates
x_{t'} share the mean of x_t and are scored by the scorer below; the (max, min) pair is kept when
p_w - p_l > ``threshold_spo`` (fixed 0.3); the trajectory continues from a uniformly random
candidate. Pairs from all ranks are gathered without dropping any and shuffled identically on every
rank; each minibatch is one optimiser update of LoRA (q/k/v/out) with the clipped step-DPO loss
``steps.step_dpo_loss`` (β_spo = 10, clip 0.1) on ``steppo.step_pair_logps`` log-probs.

Scorer (all under Phase.SCORE): one CFG pass of the policy UNet on the K candidates at their own
(child) timestep t' gives ε̂ and x̂0; the ε̂ is handed back to the sampler, which reuses it as the next
denoising step of the continued candidate (as in the official pipeline, so only K-1 passes per step
are extra); x̂0 is VAE-decoded and scored by the SPM at t'. After the last step (t' = 0) the
candidates are final samples: decoded directly, scored at t = 0, no UNet pass.

Counters: SAMPLE ``unet_fwd`` (sampler's own passes); SCORE ``unet_fwd`` (candidate passes),
``vae_decode``, ``reward_fwd``; UPDATE ``unet_fwdbwd`` (policy) and ``unet_fwd`` (reference), all
in UNet evaluations (a CFG pass on n latents = 2n). Deviations from the official code: the gradient
norm is really clipped (official: a no-op), no pair is dropped when gathering (official drops
N mod world_size), one policy and one reference CFG forward per pair (winner and loser share x_t),
cached prompt embeddings. SDXL's "multi-step" variant (inner steps) is not implemented.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from lpo_bench import lora, steppo, steps
from lpo_bench.baselines.spo.config import SPOConfig
from lpo_bench.baselines.spo.spm import StepAwarePreferenceModel
from lpo_bench.bundle import PromptEmbeds
from lpo_bench.errors import HarnessError
from lpo_bench.ledger import Phase
from lpo_bench.prompts import training_prompts
from lpo_bench.step_rounds import StepRoundMethod, encode_prompts_chunked


class SPO(StepRoundMethod):
    name: ClassVar[str] = "spo"
    version: ClassVar[str] = "1"
    config_cls: ClassVar[type] = SPOConfig

    # ------------------------------------------------------------------ setup
    def setup(self, ctx: Any) -> None:
        from lpo_bench.reward_training import finished_stage, train_reward_stage

        self.ctx, self.cfg = ctx, ctx.cfg
        cfg, bundle = ctx.cfg, ctx.bundle
        self.reward_rows: list[dict] = []
        spm_path = ctx.options.get("spm") or finished_stage(ctx, "spm")
        if spm_path is None:
            spm_path, self.reward_rows = train_reward_stage(ctx, "spm", overrides=ctx.options.get("rm_overrides"))
        with ctx.ledger.phase(Phase.PREP):
            self.spm = StepAwarePreferenceModel.load(spm_path, bundle, device=bundle.device).requires_grad_(False)
            self.prompts = training_prompts(ctx.backbone, data_dir=ctx.data_dir, limit=cfg.num_train_prompts)
            if not self.prompts:
                raise HarnessError("no training prompts; check --data-dir")
            with torch.no_grad():
                self.cond = encode_prompts_chunked(bundle, self.prompts)
                self.uncond1 = bundle.encode_negative(1)
                self.spm_text = torch.cat([self.spm.text_features(self.prompts[s : s + 256])
                                           for s in range(0, len(self.prompts), 256)])
            ctx.ledger.count("text_fwd", len(self.prompts))
            ctx.ledger.count("reward_text_fwd", len(self.prompts))
        self.params = lora.add_lora(bundle.unet, rank=cfg.lora_rank, alpha=cfg.lora_alpha)
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999), eps=1e-8)
        self.settings = steppo.RoundSettings(
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

    def scorer(self, ids: list[int]) -> steppo.StepScorer:
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
                    x0 = steps.predict_x0(bundle.scheduler, cands, eps, t_child)
                text = self.spm_text[text_rows.repeat(n // len(ids)).to(self.spm_text.device)]  # k-major rows
                scores = []
                for s in range(0, n, cfg.score_batch):
                    images = bundle.decode(x0[s : s + cfg.score_batch])
                    scores.append(self.spm.score_images(images, t_child, text[s : s + cfg.score_batch]).float())
                ctx.ledger.count("vae_decode", n)
                ctx.ledger.count("reward_fwd", n)
            return torch.cat(scores), eps

        return score

    # ------------------------------------------------------------------ one update
    def _update(self, batch: steppo.StepPairs) -> dict[str, float]:
        ctx, cfg, bundle = self.ctx, self.cfg, self.ctx.bundle
        self.opt.zero_grad(set_to_none=True)
        n_global = steppo.global_pair_count(ctx, len(batch))
        sums = {"loss": 0.0, "implicit_acc": 0.0, "ratio_w": 0.0, "ratio_l": 0.0, "clipped": 0.0}
        cfg_mult = 2 if cfg.guidance_scale != 1 else 1
        bundle.unet.train()
        for s in range(0, len(batch), cfg.micro_batch_pairs):
            mb = batch.index(torch.arange(s, min(s + cfg.micro_batch_pairs, len(batch))))
            cond, uncond = self.cond.index(mb.prompt_idx), self.uncond1.repeat(len(mb))
            logp_w, logp_l = steppo.step_pair_logps(bundle, bundle.unet, mb, cond, uncond, settings=self.settings)
            with torch.no_grad(), lora.reference_mode(bundle.unet):
                ref_w, ref_l = steppo.step_pair_logps(bundle, bundle.unet, mb, cond, uncond, settings=self.settings)
            ctx.ledger.count("unet_fwdbwd", len(mb) * cfg_mult)
            ctx.ledger.count("unet_fwd", len(mb) * cfg_mult)
            per = steps.step_dpo_loss(logp_w, logp_l, ref_w, ref_l, beta=cfg.beta_spo, clip=cfg.ratio_clip)
            # sum over local pairs / global pair count; gradients summed over ranks give the global mean
            (per.sum() / max(n_global, 1)).backward()
            with torch.no_grad():
                lr_w, lr_l = logp_w - ref_w, logp_l - ref_l
                lo, hi = math.log(1 - cfg.ratio_clip), math.log(1 + cfg.ratio_clip)
                sums["loss"] += float(per.sum())
                sums["implicit_acc"] += float((lr_w > lr_l).float().sum() + 0.5 * (lr_w == lr_l).float().sum())
                sums["ratio_w"] += float(lr_w.exp().sum())
                sums["ratio_l"] += float(lr_l.exp().sum())
                sums["clipped"] += float(((lr_w < lo) | (lr_w > hi)).float().sum() + ((lr_l < lo) | (lr_l > hi)).float().sum()) / 2
        bundle.unet.eval()
        steppo.sum_grads_over_ranks(ctx, self.params)
        if cfg.grad_clip_norm > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip_norm)
        else:
            gnorm = torch.nn.utils.clip_grad_norm_(self.params, float("inf"))
        self.opt.step()
        logs = {k: v / len(batch) for k, v in sums.items()} if len(batch) else {}
        logs.update(grad_norm=float(gnorm), pairs=float(len(batch)), pairs_global=float(n_global))
        if len(batch):
            logs["t_mean"] = float(batch.timesteps.float().mean())
        return logs
