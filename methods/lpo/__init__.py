"""LPO (arXiv 2502.01051): the Latent Reward Model (``lrm``, trained by ``lrm_train`` on MPCF-filtered pairs,
``mpcf``) and Latent Preference Optimization (``method``, config ``config``); ``bench`` holds its part of one
sampling step, ``flops`` the LRM's FLOP probes. Presets: ``configs/<backbone>.toml`` (LPO) and
``configs/lrm_<backbone>.toml`` (the LRM stage).
"""

from lpo_bench.harness.spec import MethodSpec, StepRewardModelSpec

SPEC = MethodSpec(
    name="lpo",
    method="lpo_bench.methods.lpo.method:LPO",
    config="lpo_bench.methods.lpo.config:LPOConfig",
    role="proposed",
    summary="step-level DPO in latent space, candidates scored by the LRM (noisy-latent reward model)",
    reward_stage="lrm",
    inputs=frozenset({"prompts"}),
    quick={"num_inference_steps": 4, "prompts_per_round": 2, "num_train_prompts": 4, "epochs": 1,
           "max_updates": 2, "train_batch_pairs": 4, "threshold_min": 0, "threshold_max": 0},
    quick_reward_stage={"max_updates": 2, "batch_pairs": 4, "max_val_pairs": 8, "warmup_updates": 1},
    # every scored step gives a pair (threshold 0); enough prompts and epochs that a cycle never runs dry
    bench={"num_inference_steps": 20, "num_candidates": 4, "prompts_per_round": 2, "train_batch_pairs": 10,
           "threshold_min": 0.0, "threshold_max": 0.0, "num_train_prompts": 8, "epochs": 1000, "lora_rank": 4},
    bench_components="lpo_bench.methods.lpo.bench:sampling_step_components",
    budget_overrides={"epochs": 1000},  # passes over the training prompts until the budget stops the run
)

LRM_SPEC = StepRewardModelSpec(
    name="lrm",
    model="lpo_bench.methods.lpo.lrm:LatentRewardModel",
    trainer="lpo_bench.methods.lpo.lrm_train:LRMTrainer",
    config="lpo_bench.methods.lpo.lrm_config:LRMConfig",
    marker_file="lrm_config.json",
    random_model="lpo_bench.methods.lpo.bench:random_lrm",
    flop_probes="lpo_bench.methods.lpo.flops:flop_probes",
    summary="Latent Reward Model: the backbone's own denoiser scoring noisy latents x_t at any t",
    inputs=frozenset({"pairs", "pair_scores"}),  # pair_scores: MPCF's gap columns for data that lacks them
)
