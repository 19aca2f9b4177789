"""Toy Pick-a-Pic: two base-model images per prompt, labelled by the oracle, in the Pick-a-Pic schema.

Each split (train / val / test, disjoint prompts from ``lpo_bench.data.prompts.toy_prompt_splits``) is one
parquet file with ``caption``, ``jpg_0``, ``jpg_1`` (PNG bytes), ``label_0``, ``label_1``,
``num_example_per_prompt``, the MPCF columns (``different_flag``, ``aesthetic_gap``, ``clipscore_gap``,
``vqascore_gap`` from the toy aesthetic / CLIP-like / VQA-like metrics), and toy-only extras
(``reward_0``, ``reward_1``, the oracle's parts ``alignment_0/1`` and ``oracle_aesthetic_0/1``, ``family``).
``pairs.json`` records the oracle's labelling settings and, per split, how often the oracle scoring the pair's
own images agrees with the drawn labels (``oracle_label_agreement``, decided pairs). Images are sampled with DDIM (eta 0, 20 steps) at a guidance
scale drawn per image from {3, 5, 7.5}, as Pick-a-Pic mixes generation settings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lpo_bench import progress, records
from lpo_bench.errors import HarnessError

GUIDANCE_CHOICES = (3.0, 5.0, 7.5)
PAIRS_VERSION = "2"  # v2: oracle T 0.02, tie margin 0.015; oracle parts per image


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
    images_per_prompt: int = 2,
    bundle: object | None = None,
    log: object = print,
) -> Path:
    """Write ``out/{train,val,test}.parquet`` and ``out/pairs.json``; returns ``out``.

    With ``images_per_prompt`` k > 2 every prompt yields all k(k-1)/2 pairs of its images (Pick-a-Pic also
    holds several pairs per prompt; ``num_example_per_prompt`` then weights each prompt once in the losses).
    """
    import pandas as pd
    import torch

    from lpo_bench.data.pairs import encode_png, gap_columns
    from lpo_bench.data.prompts import toy_prompt_splits
    from lpo_bench.diffusion.generate import generate_images
    from lpo_bench.diffusion.seeding import sample_seed
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
    k_img = max(2, int(images_per_prompt))
    with progress.task("toy pairs", total=k_img * sum(sizes.values()), unit="image") as bar:
        for split_i, split in enumerate(("train", "val", "test")):
            prompts = splits[split][: sizes[split]]
            if len(prompts) < sizes[split]:
                raise HarnessError(f"the toy {split} split has {len(prompts)} prompts, fewer than the {sizes[split]} asked")
            n = len(prompts)
            imgs = []
            for j in range(k_img):
                gs = rng.choice(GUIDANCE_CHOICES, size=n)
                seeds = [sample_seed(seed * 10 + split_i, i, j) for i in range(n)]
                # one call per guidance value keeps batches homogeneous; per-image seeds keep images independent of it
                arr = torch.empty(n, 3, bundle.resolution, bundle.resolution)
                for g in GUIDANCE_CHOICES:
                    idx = np.nonzero(gs == g)[0]
                    for c in range(0, len(idx), batch_size):  # the batches generate_images would make, one a call
                        sub = idx[c : c + batch_size]
                        arr[sub] = generate_images(bundle, [prompts[i] for i in sub], [seeds[i] for i in sub],
                                                   num_inference_steps=num_inference_steps, guidance_scale=float(g),
                                                   batch_size=batch_size)
                        bar.advance(len(sub), split=split)
                imgs.append(arr.permute(0, 2, 3, 1).numpy())
            specs = [world.parse_prompt(p) for p in prompts]
            parts_per_image = [oracle.oracle_components(im, specs) for im in imgs]
            rewards = [c["reward"] for c in parts_per_image]
            scores = [{"aesthetic": metrics.aesthetic_score(im, specs), "clipscore": metrics.clip_like_score(im, specs),
                       "vqascore": metrics.vqa_score(im, specs)} for im in imgs]
            combos = [(a, b) for a in range(k_img) for b in range(a + 1, k_img)]
            pngs = [[encode_png(x) for x in im] for im in imgs]
            parts = []
            for a, b in combos:
                label_0 = oracle.label_pairs(rewards[a], rewards[b], rng)
                parts.append(pd.DataFrame({
                    "caption": prompts,
                    "jpg_0": pngs[a],
                    "jpg_1": pngs[b],
                    "label_0": label_0.astype(np.float64),
                    "label_1": 1.0 - label_0.astype(np.float64),
                    "num_example_per_prompt": np.full(n, len(combos), dtype=np.int64),
                    **gap_columns(scores[a], scores[b], label_0),
                    "reward_0": rewards[a], "reward_1": rewards[b],
                    "alignment_0": parts_per_image[a]["alignment"], "alignment_1": parts_per_image[b]["alignment"],
                    "oracle_aesthetic_0": parts_per_image[a]["aesthetic"],
                    "oracle_aesthetic_1": parts_per_image[b]["aesthetic"],
                    "family": [sp.family for sp in specs],
                }))
            df = pd.concat(parts, ignore_index=True)
            label_all = df["label_0"].to_numpy()
            records.atomic_write_parquet(out / f"{split}.parquet", df)
            meta["counts"][split] = {"prompts": n, "images_per_prompt": k_img, "pairs": len(df),
                                     "ties": int((label_all == 0.5).sum()), "mean_reward": float(np.mean(rewards)),
                                     "oracle_label_agreement": oracle.label_agreement(
                                         df["reward_0"], df["reward_1"], label_all)}
            c = meta["counts"][split]
            log(f"[toy pairs] {split}: {len(df)} pairs from {n} prompts, {c['ties']} ties, oracle agrees with "
                f"{c['oracle_label_agreement']:.3f} of the decided labels")
    records.atomic_write_json(out / "pairs.json", meta)
    (out / "README.txt").write_text(__doc__ or "")
    return out
