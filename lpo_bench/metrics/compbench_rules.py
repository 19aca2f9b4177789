"""T2I-CompBench++ scoring rules as pure functions (no models, no torch).

Ported from ``Karine-Huang/T2I-CompBench@1b7094991a57f3c22abdd4f6e8ba6c1a15517073``:
``UniDet_eval/2D_spatial_eval.py`` (2D spatial, also the spatial part of "complex"),
``UniDet_eval/3D_spatial_eval.py`` (3D spatial), ``UniDet_eval/numeracy_eval.py``,
``3_in_1_eval/3_in_1.py`` and the question/aggregation part of ``BLIPvqa_eval``.
Quirks of the official code are kept on purpose (they move the numbers); each is marked
"official quirk". Where the official script would crash (an exception that aborts the whole
evaluation), these functions return a defined value instead; each such case is marked
"official: raises".

Inputs are plain dataclasses: :class:`Detection` (what the detector saw; boxes in the detector's
input pixels, i.e. the 479/480 px resize of the official scripts, because the 150 px distance
threshold is in those pixels) and :class:`Token` (spaCy ``en_core_web_sm`` tokens of the
prompt, produced in the detector's environment; see :mod:`lpo_bench.metrics.external`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

# Relations searched in the prompt, in this order; the first one found wins (official order).
VOCAB_SPATIAL_2D = (
    "on side of", "next to", "near", "on the left of", "on the right of", "on the bottom of", "on the top of",
    "on top of",
)
VOCAB_SPATIAL_3D = ("in front of", "behind", "hidden")
# Complex mode: prepositions around which the two objects are searched (official list).
COMPLEX_PREPOSITIONS = ("on top of", "on bottom of", "on the left", "on the right", "next to", "on side of", "near")
PERSON_WORDS = ("girl", "boy", "man", "woman")
IOU_THRESHOLD_2D = 0.1
DISTANCE_THRESHOLD_PX = 150.0
IOU_THRESHOLD_3D = 0.5
SPATIAL_2D_MIN_SCORE = 0.5  # 2D only: per-image scores below this are set to 0

NUMBER_WORDS = ("a", "an", "one", "two", "three", "four", "five", "six", "seven", "eight")
SINGULAR_ARTICLES = ("a", "an", "one")
# word2number.w2n.word_to_num on the official number words; "a"/"an" raise there (no count appended).
WORD_TO_NUMBER = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8}
NUMERACY_ALIASES = {
    "boy": "person", "girl": "person", "man": "person", "woman": "person",
    "ship": "boat", "telivision": "tv",  # sic: the typo is in the official script
    "goldfish": "fish", "painting": "picture",
}
NUMERACY_OVERLAP = 0.9  # same-label boxes with IoU or containment above this are one object

BLIP_NP_NUM = 8  # --np_num default: at most 8 noun-phrase questions per prompt
BLIP_DROPPED_CHUNKS = ("top", "the side", "the left", "the right")
IMAGES_PER_PROMPT = 10


@dataclass(frozen=True)
class Detection:
    """One detected instance. ``box_xyxy`` in detector-input pixels; ``depth`` (3D only) is the
    mean MiDaS inverse depth inside the box, larger = closer (see :func:`box_mean_depth`)."""

    label: str
    box_xyxy: tuple[float, float, float, float]
    score: float
    depth: float | None = None


@dataclass(frozen=True)
class Token:
    """One spaCy token of the prompt: text, coarse POS tag (``token.pos_``), and whether a space
    follows it (``token.whitespace_``), needed to rebuild span texts exactly."""

    text: str
    pos: str
    space_after: bool = True


# ---------------------------------------------------------------------------- naming
def image_file_name(prompt: str, question_id: int) -> str:
    """``<prompt>_<question_id:06d>.png``: the file name the official scripts parse."""
    if "_" in prompt or "/" in prompt:
        raise ValueError(f"prompt cannot be encoded in a T2I-CompBench file name: {prompt!r}")
    return f"{prompt}_{question_id:06d}.png"


def parse_image_file_name(name: str) -> tuple[str, int]:
    """(prompt, question_id) from ``<prompt>_<NNNNNN>.png`` (prompt = text before the first ``_``)."""
    stem = name.rsplit("/", 1)[-1]
    parts = stem.split("_")
    if len(parts) < 2:
        raise ValueError(f"not a T2I-CompBench image name (<prompt>_<NNNNNN>.png): {name!r}")
    return parts[0], int(parts[-1].split(".")[0])


def question_id(prompt_index: int, image_index: int, images_per_prompt: int = IMAGES_PER_PROMPT) -> int:
    """Image ``k`` of prompt ``i`` is number ``i * images_per_prompt + k`` (3-in-1 relies on it)."""
    if not 0 <= image_index < images_per_prompt:
        raise ValueError(f"image_index {image_index} outside [0, {images_per_prompt})")
    return prompt_index * images_per_prompt + image_index


# ---------------------------------------------------------------------------- geometry
def box_iou(box1: Sequence[float], box2: Sequence[float]) -> float:
    """IoU of two xyxy boxes, continuous areas (2D/3D scripts). Official: raises if both boxes
    are empty; here 0."""
    x_overlap = max(0.0, min(box1[2], box2[2]) - max(box1[0], box2[0]))
    y_overlap = max(0.0, min(box1[3], box2[3]) - max(box1[1], box2[1]))
    inter = x_overlap * y_overlap
    union = (box1[2] - box1[0]) * (box1[3] - box1[1]) + (box2[2] - box2[0]) * (box2[3] - box2[1]) - inter
    return inter / union if union > 0 else 0.0


def _centre(box: Sequence[float]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def position_score_2d(
    relation: str | None,
    box1: Sequence[float],
    box2: Sequence[float],
    iou_threshold: float = IOU_THRESHOLD_2D,
    distance_threshold_px: float = DISTANCE_THRESHOLD_PX,
) -> float:
    """Soft 2D relation score in [0, 1] of object 1 (box1) relative to object 2 (box2).

    With centre offsets ``dx = c2x - c1x``, ``dy = c2y - c1y`` (image y grows downwards):

    * "next to" / "on side of" / "near": 1 if ``|dx| < T`` or ``|dy| < T`` else ``T / max(|dx|, |dy|)``,
      T = 150 px;
    * "on the left of" needs ``dx > 0``; "on the right of" ``dx < 0``; both need ``|dx| > |dy|``;
      "on the top of" needs ``dy > 0``; "on the bottom of" ``dy < 0``; both need ``|dy| > |dx|``.
      Then 1 if IoU < 0.1, else ``0.1 / IoU``;
    * anything else (including "on top of" and no relation): 0.
    """
    dx = _centre(box2)[0] - _centre(box1)[0]
    dy = _centre(box2)[1] - _centre(box1)[1]
    if relation in ("next to", "on side of", "near"):
        if abs(dx) < distance_threshold_px or abs(dy) < distance_threshold_px:
            return 1.0
        return distance_threshold_px / max(abs(dx), abs(dy))
    if relation in ("on the left of", "on the right of"):
        ok = (dx > 0 if relation == "on the left of" else dx < 0) and abs(dx) > abs(dy)
    elif relation in ("on the top of", "on the bottom of"):
        ok = (dy > 0 if relation == "on the top of" else dy < 0) and abs(dy) > abs(dx)
    else:
        return 0.0
    if not ok:
        return 0.0
    iou = box_iou(box1, box2)
    return 1.0 if iou < iou_threshold else iou_threshold / iou


def position_score_3d(
    relation: str | None,
    box1: Sequence[float],
    box2: Sequence[float],
    depth1: float,
    depth2: float,
    iou_threshold: float = IOU_THRESHOLD_3D,
) -> float:
    """3D relation score of object 1 relative to object 2 from mean inverse depths (larger = closer).

    "in front of" needs ``depth1 > depth2``; "behind" / "hidden" need ``depth1 < depth2``. If that
    holds: 1 when IoU > 0.5, ``IoU / 0.5`` when 0 < IoU < 0.5, else 0 (official quirk: exactly
    0.5 and non-overlapping boxes both score 0). NaN depths (empty box slices) score 0.
    """
    if relation == "in front of":
        closer = depth1 - depth2 > 0
    elif relation in ("behind", "hidden"):
        closer = depth1 - depth2 < 0
    else:
        return 0.0
    iou = box_iou(box1, box2)
    if not closer:
        return 0.0
    if iou > iou_threshold:
        return 1.0
    if 0 < iou < iou_threshold:
        return iou / iou_threshold
    return 0.0


def box_mean_depth(depth_map, box_xyxy: Sequence[float], official_transposed: bool = True) -> float:
    """Mean of ``depth_map`` ([H, W] array, 8-bit depth PNG / 255) inside a box.

    Official quirk: the 3D script indexes ``depth[x_min:x_max, y_min:y_max]`` (rows by x), i.e.
    a transposed window; ``official_transposed=False`` uses ``depth[y_min:y_max, x_min:x_max]``.
    An empty window gives NaN (so the relation scores 0), as in the official code.
    """
    import numpy as np

    x1, y1, x2, y2 = (int(v) for v in box_xyxy)
    window = depth_map[x1:x2, y1:y2] if official_transposed else depth_map[y1:y2, x1:x2]
    window = np.asarray(window, dtype=np.float64)
    return float(window.mean()) if window.size else math.nan


# ---------------------------------------------------------------------------- prompt parsing
def find_relation(prompt: str, vocab: Sequence[str]) -> str | None:
    """First entry of ``vocab`` that occurs in ``prompt`` as a substring (official rule)."""
    for word in vocab:
        if word in prompt:
            return word
    return None


def _span_text(tokens: Sequence[Token]) -> str:
    return "".join(t.text + (" " if t.space_after else "") for t in tokens[:-1]) + (tokens[-1].text if tokens else "")


def simple_objects(tokens: Sequence[Token]) -> tuple[str | None, str | None]:
    """(first NOUN, last NOUN) of the prompt. Official: raises when there is no NOUN; here (None, None)."""
    nouns = [t.text for t in tokens if t.pos == "NOUN"]
    return (nouns[0], nouns[-1]) if nouns else (None, None)


def complex_objects(tokens: Sequence[Token]) -> tuple[str | None, str | None]:
    """The two objects around the relation preposition (complex mode of ``2D_spatial_eval.py``).

    For every position where a preposition of :data:`COMPLEX_PREPOSITIONS` starts (3-, 2-, then
    1-token spans): the nearest NOUN or PROPN before it, and the first NOUN after it, else the
    first PROPN after it that is not followed by another PROPN. Exactly two objects must come out,
    otherwise (None, None).
    """
    n = len(tokens)
    objects: list[str] = []
    for i in range(n):
        k = next((w for w in (3, 2, 1) if _span_text(tokens[i : i + w]) in COMPLEX_PREPOSITIONS), 0)
        if not k:
            continue
        for j in range(i - 1, -1, -1):
            if tokens[j].pos in ("NOUN", "PROPN"):
                objects.append(tokens[j].text)
                break
        after = next((tokens[j].text for j in range(i + k, n) if tokens[j].pos == "NOUN"), None)
        if after is not None:
            objects.append(after)
        elif i + k < n:  # official: the PROPN fallback runs only when the NOUN search reached the end
            for j in range(i + k, n):
                if j + 1 < n and tokens[j].pos == "PROPN" and tokens[j + 1].pos != "PROPN":
                    objects.append(tokens[j].text)
                    break
    return (objects[0], objects[1]) if len(objects) == 2 else (None, None)


def _person(word: str | None) -> str | None:
    return "person" if word in PERSON_WORDS else word


# ---------------------------------------------------------------------------- spatial scores
def spatial_2d_score(
    obj1: str | None, obj2: str | None, relation: str | None, detections: Sequence[Detection]
) -> float:
    """Per-image 2D-spatial score (``2D_spatial_eval.py``).

    Objects match detected labels exactly (girl/boy/man/woman -> person); the first (highest
    scoring) detection of a label is used. Both found: ``0.25*s1 + 0.25*s2 + 0.5*pos``; one found:
    ``0.25*s``; none: 0. Finally any score < 0.5 becomes 0 (so one object alone always gives 0).
    """
    obj1, obj2 = _person(obj1), _person(obj2)
    labels = [d.label for d in detections]
    if obj1 in labels and obj2 in labels:
        d1, d2 = detections[labels.index(obj1)], detections[labels.index(obj2)]
        score = 0.25 * d1.score + 0.25 * d2.score + position_score_2d(relation, d1.box_xyxy, d2.box_xyxy) / 2
    elif obj1 in labels:
        score = 0.25 * detections[labels.index(obj1)].score
    elif obj2 in labels:
        score = 0.25 * detections[labels.index(obj2)].score
    else:
        score = 0.0
    return 0.0 if score < SPATIAL_2D_MIN_SCORE else score


def spatial_3d_score(
    obj1: str | None, obj2: str | None, relation: str | None, detections: Sequence[Detection]
) -> float:
    """Per-image 3D-spatial score (``3D_spatial_eval.py``); no < 0.5 zeroing.

    Objects match by substring of the detected label names. Official quirk: when both occur, the
    label loop keeps overwriting object 1's index until object 2 has been seen as well, so object 1
    may be a later (lower-scoring) detection. Both found: ``0.25*s1 + 0.25*s2 + 0.5*pos3d``; one
    found: ``0.25*s`` of its first match; none: 0.
    """
    obj1, obj2 = _person(obj1), _person(obj2)
    if obj1 is None or obj2 is None:  # official: raises (no NOUN in the prompt)
        return 0.0
    labels = [d.label for d in detections]
    joined = " ".join(labels)
    if obj1 in joined and obj2 in joined:
        p1 = p2 = None
        for i, label in enumerate(labels):
            if obj1 in label:
                p1 = i
            if obj2 in label:
                p2 = i
            if p1 is not None and p2 is not None:
                break
        if p1 is None or p2 is None:  # match across two joined labels; official: raises
            return 0.0
        d1, d2 = detections[p1], detections[p2]
        if d1.depth is None or d2.depth is None:
            raise ValueError("3D spatial scoring needs Detection.depth for the matched objects")
        return 0.25 * d1.score + 0.25 * d2.score + position_score_3d(
            relation, d1.box_xyxy, d2.box_xyxy, d1.depth, d2.depth
        ) / 2
    for obj in (obj1, obj2):
        if obj in joined:
            first = next((d for d in detections if obj in d.label), None)
            return 0.25 * first.score if first is not None else 0.0  # None: official raises
    return 0.0


# ---------------------------------------------------------------------------- numeracy
def parse_new_objects(text: str) -> tuple[list[str], list[str]]:
    """(singular, plural) lists from ``new_objects.txt`` lines ``"<singular> - <plural>"`` (lower-cased)."""
    singular, plural = [], []
    for line in text.splitlines():
        if not line.strip():
            continue
        s, p = line.split(" - ")[:2]
        singular.append(s.strip().lower())
        plural.append(p.strip().lower())
    return singular, plural


def numeracy_same_object(box1: Sequence[float], box2: Sequence[float]) -> bool:
    """Duplicate test of ``numeracy_eval.py``: IoU > 0.9, or more than 90% of either box inside the
    other, with the +1-pixel area convention."""
    iw = max(0.0, min(box1[2], box2[2]) - max(box1[0], box2[0]) + 1)
    ih = max(0.0, min(box1[3], box2[3]) - max(box1[1], box2[1]) + 1)
    inter = iw * ih
    area1 = (box1[2] - box1[0] + 1) * (box1[3] - box1[1] + 1)
    area2 = (box2[2] - box2[0] + 1) * (box2[3] - box2[1] + 1)
    iou = inter / float(area1 + area2 - inter)
    return iou > NUMERACY_OVERLAP or inter / float(area1) > NUMERACY_OVERLAP or inter / float(area2) > NUMERACY_OVERLAP


def dedup_detections(detections: Sequence[Detection]) -> list[Detection]:
    """Drop a detection when an already kept one has the same label and is the same object."""
    kept: list[Detection] = []
    for det in detections:
        if not any(k.label == det.label and numeracy_same_object(det.box_xyxy, k.box_xyxy) for k in kept):
            kept.append(det)
    return kept


def parse_numeracy_objects(
    words: Sequence[str], singular: Sequence[str], plural: Sequence[str]
) -> tuple[list[str], list[int]]:
    """(objects, counts) asked for by the prompt tokens (``numeracy_eval.py``).

    After each number word (case-sensitive, official quirk: a capitalised "Three" is ignored) the
    next two tokens, else the next token, are looked up in the object lists. Plural forms map to
    the singular; "a"/"an"/"one" + singular count 1. Official quirk: "a"/"an" before a plural
    append the object but no count, so later counts shift by one position.
    """
    objects: list[str] = []
    counts: list[int] = []
    n = len(words)
    for i, word in enumerate(words):
        if word not in NUMBER_WORDS or i + 1 >= n:  # official: raises on a trailing number word
            continue
        two = f"{words[i + 1]} {words[i + 2]}" if i < n - 2 else None
        if two is not None and (two in singular or two in plural):
            if two in plural and word not in SINGULAR_ARTICLES:
                objects.append(singular[list(plural).index(two)])
                if word in WORD_TO_NUMBER:
                    counts.append(WORD_TO_NUMBER[word])
            else:
                counts.append(1)
                objects.append(two)
        elif words[i + 1] in singular or words[i + 1] in plural:
            nxt = words[i + 1]
            if nxt in singular and word in SINGULAR_ARTICLES:
                counts.append(1)
                objects.append(nxt)
            else:
                # official: raises ValueError for a singular noun after two..eight; here the noun itself
                objects.append(singular[list(plural).index(nxt)] if nxt in plural else nxt)
                if word in WORD_TO_NUMBER:
                    counts.append(WORD_TO_NUMBER[word])
    return objects, counts


def numeracy_score(
    words: Sequence[str], detections: Sequence[Detection], singular: Sequence[str], plural: Sequence[str]
) -> float:
    """Per-image numeracy score in [0, 1] (``numeracy_eval.py``).

    Each requested object weighs ``w = 1/len(objects)``: ``+0.5 w`` if its label is detected and
    another ``+0.5 w`` if the number of (de-duplicated) detections equals the requested count.
    A missing exact label renames every detected label that contains the word (official quirk:
    the renaming persists for the following objects). No parsable object: 0 (official: raises).
    """
    objects, counts = parse_numeracy_objects(words, singular, plural)
    if not objects:
        return 0.0
    weight = 1.0 / len(objects)
    labels = [d.label for d in dedup_detections(detections)]
    score = 0.0
    for i, obj in enumerate(objects):
        obj = NUMERACY_ALIASES.get(obj, obj)
        if obj not in labels:
            labels = [obj if obj in label else label for label in labels]
        if obj in labels:
            score += 0.5 * weight
            if i < len(counts) and labels.count(obj) == counts[i]:  # official: raises if counts is short
                score += 0.5 * weight
    return score


# ---------------------------------------------------------------------------- BLIP-VQA and 3-in-1
def pre_question(question: str, max_words: int = 50) -> str:
    """BLIP's question normalisation: lower-case, drop ``.!"()*#:;~`` (keeps ``?``), truncate."""
    question = re.sub(r"([.!\"()*#:;~])", "", question.lower()).rstrip(" ")
    return " ".join(question.split(" ")[:max_words])


