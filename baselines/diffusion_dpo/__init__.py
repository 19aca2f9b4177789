"""Diffusion-DPO (Wallace et al., CVPR 2024): offline DPO on the diffusion ELBO (baselines.md §1).

``losses`` holds the pure loss functions, ``config`` the dataclass, ``method`` the harness Method
(registry name ``diffusion-dpo``); presets in ``configs/{toy,sd15,sdxl}.toml``.
"""
