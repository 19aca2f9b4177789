"""Shared tiny settings for the interruption tests (in-process and SIGKILL subprocess)."""

from lpo_bench.config import parse_set

PROMPTS = ("a red circle", "two blue squares", "a green triangle", "a striped yellow square")
LPO_SET = ["num_inference_steps=4", "prompts_per_round=2", "train_batch_pairs=2", "num_train_prompts=4", "epochs=2",
           "threshold_min=0", "threshold_max=0", "lora_rank=2", "max_updates=10"]
LRM_SET = {"max_updates": 2, "batch_pairs": 4, "warmup_updates": 1, "max_val_pairs": 4, "timestep_stride": 475}


def tiny_inputs() -> dict:
    """The model and prompts the harness is handed instead of the registered backbone's."""
    from lpo_bench.data.prompts import PromptList
    from lpo_bench.models.tiny import tiny_bundle

    return {"bundle": tiny_bundle("sd15", seed=0), "prompts": PromptList(PROMPTS)}


def lpo_request(pairs, out_root, resume=False):
    from lpo_bench.harness.train import TrainRequest

    return TrainRequest(method="lpo", backbone="sd15", out_root=str(out_root), run_id="lpo-tiny",
                        overrides=parse_set(LPO_SET), reward_stage_overrides=dict(LRM_SET), pairs=str(pairs),
                        checkpoint_every_updates=2, resume=resume)
