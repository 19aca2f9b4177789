"""Run a tiny SPO or Diffusion-DPO training under torchrun (gloo on CPU); every rank writes what it trained.

Usage: torchrun --nproc_per_node N tests/scripts/baselines_ddp.py {spo|diffusion-dpo} PAIRS_DIR OUT_DIR
Writes OUT_DIR/rank<r>.json: sha256 of the rank's trainable UNet weights; rank 0 adds the summed
per-update global pair counts (SPO) and the number of updates.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from lpo_bench import registry  # noqa: E402
from lpo_bench.data.prompts import PromptList  # noqa: E402
from lpo_bench.harness.train import TrainRequest, train_run  # noqa: E402
from lpo_bench.models.tiny import tiny_bundle  # noqa: E402

PROMPTS = ("a red circle", "two blue squares", "a green triangle")
SETS = {
    # 3 prompts × 3 branched steps, threshold 0 -> 9 pairs: odd, so the two ranks hold unequal shares
    "spo": {"num_inference_steps": 3, "prompts_per_round": 2, "train_batch_pairs": 2, "micro_batch_pairs": 1,
            "epochs": 1, "threshold_spo": 0.0, "lora_rank": 2, "num_candidates": 2, "lr": 1e-3},
    "diffusion-dpo": {"pairs_per_update": 4, "micro_batch_pairs": 1, "max_updates": 2, "lr": 1e-4, "scale_lr": False,
                      "lr_warmup_updates": 0, "lora_rank": 0, "random_flip": False},
}
SPM = {"base": "tiny-clip", "tiny_layers": 1, "tiny_hidden": 32, "max_updates": 1, "batch_pairs": 4,
       "warmup_updates": 1, "max_val_pairs": 4, "val_timesteps": (0,)}


def main() -> None:
    method, pairs, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    torch.set_num_threads(1)
    spec = registry.method_spec(method)
    cls = registry.load_target(spec.method)
    instances = []
    orig_setup = cls.setup

    def setup(self, ctx):  # keep the instance: every rank reports the weights it trained
        instances.append(self)
        return orig_setup(self, ctx)

    cls.setup = setup
    req = TrainRequest(method=method, backbone="sd15", out_root=str(out), device="cpu", pairs=pairs,
                       overrides=SETS[method], reward_stage_overrides=SPM if spec.reward_stage else {})
    run_dir = train_run(req, bundle=tiny_bundle("sd15", seed=0), prompts=PromptList(PROMPTS), log=lambda *_: None)
    rank = int(os.environ.get("RANK", "0"))
    h = hashlib.sha256()
    for k, v in sorted((k, v) for k, v in instances[0].policy_unet().named_parameters() if v.requires_grad):
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    res = {"weights_sha256": h.hexdigest()}
    if rank == 0:
        logs = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
        res.update(pairs_global=sum(r.get("pairs_global", 0) for r in logs), updates=len(logs))
    (out / f"rank{rank}.json").write_text(json.dumps(res))


if __name__ == "__main__":
    main()
