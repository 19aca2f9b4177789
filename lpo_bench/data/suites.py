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
* ``toy-geneval``   toy world, GenEval's six tasks as toy prompts judged by GenEval's rules on the toy
  parser's detections (metric ``toy-geneval``, :mod:`lpo_bench.toy.geneval`).
* ``geneval``       GenEval (djghosh13/geneval@af4902f): 553 prompts in six tasks, 4 images per prompt, DDIM 50
  steps, CFG 9.0 (its generation script's defaults); ``geneval-20`` is the same at 20 steps (arXiv 2502.01051's
  other column). Mask2Former runs out of process in GenEval's own environment
  (:mod:`lpo_bench.metrics.geneval`); without it the suite stops with one line, never a substitute.
* ``general``       LPO/SPO's protocol: the 500 Pick-a-Pic v1 ``validation_unique`` captions from a
  local copy (``--data-dir``), plus the HPDv2 test prompts when a local ``test.json`` is present;
  PickScore, HPSv2.1, ImageReward, LAION aesthetic and CLIP score.

``max_prompts`` takes a category-balanced subset (round robin over the categories, each in file
order), so a quick evaluation still covers every category.

Changelog (bump ``version`` on ANY change that can move a number):

* toy-compbench v1, toy-general v1, compbench v1, general v1: first versions.
* toy-geneval v1, geneval v1, geneval-20 v1: first versions.

``overall``: how the "all" row averages: ``prompts`` (mean over prompts) or ``categories`` (the mean of the
per-category means: GenEval's overall score).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from lpo_bench.data.suite_prompts import (
    PICKAPIC_SPLIT,
    PromptItem,
    compbench_items,
    general_items,
    geneval_items,
    hpdv2_file,
    toy_geneval_items,
    toy_items,
)
from lpo_bench.errors import HarnessError
from lpo_bench.metrics import geneval_rules

TOY_FAMILIES = ("color", "shape", "texture", "spatial", "numeracy", "complex")  # == toy.world.FAMILIES
COMPBENCH_CATEGORIES = ("color", "shape", "texture", "spatial", "3d_spatial", "numeracy", "non_spatial", "complex")

# Metric ids of the T2I-CompBench++ UniDet-based evaluators (external scorer: their detector only runs in
# T2I-CompBench's own environment).
UNIDET_METRICS: dict[str, str] = {
    "spatial": "t2i-compbench/unidet-2d",
    "3d_spatial": "t2i-compbench/unidet-3d",
    "numeracy": "t2i-compbench/numeracy",
    "complex": "t2i-compbench/3-in-1",
}
TOY_COMPBENCH_METRIC = "toy-compbench"
GENEVAL_TAGS = geneval_rules.TAGS
GENEVAL_METRIC = "geneval"  # external: Mask2Former in GenEval's environment + in-process rules
TOY_GENEVAL_METRIC = "toy-geneval"


@dataclass(frozen=True)
class SamplerSpec:
    """How images are sampled: DDIM with ``num_inference_steps`` steps ("leading", offset 1), CFG
    ``guidance_scale`` against the empty prompt, ``eta`` (0 = deterministic DDIM)."""

    scheduler: str = "DDIMScheduler"
    num_inference_steps: int = 20
    guidance_scale: float = 5.0
    eta: float = 0.0


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
    overall: Literal["prompts", "categories"] = "prompts"

    def metrics_for(self, category: str) -> tuple[str, ...]:
        """Metric ids that score images of ``category``."""
        return dict(self.category_metrics).get(category, self.metrics)

    def prompts(self, split: str = "test", data_dir: str | Path | None = None,
                max_prompts: int | None = None) -> list[PromptItem]:
        """The suite's prompts (toy: ``split`` in val/test; real suites have a single split)."""
        if self.kind == "toy":
            items = toy_geneval_items(split) if self.metrics == (TOY_GENEVAL_METRIC,) else toy_items(split)
        elif self.metrics == (GENEVAL_METRIC,):
            items = geneval_items(data_dir)
        elif self.name == "compbench":
            items = compbench_items(data_dir)
        elif self.name == "general":
            items = general_items(data_dir)
        else:  # pragma: no cover - every suite below is one of the above
            raise HarnessError(f"suite {self.name} has no prompt source")
        return balanced_subset(items, self.categories, max_prompts)

    def split_name(self, split: str) -> str:
        """The prompt split actually used (real suites ignore ``split``)."""
        if self.kind == "toy":
            return split
        if self.metrics == (GENEVAL_METRIC,):
            return "geneval"
        return "val" if self.name == "compbench" else PICKAPIC_SPLIT

    def skipped_categories(self, data_dir: str | Path | None = None) -> dict[str, str]:
        """Categories without prompts in this environment, with the reason (only optional sources)."""
        if self.name == "general" and hpdv2_file(data_dir) is None:
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


# ---------------------------------------------------------------------------- the suites
_TOY_SAMPLER = SamplerSpec("DDIMScheduler", 20, 5.0, 0.0)

def _toy_suite(name: str, description: str, metrics: tuple[str, ...], categories: tuple[str, ...],
               **kw: Any) -> Suite:
    """A toy suite: test role, 4 images per prompt, the toy sampler, seed base 42."""
    return Suite(name=name, version=1, description=description, role="test", images_per_prompt=4,
                 sampler=_TOY_SAMPLER, seed_base=42, metrics=metrics, categories=categories, kind="toy", **kw)


TOY_COMPBENCH = _toy_suite("toy-compbench", "Toy T2I-CompBench++: six families, each scored by its category-specific "
                           "toy evaluator", (TOY_COMPBENCH_METRIC,), TOY_FAMILIES)
TOY_GENERAL = _toy_suite("toy-general", "Toy general quality: oracle reward, toy aesthetic, toy CLIP and toy VQA over "
                         "mixed prompts", ("toy-oracle", "toy-aesthetic", "toy-clip", "toy-vqa"), TOY_FAMILIES)
TOY_GENEVAL = _toy_suite("toy-geneval", "Toy GenEval: GenEval's six tasks as toy prompts, GenEval's rules on the toy "
                         "parser's detections", (TOY_GENEVAL_METRIC,), GENEVAL_TAGS, overall="categories")

_GENEVAL_NOTES = (
    "per-image score 100 (correct) or 0; 'all' is the mean of the six task accuracies (GenEval's overall score)",
    "sampled with DDIM; GenEval's generation script uses the pipeline's default scheduler (PNDM for SD1.5)",
    "each image has its own seed sample_seed(42, prompt_id, k); GenEval's script seeds 42 once per prompt",
    "the paper (arXiv 2502.01051) does not state its GenEval CFG; 9.0 is GenEval's generation default",
    "colour: OpenAI CLIP ViT-L/14 through transformers (the clipscore checkpoint), GenEval loads the same weights "
    "through open_clip; resize and tokenisation implementations differ",
)


def _geneval_suite(name: str, steps: int) -> Suite:
    return Suite(
        name=name,
        version=1,
        description=f"GenEval (djghosh13/geneval@af4902f): 553 prompts in six tasks, 4 images each, {steps} steps",
        role="test",
        images_per_prompt=4,
        sampler=SamplerSpec("DDIMScheduler", steps, 9.0, 0.0),
        seed_base=42,
        metrics=(GENEVAL_METRIC,),
        categories=GENEVAL_TAGS,
        kind="real",
        notes=_GENEVAL_NOTES,
        overall="categories",
    )


GENEVAL = _geneval_suite("geneval", 50)
GENEVAL_20 = _geneval_suite("geneval-20", 20)

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
