"""Toy Pick-a-Pic: two base-model images per prompt, labelled by the oracle, in the Pick-a-Pic schema.

Each split (train / val / test, disjoint prompts from ``lpo_bench.prompts.toy_prompt_splits``) is one
parquet file with ``caption``, ``jpg_0``, ``jpg_1`` (PNG bytes), ``label_0``, ``label_1``,
``num_example_per_prompt``, the MPCF columns (``different_flag``, ``aesthetic_gap``, ``clipscore_gap``,
``vqascore_gap`` from the toy aesthetic / CLIP-like / VQA-like metrics), and toy-only extras
(``reward_0``, ``reward_1``, ``family``). Images are sampled with DDIM (eta 0, 20 steps) at a guidance
scale drawn per image from {3, 5, 7.5}, as Pick-a-Pic mixes generation settings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lpo_bench import records
from lpo_bench.errors import HarnessError

GUIDANCE_CHOICES = (3.0, 5.0, 7.5)
PAIRS_VERSION = "1"


def make_pairs(
    out: str | Path,
    *,
    n_train: int = 2048,
    n_val: int = 256,
    n_test: int = 256,
    seed: int = 0,
    overwrite: bool = False,
    num_inference_steps: int = 20,
    batch_size: int = 128,
    bundle: object | None = None,
    log: object = print,
) -> Path:
    """Write ``out/{train,val,test}.parquet`` and ``out/pairs.json``; returns ``out``."""
    import pandas as pd
    import torch

    from lpo_bench.pairs import encode_png
    from lpo_bench.prompts import toy_prompt_splits
    from lpo_bench.sampling import generate_images, sample_seed
    from lpo_bench.toy import metrics, oracle, world

    out = Path(out)
    if (out / "pairs.json").exists() and not overwrite:
        raise HarnessError(f"toy pairs already exist in {out}; pass --overwrite to rebuild them")
    out.mkdir(parents=True, exist_ok=True)
    if bundle is None:
        from lpo_bench.toy.models import load_toy_bundle

        bundle = load_toy_bundle()
    splits = toy_prompt_splits()
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    rng = np.random.default_rng(seed)
    meta = {"version": PAIRS_VERSION, "seed": seed, "backbone": bundle.provenance, "counts": {},
            "oracle": {"temperature": oracle.DEFAULT_TEMPERATURE, "tie_margin": oracle.DEFAULT_TIE_MARGIN}}
    for split_i, split in enumerate(("train", "val", "test")):
        prompts = splits[split][: sizes[split]]
        if len(prompts) < sizes[split]:
            raise HarnessError(f"the toy {split} split has {len(prompts)} prompts, fewer than the {sizes[split]} asked")
        n = len(prompts)
        imgs = []
        for j in (0, 1):
            gs = rng.choice(GUIDANCE_CHOICES, size=n)
            seeds = [sample_seed(seed * 10 + split_i, i, j) for i in range(n)]
            # one call per guidance value keeps batches homogeneous; per-image seeds keep images independent of it
            arr = torch.empty(n, 3, bundle.resolution, bundle.resolution)
            for g in GUIDANCE_CHOICES:
                idx = np.nonzero(gs == g)[0]
                if len(idx):
                    arr[idx] = generate_images(bundle, [prompts[i] for i in idx], [seeds[i] for i in idx],
                                               num_inference_steps=num_inference_steps, guidance_scale=float(g),
                                               batch_size=batch_size)
            imgs.append(arr.permute(0, 2, 3, 1).numpy())
        specs = [world.parse_prompt(p) for p in prompts]
        r0 = oracle.oracle_reward(imgs[0], specs)
        r1 = oracle.oracle_reward(imgs[1], specs)
        label_0 = oracle.label_pairs(r0, r1, rng)
        s = {}
        for j in (0, 1):
            s[j] = {"aesthetic": metrics.aesthetic_score(imgs[j], specs), "clipscore": metrics.clip_like_score(imgs[j], specs),
                    "vqascore": metrics.vqa_score(imgs[j], specs)}
        from lpo_bench.methods.lpo.mpcf import gap_columns

        gaps = gap_columns(s[0], s[1], label_0)
        df = pd.DataFrame({
            "caption": prompts,
            "jpg_0": [encode_png(x) for x in imgs[0]],
            "jpg_1": [encode_png(x) for x in imgs[1]],
            "label_0": label_0.astype(np.float64),
            "label_1": 1.0 - label_0.astype(np.float64),
            "num_example_per_prompt": np.ones(n, dtype=np.int64),
            **gaps,
            "reward_0": r0, "reward_1": r1,
            "family": [sp.family for sp in specs],
        })
        records.atomic_write_parquet(out / f"{split}.parquet", df)
        meta["counts"][split] = {"pairs": n, "ties": int((label_0 == 0.5).sum()),
                                 "mean_reward": float(np.concatenate([r0, r1]).mean())}
        log(f"[toy pairs] {split}: {n} pairs, {meta['counts'][split]['ties']} ties")
    records.atomic_write_json(out / "pairs.json", meta)
    (out / "README.txt").write_text(__doc__ or "")
    return out
