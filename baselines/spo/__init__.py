"""SPO (Liang et al., CVPR 2025) with its step-aware preference model (baselines.md §2).

``spm`` is the SPM (a time-conditioned CLIP preference model, registry ``STEP_REWARD_MODELS["spm"]``),
``spm_train`` its trainer (``REWARD_TRAINERS["spm"]``, presets ``configs/spm_<backbone>.toml``),
``method`` the harness Method (registry name ``spo``, presets ``configs/<backbone>.toml``).
"""
