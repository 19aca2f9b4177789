"""Toy evaluators that mirror the real ones (T2I-CompBench++ at Karine-Huang/T2I-CompBench@1b70949, CLIP
score, LAION aesthetic), and the ``toy-*`` adapters.

Every score is per image, from :mod:`lpo_bench.toy.parser`; ``parsed`` may be passed to
reuse one parse. A detected object's *detector score* for a noun (a shape) is
``p(shape) * detection``; like UniDet it counts only when >= ``DETECTION_THRESHOLD`` and
the object's most likely shape is that noun.

* :func:`vqa_score` (BLIP-VQA): product over the prompt's noun phrases ("a red
  circle", "two green triangles") of p(yes), where p(yes) for a phrase asking for ``n``
  objects matching ``req`` is the n-th largest ``match_prob(req) * detection`` over the
  detected objects (0 if fewer), smoothed to ``EPS/2 + (1 - EPS) x``.
* :func:`spatial_score` (UniDet 2D): nouns = the two shapes; each found with its
  highest detector score s; both found: ``0.25 s1 + 0.25 s2 + 0.5 pos``; one found:
  ``0.25 s``; scores below 0.5 become 0. ``pos`` uses the pixel boxes' centres and IoU:
  for "left of" it needs ``dx > 0`` and ``|dx| > |dy|``, then 1 if IoU < 0.1 else
  0.1 / IoU (and so on for the other relations); otherwise 0.
* :func:`numeracy_score` (UniDet numeracy): each group (noun, n) weighs 1/#groups;
  +0.5 w if at least one is detected, +0.5 w more if exactly n are.
* :func:`complex_score` (3-in-1, the ``complex_val_spatial`` rule):
  ``(vqa + spatial) / 2`` with a relation, ``vqa`` without one.
* :func:`clip_like_score` (CLIP score): bag of words, as CLIP is weak at binding
  and counting: the mean over the attribute words of the prompt (shapes, colours,
  textures, sizes, with repeats) of the best ``p(attr = word) * detection`` over objects.
* :func:`aesthetic_score` (LAION aesthetic): ``1 + 9 * oracle aesthetic`` (1-10).
* :func:`category_score`: color/shape/texture -> vqa, spatial -> spatial,
  numeracy -> numeracy, complex -> complex.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from lpo_bench.toy import geneval as toy_geneval
from lpo_bench.toy import oracle as O
from lpo_bench.toy import world as W
from lpo_bench.toy.parser import EPS_PROB, ParsedObject, ParsedScene, parse_batch

TOY_VERSION = "1"
DETECTION_THRESHOLD = 0.5
IOU_THRESHOLD = 0.1

Parsed = Sequence[ParsedScene] | None


def _parse(imgs: np.ndarray, specs: Sequence[W.PromptSpec], parsed: Parsed) -> Sequence[ParsedScene]:
    parsed = parse_batch(imgs) if parsed is None else parsed
    if len(parsed) != len(specs):
        raise ValueError(f"{len(parsed)} images but {len(specs)} prompts")
    return parsed


def _phrases(spec: W.PromptSpec) -> list[tuple[W.ObjReq, int]]:
    """The prompt's noun phrases as (request, how many)."""
    if spec.family == "numeracy":
        return W.numeracy_groups(spec)
    return [(r, 1) for r in spec.objects]


def vqa_from_parsed(scene: ParsedScene, spec: W.PromptSpec) -> float:
    out = 1.0
    for req, n in _phrases(spec):
        probs = sorted((o.match_prob(req) * o.detection for o in scene.objects), reverse=True)
        x = probs[n - 1] if len(probs) >= n else 0.0
        out *= EPS_PROB / 2 + (1 - EPS_PROB) * x
    return out


def _detect(scene: ParsedScene, noun: str) -> list[tuple[float, ParsedObject]]:
    """Detections labelled ``noun``, best first: (detector score, object)."""
    hits = [(o.prob("shape", noun) * o.detection, o) for o in scene.objects if o.shape == noun]
    return sorted((h for h in hits if h[0] >= DETECTION_THRESHOLD), key=lambda h: -h[0])


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area if area > 0 else 0.0


