"""LRM training, as Kwai-Kolors/LPO@9c2e8b8 lrm/lrm_15/trainer/: MPCF-filtered pairs, one grid timestep per
pair, independent noise per image, 2-way cross-entropy with soft tie labels and per-prompt weights, AdamW
with warmup then linear decay.

Run by the harness loop in lpo_bench.reward_training (all time RM_TRAIN). Latents are the VAE posterior
of each image, encoded once (mean and std cached) and re-sampled every step with the data generator, as
the official trainer samples ``latent_dist`` each time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from lpo_bench.analysis import stats
from lpo_bench.data.pairs import GAP_COLUMNS, PairSet, load_pairs
from lpo_bench.diffusion.seeding import purpose_generator, seeded_init
from lpo_bench.errors import HarnessError
from lpo_bench.methods.lpo.lrm import LatentRewardModel
from lpo_bench.methods.lpo.lrm_config import LRMConfig
from lpo_bench.methods.lpo.mpcf import mpcf_keep
from lpo_bench.methods.stepwise.losses import pair_ce_loss, warmup_linear_decay


def lr_at(step: int, cfg: LRMConfig) -> float:
    return warmup_linear_decay(step, peak=cfg.lr, warmup=cfg.warmup_updates, total=cfg.max_updates)


class LRMTrainer:
    kind: ClassVar[str] = "lrm"

    def setup(self, ctx: Any) -> None:
        self.ctx, self.cfg = ctx, ctx.cfg
        pairs_src = ctx.inputs.pairs
        if not pairs_src:
            raise HarnessError("LRM training needs preference pairs: pass --pairs DIR (toy pairs from `lpo-bench toy "
                               "make-pairs`, or a local Pick-a-Pic v1 copy), or a trained LRM with --reward-model DIR")
        bundle = ctx.bundle
        train = load_pairs(pairs_src, "train", resolution=bundle.resolution, max_rows=self.cfg.max_train_pairs)
        self.kept_before, train = len(train), self._filter(train)
        self.val = load_pairs(pairs_src, "val", resolution=bundle.resolution, drop_ties=True,
                              max_rows=self.cfg.max_val_pairs)
        self.train = train
        ctx.log(f"[lrm] {len(train)} training pairs after MPCF strategy {self.cfg.mpcf_strategy} "
                f"(from {self.kept_before}); {len(self.val)} validation pairs")
        with seeded_init(ctx.seed, "lrm-init"):
            self.model = LatentRewardModel.from_bundle(bundle, guidance_scale=self.cfg.guidance_scale_vfe,
                                                       multi_scale=self.cfg.multi_scale).to(bundle.device)
        if not self.cfg.train_text_encoder:
            for e in self.model.text_encoders:
                e.requires_grad_(False)
        if not self.cfg.train_unet:
            self.model.unet.requires_grad_(False)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.mean0, self.std0 = self._encode(train.images_tensor(0))
        self.mean1, self.std1 = self._encode(train.images_tensor(1))
        self.label = torch.as_tensor(train.label_0, dtype=torch.float32)
        self.weight = torch.as_tensor(train.weight, dtype=torch.float32)
        self.gen = purpose_generator(ctx.seed, "lrm-data", ctx.rank)  # each rank draws its own pairs
        self.grid = torch.tensor(self.cfg.grid())

    def _filter(self, pairs: PairSet) -> PairSet:
        if self.cfg.mpcf_strategy == 0:
            return pairs
        if not all(c in pairs.extra.columns for c in (*GAP_COLUMNS, "different_flag")):
            raise HarnessError(f"MPCF strategy {self.cfg.mpcf_strategy} needs the columns {list(GAP_COLUMNS)} and "
                               f"different_flag in {pairs.source}; compute them (toy pairs include them) or pass "
                               f"--set mpcf_strategy=0")
        e = pairs.extra
        keep = mpcf_keep(e["different_flag"].to_numpy(), e["aesthetic_gap"].to_numpy(), e["clipscore_gap"].to_numpy(),
                         e["vqascore_gap"].to_numpy(), strategy=self.cfg.mpcf_strategy)
        if not keep.any():
            raise HarnessError(f"MPCF strategy {self.cfg.mpcf_strategy} kept no pairs of {pairs.source}; try another")
        return pairs.subset(np.nonzero(keep)[0])

    def _encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ctx.bundle.encode_posterior(images, self.cfg.encode_batch)

    def _latents(self, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        z = torch.randn(mean.shape, generator=self.gen)
        return (mean + std * z) * self.ctx.bundle.scaling_factor

    def train_step(self, step: int) -> dict[str, float]:
        cfg, b = self.cfg, self.ctx.bundle
        n = len(self.label)
        per_rank = max(1, cfg.batch_pairs // self.ctx.world_size)  # batch_pairs is the global batch
        idx = torch.randint(0, n, (min(per_rank, n),), generator=self.gen)
        t = self.grid[torch.randint(0, len(self.grid), (len(idx),), generator=self.gen)]
        x0 = self._latents(self.mean0[idx], self.std0[idx])
        x1 = self._latents(self.mean1[idx], self.std1[idx])
        e0 = torch.randn(x0.shape, generator=self.gen)  # independent noise per image (official)
        e1 = torch.randn(x1.shape, generator=self.gen)
        xt0 = b.scheduler.add_noise(x0, e0, t)
        xt1 = b.scheduler.add_noise(x1, e1, t)
        for g in self.opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        self.model.train()
        caps = [self.train.captions[i] for i in idx.tolist()]
        text = self.model.encode_text(caps + caps)
        uncond = self.model.negative_embeds(2 * len(idx))
        dev = b.device
        scores = self.model.score(torch.cat([xt0, xt1]).to(dev), torch.cat([t, t]).to(dev), text, uncond)
        s0, s1 = scores.chunk(2)
        loss = pair_ce_loss(s0, s1, self.label[idx].to(dev), self.weight[idx].to(dev))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.ctx.dist.reduce_grads_(self.params, "mean")  # one global batch over ranks
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip_norm if cfg.grad_clip_norm > 0 else float("inf"))
        self.opt.step()
        with torch.no_grad():
            lab = self.label[idx].to(dev)
            acc = ((s0 > s1).float() * (lab == 1) + (s0 < s1).float() * (lab == 0)).sum() / (lab != 0.5).sum().clamp(min=1)
        return {"loss": loss.item(), "acc": acc.item(), "grad_norm": float(gnorm), "lr": lr_at(step, cfg),
                "logit_scale": self.model.logit_scale.exp().item()}

    def total_updates(self) -> int:
        return self.cfg.max_updates

    def is_done(self, step: int) -> bool:
        return step >= self.cfg.max_updates

    @torch.no_grad()
    def validate(self) -> list[dict[str, Any]]:
        """Pairwise accuracy on held-out pairs at every grid timestep (same noise for both images)."""
        self.model.eval()
        b, dev = self.ctx.bundle, self.ctx.bundle.device
        m0, s0 = self._encode(self.val.images_tensor(0))
        m1, s1 = self._encode(self.val.images_tensor(1))
        x0, x1 = m0 * b.scaling_factor, m1 * b.scaling_factor  # posterior means: deterministic validation
        win0 = torch.as_tensor(self.val.label_0 == 1.0)
        xw, xl = torch.where(win0[:, None, None, None], x0, x1), torch.where(win0[:, None, None, None], x1, x0)
        caps = list(self.val.captions)
        rows = []
        for t in self.cfg.grid():
            g = purpose_generator(self.ctx.seed, "lrm-val", t)
            eps = torch.randn(xw.shape, generator=g)
            tt = torch.full((len(caps),), t, dtype=torch.long)
            sw, sl = [], []
            for s in range(0, len(caps), 128):
                sl_ = slice(s, s + 128)
                text = self.model.encode_text(caps[sl_])
                sw.append(self.model.score(b.scheduler.add_noise(xw[sl_], eps[sl_], tt[sl_]).to(dev), tt[sl_].to(dev), text).cpu())
                sl.append(self.model.score(b.scheduler.add_noise(xl[sl_], eps[sl_], tt[sl_]).to(dev), tt[sl_].to(dev), text).cpu())
            acc = stats.pairwise_accuracy(torch.cat(sw).numpy(), torch.cat(sl).numpy())
            m, lo, hi = stats.mean_ci(acc)
            rows.append({"kind": "rm_val_acc", "metric": "lrm_pair_acc", "timestep": t, "value": m, "ci_low": lo,
                         "ci_high": hi, "n": len(acc), "input_mode": "noisy_latent", "higher_is_better": True})
        self.ctx.log("[lrm] val acc by t: " + " ".join(f"{r['timestep']}:{r['value']:.2f}" for r in rows))
        return rows

    def save(self, out_dir: Path) -> Path:
        return self.model.save(out_dir)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
