"""Train a tiny step reward model (LRM or SPM) with ``train-reward`` under torchrun (gloo on CPU) or as one plain
process, once with a global batch that splits evenly over 2 ranks (4 pairs, micro-batches of 2) and once unevenly
(5 pairs: 3 and 2); every rank writes the weights it ended with and the gradient each optimiser step applied.

Usage: [torchrun --nproc_per_node N] tests/scripts/rm_ddp.py {lrm|spm} PAIRS_DIR OUT_DIR
Writes OUT_DIR/<even|uneven>/rank<r>.safetensors (final state dict, keys "w/<name>"; step gradients, keys
"g<update>/<name>") and OUT_DIR/<even|uneven>/rank<r>.json ({"run_dir"}).
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from lpo_bench import registry  # noqa: E402
from lpo_bench.harness.reward_run import RewardRequest, train_reward_run  # noqa: E402
from lpo_bench.models.tiny import tiny_bundle  # noqa: E402

# 3 updates of 5 pairs in micro-batches of 2 (2 ranks: 3 and 2 pairs); "even" sets batch_pairs=4 (2 and 2)
SETS = {
    "lrm": {"max_updates": 3, "batch_pairs": 5, "micro_batch_pairs": 2, "warmup_updates": 2, "max_val_pairs": 4,
            "timestep_stride": 475, "lr": 1e-4, "mpcf_strategy": 0, "num_workers": 0},
    "spm": {"base": "tiny-clip", "tiny_layers": 1, "tiny_hidden": 32, "max_updates": 2, "clean_warmup_updates": 1,
            "batch_pairs": 5, "micro_batch_pairs": 2, "warmup_updates": 1, "lr_decay_updates": 4, "max_val_pairs": 4,
            "val_timesteps": (0,), "lr": 1e-3, "num_workers": 0},
}


def main() -> None:
    kind, pairs, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    torch.set_num_threads(1)
    trainers = []
    cls = registry.load_target(registry.reward_model_spec(kind).trainer)
    orig_setup = cls.setup

    def setup(self, ctx):  # keep the instance and record the gradient of every optimiser step
        orig_setup(self, ctx)
        names = {id(p): n for n, p in self.model.named_parameters()}
        self.step_grads = {}
        step = self.opt.step

        def recording_step(*args, **kwargs):
            u = len({k.split("/")[0] for k in self.step_grads})
            for p in self.params:
                if p.grad is not None:
                    self.step_grads[f"g{u}/{names[id(p)]}"] = p.grad.detach().clone().contiguous()
            return step(*args, **kwargs)

        self.opt.step = recording_step
        trainers.append(self)

    cls.setup = setup
    rank = int(os.environ.get("RANK", "0"))
    from safetensors.torch import save_file

    for name, over in (("uneven", {}), ("even", {"batch_pairs": 4})):
        trainers.clear()
        req = RewardRequest(kind=kind, backbone="sd15", out_root=str(out / name / "runs"), device="cpu", pairs=pairs,
                            overrides={**SETS[kind], **over})
        run_dir = train_reward_run(req, bundle=tiny_bundle("sd15", seed=0), log=lambda *_: None)
        tr = trainers[0]
        state = {f"w/{k}": v.detach().float().contiguous().clone() for k, v in tr.model.state_dict().items()}
        save_file({**state, **tr.step_grads}, str(out / name / f"rank{rank}.safetensors"))
        (out / name / f"rank{rank}.json").write_text(json.dumps({"run_dir": str(run_dir)}))


if __name__ == "__main__":
    main()
