"""Multi-Preference Consistent Filtering (MPCF, lpo.md §3.1).

A win/lose pair is kept when the winner is not much worse aesthetically and is better in both
CLIP score and VQA score; a tie is kept when all three gaps are small. Gaps are
G = S(winner) - S(loser) for win/lose pairs and |S(image 0) - S(image 1)| for ties (the official
CSV is not public; absolute tie gaps are the reading under which its tie rule works, lpo.md §3.1).

| strategy | aesthetic bound (win/lose) |   tie rule (all strategies)
| 1        | aesthetic_gap > 0          |   aesthetic_gap < 0.2
| 2 (paper)| aesthetic_gap > -0.5       |   clipscore_gap < 0.03
| 3        | aesthetic_gap > -1         |   vqascore_gap < 0.07
and, for win/lose pairs, clipscore_gap > 0 and vqascore_gap > 0. Inequalities are strict, as in the code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

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


def gap_columns(
    scores_0: dict[str, np.ndarray], scores_1: dict[str, np.ndarray], label_0: np.ndarray
) -> dict[str, np.ndarray]:
    """MPCF columns from per-image metric scores: {"aesthetic"|"clipscore"|"vqascore": [n]} for each image.

    Returns different_flag and the three *_gap columns (winner minus loser; absolute for ties).
    """
    lab = np.asarray(label_0, dtype=np.float64)
    out: dict[str, np.ndarray] = {"different_flag": (lab != 0.5).astype(np.int64)}
    for name in ("aesthetic", "clipscore", "vqascore"):
        s0, s1 = np.asarray(scores_0[name], dtype=np.float64), np.asarray(scores_1[name], dtype=np.float64)
        g = np.where(lab == 1.0, s0 - s1, s1 - s0)
        out[f"{name}_gap"] = np.where(lab == 0.5, np.abs(s0 - s1), g)
    return out


def compute_gap_columns(
    images_0: Any, images_1: Any, prompts: Sequence[str], label_0: np.ndarray,
    scorers: dict[str, Callable[[Any, Sequence[str]], Any]], batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Score both images of every pair with the project's metric adapters and return the MPCF columns.

    ``scorers`` maps "aesthetic" / "clipscore" / "vqascore" to ``adapter.score`` callables
    (images [b,3,H,W] in [0,1], prompts) -> [b]; e.g. LaionAesthetic, CLIPScore and BlipVQA for real
    data, ToyAesthetic, ToyClip and ToyVQA on the toy world.
    """
    import torch

    def run(images: Any, fn: Callable) -> np.ndarray:
        outs = [fn(images[s : s + batch_size], list(prompts[s : s + batch_size])) for s in range(0, len(prompts), batch_size)]
        return torch.cat([torch.as_tensor(o).float().cpu() for o in outs]).numpy()

    s0 = {k: run(images_0, fn) for k, fn in scorers.items()}
    s1 = {k: run(images_1, fn) for k, fn in scorers.items()}
    return gap_columns(s0, s1, label_0)
