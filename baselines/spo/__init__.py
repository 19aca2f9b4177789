"""SPO (Liang et al., CVPR 2025, arXiv 2406.04314): the step-aware preference model (``spm``: a time-conditioned
CLIP preference model, trained by ``spm_train``) and step-wise preference optimisation (``method``, config
``config``); ``bench`` holds its part of one sampling step, ``flops`` the SPM's FLOP probes. Presets:
``configs/<backbone>.toml`` (SPO) and ``configs/spm_<backbone>.toml`` (the SPM stage).
"""

from lpo_bench.harness.spec import MethodSpec, StepRewardModelSpec

SPEC = MethodSpec(
    name="spo",
    method="lpo_bench.baselines.spo.method:SPO",
    config="lpo_bench.baselines.spo.config:SPOConfig",
    role="baseline",
    summary="step-level DPO, candidates' x0 predictions decoded and scored by the SPM (pixel reward model)",
    reward_stage="spm",
    inputs=frozenset({"prompts"}),
    quick={"num_inference_steps": 4, "prompts_per_round": 2, "num_train_prompts": 4, "epochs": 1,
           "max_updates": 2, "train_batch_pairs": 4, "threshold_spo": 0},
    quick_reward_stage={"max_updates": 2, "clean_warmup_updates": 1, "batch_pairs": 4, "max_val_pairs": 8,
                        "warmup_updates": 1},
    bench={"num_inference_steps": 20, "num_candidates": 4, "prompts_per_round": 2, "train_batch_pairs": 10,
           "micro_batch_pairs": 10, "threshold_spo": 0.0, "num_train_prompts": 8, "epochs": 1000, "lora_rank": 4},
    bench_components="lpo_bench.baselines.spo.bench:sampling_step_components",
    budget_overrides={"epochs": 1000},  # passes over the training prompts until the budget stops the run
)

SPM_SPEC = StepRewardModelSpec(
    name="spm",
    model="lpo_bench.baselines.spo.spm:StepAwarePreferenceModel",
    trainer="lpo_bench.baselines.spo.spm_train:SPMTrainer",
    config="lpo_bench.baselines.spo.spm_config:SPMConfig",
    marker_file="spm_config.json",
    random_model="lpo_bench.baselines.spo.bench:random_spm",
    flop_probes="lpo_bench.baselines.spo.flops:flop_probes",
    summary="Step-aware preference model: a time-conditioned CLIP scoring decoded x0 predictions",
)
