"""GenEval scoring rules as pure functions (no models, no torch).

Follows ``djghosh13/geneval@af4902f24d3ca90ebbb446dd9891a59e0f82725f`` ``evaluation/evaluate_images.py``
(``evaluate_image`` and ``evaluate``) and ``evaluation/summary_scores.py``, with its defaults:

* a detection is kept when its score is above 0.3 (above 0.9 for the ``counting`` tag), at most 16 per
  class, most confident first; no overlap suppression (``max_overlap`` 1.0 disables it);
* ``include`` clauses are combined with AND: class ``c`` needs at least ``count`` kept detections;
  ``exclude`` clauses with OR: ``count`` or more kept detections of ``c`` fail the image;
* colour and position are judged only on the ``count`` most confident detections of the class;
* colour: a zero-shot classifier over :data:`COLORS` looks at the object's mask composited on a
  ``#999`` background and cropped to its box (:func:`color_crop`; the classifier itself is model code,
  :mod:`lpo_bench.metrics.geneval`); at least ``count`` of them must get the required colour;
* position: :func:`relative_position` with margin ``0.1 x (size_a + size_b)`` per axis; every judged object
  must stand in the required relation to every object of the target clause;
* the overall score is the mean of the six per-tag accuracies (not of all images).

Boxes are ``(x1, y1, x2, y2)`` in image pixels, as Mask2Former (mmdet 2.x) returns them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS = ("left of", "right of", "above", "below")
THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
MAX_OVERLAP = 1.0  # 1.0: no suppression
POSITION_THRESHOLD = 0.1
BACKGROUND_RGB = (153, 153, 153)  # "#999"
COLOR_TEMPLATES = ("a photo of a {c} {classname}", "a photo of a {c}-colored {classname}", "a photo of a {c} object")

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Detection:
    """One detected instance of a class: box ``(x1, y1, x2, y2)``, confidence, and (when already classified)
    its colour; ``mask`` is any handle the colour classifier understands (not used by the rules)."""

    box: Box
    score: float
    color: str | None = None
    mask: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Requirement:
    """One clause of a prompt: ``count`` objects of ``class_name``; optionally of a colour, and placed
    ``position = (relation, index of the target include clause)``."""

    class_name: str
    count: int
    color: str | None = None
    position: tuple[str, int] | None = None


@dataclass(frozen=True)
class PromptMetadata:
    """One line of GenEval's ``evaluation_metadata.jsonl``."""

    tag: str
    prompt: str
    include: tuple[Requirement, ...]
    exclude: tuple[Requirement, ...] = ()

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> PromptMetadata:
        """Parse and check one metadata row (ValueError naming the problem)."""
        def req(r: Mapping[str, Any]) -> Requirement:
            pos = r.get("position")
            if pos is not None:
                rel, target = pos
                if rel not in RELATIONS:
                    raise ValueError(f"unknown relation {rel!r}")
                pos = (str(rel), int(target))
            color = r.get("color")
            if color is not None and color not in COLORS:
                raise ValueError(f"unknown colour {color!r}")
            return Requirement(str(r["class"]), int(r["count"]), color, pos)

        tag = str(row["tag"])
        if tag not in TAGS:
            raise ValueError(f"unknown tag {tag!r}; GenEval's tags are {', '.join(TAGS)}")
        include = tuple(req(r) for r in row.get("include", []))
        for i, r in enumerate(include):
            if r.position is not None and not 0 <= r.position[1] < i:
                raise ValueError(f"clause {i} is placed relative to clause {r.position[1]}, which does not precede it")
        return cls(tag, str(row["prompt"]), include, tuple(req(r) for r in row.get("exclude", [])))

    def to_json(self) -> dict[str, Any]:
        def one(r: Requirement) -> dict[str, Any]:
            d: dict[str, Any] = {"class": r.class_name, "count": r.count}
            if r.color is not None:
                d["color"] = r.color
            if r.position is not None:
                d["position"] = [r.position[0], r.position[1]]
            return d

        out: dict[str, Any] = {"tag": self.tag, "include": [one(r) for r in self.include]}
        if self.exclude:
            out["exclude"] = [one(r) for r in self.exclude]
        out["prompt"] = self.prompt
        return out


def confidence_threshold(tag: str, threshold: float = THRESHOLD, counting_threshold: float = COUNTING_THRESHOLD) -> float:
    """Score a detection must exceed: 0.9 for ``counting`` (a stricter count), 0.3 otherwise."""
    return counting_threshold if tag == "counting" else threshold


def compute_iou(box_a: Box, box_b: Box) -> float:
    """IoU with GenEval's inclusive-pixel areas ``(x2 - x1 + 1) x (y2 - y1 + 1)``; 0 for an empty union."""
    def area(b: Sequence[float]) -> float:
        return max(b[2] - b[0] + 1, 0) * max(b[3] - b[1] + 1, 0)

    inter = area((max(box_a[0], box_b[0]), max(box_a[1], box_b[1]), min(box_a[2], box_b[2]), min(box_a[3], box_b[3])))
    union = area(box_a) + area(box_b) - inter
    return inter / union if union else 0.0


def keep_detections(
    detections: Mapping[str, Sequence[Detection]],
    tag: str,
    *,
    threshold: float = THRESHOLD,
    counting_threshold: float = COUNTING_THRESHOLD,
    max_objects: int = MAX_OBJECTS,
    max_overlap: float = MAX_OVERLAP,
) -> dict[str, list[Detection]]:
    """Per class: detections above the tag's threshold, most confident first (ties keep the input order),
    at most ``max_objects``, then greedy suppression of boxes with IoU >= ``max_overlap`` against a kept one
    (skipped at 1.0). Classes left empty are dropped."""
    thr = confidence_threshold(tag, threshold, counting_threshold)
    out: dict[str, list[Detection]] = {}
    for name, dets in detections.items():
        order = sorted((d for d in dets if d.score > thr), key=lambda d: -d.score)[:max_objects]
        kept: list[Detection] = []
        while order:
            best = order.pop(0)
            kept.append(best)
            if max_overlap != 1:
                order = [d for d in order if compute_iou(best.box, d.box) < max_overlap]
        if kept:
            out[name] = kept
    return out


