"""Run a tiny LPO or SPO training (one process, or under torchrun with gloo on the CPU) and record, on every rank,
each update's share of pairs and the final LoRA weights.

Usage: [torchrun --nproc_per_node N] tests/scripts/stepwise_ddp.py {lpo|spo} REWARD_MODEL_DIR OUT_DIR
Writes OUT_DIR/rank<r>.pt: {"updates": [{"n_global", "prompt_idx", "timesteps", "x_t", "x_w", "x_l"}, ...] (this
rank's share of each update, in order), "lora": {name: tensor}, "logs": [train_log rows] (rank 0 only)}.

The settings make every share uneven: 5 prompts per round (3 + 2 under 2 ranks), 3 trained steps and threshold 0,
so 15 pairs per round in global batches of 7, 7, 1 (shares 4/3, 4/3, 1/0: rank 1 holds no pair in the third
update); micro-batches of 2 (rank 0 runs one more than rank 1); clipping is active (grad_clip_norm 1e-3).
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from lpo_bench.data.prompts import PromptList  # noqa: E402
from lpo_bench.harness.train import TrainRequest, train_run  # noqa: E402
from lpo_bench.methods.stepwise.rounds import StepwiseMethod  # noqa: E402
from lpo_bench.models.tiny import tiny_bundle  # noqa: E402

PROMPTS = ("a red circle", "two blue squares", "a green triangle", "a striped yellow square", "three red circles")
COMMON = {"num_inference_steps": 3, "prompts_per_round": 5, "train_batch_pairs": 7, "micro_batch_pairs": 2,
          "epochs": 2, "num_candidates": 2, "lora_rank": 2, "lr": 1e-3, "grad_clip_norm": 1e-3}
SETS = {"lpo": {**COMMON, "threshold_min": 0.0, "threshold_max": 0.0},
        "spo": {**COMMON, "threshold_spo": 0.0, "score_batch": 4}}


def main() -> None:
    method, reward_model, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    torch.set_num_threads(1)
    updates, instances = [], []
    orig = StepwiseMethod._update

    def record(self, batch, n_global):  # what this rank trains on in each update
        if not instances:
            instances.append(self)
        updates.append({"n_global": n_global, **{f: getattr(batch, f).clone() for f in
                                                 ("prompt_idx", "timesteps", "x_t", "x_w", "x_l")}})
        return orig(self, batch, n_global)

    StepwiseMethod._update = record
    req = TrainRequest(method=method, backbone="sd15", out_root=str(out), device="cpu", reward_model=reward_model,
                       overrides=SETS[method])
    run_dir = train_run(req, bundle=tiny_bundle("sd15", seed=0), prompts=PromptList(PROMPTS), log=lambda *_: None)
    rank = int(os.environ.get("RANK", "0"))
    unet = instances[0].policy_unet()
    res = {"updates": updates, "lora": {k: v.detach().clone() for k, v in unet.named_parameters() if "lora_" in k}}
    if rank == 0:
        res["logs"] = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
    torch.save(res, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
