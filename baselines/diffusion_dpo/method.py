"""Diffusion-DPO (Wallace et al., CVPR 2024, arXiv 2311.12908) behind the harness Method interface.

Offline preference pairs (ties dropped, winner first) are opened lazily (``lpo_bench.data.stream``: metadata in
RAM, images decoded per batch, in ``num_workers`` DataLoader workers) and VAE-encoded once in PREP into an on-disk
cache under the run directory (``lpo_bench.data.latent_cache``: the posterior mean and std of every image, and of
its mirror image when ``random_flip``, in shards; a cache left by an interrupted PREP is completed, not trusted
half-written); a fresh posterior sample is drawn each time a pair is used, as the official code samples
``latent_dist`` every step. Peak memory is one batch of images, whatever the dataset size.

One update consumes ``pairs_per_update`` pairs (global, over all ranks) from a seeded per-epoch permutation. Its
randomness (flips, posterior samples, t, ε, caption dropout) is drawn for the whole global batch from generators
that are the same on every rank; each rank then takes a contiguous slice of the pairs (sizes differ by at most
one) and splits it into micro-batches (gradient accumulation). So P processes train on exactly the pairs, noise
and timesteps one process does, and reach its weights up to float summation order. Per pair one t ~ U{0..T-1}
and one ε are shared by winner and loser; the policy and the frozen reference predict ε on both, and
``losses.diffusion_dpo_loss`` compares their per-element mean errors.

Reference: a frozen deep copy of the UNet for full fine-tuning (official), or the same UNet with
its LoRA adapters disabled (``lora_rank > 0``, diffusers example). Gradients are summed over
ranks by an explicit all-reduce and divided by the global pair count, so an update is the same
whatever the number of ranks.

Counters (per update): ``unet_fwdbwd`` (policy ε-predictions with gradient), ``unet_fwd``
(reference), ``text_fwd`` (captions encoded); PREP: ``vae_encode``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from lpo_bench.baselines.diffusion_dpo.config import DiffusionDPOConfig
from lpo_bench.baselines.diffusion_dpo.losses import (
    diffusion_dpo_loss,
    implicit_accuracy,
    per_sample_mse,
    sft_loss,
)
from lpo_bench.data.latent_cache import LatentCache, build_latent_cache
from lpo_bench.data.pairs import PairBatch, open_pairs
from lpo_bench.diffusion.seeding import purpose_generator
from lpo_bench.errors import HarnessError
from lpo_bench.harness.method import TrainContext
from lpo_bench.ledger import Phase
from lpo_bench.models import lora
from lpo_bench.models.bundle import PromptEmbeds

_STAT_KEYS = ("loss", "implicit_acc", "mse_w", "mse_l", "ref_mse_w", "ref_mse_l")


class DiffusionDPO:
    name: ClassVar[str] = "diffusion-dpo"
    version: ClassVar[str] = "1"
    loss_scaling: ClassVar[bool] = True  # backward and step go through ctx.precision (fp16 loss scaling)

    # ------------------------------------------------------------------ setup
    def setup(self, ctx: TrainContext[DiffusionDPOConfig]) -> None:
        self.ctx, self.cfg = ctx, ctx.cfg
        cfg, bundle = ctx.cfg, ctx.bundle
        src = ctx.inputs.pairs
        if src is None:
            raise HarnessError("Diffusion-DPO trains on preference pairs: pass --pairs DIR (toy pairs from "
                               "`lpo-bench toy make-pairs`, or a local Pick-a-Pic v2 copy)")
        base, extra = divmod(cfg.pairs_per_update, ctx.world_size)  # rank r holds base + (r < extra) pairs
        self.rank_start = ctx.rank * base + min(ctx.rank, extra)
        self.pairs_per_rank = base + (1 if ctx.rank < extra else 0)
        with ctx.ledger.phase(Phase.PREP):
            self._prepare_data(src)
        self.unet = bundle.unet
        if cfg.lora_rank > 0:
            self.params = lora.add_lora(self.unet, rank=cfg.lora_rank, alpha=cfg.lora_alpha)
            self.ref_unet = None
        else:
            self.ref_unet = None if cfg.sft else copy.deepcopy(self.unet).requires_grad_(False).eval()
            self.unet.requires_grad_(True)
            self.params = [p for p in self.unet.parameters() if p.requires_grad]
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.lr_peak = cfg.lr * cfg.pairs_per_update if cfg.scale_lr else cfg.lr
        self.opt = self._optimizer()
        # the same streams on every rank (key 0: the single-process streams): draws cover the global batch
        self.gens = {k: purpose_generator(ctx.seed, f"dpo-{k}", 0) for k in ("noise", "timestep", "augment")}
        self.epoch, self.pos = 0, 0
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)
        mode = "SFT" if cfg.sft else f"β={cfg.beta_dpo:g}"
        ctx.log(f"[diffusion-dpo] {self.n_pairs} pairs, {mode}, "
                f"{'LoRA r=' + str(cfg.lora_rank) if cfg.lora_rank else 'full UNet'}, lr {self.lr_peak:.3g}, "
                f"{cfg.pairs_per_update} pairs/update over {ctx.world_size} ranks (rank {ctx.rank}: "
                f"{self.pairs_per_rank} = {self.accum_steps} × <= {cfg.micro_batch_pairs})")

    @property
    def fp32_log_ratio(self) -> bool:
        """The policy and reference passes of the DPO loss run in fp32 under --precision bf16/fp16 (precision.py);
        the SFT variant has no reference."""
        return not self.cfg.sft

    @property
    def accum_steps(self) -> int:
        return -(-self.pairs_per_rank // self.cfg.micro_batch_pairs)

    def _prepare_data(self, src: Path) -> None:
        """Open the pairs (ties dropped) and build or complete the on-disk latent cache (PREP)."""
        cfg, bundle, ctx = self.cfg, self.ctx.bundle, self.ctx
        index = open_pairs(src, "train", max_rows=cfg.max_pairs, drop_ties=True)
        streams = ("w", "l", "w_flip", "l_flip") if cfg.random_flip else ("w", "l")
        win0 = index.label_0 == 1.0

        def make_streams(b: PairBatch) -> dict[str, torch.Tensor]:
            sel = torch.from_numpy(win0[b.idx.numpy()])[:, None, None, None]
            w, lo = torch.where(sel, b.images_0, b.images_1), torch.where(sel, b.images_1, b.images_0)
            out = {"w": w, "l": lo}
            return {**out, "w_flip": w.flip(-1), "l_flip": lo.flip(-1)} if cfg.random_flip else out

        fingerprint = {"pairs_sha256": index.sha256, "max_pairs": cfg.max_pairs, "drop_ties": True,
                       "vae": _module_sha256(bundle.vae), "vae_dtype": str(bundle.vae.dtype)}
        self.cache: LatentCache = build_latent_cache(
            ctx.run_dir / "latent_cache", index, fingerprint=fingerprint, streams=streams, make_streams=make_streams,
            encode=self._encode, batch_pairs=cfg.encode_batch, shard_pairs=cfg.latent_cache_shard_pairs,
            resolution=bundle.resolution, store_dtype=cfg.latent_cache_dtype, num_workers=cfg.num_workers,
            dist=ctx.dist, log=ctx.log)
        total, bad = len(index) + index.skipped, index.skipped + self.cache.failed
        if bad / total > 0.05:
            raise HarnessError(f"{bad} of {total} training pairs in {src} are broken (undecodable images or invalid "
                               f"rows), above the 5% threshold; repair or re-download the data")
        if len(self.cache) == 0:
            raise HarnessError(f"no training pair of {src} decodes; check the data")
        self.captions = [index.captions[i] for i in self.cache.positions.tolist()]
        self.n_pairs = len(self.cache)

    def _encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.ctx.ledger.count("vae_encode", len(images))
        return self.ctx.bundle.encode_posterior(images, self.cfg.encode_batch, torch.float32)

    def _optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        if cfg.optimizer == "adafactor":
            from transformers.optimization import Adafactor

            return Adafactor(self.params, lr=self.lr_peak, scale_parameter=False, relative_step=False,
                             warmup_init=False, weight_decay=cfg.weight_decay, clip_threshold=1.0)
        return torch.optim.AdamW(self.params, lr=self.lr_peak, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                 eps=cfg.adam_eps, weight_decay=cfg.weight_decay)

    # ------------------------------------------------------------------ data order
    def _next_indices(self, n: int) -> torch.Tensor:
        """The next ``n`` pair indices of the global stream (a seeded permutation per epoch)."""
        out = []
        while n > 0:
            if self._perm_epoch != self.epoch:
                g = purpose_generator(self.ctx.seed, "dpo-order", self.epoch)
                self._perm, self._perm_epoch = torch.randperm(self.n_pairs, generator=g), self.epoch
            take = min(n, self.n_pairs - self.pos)
            out.append(self._perm[self.pos : self.pos + take])
            self.pos, n = self.pos + take, n - take
            if self.pos == self.n_pairs:
                self.epoch, self.pos = self.epoch + 1, 0
        return torch.cat(out)

    def lr_at(self, step: int) -> float:
        """Linear warmup over lr_warmup_updates, then constant (official constant_with_warmup)."""
        w = self.cfg.lr_warmup_updates
        return self.lr_peak * (min(1.0, (step + 1) / w) if w > 0 else 1.0)

    # ------------------------------------------------------------------ training
    def _draws(self, n: int) -> dict[str, Any]:
        """The randomness of one global batch of ``n`` pairs, identical on every rank; this rank keeps its slice.

        Drawn in the order (and shapes) of a single process running the batch as one micro-batch: flips
        (augment), posterior samples z_w, z_l and ε (noise), t (timestep), caption keep (augment)."""
        cfg, b, g = self.cfg, self.ctx.bundle, self.gens
        shape = self.cache.row_shape[2:]  # (C, h, w) of the cached posteriors
        mine = slice(self.rank_start, self.rank_start + self.pairs_per_rank)
        out: dict[str, Any] = {"flips": None}
        if cfg.random_flip:
            out["flips"] = (torch.rand(2, n, generator=g["augment"]) < 0.5)[:, mine]  # independent per image
        for k in ("z_w", "z_l"):
            out[k] = torch.randn(n, *shape, generator=g["noise"])[mine].clone()
        out["t"] = torch.randint(0, b.num_train_timesteps, (n,), generator=g["timestep"])[mine]
        out["eps"] = torch.randn(n, *shape, generator=g["noise"])[mine].clone()  # one ε per pair, shared by w and l
        out["keep"] = (torch.rand(n, generator=g["augment"]) >= cfg.caption_dropout)[mine]
        return out

    def _latents(self, rows: np.ndarray, name: str, z: torch.Tensor, flip: torch.Tensor | None) -> torch.Tensor:
        mean, std = (torch.from_numpy(np.ascontiguousarray(a)) for a in self.cache.stream(rows, name))
        if flip is not None:
            fm, fs = (torch.from_numpy(np.ascontiguousarray(a)) for a in self.cache.stream(rows, name + "_flip"))
            f = flip[:, None, None, None]
            mean, std = torch.where(f, fm, mean), torch.where(f, fs, std)
        return (mean + std * z) * self.ctx.bundle.scaling_factor

    def _embeds(self, idx: torch.Tensor, keep: torch.Tensor) -> PromptEmbeds:
        caps = [self.captions[i] if k else "" for i, k in zip(idx.tolist(), keep.tolist(), strict=True)]
        self.ctx.ledger.count("text_fwd", len(caps))
        return self.ctx.bundle.encode_prompts(caps)

    @contextmanager
    def _reference(self) -> Iterator[Any]:
        if self.ref_unet is not None:
            yield self.ref_unet
        else:
            with lora.reference_mode(self.unet) as unet:
                yield unet

    def _micro_step(self, idx: torch.Tensor, d: dict[str, Any]) -> dict[str, float]:
        """Forward/backward of one micro-batch (pairs ``idx``, their draws ``d``); returns SUMS over its pairs."""
        cfg, bundle, ledger = self.cfg, self.ctx.bundle, self.ctx.ledger
        n, dev, dt = len(idx), bundle.device, bundle.dtype
        rows = self.cache.read(idx.numpy())
        flips = d["flips"]
        x0_w = self._latents(rows, "w", d["z_w"], None if flips is None else flips[0])
        x0_l = self._latents(rows, "l", d["z_l"], None if flips is None else flips[1])
        t, eps = d["t"], d["eps"]
        xt_w = bundle.scheduler.add_noise(x0_w, eps, t).to(dev, dt)
        xt_l = bundle.scheduler.add_noise(x0_l, eps, t).to(dev, dt)
        eps, t = eps.to(dev), t.to(dev)
        embeds = self._embeds(idx, d["keep"])
        if cfg.sft:
            pred = bundle.unet_forward(xt_w, t, embeds, self.unet)
            ledger.count("unet_fwdbwd", n)
            per = sft_loss(pred, eps)
            self.ctx.precision.backward(per.sum() / cfg.pairs_per_update)
            return {"loss": float(per.detach().sum()), "mse_w": float(per.detach().sum())}
        both = PromptEmbeds.cat([embeds, embeds])
        x, tt, target = torch.cat([xt_w, xt_l]), torch.cat([t, t]), torch.cat([eps, eps])
        with self.ctx.precision.exact():  # beta x (policy - reference): bf16 rounding would exceed the difference
            err_w, err_l = per_sample_mse(bundle.unet_forward(x, tt, both, self.unet), target).chunk(2)
            with torch.no_grad(), self._reference() as ref:
                ref_w, ref_l = per_sample_mse(bundle.unet_forward(x, tt, both, ref), target).chunk(2)
        ledger.count("unet_fwdbwd", 2 * n)
        ledger.count("unet_fwd", 2 * n)
        per = diffusion_dpo_loss(err_w, err_l, ref_w, ref_l, beta_dpo=cfg.beta_dpo)
        self.ctx.precision.backward(per.sum() / cfg.pairs_per_update)
        err_w, err_l = err_w.detach(), err_l.detach()
        acc = implicit_accuracy(err_w, err_l, ref_w, ref_l)
        return {"loss": float(per.detach().sum()), "implicit_acc": float(acc.sum()), "mse_w": float(err_w.sum()),
                "mse_l": float(err_l.sum()), "ref_mse_w": float(ref_w.sum()), "ref_mse_l": float(ref_l.sum())}

    def train_step(self, step: int) -> dict[str, float]:
        ctx, cfg = self.ctx, self.cfg
        with ctx.ledger.phase(Phase.UPDATE):
            lr = self.lr_at(step)
            for g in self.opt.param_groups:
                g["lr"] = lr
            idx = self._next_indices(cfg.pairs_per_update)
            draws = self._draws(len(idx))
            mine = idx[self.rank_start : self.rank_start + self.pairs_per_rank]
            sums = torch.zeros(len(_STAT_KEYS), dtype=torch.float64)
            self.unet.train()
            m = cfg.micro_batch_pairs
            for s in range(0, len(mine), m):
                part = self._micro_step(mine[s : s + m], {k: None if v is None else v[..., s : s + m] if k == "flips"
                                                          else v[s : s + m] for k, v in draws.items()})
                sums += torch.tensor([part.get(k, 0.0) for k in _STAT_KEYS], dtype=torch.float64)
            if ctx.world_size > 1:
                ctx.dist.sum_grads_(self.params)  # as one process holding the global batch (None stays None)
                s_dev = sums.to(ctx.device)
                ctx.dist.reduce_([s_dev], "sum")
                sums = s_dev.cpu()
            max_norm = cfg.grad_clip_norm if cfg.grad_clip_norm > 0 else float("inf")
            gnorm = ctx.precision.clip_and_step(self.opt, self.params, max_norm)
            self.opt.zero_grad(set_to_none=True)
            self.unet.eval()
        mean = (sums / cfg.pairs_per_update).tolist()
        logs = {k: v for k, v in zip(_STAT_KEYS, mean, strict=True) if not (cfg.sft and k not in ("loss", "mse_w"))}
        if not cfg.sft:
            logs["mse_gap_w"] = logs["mse_w"] - logs["ref_mse_w"]  # divergence monitor (issue #17)
            logs["mse_gap_l"] = logs["mse_l"] - logs["ref_mse_l"]
        logs.update(grad_norm=float(gnorm), lr=lr, epoch=self.epoch + self.pos / self.n_pairs,
                    pairs=float(self.pairs_per_rank), pairs_global=float(cfg.pairs_per_update))
        return logs

    def total_updates(self) -> int:
        return self.cfg.max_updates

    def is_done(self, step: int) -> bool:
        return step >= self.cfg.max_updates

    # ------------------------------------------------------------------ state / export
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        if self.cfg.lora_rank > 0:
            return {n: p.detach().clone() for n, p in self.unet.named_parameters() if p.requires_grad}
        return {k: v.detach().clone() for k, v in self.unet.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self._trainable_state(), "opt": copy.deepcopy(self.opt.state_dict()),
                "gens": {k: g.get_state() for k, g in self.gens.items()}, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.cfg.lora_rank > 0:
            named = dict(self.unet.named_parameters())
            with torch.no_grad():
                for n, v in state["weights"].items():
                    named[n].copy_(v)
        else:
            self.unet.load_state_dict(state["weights"], strict=True)
        self.opt.load_state_dict(state["opt"])
        for k, g in self.gens.items():
            g.set_state(state["gens"][k])
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])

    def policy_unet(self) -> Any:
        return self.unet

    def export(self, out_dir: Path) -> Path:
        out = Path(out_dir)
        if self.cfg.lora_rank > 0:
            return lora.export_lora(self.unet, out)
        self.unet.save_pretrained(out / "unet", safe_serialization=True)
        return out / "unet"


def _module_sha256(module: torch.nn.Module) -> str:
    """Identity of a module's weights (names, dtypes, shapes, values), for the latent cache's fingerprint."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        t = v.detach().to("cpu").contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
