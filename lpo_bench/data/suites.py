"""Evaluation suites: a frozen prompt list, a sampler, a seed rule and the metrics that score it.

A suite is data: two runs of the same suite version see the same prompts,
the same per-image seeds (``sampling.sample_seed(seed_base, prompt_id, image_idx)``) and the same
sampler, and ``inputs_sha256`` says so. Which metric scores which category is part of the suite.

Suites (registry ``SUITES``):

* ``toy-compbench`` toy world, six T2I-CompBench++-like families, each scored by its
  category-specific toy evaluator (``lpo_bench.toy.metrics.category_score``, metric ``toy-compbench``).
  Prompts: the toy val/test splits of ``lpo_bench.data.prompts`` (seed and sizes fixed there).
* ``toy-general``   the same toy prompts scored by the general toy metrics (oracle reward, aesthetic,
  CLIP-like, VQA-like), per family and overall.
* ``compbench``     T2I-CompBench++ (Karine-Huang/T2I-CompBench@1b70949): the 300 pinned val prompts of
  each of the eight categories, 10 images per prompt. BLIP-VQA for color/shape/texture, CLIP score for
  non_spatial; spatial, 3d_spatial, numeracy and complex (3-in-1) need the UniDet detector, which only
  runs as an external scorer in T2I-CompBench's own environment (``lpo_bench.metrics.external``);
  without it those categories are reported as skipped, never substituted.
* ``general``       LPO/SPO's protocol: the 500 Pick-a-Pic v1 ``validation_unique`` captions from a
  local copy (``--data-dir``), plus the HPDv2 test prompts when a local ``test.json`` is present;
  PickScore, HPSv2.1, ImageReward, LAION aesthetic and CLIP score.

``max_prompts`` takes a category-balanced subset (round robin over the categories, each in file
order), so a quick evaluation still covers every category.

Changelog (bump ``version`` on ANY change that can move a number):

* toy-compbench v1, toy-general v1, compbench v1, general v1: first versions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from lpo_bench.errors import HarnessError

TOY_FAMILIES = ("color", "shape", "texture", "spatial", "numeracy", "complex")  # == toy.world.FAMILIES
COMPBENCH_CATEGORIES = ("color", "shape", "texture", "spatial", "3d_spatial", "numeracy", "non_spatial", "complex")
GENERAL_PICKAPIC_PROMPTS = 500
PICKAPIC_SPLIT = "validation_unique"

# Metric ids of the T2I-CompBench++ UniDet-based evaluators (external scorer: their detector only runs in
# T2I-CompBench's own environment).
UNIDET_METRICS: dict[str, str] = {
    "spatial": "t2i-compbench/unidet-2d",
    "3d_spatial": "t2i-compbench/unidet-3d",
    "numeracy": "t2i-compbench/numeracy",
    "complex": "t2i-compbench/3-in-1",
}
TOY_COMPBENCH_METRIC = "toy-compbench"


@dataclass(frozen=True)
class SamplerSpec:
    """How images are sampled: DDIM with ``num_inference_steps`` steps ("leading", offset 1), CFG
    ``guidance_scale`` against the empty prompt, ``eta`` (0 = deterministic DDIM)."""

    scheduler: str = "DDIMScheduler"
    num_inference_steps: int = 20
    guidance_scale: float = 5.0
    eta: float = 0.0


@dataclass(frozen=True)
class PromptItem:
    """One prompt of a suite. ``prompt_id`` is stable within a suite version and seeds its images;
    ``index`` is the prompt's position in its category (T2I-CompBench image numbering)."""

    prompt_id: str
    text: str
    category: str
    index: int


