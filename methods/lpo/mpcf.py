"""Multi-Preference Consistent Filtering (MPCF; arXiv 2502.01051 Tab. 1, Kwai-Kolors/LPO@9c2e8b8
lrm/lrm_15/trainer/datasets/step_sd_hf_dataset.py).

A win/lose pair is kept when the winner is not much worse aesthetically and is better in both
CLIP score and VQA score; a tie is kept when all three gaps are small. Gaps are
G = S(winner) - S(loser) for win/lose pairs and |S(image 0) - S(image 1)| for ties (the official
CSV is not public; its tie rule only works as written if it stores absolute gaps for ties).

| strategy | aesthetic bound (win/lose) |   tie rule (all strategies)
| 1        | aesthetic_gap > 0          |   aesthetic_gap < 0.2
| 2 (paper)| aesthetic_gap > -0.5       |   clipscore_gap < 0.03
| 3        | aesthetic_gap > -1         |   vqascore_gap < 0.07
and, for win/lose pairs, clipscore_gap > 0 and vqascore_gap > 0. Inequalities are strict, as in the code.
"""

from __future__ import annotations

import numpy as np

AESTHETIC_BOUND = {1: 0.0, 2: -0.5, 3: -1.0}
TIE_BOUNDS = {"aesthetic_gap": 0.2, "clipscore_gap": 0.03, "vqascore_gap": 0.07}


def mpcf_keep(
    different_flag: np.ndarray,
    aesthetic_gap: np.ndarray,
    clipscore_gap: np.ndarray,
    vqascore_gap: np.ndarray,
    *,
    strategy: int = 2,
) -> np.ndarray:
    """Boolean keep-mask [n] over pairs (strategy 0 keeps everything)."""
    flag = np.asarray(different_flag).astype(bool)
    a, c, v = (np.asarray(x, dtype=np.float64) for x in (aesthetic_gap, clipscore_gap, vqascore_gap))
    if strategy == 0:
        return np.ones_like(flag)
    if strategy not in AESTHETIC_BOUND:
        raise ValueError(f"MPCF strategy must be 0, 1, 2 or 3, got {strategy}")
    win_lose = flag & (a > AESTHETIC_BOUND[strategy]) & (c > 0) & (v > 0)
    tie = ~flag & (a < TIE_BOUNDS["aesthetic_gap"]) & (c < TIE_BOUNDS["clipscore_gap"]) & (v < TIE_BOUNDS["vqascore_gap"])
    return win_lose | tie
