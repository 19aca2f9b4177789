"""Run a tiny Diffusion-DPO training through the harness, on one process or under torchrun (gloo on CPU).

Usage: [torchrun --nproc_per_node N] tests/scripts/dpo_ddp.py PAIRS_DIR OUT_DIR
Writes OUT_DIR/rank<r>.pt: the rank's final trainable UNet weights and, per update, the pair indices (positions in
the latent cache) this rank trained on, in order, with the timesteps it drew for them.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from lpo_bench.baselines.diffusion_dpo.method import DiffusionDPO  # noqa: E402
from lpo_bench.data.prompts import PromptList  # noqa: E402
from lpo_bench.harness.train import TrainRequest, train_run  # noqa: E402
from lpo_bench.models.tiny import tiny_bundle  # noqa: E402

# 5 pairs per update over 2 ranks: uneven shares (3 + 2), micro-batches of 2, flips and caption dropout drawn;
# the latent cache has shards of 4 pairs, built by both ranks
SETTINGS = {"pairs_per_update": 5, "micro_batch_pairs": 2, "max_updates": 3, "lr": 1e-4, "scale_lr": False,
            "lr_warmup_updates": 0, "lora_rank": 0, "random_flip": True, "caption_dropout": 0.5, "encode_batch": 4,
            "latent_cache_shard_pairs": 4}


class RecordingDPO(DiffusionDPO):
    """Diffusion-DPO that remembers which pairs (and timesteps) each of its micro-batches trained on."""

    def setup(self, ctx):
        self.seen = []
        super().setup(ctx)

    def train_step(self, step):
        self.seen.append({"idx": [], "t": []})
        return super().train_step(step)

    def _micro_step(self, idx, d):
        self.seen[-1]["idx"] += idx.tolist()
        self.seen[-1]["t"] += d["t"].tolist()
        return super()._micro_step(idx, d)


def main() -> None:
    pairs, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    instances = []

    class Kept(RecordingDPO):
        def setup(self, ctx):
            instances.append(self)
            super().setup(ctx)

    from lpo_bench.harness import train as train_mod

    plan_run = train_mod.plan_run

    def plan(req, prompts, **kw):  # the registered class, swapped for the recording one in this process only
        p = plan_run(req, prompts, **kw)
        p.method_cls = Kept
        return p

    train_mod.plan_run = plan
    req = TrainRequest(method="diffusion-dpo", backbone="sd15", out_root=str(out), device="cpu", pairs=pairs,
                       overrides=SETTINGS)
    train_run(req, bundle=tiny_bundle("sd15", seed=0), prompts=PromptList(("a red circle",)), log=lambda *_: None)
    m = instances[0]
    rank = int(os.environ.get("RANK", "0"))
    weights = {k: v.detach().clone() for k, v in m.unet.named_parameters() if v.requires_grad}
    torch.save({"weights": weights, "seen": m.seen, "n_pairs": m.n_pairs}, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
