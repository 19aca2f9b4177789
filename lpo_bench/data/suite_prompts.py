"""Where each suite's prompts come from: the toy splits, T2I-CompBench++ and GenEval's pinned files, and a
local Pick-a-Pic v1 / HPDv2 copy (:mod:`lpo_bench.data.suites` says which suite reads which)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from lpo_bench.errors import HarnessError

GENERAL_PICKAPIC_PROMPTS = 500
PICKAPIC_SPLIT = "validation_unique"


@dataclass(frozen=True)
class PromptItem:
    """One prompt of a suite. ``prompt_id`` is stable within a suite version and seeds its images;
    ``index`` is the prompt's position in its category (T2I-CompBench image numbering)."""

    prompt_id: str
    text: str
    category: str
    index: int


@cache
def toy_split_specs() -> dict[str, tuple[tuple[str, str], ...]]:
    """(text, family) of the toy val/test prompts (world.prompt_splits with lpo_bench.data.prompts' seed and sizes)."""
    from lpo_bench.data.prompts import TOY_SPLIT_SEED, TOY_SPLIT_SIZES
    from lpo_bench.toy import world

    s = world.prompt_splits(TOY_SPLIT_SIZES["train"], TOY_SPLIT_SIZES["val"], TOY_SPLIT_SIZES["test"], seed=TOY_SPLIT_SEED)
    return {k: tuple((p.text, p.family) for p in s[k]) for k in ("val", "test")}


def _numbered(rows: Iterable[tuple[str, str]], prefix: str = "") -> list[PromptItem]:
    """PromptItems from (category, text) rows: ``<prefix><category>/<index in category, 4 digits>``."""
    items: list[PromptItem] = []
    count: dict[str, int] = {}
    for cat, text in rows:
        j = count.get(cat, 0)
        count[cat] = j + 1
        items.append(PromptItem(f"{prefix}{cat}/{j:04d}", text, cat, j))
    return items


def _toy_split(split: str) -> tuple[tuple[str, str], ...]:
    if split not in ("val", "test"):
        raise HarnessError(f"toy suites have the splits 'val' and 'test', not '{split}'; pass --split val or test")
    return toy_split_specs()[split]


def toy_items(split: str) -> list[PromptItem]:
    return _numbered(((fam, text) for text, fam in _toy_split(split)), f"{split}/")


def toy_geneval_items(split: str) -> list[PromptItem]:
    from lpo_bench.toy.geneval import toy_geneval_prompts

    return _numbered(toy_geneval_prompts(_toy_split(split)), f"{split}/")


def geneval_items(data_dir: str | Path | None) -> list[PromptItem]:
    """GenEval's prompts in file order, numbered within their tag (the file's metadata: ``load_geneval_metadata``)."""
    from lpo_bench.data.datasets import load_geneval_metadata

    return _numbered((str(r["tag"]), str(r["prompt"])) for r in load_geneval_metadata(data_dir=data_dir))


def compbench_items(data_dir: str | Path | None) -> list[PromptItem]:
    from lpo_bench.data.datasets import load_prompt_file

    items: list[PromptItem] = []
    from lpo_bench.data.datasets import COMPBENCH_CATEGORIES

    for cat in COMPBENCH_CATEGORIES:
        for i, text in enumerate(load_prompt_file(cat, data_dir=data_dir)):
            items.append(PromptItem(f"{cat}/{i:04d}", text, cat, i))
    return items


PICKAPIC_DIRS = ("pickapic_v1", "pickapic-anonymous/pickapic_v1", "pickapic-anonymous--pickapic_v1",
                 "yuvalkirstain/pickapic_v1", "yuvalkirstain--pickapic_v1", ".")
HPDV2_FILES = ("HPDv2/test.json", "hpdv2/test.json", "ymhao/HPDv2/test.json", "ymhao--HPDv2/test.json",
               "hpdv2_test.json")


def pickapic_files(data_dir: str | Path | None) -> list[Path]:
    from lpo_bench.data.pairs import _split_files

    if data_dir is None:
        raise HarnessError(
            "the 'general' suite needs a local copy of Pick-a-Pic v1 (pickapic-anonymous/pickapic_v1, "
            f"split {PICKAPIC_SPLIT}); pass --data-dir DIR with DIR/pickapic_v1/data/{PICKAPIC_SPLIT}-*.parquet"
        )
    for sub in PICKAPIC_DIRS:
        d = Path(data_dir) / sub
        files = _split_files(d, PICKAPIC_SPLIT) if d.is_dir() else []
        if files:
            return files
    raise HarnessError(
        f"no Pick-a-Pic v1 {PICKAPIC_SPLIT} parquet under {data_dir} (looked in {', '.join(PICKAPIC_DIRS)}); "
        f"copy pickapic-anonymous/pickapic_v1's data/{PICKAPIC_SPLIT}-*.parquet to {data_dir}/pickapic_v1/data/"
    )


def hpdv2_file(data_dir: str | Path | None) -> Path | None:
    if data_dir is None:
        return None
    for rel in HPDV2_FILES:
        if (Path(data_dir) / rel).is_file():
            return Path(data_dir) / rel
    return None


def general_items(data_dir: str | Path | None) -> list[PromptItem]:
    import pandas as pd

    files = pickapic_files(data_dir)
    try:
        captions = pd.concat([pd.read_parquet(f, columns=["caption"]) for f in files])["caption"].tolist()
    except Exception as exc:
        raise HarnessError(f"could not read captions from {files[0]}: {type(exc).__name__}; the file is corrupt "
                           f"or lacks a 'caption' column") from None
    unique = list(dict.fromkeys(c for c in captions if isinstance(c, str) and c.strip()))[:GENERAL_PICKAPIC_PROMPTS]
    items = [PromptItem(f"pickapic_v1/{i:04d}", t, "pickapic_v1", i) for i, t in enumerate(unique)]
    hp = hpdv2_file(data_dir)
    if hp is not None:
        try:
            rows = json.loads(hp.read_text(encoding="utf-8"))
            texts = [r["prompt"] if isinstance(r, dict) else str(r) for r in rows]
        except (ValueError, KeyError, TypeError) as exc:
            raise HarnessError(f"{hp} is not HPDv2's test.json (a list of {{'prompt': ...}}): {exc}".splitlines()[0]) from None
        items += [PromptItem(f"hpdv2/{i:04d}", t, "hpdv2", i) for i, t in enumerate(texts)]
    return items


