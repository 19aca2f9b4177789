"""WinnerSFT: the denoising loss on the preferred image of each pair, LoRA on the attention projections."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lpo_bench.config import Range
from lpo_bench.data.pairs import load_pairs
from lpo_bench.diffusion.seeding import purpose_generator, seeded_init
from lpo_bench.errors import HarnessError
from lpo_bench.harness.spec import BenchComponent, SamplingStepSetting
from lpo_bench.ledger import Phase
from lpo_bench.models import lora


@dataclass(frozen=True)
class WinnerSFTConfig:
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate", "valid": Range(gt=0)})
    lora_rank: int = field(default=2, metadata={"help": "LoRA rank", "valid": Range(ge=1)})
    pairs_per_update: int = field(default=4, metadata={"help": "Preferred images per update", "valid": Range(ge=1)})
    max_updates: int = field(default=4, metadata={"help": "Optimiser updates", "valid": Range(ge=1)})
    max_pairs: int | None = field(default=None, metadata={"help": "Use the first N pairs", "valid": Range(ge=1)})


class WinnerSFT:
    version = "1"

    def setup(self, ctx: Any) -> None:
        self.ctx, self.cfg, bundle = ctx, ctx.cfg, ctx.bundle
        if ctx.inputs.pairs is None:
            raise HarnessError("winner-sft trains on preference pairs: pass --pairs DIR")
        with ctx.ledger.phase(Phase.PREP):
            pairs = load_pairs(ctx.inputs.pairs, "train", resolution=bundle.resolution, max_rows=self.cfg.max_pairs,
                               drop_ties=True)
            win0 = torch.from_numpy(pairs.label_0 == 1.0)[:, None, None, None]
            images = torch.where(win0, pairs.images_tensor(0), pairs.images_tensor(1))
            self.mean, self.std = bundle.encode_posterior(images, 16)
            self.captions = list(pairs.captions)
        with seeded_init(ctx.seed, "winner-sft-lora"):
            self.params = lora.add_lora(bundle.unet, rank=self.cfg.lora_rank)
        self.opt = torch.optim.AdamW(self.params, lr=self.cfg.lr)
        self.gen = purpose_generator(ctx.seed, "winner-sft", ctx.rank)

    def train_step(self, step: int) -> dict[str, float]:
        b, cfg = self.ctx.bundle, self.cfg
        with self.ctx.ledger.phase(Phase.UPDATE):
            idx = torch.randint(0, len(self.captions), (cfg.pairs_per_update,), generator=self.gen)
            x0 = (self.mean[idx] + self.std[idx] * torch.randn(self.mean[idx].shape, generator=self.gen))
            noise = torch.randn(x0.shape, generator=self.gen)
            t = torch.randint(0, b.num_train_timesteps, (len(idx),), generator=self.gen)
            xt = b.scheduler.add_noise(x0 * b.scaling_factor, noise, t).to(b.device)
            b.unet.train()
            pred = b.unet_forward(xt, t.to(b.device), b.encode_prompts([self.captions[i] for i in idx]), b.unet)
            loss = torch.nn.functional.mse_loss(pred.float(), noise.to(pred.device))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            b.unet.eval()
            self.ctx.ledger.count("unet_fwdbwd", len(idx))
        return {"loss": float(loss.detach())}

    def is_done(self, step: int) -> bool:
        return step >= self.cfg.max_updates

    def state_dict(self) -> dict[str, Any]:
        return {"lora": {k: v.detach().clone() for k, v in lora.lora_state(self.ctx.bundle.unet).items()},
                "opt": self.opt.state_dict(), "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        params = dict(self.ctx.bundle.unet.named_parameters())
        with torch.no_grad():
            for k, v in state["lora"].items():
                params[k].copy_(v)
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])

    def policy_unet(self) -> Any:
        return self.ctx.bundle.unet

    def export(self, out_dir: Path) -> Path:
        return lora.export_lora(self.ctx.bundle.unet, out_dir)


def sampling_step_components(bundle: Any, setting: SamplingStepSetting, state: dict[str, Any]
                             ) -> Iterator[BenchComponent]:
    """No reward model: decoding the candidates stands in for a method's extra work per sampling step."""
    yield BenchComponent("decode_candidates", lambda: bundle.decode(state["cands"]),
                         {"vae_decode": setting.num_candidates})
