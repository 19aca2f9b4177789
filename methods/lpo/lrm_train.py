"""LRM training, as Kwai-Kolors/LPO@9c2e8b8 lrm/lrm_15/trainer/: MPCF-filtered pairs, one grid timestep per
pair, independent noise per image, 2-way cross-entropy with soft tie labels and per-prompt weights normalised
over the global batch, AdamW with the official DeepSpeed warmup (log-shaped) then linear decay.

Run by the harness loop (all time RM_TRAIN). Data: the training split is opened lazily (metadata only; MPCF
filters on it), and each update decodes and VAE-encodes only its own pairs, sampling the posterior as the
official trainer samples ``latent_dist`` every step.

Data parallel: ``batch_pairs`` is the global batch. Its rows (``global_batch_indices``: a shuffled pass over the
data per epoch) are the same on every process; each process takes a contiguous slice (``rank_slice``) in
micro-batches of ``micro_batch_pairs``, and draws each pair's timestep, posterior sample and noise from a
generator keyed by (seed, update, position in the global batch). The loss is Σ w_n ℓ_n / Σ_global w over the
global batch (the official all-gathered loss), gradients are summed over processes (``Dist.sum_grads_``), so
clipping and the AdamW step are the same on every process and P processes give one process's update.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from lpo_bench.analysis import stats
from lpo_bench.data import pair_scores
from lpo_bench.data.global_batch import LocalChunk, RankBatches
from lpo_bench.data.pairs import GAP_COLUMNS, load_pairs, open_pairs, split_files
from lpo_bench.diffusion.seeding import purpose_generator, seeded_init
from lpo_bench.errors import HarnessError
from lpo_bench.methods.lpo.lrm import LatentRewardModel, clip_l14_text_projection
from lpo_bench.methods.lpo.lrm_config import LRMConfig
from lpo_bench.methods.lpo.mpcf import mpcf_keep
from lpo_bench.methods.stepwise.losses import pair_ce_batch_sums, pair_ce_per_pair, reward_model_lr


def lr_at(step: int, cfg: LRMConfig) -> float:
    return reward_model_lr(step, peak=cfg.lr, warmup=cfg.warmup_updates, total=cfg.max_updates,
                           warmup_shape=cfg.lr_warmup_shape)


class LRMTrainer:
    kind: ClassVar[str] = "lrm"
    loss_scaling: ClassVar[bool] = True  # backward and clip + step go through ctx.precision (fp16 loss scaling)

    def setup(self, ctx: Any) -> None:
        self.ctx, self.cfg = ctx, ctx.cfg
        cfg, bundle = ctx.cfg, ctx.bundle
        pairs_src = ctx.inputs.pairs
        if not pairs_src:
            raise HarnessError("LRM training needs preference pairs: pass --pairs DIR (toy pairs from `lpo-bench toy "
                               "make-pairs`, or a local Pick-a-Pic v1 copy), or a trained LRM with --reward-model DIR")
        train = open_pairs(pairs_src, "train", max_rows=cfg.max_train_pairs)  # metadata only
        if ctx.inputs.pair_scores is not None:  # MPCF columns computed by `lpo-bench score-pairs`
            train = pair_scores.with_scores(train, ctx.inputs.pair_scores)
        self.kept_before, self.train = len(train), self._filter(train)
        val_split = cfg.val_split
        if val_split == "auto":  # the official trainer validates on Pick-a-Pic's validation_unique
            val_split = "validation_unique" if split_files(Path(pairs_src), "validation_unique") else "val"
        self.val = load_pairs(pairs_src, val_split, resolution=bundle.resolution, drop_ties=True,
                              max_rows=cfg.max_val_pairs)
        ctx.log(f"[lrm] {len(self.train)} training pairs after MPCF strategy {cfg.mpcf_strategy} "
                f"(from {self.kept_before}); {len(self.val)} validation pairs ({val_split})")
        with seeded_init(ctx.seed, "lrm-init"):
            self.model = LatentRewardModel.from_bundle(bundle, guidance_scale=cfg.guidance_scale_vfe,
                                                       multi_scale=cfg.multi_scale).to(bundle.device)
        if self.model.text_projection is not None and cfg.text_projection_init == "clip-l14":
            found = clip_l14_text_projection(self.model.text_dim, ctx.weights_dir)
            if found is not None:
                self.model.init_text_projection(*found)
        ctx.log(f"[lrm] text_projection starts from {self.model.text_projection_init}")
        if not cfg.train_text_encoder:
            for e in self.model.text_encoders:
                e.requires_grad_(False)
        if not cfg.train_unet:
            self.model.unet.requires_grad_(False)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.label = torch.from_numpy(np.array(self.train.label_0, dtype=np.float32))  # a copy: arrow memory is read-only
        self.weight = torch.from_numpy(np.array(self.train.weight, dtype=np.float64))
        self.grid = torch.tensor(cfg.grid())
        self.data = RankBatches(self.train, batch_pairs=cfg.batch_pairs, micro_batch_pairs=cfg.micro_batch_pairs,
                                updates=cfg.max_updates, rank=ctx.rank, world_size=ctx.world_size, seed=ctx.seed,
                                purpose="lrm-batch", resolution=bundle.resolution, num_workers=cfg.num_workers)

    def _filter(self, pairs: Any) -> Any:
        if self.cfg.mpcf_strategy == 0:
            return pairs
        if not all(c in pairs.extra.columns for c in (*GAP_COLUMNS, "different_flag")):
            raise HarnessError(f"MPCF strategy {self.cfg.mpcf_strategy} needs the columns {list(GAP_COLUMNS)} and "
                               f"different_flag in {pairs.source}; compute them with `lpo-bench score-pairs --pairs DIR` "
                               f"and pass --pair-scores RUN (toy pairs include them), or pass --set mpcf_strategy=0")
        e = pairs.extra
        keep = mpcf_keep(e["different_flag"].to_numpy(), e["aesthetic_gap"].to_numpy(), e["clipscore_gap"].to_numpy(),
                         e["vqascore_gap"].to_numpy(), strategy=self.cfg.mpcf_strategy)
        if not keep.any():
            raise HarnessError(f"MPCF strategy {self.cfg.mpcf_strategy} kept no pairs of {pairs.source}; try another")
        return pairs.subset(np.nonzero(keep)[0])

    def _encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return self.ctx.bundle.encode_posterior(images, self.cfg.encode_batch)

    def _noisy_latents(self, step: int, chunk: LocalChunk) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t of images 0, x_t of images 1, t) [m]: per pair, from its own generator, a grid t, a posterior sample
        of each image and independent noise for each (official)."""
        b = self.ctx.bundle
        m = len(chunk.rows)
        mean, std = self._encode(torch.cat([chunk.images_0, chunk.images_1]))
        self.ctx.ledger.count("vae_encode", 2 * m)
        t = torch.empty(m, dtype=torch.long)
        z = torch.empty(4, m, *mean.shape[1:])  # posterior draw 0, 1; noise 0, 1
        for i, pos in enumerate(chunk.positions.tolist()):
            g = purpose_generator(self.ctx.seed, "lrm-pair", step, pos)
            t[i] = self.grid[torch.randint(0, len(self.grid), (1,), generator=g)]
            z[:, i] = torch.randn((4, *mean.shape[1:]), generator=g)
        x0 = (mean[:m] + std[:m] * z[0]) * b.scaling_factor
        x1 = (mean[m:] + std[m:] * z[1]) * b.scaling_factor
        return b.scheduler.add_noise(x0, z[2], t), b.scheduler.add_noise(x1, z[3], t), t

    def train_step(self, step: int) -> dict[str, float]:
        cfg, dev = self.cfg, self.ctx.bundle.device
        w_total = float(self.weight[self.data.global_indices(step)].sum())  # Σ w over the global batch
        lr = lr_at(step, cfg)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        sums = torch.zeros(3, dtype=torch.float64)  # Σ w ℓ, correct, decided (this process)
        for chunk in self.data.local(step):
            if not len(chunk.rows):
                continue
            xt0, xt1, t = self._noisy_latents(step, chunk)
            caps = [self.train.captions[i] for i in chunk.rows.tolist()]
            m = len(caps)
            text = self.model.encode_text(caps + caps)
            uncond = self.model.negative_embeds(2 * m)
            scores = self.model.score(torch.cat([xt0, xt1]).to(dev), torch.cat([t, t]).to(dev), text, uncond)
            s0, s1 = scores.chunk(2)
            lab = self.label[chunk.rows].to(dev)
            w = self.weight[chunk.rows].to(dev, torch.float32)
            per = pair_ce_per_pair(s0, s1, lab)
            self.ctx.precision.backward((per * w).sum() / w_total)  # loss-scaled under fp16
            self.ctx.ledger.count("reward_fwdbwd", 2 * m)
            sums += pair_ce_batch_sums(per, s0, s1, lab, w)
        self.ctx.dist.sum_grads_(self.params)  # the global batch's gradient on every process
        gnorm = self.ctx.precision.clip_and_step(self.opt, self.params, cfg.grad_clip_norm)  # clip (0: off), step
        sums = sums.to(dev)
        self.ctx.dist.reduce_([sums], "sum")
        loss_sum, correct, decided = sums.tolist()
        return {"loss": loss_sum / w_total, "acc": correct / max(decided, 1.0), "grad_norm": float(gnorm), "lr": lr,
                "logit_scale": self.model.logit_scale.exp().item(), "pairs": float(cfg.batch_pairs)}

    def total_updates(self) -> int:
        return self.cfg.max_updates

    def is_done(self, step: int) -> bool:
        return step >= self.cfg.max_updates

    @torch.no_grad()
    def validate(self) -> list[dict[str, Any]]:
        """Pairwise accuracy on held-out pairs at every grid timestep (same noise for both images)."""
        self.model.eval()
        b, dev = self.ctx.bundle, self.ctx.bundle.device
        m0, _ = self._encode(self.val.images_tensor(0))
        m1, _ = self._encode(self.val.images_tensor(1))
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
        """Weights and optimiser; the data order is a function of the update number (nothing else to keep)."""
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