@dataclass(frozen=True)
class Suite:
    """A versioned evaluation suite (see module docstring).

    ``metrics`` lists every metric id the suite uses; ``category_metrics`` maps a category to the
    metric(s) that score it, and a category absent from it is scored by all ``metrics``.
    """

    name: str
    version: int
    description: str
    role: Literal["val", "test"]
    images_per_prompt: int
    sampler: SamplerSpec
    seed_base: int
    metrics: tuple[str, ...]
    categories: tuple[str, ...]
    kind: Literal["toy", "real"]
    category_metrics: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())
    notes: tuple[str, ...] = field(default=())  # deviations from the reference protocol, shown in every run

    def metrics_for(self, category: str) -> tuple[str, ...]:
        """Metric ids that score images of ``category``."""
        return dict(self.category_metrics).get(category, self.metrics)

    def prompts(self, split: str = "test", data_dir: str | Path | None = None,
                max_prompts: int | None = None) -> list[PromptItem]:
        """The suite's prompts (toy: ``split`` in val/test; real suites have a single split)."""
        if self.kind == "toy":
            items = _toy_items(split)
        elif self.name == "compbench":
            items = _compbench_items(data_dir)
        elif self.name == "general":
            items = _general_items(data_dir)
        else:  # pragma: no cover - every suite below is one of the above
            raise HarnessError(f"suite {self.name} has no prompt source")
        return balanced_subset(items, self.categories, max_prompts)

    def split_name(self, split: str) -> str:
        """The prompt split actually used (real suites ignore ``split``)."""
        if self.kind == "toy":
            return split
        return "val" if self.name == "compbench" else PICKAPIC_SPLIT

    def skipped_categories(self, data_dir: str | Path | None = None) -> dict[str, str]:
        """Categories without prompts in this environment, with the reason (only optional sources)."""
        if self.name == "general" and _hpdv2_file(data_dir) is None:
            return {"hpdv2": "no local HPDv2 test prompts (test.json under --data-dir/HPDv2); "
                             "pass a --data-dir holding HPDv2/test.json to score them"}
        return {}

    def inputs_sha256(self, items: list[PromptItem], images_per_prompt: int | None = None) -> str:
        """Hash of everything that fixes the generated images: prompts, ids, seeds rule, sampler."""
        from lpo_bench.records import sha256_of

        return sha256_of({
            "suite": self.name,
            "version": self.version,
            "sampler": asdict(self.sampler),
            "seed_base": self.seed_base,
            "images_per_prompt": int(images_per_prompt or self.images_per_prompt),
            "prompts": [[it.prompt_id, it.text, it.category] for it in items],
        })

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d["category_metrics"] = {k: list(v) for k, v in self.category_metrics}
        return d


def balanced_subset(items: list[PromptItem], categories: tuple[str, ...], max_prompts: int | None) -> list[PromptItem]:
    """At most ``max_prompts`` items, taken round robin over ``categories`` (each in its own order);
    the result keeps the original order. ``None`` keeps everything."""
    if max_prompts is None or max_prompts >= len(items):
        return list(items)
    if max_prompts < 1:
        raise HarnessError(f"--max-prompts must be >= 1, got {max_prompts}")
    groups = {c: [i for i, it in enumerate(items) if it.category == c] for c in categories}
    chosen: list[int] = []
    depth = 0
    while len(chosen) < max_prompts:
        for c in categories:
            if depth < len(groups[c]) and len(chosen) < max_prompts:
                chosen.append(groups[c][depth])
        depth += 1
    return [items[i] for i in sorted(chosen)]


# ---------------------------------------------------------------------------- prompt sources
@cache
def _toy_split_specs() -> dict[str, tuple[tuple[str, str], ...]]:
    """(text, family) of the toy val/test prompts (world.prompt_splits with lpo_bench.data.prompts' seed and sizes)."""
    from lpo_bench.data.prompts import TOY_SPLIT_SEED, TOY_SPLIT_SIZES
    from lpo_bench.toy import world

    s = world.prompt_splits(TOY_SPLIT_SIZES["train"], TOY_SPLIT_SIZES["val"], TOY_SPLIT_SIZES["test"], seed=TOY_SPLIT_SEED)
    return {k: tuple((p.text, p.family) for p in s[k]) for k in ("val", "test")}


def _toy_items(split: str) -> list[PromptItem]:
    if split not in ("val", "test"):
        raise HarnessError(f"toy suites have the splits 'val' and 'test', not '{split}'; pass --split val or test")
    items: list[PromptItem] = []
    count: dict[str, int] = {}
    for text, fam in _toy_split_specs()[split]:
        j = count.get(fam, 0)
        count[fam] = j + 1
        items.append(PromptItem(f"{split}/{fam}/{j:04d}", text, fam, j))
    return items


def _compbench_items(data_dir: str | Path | None) -> list[PromptItem]:
    from lpo_bench.data.datasets import load_prompt_file

    items: list[PromptItem] = []
    for cat in COMPBENCH_CATEGORIES:
        for i, text in enumerate(load_prompt_file(cat, data_dir=data_dir)):
            items.append(PromptItem(f"{cat}/{i:04d}", text, cat, i))
    return items


PICKAPIC_DIRS = ("pickapic_v1", "pickapic-anonymous/pickapic_v1", "pickapic-anonymous--pickapic_v1",
                 "yuvalkirstain/pickapic_v1", "yuvalkirstain--pickapic_v1", ".")
HPDV2_FILES = ("HPDv2/test.json", "hpdv2/test.json", "ymhao/HPDv2/test.json", "ymhao--HPDv2/test.json",
               "hpdv2_test.json")


def _pickapic_files(data_dir: str | Path | None) -> list[Path]:
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


def _hpdv2_file(data_dir: str | Path | None) -> Path | None:
    if data_dir is None:
        return None
    for rel in HPDV2_FILES:
        if (Path(data_dir) / rel).is_file():
            return Path(data_dir) / rel
    return None