def spatial_pos(relation: str, box1: tuple[int, int, int, int], box2: tuple[int, int, int, int]) -> float:
    """T2I-CompBench 2D ``pos`` for "obj1 <relation> obj2" with boxes (x0, y0, x1, y1)."""
    dx = (box2[0] + box2[2]) / 2 - (box1[0] + box1[2]) / 2
    dy = (box2[1] + box2[3]) / 2 - (box1[1] + box1[3]) / 2
    holds = {
        "left of": dx > 0 and abs(dx) > abs(dy),
        "right of": dx < 0 and abs(dx) > abs(dy),
        "above": dy > 0 and abs(dy) > abs(dx),
        "below": dy < 0 and abs(dy) > abs(dx),
    }[relation]
    if not holds:
        return 0.0
    iou = _iou(box1, box2)
    return 1.0 if iou < IOU_THRESHOLD else IOU_THRESHOLD / iou


def spatial_from_parsed(scene: ParsedScene, spec: W.PromptSpec) -> float:
    if spec.relation is None:
        raise ValueError(f"spatial_score needs a prompt with a relation, got {spec.text!r}")
    d1 = _detect(scene, spec.objects[0].shape)
    d2 = _detect(scene, spec.objects[1].shape)
    if d1 and d2:
        (s1, o1), (s2, o2) = d1[0], d2[0]
        score = 0.25 * s1 + 0.25 * s2 + 0.5 * spatial_pos(spec.relation, o1.bbox, o2.bbox)
    elif d1 or d2:
        score = 0.25 * (d1 or d2)[0][0]
    else:
        score = 0.0
    return score if score >= 0.5 else 0.0


def numeracy_from_parsed(scene: ParsedScene, spec: W.PromptSpec) -> float:
    groups = W.numeracy_groups(spec)
    w = 1.0 / len(groups)
    score = 0.0
    for req, n in groups:
        found = len(_detect(scene, req.shape))
        score += 0.5 * w * (found >= 1) + 0.5 * w * (found == n)
    return score


def complex_from_parsed(scene: ParsedScene, spec: W.PromptSpec) -> float:
    vqa = vqa_from_parsed(scene, spec)
    if spec.relation is None:
        return vqa
    return (vqa + spatial_from_parsed(scene, spec)) / 2


def clip_like_from_parsed(scene: ParsedScene, spec: W.PromptSpec) -> float:
    words = [
        (attr, getattr(r, attr))
        for r in spec.objects
        for attr in ("shape", "color", "texture", "size")
        if getattr(r, attr) is not None
    ]
    best = [max((o.prob(a, v) * o.detection for o in scene.objects), default=0.0) for a, v in words]
    return float(np.mean(best))


def aesthetic_from_parsed(scene: ParsedScene, spec: W.PromptSpec | None = None) -> float:
    return 1.0 + 9.0 * O.aesthetic_from_parsed(scene)


_CATEGORY = {
    "color": vqa_from_parsed,
    "shape": vqa_from_parsed,
    "texture": vqa_from_parsed,
    "spatial": spatial_from_parsed,
    "numeracy": numeracy_from_parsed,
    "complex": complex_from_parsed,
}


def category_from_parsed(scene: ParsedScene, spec: W.PromptSpec) -> float:
    return _CATEGORY[spec.family](scene, spec)


def _apply(fn: Callable[[ParsedScene, W.PromptSpec], float], imgs, specs, parsed: Parsed) -> np.ndarray:
    return np.array(
        [fn(p, s) for p, s in zip(_parse(imgs, specs, parsed), specs, strict=True)], dtype=np.float64
    )


def vqa_score(imgs: np.ndarray, specs: Sequence[W.PromptSpec], parsed: Parsed = None) -> np.ndarray:
    """BLIP-VQA-like score [b] in [0,1] for images [b,32,32,3]."""
    return _apply(vqa_from_parsed, imgs, specs, parsed)


def spatial_score(imgs: np.ndarray, specs: Sequence[W.PromptSpec], parsed: Parsed = None) -> np.ndarray:
    """UniDet-2D-like score [b] in {0} U [0.5,1]; every prompt needs a relation."""
    return _apply(spatial_from_parsed, imgs, specs, parsed)


def numeracy_score(imgs: np.ndarray, specs: Sequence[W.PromptSpec], parsed: Parsed = None) -> np.ndarray:
    """UniDet-numeracy-like score [b] in [0,1] (numeracy prompts)."""
    return _apply(numeracy_from_parsed, imgs, specs, parsed)


def complex_score(imgs: np.ndarray, specs: Sequence[W.PromptSpec], parsed: Parsed = None) -> np.ndarray:
    """3-in-1-like score [b] in [0,1]."""
    return _apply(complex_from_parsed, imgs, specs, parsed)


def clip_like_score(imgs: np.ndarray, specs: Sequence[W.PromptSpec], parsed: Parsed = None) -> np.ndarray:
    """Bag-of-words CLIP-like alignment [b] in [0,1]."""
    return _apply(clip_like_from_parsed, imgs, specs, parsed)


