"""Toy GenEval: GenEval's six tasks as toy-world prompts, judged by GenEval's own rules
(:mod:`lpo_bench.metrics.geneval_rules`) on the toy parser's detections.

The toy's "object classes" are its shapes. Prompts (all in the toy grammar, so the toy models know them):

* ``single_object``  "one circle"                        include circle >= 1
* ``two_object``     "one circle and one square"         include circle >= 1 AND square >= 1
* ``counting``       "two circles", "three red squares"  include shape >= n, exclude shape >= n + 1
  (a colour in the prompt is not judged, as GenEval's counting prompts name none)
* ``colors``         "one red circle"                    include red circle >= 1
* ``position``       "a red circle on the left of a blue square"
  include square >= 1, circle >= 1 "left of" the square (colours not judged, as GenEval's position task)
* ``color_attr``     "a red circle and a blue square" (two shapes)  include red circle AND blue square

Detections (:func:`toy_detections`): every parsed object is one detection of its most likely shape, with
score ``p(shape) x objectness`` (a detector's class confidence), box = its pixel box, colour = its most
likely colour (the toy colour classifier: the toy has six colours, all among GenEval's ten).

Prompt lists (:func:`toy_geneval_prompts`): the small tags use every prompt the grammar has (3 single
objects, 6 object pairs, 18 coloured objects, 42 counts); ``position`` and ``color_attr`` take the
spatial and two-shape colour prompts of the toy val or test split (disjoint by meaning from training).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from lpo_bench.metrics import geneval_rules as R
from lpo_bench.toy import world as W
from lpo_bench.toy.parser import ParsedScene

TOY_GENEVAL_METRIC = "toy-geneval"
SPLIT_TAG_CAP = 24  # prompts per split-drawn tag (position, color_attr)


def toy_metadata(spec: W.PromptSpec) -> R.PromptMetadata:
    """The GenEval metadata of a toy prompt (ValueError for prompts outside the six tasks)."""
    def req(o: W.ObjReq, n: int = 1, color: bool = False, position: tuple[str, int] | None = None) -> R.Requirement:
        return R.Requirement(o.shape, n, o.color if color else None, position)

    if spec.family == "numeracy":
        groups = W.numeracy_groups(spec)
        if len(groups) == 1:
            (o, n), = groups
            if n >= 2:
                return R.PromptMetadata("counting", spec.text, (req(o, n),), (req(o, n + 1),))
            tag = "single_object" if o.color is None else "colors"
            return R.PromptMetadata(tag, spec.text, (req(o, 1, color=o.color is not None),))
        if len(groups) == 2 and all(n == 1 and o.color is None for o, n in groups):
            return R.PromptMetadata("two_object", spec.text, tuple(req(o) for o, _ in groups))
    elif spec.family == "spatial":
        a, b = spec.objects
        return R.PromptMetadata("position", spec.text, (req(b), req(a, position=(str(spec.relation), 0))))
    elif spec.family == "color" and spec.objects[0].shape != spec.objects[1].shape:
        return R.PromptMetadata("color_attr", spec.text, tuple(req(o, color=True) for o in spec.objects))
    raise ValueError(f"{spec.text!r} is not a toy GenEval prompt (see lpo_bench.toy.geneval)")


def toy_detections(scene: ParsedScene) -> dict[str, list[R.Detection]]:
    """Per shape, the parsed objects whose most likely shape it is, as GenEval detections."""
    out: dict[str, list[R.Detection]] = {}
    for o in scene.objects:
        box = tuple(float(v) for v in o.bbox)
        out.setdefault(o.shape, []).append(R.Detection(box, o.prob("shape", o.shape) * o.detection, o.color))
    return out


def score_parsed(scene: ParsedScene, spec: W.PromptSpec) -> float:
    """100 if the image passes the prompt's GenEval task, else 0 (percent units, as GenEval reports)."""
    correct, _ = R.score_image(toy_detections(scene), toy_metadata(spec))
    return 100.0 * float(correct)


def _numeracy(objs: Sequence[W.ObjReq]) -> W.PromptSpec:
    return W.make_spec("numeracy", objs)


def toy_geneval_prompts(split_specs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """(tag, text) of every toy GenEval prompt, grouped by tag in :data:`R.TAGS` order.

    ``split_specs``: (text, family) of the toy val or test split, the source of the position and
    color_attr prompts (the first :data:`SPLIT_TAG_CAP` of each, in split order)."""
    colors: tuple[str | None, ...] = tuple(W.COLORS)
    by_tag: dict[str, list[str]] = {t: [] for t in R.TAGS}
    by_tag["single_object"] = [_numeracy([W.ObjReq(s)]).text for s in W.SHAPES]
    by_tag["two_object"] = [_numeracy([W.ObjReq(a), W.ObjReq(b)]).text for a, b in itertools.permutations(W.SHAPES, 2)]
    by_tag["counting"] = [_numeracy([W.ObjReq(s, c)] * n).text
                          for s, n, c in itertools.product(W.SHAPES, (2, 3), (None, *colors))]
    by_tag["colors"] = [_numeracy([W.ObjReq(s, c)]).text for s, c in itertools.product(W.SHAPES, colors)]
    for text, family in split_specs:
        if family not in ("spatial", "color"):
            continue
        try:
            tag = toy_metadata(W.parse_prompt(text)).tag
        except ValueError:  # a colour prompt with one shape twice
            continue
        if len(by_tag[tag]) < SPLIT_TAG_CAP:
            by_tag[tag].append(text)
    return [(t, text) for t in R.TAGS for text in by_tag[t]]
