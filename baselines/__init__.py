"""Baselines: Diffusion-DPO and SPO (with its step-aware preference model)."""
