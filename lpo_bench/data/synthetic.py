"""A synthetic Pick-a-Pic: the published parquet schema and shard layout at any size, for memory and I/O tests.

Columns as in ``yuvalkirstain/pickapic_v1`` / ``_v2``: ``are_different``, ``best_image_uid``, ``caption``,
``created_at``, ``has_label``, ``image_0_uid``, ``image_0_url``, ``image_1_uid``, ``image_1_url``, ``jpg_0``,
``jpg_1`` (JPEG bytes), ``label_0`` in {0, 0.5, 1}, ``label_1`` = 1 - ``label_0``, ``model_0``, ``model_1``,
``ranking_id``, ``user_id``, ``num_example_per_prompt`` (the number of rows of the split with that caption).
Shards are ``data/<split>-XXXXX-of-YYYYY.parquet`` with row groups of ``row_group_rows`` rows (100, as
``datasets`` writes image datasets). Images are 512 px textured JPEGs (~110 KB at quality 90, like real
generations, not flat colour): a pool of ``pool_images`` distinct images is encoded once and reused with
distinct metadata, so writing is fast but the byte volume is real. About 12% of the pairs are ties, as in v1.

``corrupt`` plants broken rows for tests: ``{"null_image": k, "bad_label": k, "null_caption": k,
"undecodable": k, "unlabeled": k}``, each on k rows of the train split (distinct rows).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

TIE_FRACTION = 0.123  # 71,907 ties of 583,737 pairs in Pick-a-Pic v1 train
WORDS = ("a", "photo", "of", "red", "blue", "cat", "dog", "castle", "forest", "city", "night", "portrait", "oil",
         "painting", "cyberpunk", "astronaut", "riding", "horse", "mountain", "lake", "sunset", "robot", "dragon",
         "watercolor", "detailed", "cinematic", "lighting", "8k", "fantasy", "landscape", "girl", "old", "man")


def textured_jpeg(rng: np.random.Generator, size: int = 512, quality: int = 90) -> bytes:
    """One random textured image (low- and mid-frequency colour fields plus grain) as JPEG bytes."""
    from PIL import Image

    def field(cells: int, resample: Any) -> np.ndarray:
        raw = (rng.random((cells, cells, 3)) * 255).astype(np.uint8)
        return np.asarray(Image.fromarray(raw).resize((size, size), resample), dtype=np.float32)

    mix = rng.uniform(0.5, 0.7)
    x = mix * field(16, Image.BICUBIC) + (1 - mix) * field(size // 4, Image.BILINEAR)
    x += rng.normal(0, rng.uniform(4, 7), (size, size, 1))
    buf = io.BytesIO()
    Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _captions(rng: np.random.Generator, n: int) -> list[str]:
    """n captions with repeats: prompts are drawn with a geometric number of rows each (mean ~2)."""
    out: list[str] = []
    while len(out) < n:
        words = rng.choice(len(WORDS), size=int(rng.integers(4, 12)))
        cap = " ".join(WORDS[i] for i in words) + f" #{len(out)}"
        out += [cap] * min(int(rng.geometric(0.5)), n - len(out))
    order = rng.permutation(n)
    return [out[i] for i in order]


def _split_frame(rng: np.random.Generator, n: int, pool: list[bytes], split: str) -> Any:
    import pandas as pd

    caps = _captions(rng, n)
    counts = pd.Series(caps).map(pd.Series(caps).value_counts()).to_numpy()
    label_0 = rng.choice([1.0, 0.0], size=n)
    label_0[rng.random(n) < TIE_FRACTION] = 0.5
    a = rng.integers(0, len(pool), size=n)
    b = (a + rng.integers(1, len(pool), size=n)) % len(pool)
    uid0 = [f"{split}-{i:08d}-0" for i in range(n)]
    uid1 = [f"{split}-{i:08d}-1" for i in range(n)]
    return pd.DataFrame({
        "are_different": np.ones(n, dtype=bool),
        "best_image_uid": [u0 if lab == 1.0 else (u1 if lab == 0.0 else "") for u0, u1, lab in zip(uid0, uid1, label_0,
                                                                                                  strict=True)],
        "caption": caps,
        "created_at": pd.Timestamp("2023-05-01") + pd.to_timedelta(rng.integers(0, 10**7, size=n), unit="s"),
        "has_label": np.ones(n, dtype=bool),
        "image_0_uid": uid0, "image_0_url": [f"https://example.invalid/{u}.png" for u in uid0],
        "image_1_uid": uid1, "image_1_url": [f"https://example.invalid/{u}.png" for u in uid1],
        "jpg_0": [pool[i] for i in a], "jpg_1": [pool[i] for i in b],
        "label_0": label_0, "label_1": 1.0 - label_0,
        "model_0": rng.choice(["sd-1.5", "sd-2.1", "sdxl-beta"], size=n),
        "model_1": rng.choice(["sd-1.5", "sd-2.1", "sdxl-beta"], size=n),
        "ranking_id": np.arange(n, dtype=np.int64) + (0 if split == "train" else 10**8),
        "user_id": rng.integers(0, max(1, n // 20), size=n),
        "num_example_per_prompt": counts.astype(np.int64),
    })


def _plant(df: Any, corrupt: dict[str, int], rng: np.random.Generator) -> None:
    rows = iter(rng.permutation(len(df)).tolist())
    for kind, k in sorted(corrupt.items()):
        for _ in range(k):
            i = next(rows)
            if kind == "null_image":
                df.at[i, "jpg_1"] = None
            elif kind == "bad_label":
                df.at[i, "label_0"] = 0.7
            elif kind == "null_caption":
                df.at[i, "caption"] = None
            elif kind == "undecodable":
                df.at[i, "jpg_0"] = b"\xff\xd8 not a jpeg"
            elif kind == "unlabeled":
                df.at[i, "has_label"] = False
            else:
                raise ValueError(f"unknown corruption {kind!r}")


def write_synthetic_pickapic(
    out: str | Path, *, n_train: int = 20_000, n_validation: int = 200, rows_per_shard: int = 1000,
    row_group_rows: int = 100, pool_images: int = 300, image_size: int = 512, seed: int = 0,
    corrupt: dict[str, int] | None = None,
) -> Path:
    """Write ``out/data/{train,validation}-*.parquet`` (see module docstring); returns ``out``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    pool = [textured_jpeg(rng, image_size) for _ in range(max(2, pool_images))]
    data = Path(out) / "data"
    data.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("validation", n_validation)):
        df = _split_frame(rng, n, pool, split)
        if corrupt and split == "train":
            _plant(df, corrupt, rng)
        shards = max(1, -(-n // rows_per_shard))
        for s in range(shards):
            part = df.iloc[s * rows_per_shard : (s + 1) * rows_per_shard]
            table = pa.Table.from_pandas(part, preserve_index=False)
            tmp = data / f".{split}-{s:05d}.tmp"
            pq.write_table(table, tmp, row_group_size=row_group_rows)
            tmp.rename(data / f"{split}-{s:05d}-of-{shards:05d}.parquet")
    return Path(out)
