"""SPM training (RockeyCoss/SPO@27a8642 step_aware_preference_model/trainer/): run by the harness loop (all time
RM_TRAIN), standalone (``lpo-bench train-reward --kind spm``) or as SPO's first stage.

Per pair: one t ~ U{0..T-1}; both images' VAE posteriors are sampled and noised with the SAME ε at t;
the frozen base UNet predicts the CFG-guided ε̂ (scale 5); x̂0 is VAE-decoded and scored by the SPM at
t. Loss: PickScore's 2-way cross-entropy with soft labels (ties ½/½, shifted so a perfect tie costs
0), each pair weighted by 1/(pairs of its prompt), weights normalised over the global batch. AdamW with the
official DeepSpeed warmup (log-shaped) then linear decay reaching 0 at ``lr_decay_updates``; the gradient norm is
really clipped.

Data: the training split is opened lazily (metadata only); each update decodes and VAE-encodes only its own pairs.
Data parallel as the LRM trainer: ``batch_pairs`` is the global batch, its rows are the same on every process, each
process takes a contiguous slice in micro-batches, each pair's t, posterior samples and ε come from a generator
keyed by (seed, update, position in the global batch), gradients are summed over processes, so P processes make
one process's update and each does 1/P of the work (the ledger's GPU-hours are per-device time x devices).

``clean_warmup_updates`` (toy only; 0 for the real presets, whose PickScore base is already a clean
scorer) first trains that many updates on the raw, clean pair images at t = 0, without UNet or VAE.

Counters per update and process: ``vae_encode`` (2 per pair), ``unet_fwd`` (4 per pair: 2 images × CFG),
``vae_decode`` (2 per pair), ``reward_fwdbwd`` (2 per pair).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from lpo_bench.analysis import stats
from lpo_bench.baselines.spo.spm import StepAwarePreferenceModel, predicted_clean_images
from lpo_bench.baselines.spo.spm_config import SPMConfig
from lpo_bench.data.global_batch import LocalChunk, RankBatches
from lpo_bench.data.pairs import load_pairs, open_pairs
from lpo_bench.diffusion.seeding import purpose_generator
from lpo_bench.errors import HarnessError
from lpo_bench.methods.stepwise.losses import pair_ce_batch_sums, pair_ce_per_pair, reward_model_lr


def lr_at(step: int, cfg: SPMConfig) -> float:
    """The noisy stage's learning rate (``step`` counted in noisy updates): warmup to cfg.lr (shape
    cfg.lr_warmup_shape), then linear decay reaching 0 at lr_decay_updates."""
    return reward_model_lr(step, peak=cfg.lr, warmup=cfg.warmup_updates, total=cfg.lr_decay_updates,
                           warmup_shape=cfg.lr_warmup_shape)


class SPMTrainer:
    kind: ClassVar[str] = "spm"
    loss_scaling: ClassVar[bool] = True  # backward and clip + step go through ctx.precision (fp16 loss scaling)

    def setup(self, ctx: Any) -> None:
        self.ctx, self.cfg = ctx, ctx.cfg
        cfg, bundle = ctx.cfg, ctx.bundle
        src = ctx.inputs.pairs
        if not src:
            raise HarnessError("SPM training needs preference pairs: pass --pairs DIR (toy pairs from `lpo-bench toy "
                               "make-pairs`, or a local Pick-a-Pic v1 copy), or give a trained SPM with --reward-model DIR")
        self.train = open_pairs(src, "train", max_rows=cfg.max_train_pairs)  # metadata only
        self.val = load_pairs(src, "val", resolution=bundle.resolution, drop_ties=True, max_rows=cfg.max_val_pairs)
        if cfg.base == "pickscore":
            model = StepAwarePreferenceModel.from_pickscore(weights_dir=ctx.weights_dir, guidance_scale=cfg.guidance_scale,
                                                            antialias=cfg.antialias)
        else:
            model = StepAwarePreferenceModel.tiny(bundle.tokenizers[0], image_size=cfg.tiny_image_size,
                                                  hidden=cfg.tiny_hidden, layers=cfg.tiny_layers,
                                                  patch_size=cfg.tiny_patch_size, seed=ctx.seed,
                                                  guidance_scale=cfg.guidance_scale,
                                                  text_encoder=bundle.text_encoders[0] if cfg.tiny_text_from_backbone
                                                  else None, antialias=cfg.antialias)
        self.model = model.to(bundle.device).attach(bundle)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.label = torch.from_numpy(np.array(self.train.label_0, dtype=np.float32))  # a copy: arrow memory is read-only
        self.weight = torch.from_numpy(np.array(self.train.weight, dtype=np.float64))
        self.data = RankBatches(self.train, batch_pairs=cfg.batch_pairs, micro_batch_pairs=cfg.micro_batch_pairs,
                                updates=cfg.clean_warmup_updates + cfg.max_updates, rank=ctx.rank,
                                world_size=ctx.world_size, seed=ctx.seed, purpose="spm-batch",
                                resolution=bundle.resolution, num_workers=cfg.num_workers)
        ctx.log(f"[spm] base {model.base_checkpoint}; {len(self.train)} training pairs, {len(self.val)} validation "
                f"pairs; {cfg.clean_warmup_updates} clean + {cfg.max_updates} noisy updates")

    def _encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.ctx.ledger.count("vae_encode", len(images))
        with torch.no_grad():
            return self.ctx.bundle.encode_posterior(images, self.cfg.encode_batch)

    def _noisy_images(self, step: int, chunk: LocalChunk, caps: list[str]) -> tuple[torch.Tensor, ...]:
        """(decoded CFG x̂0 of images 0, of images 1, t) [m]: per pair, from its own generator, t ~ U{0..T-1}, a
        posterior sample of each image and one ε shared by both (official)."""
        b = self.ctx.bundle
        m, dev = len(chunk.rows), b.device
        mean, std = self._encode(torch.cat([chunk.images_0, chunk.images_1]))
        t = torch.empty(m, dtype=torch.long)
        z = torch.empty(3, m, *mean.shape[1:])  # posterior draw 0, 1; shared noise
        for i, pos in enumerate(chunk.positions.tolist()):
            g = purpose_generator(self.ctx.seed, "spm-pair", step, pos)
            t[i] = torch.randint(0, b.num_train_timesteps, (1,), generator=g)
            z[:, i] = torch.randn((3, *mean.shape[1:]), generator=g)
        lat = [(mean[:m] + std[:m] * z[0]) * b.scaling_factor, (mean[m:] + std[m:] * z[1]) * b.scaling_factor]
        x = torch.cat([b.scheduler.add_noise(lt, z[2], t) for lt in lat]).to(dev, b.dtype)
        tt = torch.cat([t, t]).to(dev)
        cond, uncond = b.encode_prompts(caps + caps), b.encode_negative(2 * m)
        images = predicted_clean_images(b, x, tt, cond, uncond, self.cfg.guidance_scale)
        self.ctx.ledger.count("unet_fwd", 2 * 2 * m if self.cfg.guidance_scale != 1 else 2 * m)
        self.ctx.ledger.count("vae_decode", 2 * m)
        return images[:m], images[m:], t

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        clean = step < cfg.clean_warmup_updates
        noisy_step = step - cfg.clean_warmup_updates
        # clean stage: the same linear warmup, then constant; noisy stage: the official warmup + decay
        lr = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup_updates, 1)) if clean else lr_at(noisy_step, cfg)
        for g in self.opt.param_groups:
            g["lr"] = lr
        w_total = float(self.weight[self.data.global_indices(step)].sum())  # Σ w over the global batch
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        dev = self.model.pixel_mean.device
        sums = torch.zeros(3, dtype=torch.float64)  # Σ w ℓ, correct, decided (this process)
        for chunk in self.data.local(step):
            m = len(chunk.rows)
            if not m:
                continue
            caps = [self.train.captions[i] for i in chunk.rows.tolist()]
            if clean:
                t = torch.zeros(m, dtype=torch.long)
                img0, img1 = chunk.images_0, chunk.images_1
            else:
                img0, img1, t = self._noisy_images(step, chunk, caps)
            text = self.model.text_features(caps)
            s = self.model.score_images(torch.cat([img0, img1]), torch.cat([t, t]).to(dev), torch.cat([text, text]))
            self.ctx.ledger.count("reward_fwdbwd", 2 * m)
            s0, s1 = s.chunk(2)
            lab, w = self.label[chunk.rows].to(dev), self.weight[chunk.rows].to(dev, torch.float32)
            per = pair_ce_per_pair(s0, s1, lab)  # PickScore's cross-entropy, the LRM's too
            self.ctx.precision.backward((per * w).sum() / w_total)  # loss-scaled under fp16
            sums += pair_ce_batch_sums(per, s0, s1, lab, w)
        self.ctx.dist.sum_grads_(self.params)  # the global batch's gradient on every process
        gnorm = self.ctx.precision.clip_and_step(self.opt, self.params, cfg.grad_clip_norm)  # clip (0: off), step
        self.opt.zero_grad(set_to_none=True)
        self.model.eval()
        sums = sums.to(dev)
        self.ctx.dist.reduce_([sums], "sum")
        loss_sum, correct, decided = sums.tolist()
        return {"loss": loss_sum / w_total, "acc": correct / max(decided, 1.0), "grad_norm": float(gnorm), "lr": lr,
                "logit_scale": float(self.model.clip.logit_scale.detach().exp()), "clean": float(clean),
                "pairs": float(cfg.batch_pairs)}

    def total_updates(self) -> int:
        return self.cfg.clean_warmup_updates + self.cfg.max_updates

    def is_done(self, step: int) -> bool:
        return step >= self.cfg.clean_warmup_updates + self.cfg.max_updates

    @torch.no_grad()
    def validate(self) -> list[dict[str, Any]]:
        """Pairwise accuracy on held-out pairs at each val timestep: posterior means, one shared ε per pair."""
        self.model.eval()
        b = self.ctx.bundle
        m0, _ = self._encode(self.val.images_tensor(0))
        m1, _ = self._encode(self.val.images_tensor(1))
        win0 = torch.as_tensor(self.val.label_0 == 1.0)[:, None, None, None]
        xw, xl = torch.where(win0, m0, m1) * b.scaling_factor, torch.where(win0, m1, m0) * b.scaling_factor
        caps = list(self.val.captions)
        rows = []
        for t in self.cfg.val_timesteps:
            eps = torch.randn(xw.shape, generator=purpose_generator(self.ctx.seed, "spm-val", t))
            sw, sl = [], []
            for s in range(0, len(caps), self.cfg.micro_batch_pairs):
                sl_ = slice(s, s + self.cfg.micro_batch_pairs)
                n = len(caps[sl_])
                tt = torch.full((n,), t, dtype=torch.long)
                x = torch.cat([b.scheduler.add_noise(xw[sl_], eps[sl_], tt), b.scheduler.add_noise(xl[sl_], eps[sl_], tt)])
                cond, uncond = b.encode_prompts(caps[sl_] * 2), b.encode_negative(2 * n)
                images = predicted_clean_images(b, x.to(b.device, b.dtype), torch.cat([tt, tt]).to(b.device), cond,
                                                uncond, self.cfg.guidance_scale)
                text = self.model.text_features(caps[sl_])
                sc = self.model.score_images(images, torch.cat([tt, tt]).to(self.model.pixel_mean.device),
                                             torch.cat([text, text])).float().cpu()
                sw.append(sc[:n])
                sl.append(sc[n:])
            acc = stats.pairwise_accuracy(torch.cat(sw).numpy(), torch.cat(sl).numpy())
            mean, lo, hi = stats.mean_ci(acc)
            rows.append({"kind": "rm_val_acc", "metric": "spm_pair_acc", "timestep": t, "value": mean, "ci_low": lo,
                         "ci_high": hi, "n": len(acc), "input_mode": "x0_pred_decoded", "higher_is_better": True})
        self.ctx.log("[spm] val acc by t: " + " ".join(f"{r['timestep']}:{r['value']:.2f}" for r in rows))
        return rows

    def save(self, out_dir: Path) -> Path:
        return self.model.save(out_dir)

    def state_dict(self) -> dict[str, Any]:
        """Weights and optimiser; the data order is a function of the update number (nothing else to keep)."""
        return {"model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"], strict=True)
        self.opt.load_state_dict(state["opt"])