def blip_vqa_questions(noun_chunks: Sequence[str], np_num: int = BLIP_NP_NUM) -> list[str | None]:
    """``np_num`` questions ``"<noun chunk>?"`` (None where the prompt has fewer chunks), after
    dropping the chunks "top", "the side", "the left", "the right"."""
    chunks = [c for c in noun_chunks if c not in BLIP_DROPPED_CHUNKS]
    return [f"{chunks[j]}?" if j < len(chunks) else None for j in range(np_num)]


def blip_vqa_image_score(question_probs: Sequence[float | None]) -> float:
    """Product of the per-question yes-probabilities (None = no question = factor 1).

    Official quirk: each probability is written with 4 decimals, multiplied in float32, and the
    product is written with 4 decimals again.
    """
    import numpy as np

    product = np.float32(1.0)
    for p in question_probs:
        product = np.float32(product * np.float32(1.0 if p is None else float(f"{p:.4f}")))
    return float(f"{float(product):.4f}")


def complex_prompt_key(prompt: str) -> str:
    """Key used by 3-in-1 to match prompts across files: text before the first ``.``, lower-cased."""
    return prompt.strip("\n").split(".")[0].lower()


def three_in_one_scores(
    complex_prompts: Sequence[str],
    spatial_prompts: Sequence[str],
    action_prompts: Sequence[str],
    blip: Sequence[float],
    unidet_2d: Sequence[float],
    clip: Sequence[float],
    images_per_prompt: int = IMAGES_PER_PROMPT,
) -> list[float]:
    """Per-image "complex" scores (``3_in_1.py``), images in question-id order.

    Prompt in ``complex_val_spatial``: (UniDet-2D + BLIP) / 2; in ``complex_val_action``:
    (CLIP + BLIP) / 2; otherwise (spatial + action): (BLIP + UniDet-2D + CLIP) / 3.
    """
    n = len(complex_prompts) * images_per_prompt
    if not len(blip) == len(unidet_2d) == len(clip) == n:
        raise ValueError(
            f"3-in-1 needs {n} scores per metric ({len(complex_prompts)} prompts x {images_per_prompt}); "
            f"got blip={len(blip)}, unidet={len(unidet_2d)}, clip={len(clip)}"
        )
    spatial = {complex_prompt_key(p) for p in spatial_prompts}
    action = {complex_prompt_key(p) for p in action_prompts}
    out: list[float] = []
    for i, prompt in enumerate(complex_prompts):
        key = complex_prompt_key(prompt)
        for q in range(i * images_per_prompt, (i + 1) * images_per_prompt):
            if key in spatial:
                out.append((unidet_2d[q] + blip[q]) * 0.5)
            elif key in action:
                out.append((clip[q] + blip[q]) * 0.5)
            else:
                out.append((blip[q] + unidet_2d[q] + clip[q]) / 3)
    return out
