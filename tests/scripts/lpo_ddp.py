"""Run a tiny LPO training under torchrun (gloo on CPU) and write the per-update global pair counts.

Usage: torchrun --nproc_per_node N tests/scripts/lpo_ddp.py PAIRS_DIR OUT_DIR PROMPTS_PER_ROUND
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from lpo_bench.config import parse_set  # noqa: E402
from lpo_bench.data.prompts import PromptList  # noqa: E402
from lpo_bench.harness.train import TrainRequest, train_run  # noqa: E402
from lpo_bench.models.tiny import tiny_bundle  # noqa: E402


def main() -> None:
    pairs, out, per_round = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    req = TrainRequest(
        method="lpo", backbone="sd15", out_root=out, device="cpu", pairs=pairs,
        reward_stage_overrides={"max_updates": 1, "batch_pairs": 4, "warmup_updates": 1, "max_val_pairs": 4,
                                "timestep_stride": 475},
        overrides=parse_set(["num_inference_steps=3", f"prompts_per_round={per_round}", "train_batch_pairs=2",
                             "epochs=1", "threshold_min=0", "threshold_max=0", "lora_rank=2"]))
    prompts = PromptList(("a red circle", "two blue squares", "a green triangle"))
    run_dir = train_run(req, bundle=tiny_bundle("sd15", seed=0), prompts=prompts, log=lambda *_: None)
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        logs = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
        (run_dir.parent.parent / "pairs_count.json").write_text(
            json.dumps({"pairs_global": sum(r.get("pairs_global", 0) for r in logs), "updates": len(logs)}))


if __name__ == "__main__":
    main()
