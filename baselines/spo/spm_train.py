"""SPM training (RockeyCoss/SPO@27a8642 step_aware_preference_model/trainer/): run by the harness loop in
lpo_bench.reward_training (all time RM_TRAIN), standalone (``lpo-bench train-reward --kind spm``) or as
SPO's first stage.

Per pair: one t ~ U{0..T-1}; both images' VAE posteriors are sampled and noised with the SAME ε at t;
the frozen base UNet predicts the CFG-guided ε̂ (scale 5); x̂0 is VAE-decoded and scored by the SPM at
t. Loss: PickScore's 2-way cross-entropy with soft labels (ties ½/½, shifted so a perfect tie costs
0), each pair weighted by 1/(pairs of its prompt), weights normalised in the batch. AdamW with linear
warmup then linear decay; the gradient norm is really clipped.

``clean_warmup_updates`` (toy only; 0 for the real presets, whose PickScore base is already a clean
scorer) first trains that many updates on the raw, clean pair images at t = 0, without UNet or VAE.

Counters per update: ``unet_fwd`` (4 per pair: 2 images × CFG), ``vae_decode`` (2 per pair),
``reward_fwdbwd`` (2 per pair); setup: ``vae_encode``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from lpo_bench.analysis import stats
from lpo_bench.baselines.spo.spm import StepAwarePreferenceModel, predicted_clean_images
from lpo_bench.baselines.spo.spm_config import SPMConfig
from lpo_bench.data.pairs import load_pairs
from lpo_bench.diffusion.seeding import purpose_generator
from lpo_bench.errors import HarnessError
from lpo_bench.methods.stepwise.losses import pair_ce_per_pair, warmup_linear_decay


def lr_at(step: int, cfg: SPMConfig) -> float:
    """Linear warmup to cfg.lr, then linear decay reaching 0 at lr_decay_updates (counted in noisy updates)."""
    return warmup_linear_decay(step, peak=cfg.lr, warmup=cfg.warmup_updates, total=cfg.lr_decay_updates)


class SPMTrainer:
    kind: ClassVar[str] = "spm"

    def setup(self, ctx: Any) -> None:
        self.ctx, self.cfg = ctx, ctx.cfg
        cfg, bundle = ctx.cfg, ctx.bundle
        src = ctx.inputs.pairs
        if not src:
            raise HarnessError("SPM training needs preference pairs: pass --pairs DIR (toy pairs from `lpo-bench toy "
                               "make-pairs`, or a local Pick-a-Pic v1 copy), or give a trained SPM with --reward-model DIR")
        self.train = load_pairs(src, "train", resolution=bundle.resolution, max_rows=cfg.max_train_pairs)
        self.val = load_pairs(src, "val", resolution=bundle.resolution, drop_ties=True, max_rows=cfg.max_val_pairs)
        if cfg.base == "pickscore":
            model = StepAwarePreferenceModel.from_pickscore(weights_dir=ctx.weights_dir, guidance_scale=cfg.guidance_scale)
        else:
            model = StepAwarePreferenceModel.tiny(bundle.tokenizers[0], image_size=cfg.tiny_image_size,
                                                  hidden=cfg.tiny_hidden, layers=cfg.tiny_layers,
                                                  patch_size=cfg.tiny_patch_size, seed=ctx.seed,
                                                  guidance_scale=cfg.guidance_scale,
                                                  text_encoder=bundle.text_encoders[0] if cfg.tiny_text_from_backbone
                                                  else None)
        self.model = model.to(bundle.device).attach(bundle)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.post0 = self._encode(self.train.images_tensor(0))
        self.post1 = self._encode(self.train.images_tensor(1))
        self.label = torch.as_tensor(self.train.label_0, dtype=torch.float32)
        self.weight = torch.as_tensor(self.train.weight, dtype=torch.float32)
        self.gen = purpose_generator(ctx.seed, "spm-data")
        ctx.log(f"[spm] base {model.base_checkpoint}; {len(self.train)} training pairs, {len(self.val)} validation "
                f"pairs; {cfg.clean_warmup_updates} clean + {cfg.max_updates} noisy updates")

    def _encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.ctx.ledger.count("vae_encode", len(images))
        return self.ctx.bundle.encode_posterior(images, self.cfg.encode_batch)

    def _noisy_images(self, idx: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoded CFG x̂0 of both images of each pair, noised with one shared ε at t."""
        b, ledger = self.ctx.bundle, self.ctx.ledger
        n, dev = len(idx), b.device
        lat = []
        for mean, std in (self.post0, self.post1):
            z = torch.randn(mean[idx].shape, generator=self.gen)
            lat.append((mean[idx] + std[idx] * z) * b.scaling_factor)
        eps = torch.randn(lat[0].shape, generator=self.gen)
        x = torch.cat([b.scheduler.add_noise(lt, eps, t) for lt in lat]).to(dev, b.dtype)
        tt = torch.cat([t, t]).to(dev)
        caps = [self.train.captions[i] for i in idx.tolist()]
        cond, uncond = b.encode_prompts(caps + caps), b.encode_negative(2 * n)
        images = predicted_clean_images(b, x, tt, cond, uncond, self.cfg.guidance_scale)
        ledger.count("unet_fwd", 2 * 2 * n if self.cfg.guidance_scale != 1 else 2 * n)
        ledger.count("vae_decode", 2 * n)
        return images[:n], images[n:]

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        clean = step < cfg.clean_warmup_updates
        noisy_step = step - cfg.clean_warmup_updates
        # clean stage: the same linear warmup, then constant; noisy stage: the official warmup + decay
        lr = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup_updates, 1)) if clean else lr_at(noisy_step, cfg)
        for g in self.opt.param_groups:
            g["lr"] = lr
        n = len(self.label)
        idx = torch.randint(0, n, (min(cfg.batch_pairs, n),), generator=self.gen)
        w_sum = float(self.weight[idx].sum())
        self.model.train()
        loss_sum, correct, decided = 0.0, 0.0, 0.0
        for chunk in idx.split(cfg.micro_batch_pairs):
            m = len(chunk)
            if clean:
                t = torch.zeros(m, dtype=torch.long)
                img0, img1 = self.train.images_tensor(0, chunk.numpy()), self.train.images_tensor(1, chunk.numpy())
            else:
                t = torch.randint(0, self.ctx.bundle.num_train_timesteps, (m,), generator=self.gen)
                img0, img1 = self._noisy_images(chunk, t)
            dev = self.model.pixel_mean.device
            text = self.model.text_features([self.train.captions[i] for i in chunk.tolist()])
            s = self.model.score_images(torch.cat([img0, img1]), torch.cat([t, t]).to(dev), torch.cat([text, text]))
            self.ctx.ledger.count("reward_fwdbwd", 2 * m)
            s0, s1 = s.chunk(2)
            lab, w = self.label[chunk].to(dev), self.weight[chunk].to(dev)
            per = pair_ce_per_pair(s0, s1, lab)  # PickScore's cross-entropy, the LRM's too
            ((per * w).sum() / w_sum).backward()
            loss_sum += float((per.detach() * w).sum())
            with torch.no_grad():
                win = ((s0 > s1) & (lab == 1)) | ((s0 < s1) & (lab == 0))
                correct += float(win.sum())
                decided += float((lab != 0.5).sum())
        max_norm = cfg.grad_clip_norm if cfg.grad_clip_norm > 0 else float("inf")
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.model.eval()
        return {"loss": loss_sum / w_sum, "acc": correct / max(decided, 1.0), "grad_norm": float(gnorm), "lr": lr,
                "logit_scale": float(self.model.clip.logit_scale.detach().exp()), "clean": float(clean)}

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
        return {"model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                "opt": self.opt.state_dict(), "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"], strict=True)
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
