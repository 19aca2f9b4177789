"""Shared tiny settings for the interruption tests (in-process and SIGKILL subprocess)."""

from lpo_bench.config import parse_set

PROMPTS = ["a red circle", "two blue squares", "a green triangle", "a striped yellow square"]
LPO_SET = ["num_inference_steps=4", "prompts_per_round=2", "train_batch_pairs=2", "num_train_prompts=4", "epochs=2",
           "threshold_min=0", "threshold_max=0", "lora_rank=2", "max_updates=10"]
LRM_SET = {"max_updates": 2, "batch_pairs": 4, "warmup_updates": 1, "max_val_pairs": 4, "timestep_stride": 475}


def patch_tiny(runner, testing):
    import lpo_bench.methods.lpo.method as m

    runner.load_backbone = lambda name, **kw: testing.tiny_bundle("sd15", seed=0)
    m.training_prompts = lambda backbone, **kw: PROMPTS


def lpo_options(pairs, out_root, resume=False):
    from lpo_bench.runner import TrainOptions

    return TrainOptions(method="lpo", backbone="sd15", out_root=str(out_root), run_id="lpo-tiny",
                        overrides=parse_set(LPO_SET), extra={"pairs": str(pairs), "rm_overrides": dict(LRM_SET)},
                        checkpoint_every_updates=2, resume=resume)
