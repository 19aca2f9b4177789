"""The default toy pairs: what ``lpo-bench train`` and ``train-reward`` on ``--backbone toy`` read without ``--pairs``.

The same pairs as ``lpo-bench demo`` (:data:`DEMO_PAIRS`, seed 0), built once (a few minutes on 2 CPU cores) into
``<runs root>/toy-pairs/default-<key>``. The key hashes what the pairs depend on: the pairs recipe, the toy world's
metrics, the toy base model's version and weights sha256, the sizes and the seed; a change to any of them builds
anew. A build writes into a temporary sibling and renames it into place, so an interrupted build is never reused.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lpo_bench import records
from lpo_bench.errors import HarnessError

# 4 images per prompt: 6 pairs per prompt from as many images as 1024 prompts x 2 would take; more pairs per image
# is what lifts the toy LRM (3k train pairs) and tightens the held-out accuracy CIs (~1.3k test, ~650 val pairs).
DEMO_PAIRS = {"n_train": 512, "n_val": 128, "n_test": 256, "images_per_prompt": 4}
SEED = 0


def cache_key(*, version: str, base_sha256: str, settings: Mapping[str, Any], seed: int) -> str:
    """Name of the cache directory for pairs made by ``make_pairs(**settings, seed=seed)``."""
    return records.sha256_of({"version": version, "base_sha256": base_sha256, "settings": dict(settings),
                              "seed": seed})[:16]


def default_toy_pairs(runs_root: str | Path, *, log: Callable[[str], None] = print,
                      settings: Mapping[str, Any] = DEMO_PAIRS) -> Path:
    """The default toy pairs under ``runs_root``, built first if missing; returns their directory.
    ``settings``: ``make_pairs`` keywords (tests pass tiny sizes)."""
    from lpo_bench.toy import metrics, models, pairs

    version = f"pairs-{pairs.PAIRS_VERSION}/toy-{metrics.TOY_VERSION}/{models.TOY_MODEL_VERSION}"
    base_sha256 = models.combined_sha256(models.weights_sha256(models.BASE_WEIGHTS_DIR))
    key = cache_key(version=version, base_sha256=base_sha256, settings=settings, seed=SEED)
    out = Path(runs_root) / "toy-pairs" / f"default-{key}"
    if (out / "pairs.json").exists():
        log(f"no --pairs: using the default toy pairs (those of `lpo-bench demo`) in {out}")
        return out
    log(f"no --pairs: building the default toy pairs (those of `lpo-bench demo`; once, a few minutes) in {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pairs.make_pairs(tmp, seed=SEED, overwrite=True, log=log, **settings)
        try:
            tmp.rename(out)
        except OSError:  # another process finished the same build first: its pairs are these pairs
            if not (out / "pairs.json").exists():
                raise HarnessError(f"{out} exists but holds no finished toy pairs; delete it and rerun") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
