"""Step-level preference optimisation shared by LPO and SPO: sampler, round loop, one update, losses."""