def _general_items(data_dir: str | Path | None) -> list[PromptItem]:
    import pandas as pd

    files = _pickapic_files(data_dir)
    try:
        captions = pd.concat([pd.read_parquet(f, columns=["caption"]) for f in files])["caption"].tolist()
    except Exception as exc:
        raise HarnessError(f"could not read captions from {files[0]}: {type(exc).__name__}; the file is corrupt "
                           f"or lacks a 'caption' column") from None
    unique = list(dict.fromkeys(c for c in captions if isinstance(c, str) and c.strip()))[:GENERAL_PICKAPIC_PROMPTS]
    items = [PromptItem(f"pickapic_v1/{i:04d}", t, "pickapic_v1", i) for i, t in enumerate(unique)]
    hp = _hpdv2_file(data_dir)
    if hp is not None:
        try:
            rows = json.loads(hp.read_text(encoding="utf-8"))
            texts = [r["prompt"] if isinstance(r, dict) else str(r) for r in rows]
        except (ValueError, KeyError, TypeError) as exc:
            raise HarnessError(f"{hp} is not HPDv2's test.json (a list of {{'prompt': ...}}): {exc}".splitlines()[0]) from None
        items += [PromptItem(f"hpdv2/{i:04d}", t, "hpdv2", i) for i, t in enumerate(texts)]
    return items


# ---------------------------------------------------------------------------- the suites
_TOY_SAMPLER = SamplerSpec("DDIMScheduler", 20, 5.0, 0.0)

TOY_COMPBENCH = Suite(
    name="toy-compbench",
    version=1,
    description="Toy T2I-CompBench++: six families, each scored by its category-specific toy evaluator",
    role="test",
    images_per_prompt=4,
    sampler=_TOY_SAMPLER,
    seed_base=42,
    metrics=(TOY_COMPBENCH_METRIC,),
    categories=TOY_FAMILIES,
    kind="toy",
)

TOY_GENERAL = Suite(
    name="toy-general",
    version=1,
    description="Toy general quality: oracle reward, toy aesthetic, toy CLIP and toy VQA over mixed prompts",
    role="test",
    images_per_prompt=4,
    sampler=_TOY_SAMPLER,
    seed_base=42,
    metrics=("toy-oracle", "toy-aesthetic", "toy-clip", "toy-vqa"),
    categories=TOY_FAMILIES,
    kind="toy",
)

COMPBENCH = Suite(
    name="compbench",
    version=1,
    description="T2I-CompBench++ val prompts (300 per category, the benchmark's test set), 10 images per prompt",
    role="test",
    images_per_prompt=10,
    sampler=SamplerSpec("DDIMScheduler", 20, 5.0, 0.0),
    seed_base=42,
    metrics=("blip-vqa", "clipscore", *UNIDET_METRICS.values()),
    categories=COMPBENCH_CATEGORIES,
    kind="real",
    category_metrics=(
        ("color", ("blip-vqa",)),
        ("shape", ("blip-vqa",)),
        ("texture", ("blip-vqa",)),
        ("non_spatial", ("clipscore",)),
        *((cat, (m,)) for cat, m in UNIDET_METRICS.items()),
    ),
    notes=(
        "blip-vqa is the transformers port of T2I-CompBench's BLIP-VQA (blip-vqa.hf-capfilt-large): close to, "
        "not verified identical with, the official scorer",
        "non_spatial uses clipscore = raw cosine of OpenAI CLIP ViT-L/14; T2I-CompBench uses ViT-B/32, so it is "
        "not comparable with published Non-Spatial numbers",
        "spatial, 3d_spatial and numeracy are scored only when T2I-CompBench's UniDet detector is configured "
        "($LPO_BENCH_T2I_DETECTOR); complex (3-in-1) is left to the official 3_in_1.py; their images are saved",
    ),
)

GENERAL = Suite(
    name="general",
    version=1,
    description="Pick-a-Pic v1 validation_unique (500 prompts) and HPDv2 test prompts (if local), the published protocol",
    role="test",
    images_per_prompt=1,
    sampler=SamplerSpec("DDIMScheduler", 20, 5.0, 0.0),
    seed_base=42,
    metrics=("pickscore", "hpsv2.1", "imagereward", "aesthetic", "clipscore"),
    categories=("pickapic_v1", "hpdv2"),
    kind="real",
    notes=(
        "one image per prompt (the official evaluation script of arXiv 2502.01051 effectively scores one); each "
        "image has its own seed sample_seed(42, prompt_id, k), where that script reuses seed 42 per batch",
    ),
)


def get_suite(name: str) -> Suite:
    """The suite registered as ``name`` (HarnessError with a suggestion for unknown names)."""
    from lpo_bench import registry

    return registry.resolve("suite", name)
