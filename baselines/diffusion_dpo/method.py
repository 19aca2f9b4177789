"""Diffusion-DPO (Wallace et al., CVPR 2024, arXiv 2311.12908) behind the harness Method interface.

Offline preference pairs (ties dropped, winner first) are VAE-encoded once in PREP: the posterior
mean and std of every image (and of its mirror image when ``random_flip``) are cached on the CPU,
and a fresh posterior sample is drawn each time a pair is used, as the official code samples
``latent_dist`` every step. One update consumes ``pairs_per_update`` pairs from a seeded per-epoch
permutation, split evenly over ranks and into micro-batches (gradient accumulation). Per pair one
t ~ U{0..T-1} and one ε are shared by winner and loser; the policy and the frozen reference
predict ε on both, and ``losses.diffusion_dpo_loss`` compares their per-element mean errors.

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

import torch

from lpo_bench.baselines.diffusion_dpo.config import DiffusionDPOConfig
from lpo_bench.baselines.diffusion_dpo.losses import (
    diffusion_dpo_loss,
    implicit_accuracy,
    per_sample_mse,
    sft_loss,
)
from lpo_bench.data.pairs import load_pairs
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

    # ------------------------------------------------------------------ setup
    def setup(self, ctx: TrainContext[DiffusionDPOConfig]) -> None:
        self.ctx, self.cfg = ctx, ctx.cfg
        cfg, bundle = ctx.cfg, ctx.bundle
        src = ctx.inputs.pairs
        if src is None:
            raise HarnessError("Diffusion-DPO trains on preference pairs: pass --pairs DIR (toy pairs from "
                               "`lpo-bench toy make-pairs`, or a local Pick-a-Pic v2 copy)")
        per_rank, rem = divmod(cfg.pairs_per_update, ctx.world_size)
        if rem or per_rank < 1:
            raise HarnessError(f"pairs_per_update={cfg.pairs_per_update} must be a positive multiple of the "
                               f"{ctx.world_size} ranks; change --set pairs_per_update=...")
        self.pairs_per_rank = per_rank
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
        r = ctx.rank
        self.gens = {k: purpose_generator(ctx.seed, f"dpo-{k}", r) for k in ("noise", "timestep", "augment")}
        self.epoch, self.pos = 0, 0
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)
        mode = "SFT" if cfg.sft else f"β={cfg.beta_dpo:g}"
        ctx.log(f"[diffusion-dpo] {self.n_pairs} pairs, {mode}, "
                f"{'LoRA r=' + str(cfg.lora_rank) if cfg.lora_rank else 'full UNet'}, lr {self.lr_peak:.3g}, "
                f"{cfg.pairs_per_update} pairs/update = {ctx.world_size} ranks × {self.accum_steps} × "
                f"{cfg.micro_batch_pairs}")

    @property
    def accum_steps(self) -> int:
        return -(-self.pairs_per_rank // self.cfg.micro_batch_pairs)

    def _prepare_data(self, src: Path) -> None:
        """Load pairs (ties dropped), put the winner first, cache VAE posteriors (PREP)."""
        cfg, bundle = self.cfg, self.ctx.bundle
        pairs = load_pairs(src, "train", resolution=bundle.resolution, max_rows=cfg.max_pairs, drop_ties=True)
        win0 = torch.from_numpy(pairs.label_0 == 1.0)
        self.captions = list(pairs.captions)
        self.n_pairs = len(pairs)
        im0, im1 = pairs.images_tensor(0), pairs.images_tensor(1)
        sel = win0[:, None, None, None]
        img_w, img_l = torch.where(sel, im0, im1), torch.where(sel, im1, im0)
        del im0, im1
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {
            "w": self._encode(img_w), "l": self._encode(img_l)}
        if cfg.random_flip:
            self.cache["w_flip"] = self._encode(img_w.flip(-1))
            self.cache["l_flip"] = self._encode(img_l.flip(-1))

    def _encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        store = torch.float16 if self.cfg.latent_cache_dtype == "fp16" else torch.float32
        self.ctx.ledger.count("vae_encode", len(images))
        return self.ctx.bundle.encode_posterior(images, self.cfg.encode_batch, store)

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
    def _latents(self, key: str, idx: torch.Tensor, flip: torch.Tensor | None) -> torch.Tensor:
        mean, std = self.cache[key][0][idx].float(), self.cache[key][1][idx].float()
        if flip is not None:
            f = flip[:, None, None, None]
            mean = torch.where(f, self.cache[key + "_flip"][0][idx].float(), mean)
            std = torch.where(f, self.cache[key + "_flip"][1][idx].float(), std)
        z = torch.randn(mean.shape, generator=self.gens["noise"])
        return (mean + std * z) * self.ctx.bundle.scaling_factor

    def _embeds(self, idx: torch.Tensor) -> PromptEmbeds:
        cfg, bundle = self.cfg, self.ctx.bundle
        keep = torch.rand(len(idx), generator=self.gens["augment"]) >= cfg.caption_dropout
        caps = [self.captions[i] if k else "" for i, k in zip(idx.tolist(), keep.tolist(), strict=True)]
        self.ctx.ledger.count("text_fwd", len(caps))
        return bundle.encode_prompts(caps)

    @contextmanager
    def _reference(self) -> Iterator[Any]:
        if self.ref_unet is not None:
            yield self.ref_unet
        else:
            with lora.reference_mode(self.unet) as unet:
                yield unet

    def _micro_step(self, idx: torch.Tensor) -> dict[str, float]:
        """Forward/backward of one micro-batch; returns SUMS over its pairs."""
        cfg, bundle, ledger = self.cfg, self.ctx.bundle, self.ctx.ledger
        n, dev, dt = len(idx), bundle.device, bundle.dtype
        flips = None
        if cfg.random_flip:
            flips = torch.rand(2, n, generator=self.gens["augment"]) < 0.5  # independent per image
        x0_w = self._latents("w", idx, None if flips is None else flips[0])
        x0_l = self._latents("l", idx, None if flips is None else flips[1])
        t = torch.randint(0, bundle.num_train_timesteps, (n,), generator=self.gens["timestep"])
        eps = torch.randn(x0_w.shape, generator=self.gens["noise"])  # one ε per pair, shared by w and l
        xt_w = bundle.scheduler.add_noise(x0_w, eps, t).to(dev, dt)
        xt_l = bundle.scheduler.add_noise(x0_l, eps, t).to(dev, dt)
        eps, t = eps.to(dev), t.to(dev)
        embeds = self._embeds(idx)
        if cfg.sft:
            pred = bundle.unet_forward(xt_w, t, embeds, self.unet)
            ledger.count("unet_fwdbwd", n)
            per = sft_loss(pred, eps)
            (per.sum() / cfg.pairs_per_update).backward()
            return {"loss": float(per.detach().sum()), "mse_w": float(per.detach().sum())}
        both = PromptEmbeds.cat([embeds, embeds])
        x, tt, target = torch.cat([xt_w, xt_l]), torch.cat([t, t]), torch.cat([eps, eps])
        err_w, err_l = per_sample_mse(bundle.unet_forward(x, tt, both, self.unet), target).chunk(2)
        ledger.count("unet_fwdbwd", 2 * n)
        with torch.no_grad(), self._reference() as ref:
            ref_w, ref_l = per_sample_mse(bundle.unet_forward(x, tt, both, ref), target).chunk(2)
        ledger.count("unet_fwd", 2 * n)
        per = diffusion_dpo_loss(err_w, err_l, ref_w, ref_l, beta_dpo=cfg.beta_dpo)
        (per.sum() / cfg.pairs_per_update).backward()
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
            mine = idx[ctx.rank * self.pairs_per_rank : (ctx.rank + 1) * self.pairs_per_rank]
            sums = torch.zeros(len(_STAT_KEYS), dtype=torch.float64)
            self.unet.train()
            for chunk in mine.split(cfg.micro_batch_pairs):
                part = self._micro_step(chunk)
                sums += torch.tensor([part.get(k, 0.0) for k in _STAT_KEYS], dtype=torch.float64)
            if ctx.world_size > 1:
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
                for p, g in zip(self.params, grads, strict=True):
                    p.grad = g
                s_dev = sums.to(ctx.device)
                ctx.dist.reduce_([*grads, s_dev], "sum")
                sums = s_dev.cpu()
            max_norm = cfg.grad_clip_norm if cfg.grad_clip_norm > 0 else float("inf")
            gnorm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.unet.eval()
        mean = (sums / cfg.pairs_per_update).tolist()
        logs = {k: v for k, v in zip(_STAT_KEYS, mean, strict=True) if not (cfg.sft and k not in ("loss", "mse_w"))}
        if not cfg.sft:
            logs["mse_gap_w"] = logs["mse_w"] - logs["ref_mse_w"]  # divergence monitor (issue #17)
            logs["mse_gap_l"] = logs["mse_l"] - logs["ref_mse_l"]
        logs.update(grad_norm=float(gnorm), lr=lr, epoch=self.epoch + self.pos / self.n_pairs)
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

