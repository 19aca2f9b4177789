"""The method under study: LPO (Latent Reward Model, MPCF, Latent Preference Optimization)."""
