"""Diffusion-DPO (Wallace et al., CVPR 2024, arXiv 2311.12908): offline DPO on the diffusion ELBO.

``losses`` holds the pure loss functions, ``config`` the dataclass, ``method`` the harness Method; presets in
``configs/{toy,sd15,sdxl}.toml``.
"""

from lpo_bench.harness.spec import MethodSpec

SPEC = MethodSpec(
    name="diffusion-dpo",
    method="lpo_bench.baselines.diffusion_dpo.method:DiffusionDPO",
    config="lpo_bench.baselines.diffusion_dpo.config:DiffusionDPOConfig",
    role="baseline",
    summary="offline DPO on the denoising loss of preferred vs rejected images (no reward model, no sampling)",
    inputs=frozenset({"pairs"}),
    quick={"max_updates": 2, "pairs_per_update": 4, "micro_batch_pairs": 4},
    bench={"pairs_per_update": 10, "micro_batch_pairs": 10, "lr_warmup_updates": 0, "max_updates": 10**9,
           "random_flip": False, "max_pairs": 16},
    budget_overrides={"max_updates": 10**9},  # updates until the budget stops the run
)