def relative_position(box_a: Box, box_b: Box, position_threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Relations of A to B from box centres: per axis, the centre offset shrunk by ``position_threshold x
    (size_a + size_b)`` towards 0; then, as a fraction of the raw offset's length, x below -0.5 is "left of",
    above 0.5 "right of", y below -0.5 "above", above 0.5 "below" (image y grows downwards). An object
    within the margin on both axes has no relation (empty set)."""
    ca = ((box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2)
    cb = ((box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2)
    dims = [abs(box_a[2] - box_a[0]) + abs(box_b[2] - box_b[0]), abs(box_a[3] - box_a[1]) + abs(box_b[3] - box_b[1])]
    offset = [ca[0] - cb[0], ca[1] - cb[1]]
    revised = [math.copysign(max(abs(o) - position_threshold * d, 0.0), o) if o else 0.0
               for o, d in zip(offset, dims, strict=True)]
    if all(abs(r) < 1e-3 for r in revised):
        return set()
    norm = math.hypot(*offset)
    dx, dy = revised[0] / norm, revised[1] / norm
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


ColorFn = Callable[[str, Sequence[Detection]], list[str]]


def _stored_colors(classname: str, objs: Sequence[Detection]) -> list[str]:
    missing = [i for i, d in enumerate(objs) if d.color is None]
    if missing:
        raise ValueError(f"{classname} detection {missing[0]} has no colour; classify colours first or pass classify")
    return [str(d.color) for d in objs]


def evaluate(
    objects: Mapping[str, Sequence[Detection]],
    metadata: PromptMetadata,
    classify: ColorFn | None = None,
    position_threshold: float = POSITION_THRESHOLD,
) -> tuple[bool, str]:
    """(correct, reason) of one image from its kept detections (:func:`keep_detections`), as GenEval's
    ``evaluate``. ``classify(classname, objects)`` returns one colour per object and is called only for
    clauses that ask for a colour and found enough objects (as GenEval); without it the detections' own
    ``color`` fields are used."""
    colors_of = classify or _stored_colors
    correct = True
    reasons: list[str] = []
    groups: list[list[Detection] | None] = []
    for req in metadata.include:
        found = list(objects.get(req.class_name, []))[: req.count]
        matched = True
        if len(found) < req.count:
            correct = matched = False
            reasons.append(f"expected {req.class_name}>={req.count}, found {len(found)}")
        else:
            if req.color is not None:
                colors = colors_of(req.class_name, found)
                if colors.count(req.color) < req.count:
                    correct = matched = False
                    seen = ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)
                    reasons.append(f"expected {req.color} {req.class_name}>={req.count}, found "
                                   f"{colors.count(req.color)} {req.color}; and {seen}")
            if req.position is not None and matched:
                rel, target = req.position
                if groups[target] is None:
                    correct = matched = False
                    reasons.append(f"no target for {req.class_name} to be {rel}")
                else:
                    for obj in found:
                        for tgt in groups[target] or []:
                            true_rels = relative_position(obj.box, tgt.box, position_threshold)
                            if rel not in true_rels:
                                correct = matched = False
                                reasons.append(f"expected {req.class_name} {rel} target, found "
                                               f"{' and '.join(sorted(true_rels))} target")
                                break
                        if not matched:
                            break
        groups.append(found if matched else None)
    for req in metadata.exclude:
        n = len(objects.get(req.class_name, []))
        if n >= req.count:
            correct = False
            reasons.append(f"expected {req.class_name}<{req.count}, found {n}")
    return correct, "\n".join(reasons)


def color_crop(image: Any, box: Box, mask: Any | None, background: tuple[int, int, int] = BACKGROUND_RGB) -> Any:
    """What GenEval's colour classifier sees: ``image`` (uint8 [H, W, 3]) where ``mask`` ([H, W] bool) is set,
    ``background`` elsewhere, cropped to ``box`` rounded as Pillow's ``Image.crop`` rounds it (Python
    ``round``); parts of the box outside the image are black, as Pillow fills them. ``mask=None``: no
    compositing (the whole image)."""
    import numpy as np

    img = np.asarray(image, dtype=np.uint8)
    h, w = img.shape[:2]
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != (h, w):
            raise ValueError(f"mask shape {m.shape} differs from the image's {(h, w)}")
        img = np.where(m[..., None], img, np.asarray(background, dtype=np.uint8))
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    out = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0), 3), dtype=np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = img[sy0:sy1, sx0:sx1]
    return out


def score_image(
    detections: Mapping[str, Sequence[Detection]], metadata: PromptMetadata, classify: ColorFn | None = None
) -> tuple[bool, str]:
    """Thresholds of the prompt's tag, then :func:`evaluate`: GenEval's ``evaluate_image`` after detection."""
    return evaluate(keep_detections(detections, metadata.tag), metadata, classify)


def overall(per_tag_accuracy: Mapping[str, float]) -> float:
    """GenEval's overall score: the unweighted mean of the per-tag accuracies present."""
    vals = [float(v) for v in per_tag_accuracy.values()]
    if not vals:
        raise ValueError("no per-tag accuracies to average")
    return sum(vals) / len(vals)