def aesthetic_score(imgs: np.ndarray, specs: Sequence[W.PromptSpec], parsed: Parsed = None) -> np.ndarray:
    """LAION-aesthetic-like score [b] in [1,10] (the prompt is ignored)."""
    return _apply(aesthetic_from_parsed, imgs, specs, parsed)


def category_score(imgs: np.ndarray, specs: Sequence[W.PromptSpec], parsed: Parsed = None) -> np.ndarray:
    """The per-family T2I-CompBench++-style score [b] in [0,1]."""
    return _apply(category_from_parsed, imgs, specs, parsed)


# ---------------------------------------------------------------- RewardModel adapters


def _source_sha256() -> str:
    """sha256 over the toy world's source files: the toy scorers' "checkpoint"."""
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in ("world.py", "parser.py", "oracle.py", "metrics.py", "geneval.py"):
        h.update((here / name).read_bytes())
    h.update((here.parent / "metrics" / "geneval_rules.py").read_bytes())
    return h.hexdigest()


class _ToyScorer:
    """Shared adapter: images [b,3,H,W] in [0,1] + prompt texts -> scores [b]."""

    id: ClassVar[str]
    version: ClassVar[str] = TOY_VERSION
    higher_is_better: ClassVar[bool] = True
    _fn: ClassVar[Callable[[ParsedScene, W.PromptSpec], float]]

    def __init__(self, **kwargs: object) -> None:
        self.options = dict(kwargs)

    def load(self, device: str = "cpu"):
        from lpo_bench.metrics.base import ScorerProvenance

        return ScorerProvenance(
            metric_id=self.id,
            metric_version=self.version,
            checkpoint=f"lpo_bench.toy@{TOY_VERSION}",
            sha256=_source_sha256(),
            dtype="fp32",
        )

    def score(self, images, prompts: Sequence[str]):
        import torch
        import torch.nn.functional as F

        from lpo_bench.errors import HarnessError

        if images.ndim != 4 or images.shape[1] != 3:
            raise HarnessError(
                f"{self.id} expects images [b,3,H,W], got {tuple(images.shape)}; pass RGB batches"
            )
        if len(prompts) != images.shape[0]:
            raise HarnessError(f"{self.id} got {images.shape[0]} images but {len(prompts)} prompts")
        specs = []
        for text in prompts:
            try:
                specs.append(W.parse_prompt(text))
            except ValueError as err:
                raise HarnessError(f"{self.id} scores toy-world prompts only: {err}") from None
        x = images.detach().to("cpu", torch.float32)
        size = (W.IMAGE_SIZE, W.IMAGE_SIZE)
        if min(x.shape[-2:]) >= W.IMAGE_SIZE:  # box filter, like the renderer's supersampling
            x = F.adaptive_avg_pool2d(x, size)
        else:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        arr = x.clamp(0, 1).permute(0, 2, 3, 1).numpy()
        parsed = parse_batch(arr)
        fn = type(self)._fn
        return torch.tensor([fn(p, s) for p, s in zip(parsed, specs, strict=True)], dtype=torch.float32)


class ToyOracle(_ToyScorer):
    """The toy human's reward (alignment + 0.5 aesthetic), in [0, 1.5]."""

    id = "toy-oracle"
    _fn = staticmethod(O.reward_from_parsed)


class ToyAesthetic(_ToyScorer):
    """LAION-aesthetic-like score in [1, 10]."""

    id = "toy-aesthetic"
    _fn = staticmethod(aesthetic_from_parsed)


class ToyClip(_ToyScorer):
    """CLIP-score-like bag-of-words alignment in [0, 1]."""

    id = "toy-clip"
    _fn = staticmethod(clip_like_from_parsed)


class ToyVQA(_ToyScorer):
    """BLIP-VQA-like product of per-phrase p(yes), in [0, 1]."""

    id = "toy-vqa"
    _fn = staticmethod(vqa_from_parsed)


class ToyGenEval(_ToyScorer):
    """Toy GenEval: GenEval's rules on the parser's detections (:mod:`lpo_bench.toy.geneval`), 100 or 0 per image."""

    id = "toy-geneval"
    _fn = staticmethod(toy_geneval.score_parsed)


class ToyCompBench(_ToyScorer):
    """Toy T2I-CompBench++: the evaluator of the prompt's family (:func:`category_score`), in [0, 1]."""

    id = "toy-compbench"
    _fn = staticmethod(category_from_parsed)
