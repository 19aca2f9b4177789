"""The toy world: a synthetic text-to-image world whose truth is known.

A scene is 1-3 flat shapes on a plain light-grey background, rendered at 32x32 RGB
(float32 in [0,1], HWC). Prompts come from a small grammar whose six families mirror
T2I-CompBench++ (arXiv 2307.06350):

* ``color``    colour binding:   "a red circle and a blue square"       (colours differ)
* ``shape``    geometric binding: "a large circle and a small red square" (sizes differ;
  the toy's nouns *are* shapes, so size is the bound geometric attribute)
* ``texture``  texture binding:  "a striped circle and a solid orange triangle" (textures differ)
* ``spatial``  2D relation:      "a red circle on the left of a blue square" (shapes differ)
* ``numeracy`` counts:           "two green triangles", "one red square and two circles"
  (1-3 objects in all, 1-3 groups with different shapes)
* ``complex``  attributes + relation: "a large striped red circle above a small blue square"

Noun phrase word order is ``article [size] [texture] [color] shape``; the article is
"an" before a vowel ("an orange circle"). :func:`parse_prompt` is the exact inverse of
:func:`format_prompt`, and text outside the grammar raises ``ValueError``.

Geometry (pixel units, x to the right, y down, pixel ``i`` covers ``[i, i+1)``): a shape
of radius ``r`` is a circle of radius ``r``, an axis-aligned square of half-side
``0.9 r``, or an apex-up equilateral triangle of circumradius ``1.2 r`` centred on its
centroid. Small objects have ``r`` in [3.5, 4.5], large ones in [5.5, 6.5] (the 32 px
frame must hold three large objects). Striped objects alternate the base colour and a
darker variant (x0.55) in horizontal bands two pixel rows high.

Relations use the box-centre rule of T2I-CompBench's UniDet 2D-spatial evaluator
(Karine-Huang/T2I-CompBench@1b70949): "A on the left of B" holds when ``dx = B.cx - A.cx > 0``
and ``|dx| > |dy|``; "A above B" when ``dy = B.cy - A.cy > 0`` and ``|dy| > |dx|``.
:func:`scene_for` satisfies them with a clear margin (disjoint bounding boxes along the
relation axis and ``|dx| >= |dy| + 3``).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.ndimage import gaussian_filter

IMAGE_SIZE = 32
SUPERSAMPLE = 4
BACKGROUND = 0.85

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles"}
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.12),
    "green": (0.12, 0.66, 0.20),
    "blue": (0.13, 0.27, 0.88),
    "yellow": (0.95, 0.86, 0.12),
    "purple": (0.58, 0.18, 0.76),
    "orange": (0.97, 0.52, 0.06),
}
STRIPE_DARKEN = 0.55  # stripe colour = base colour * STRIPE_DARKEN
STRIPE_ROWS = 2  # band height in pixel rows
TEXTURES: tuple[str, ...] = ("solid", "striped")
SIZES: tuple[str, ...] = ("small", "large")
RADIUS_RANGE_PX: dict[str, tuple[float, float]] = {"small": (3.5, 4.5), "large": (5.5, 6.5)}
SIZE_THRESHOLD_PX = 5.0  # radius separating the two size classes
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
RELATION_TEXT: dict[str, str] = {
    "left of": "on the left of",
    "right of": "on the right of",
    "above": "above",
    "below": "below",
}
OPPOSITE_RELATION: dict[str, str] = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
}
NUMBERS: tuple[str, ...] = ("one", "two", "three")
FAMILIES: tuple[str, ...] = ("color", "shape", "texture", "spatial", "numeracy", "complex")
VOCAB: tuple[str, ...] = (
    ("a", "an", "and", "on", "the", "of", "left", "right", "above", "below")
    + NUMBERS
    + SIZES
    + TEXTURES
    + tuple(COLORS)
    + SHAPES
    + tuple(PLURALS[s] for s in SHAPES)
)

# Shape geometry as multiples of the radius r.
SQUARE_HALF_SIDE = 0.9
TRIANGLE_CIRCUMRADIUS = 1.2
# (left, right, top, bottom) extents of each shape around its centre, in units of r.
_TRI_HALF_WIDTH = TRIANGLE_CIRCUMRADIUS * np.sqrt(3.0) / 2.0
EXTENTS: dict[str, tuple[float, float, float, float]] = {
    "circle": (1.0, 1.0, 1.0, 1.0),
    "square": (SQUARE_HALF_SIDE,) * 4,
    "triangle": (_TRI_HALF_WIDTH, _TRI_HALF_WIDTH, TRIANGLE_CIRCUMRADIUS, TRIANGLE_CIRCUMRADIUS / 2),
}
# Area of each shape in units of r^2 (used by the parser to recover r from the area).
AREA_FACTOR: dict[str, float] = {
    "circle": float(np.pi),
    "square": (2 * SQUARE_HALF_SIDE) ** 2,
    "triangle": 3 * np.sqrt(3.0) / 4 * TRIANGLE_CIRCUMRADIUS**2,
}

FRAME_MARGIN_PX = 1.0  # objects stay this far inside the frame
MIN_GAP_PX = 2.0  # minimum gap between objects
RELATION_MARGIN_PX = 3.0  # |dx| - |dy| (or |dy| - |dx|) margin for relations (box centres
# of triangles sit up to 0.3 r above their centroids; the margin keeps the official box rule true)

ALIGNMENT_CORRUPTIONS: tuple[str, ...] = (
    "swap_color",
    "wrong_color",
    "wrong_shape",
    "wrong_texture",
    "wrong_size",
    "wrong_count",
    "swap_relation",
)
AESTHETIC_CORRUPTIONS: tuple[str, ...] = ("cut_off", "speckle", "blur")
CORRUPTIONS: tuple[str, ...] = ALIGNMENT_CORRUPTIONS + AESTHETIC_CORRUPTIONS
SPECKLE_STD_RANGE = (0.04, 0.10)
BLUR_SIGMA_RANGE_PX = (0.7, 1.3)


@dataclass(frozen=True)
class Obj:
    """One rendered object; (cx, cy) is its centre (centroid) in pixels."""

    shape: str
    color: str
    texture: str
    size: str
    radius_px: float
    cx: float
    cy: float


@dataclass(frozen=True)
class Scene:
    """Objects painted in order on a plain background.

    ``noise`` is the std of Gaussian background speckle (seeded by ``noise_seed``),
    ``blur`` the sigma (px) of a Gaussian blur of the whole image; 0 for clean scenes.
    """

    objects: tuple[Obj, ...]
    background: float = BACKGROUND
    noise: float = 0.0
    blur: float = 0.0
    noise_seed: int = 0


@dataclass(frozen=True)
class ObjReq:
    """What a prompt asks of one object; ``None`` = unspecified."""

    shape: str
    color: str | None = None
    texture: str | None = None
    size: str | None = None


@dataclass(frozen=True)
class PromptSpec:
    """A parsed prompt. ``objects`` lists every requested object instance (numeracy
    groups are repeated: "two red circles" has two equal ObjReqs); ``count`` is the total
    number of objects for numeracy prompts, else ``None``; ``relation`` relates
    ``objects[0]`` to ``objects[1]``."""

    family: str
    text: str
    objects: tuple[ObjReq, ...]
    relation: str | None = None
    count: int | None = None


# ---------------------------------------------------------------- grammar


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _phrase_words(req: ObjReq, plural: bool = False) -> list[str]:
    words = [w for w in (req.size, req.texture, req.color) if w is not None]
    words.append(PLURALS[req.shape] if plural else req.shape)
    return words


def noun_phrase(req: ObjReq) -> str:
    """ "a large striped red circle" (the singular noun phrase of one request)."""
    words = _phrase_words(req)
    return " ".join([_article(words[0])] + words)


def _merge(objects: Sequence[ObjReq]) -> list[tuple[ObjReq, int]]:
    groups: list[tuple[ObjReq, int]] = []
    for req in objects:
        if groups and groups[-1][0] == req:
            groups[-1] = (req, groups[-1][1] + 1)
        else:
            groups.append((req, 1))
    return groups


def numeracy_groups(spec: PromptSpec) -> list[tuple[ObjReq, int]]:
    """Consecutive equal requests merged: [(ObjReq, count), ...] in prompt order."""
    return _merge(spec.objects)


def format_prompt(family: str, objects: Sequence[ObjReq], relation: str | None = None) -> str:
    """The canonical prompt text for a family, its objects and its relation."""
    if family == "numeracy":
        return " and ".join(
            " ".join([NUMBERS[n - 1]] + _phrase_words(req, plural=n > 1)) for req, n in _merge(objects)
        )
    if relation is not None:
        return f"{noun_phrase(objects[0])} {RELATION_TEXT[relation]} {noun_phrase(objects[1])}"
    return " and ".join(noun_phrase(r) for r in objects)


def _family_of(objects: Sequence[ObjReq], relation: str | None, numeric: bool) -> str | None:
    """The family whose constraints ``objects`` meet, or None if none does."""
    if numeric:
        shapes = [r.shape for r, _ in _merge(objects)]
        ok = (
            1 <= len(objects) <= 3
            and len(shapes) == len(set(shapes))
            and all(r.texture is None and r.size is None for r in objects)
        )
        return "numeracy" if ok else None
    if len(objects) != 2:
        return None
    a, b = objects
    has_color = a.color is not None and b.color is not None
    if relation is not None:
        if a.shape == b.shape or not has_color:
            return None
        extra = any(r.size is not None or r.texture is not None for r in objects)
        return "complex" if extra else "spatial"
    sizes = (a.size, b.size)
    textures = (a.texture, b.texture)
    if has_color and sizes == (None, None) and textures == (None, None) and a.color != b.color:
        return "color"
    if None not in sizes and textures == (None, None) and a.size != b.size:
        return "shape"
    if None not in textures and sizes == (None, None) and a.texture != b.texture:
        return "texture"
    return None


def make_spec(family: str, objects: Sequence[ObjReq], relation: str | None = None) -> PromptSpec:
    """Build a PromptSpec with its canonical text; ValueError if it breaks the family's rules."""
    objects = tuple(objects)
    found = _family_of(objects, relation, numeric=family == "numeracy")
    if found != family or (relation is not None and relation not in RELATIONS):
        raise ValueError(f"objects {objects} with relation {relation!r} are not a {family!r} prompt")
    count = len(objects) if family == "numeracy" else None
    return PromptSpec(family, format_prompt(family, objects, relation), objects, relation, count)


def _parse_np(tokens: list[str], i: int, plural: bool) -> tuple[ObjReq, int]:
    """Parse ``[size] [texture] [color] shape`` starting at ``tokens[i]``."""
    fields: dict[str, str] = {}
    for key, words in (("size", SIZES), ("texture", TEXTURES), ("color", tuple(COLORS))):
        if i < len(tokens) and tokens[i] in words:
            fields[key] = tokens[i]
            i += 1
    nouns = {PLURALS[s] if plural else s: s for s in SHAPES}
    if i >= len(tokens) or tokens[i] not in nouns:
        raise ValueError(f"expected a {'plural ' if plural else ''}shape at word {i + 1}")
    return ObjReq(nouns[tokens[i]], **fields), i + 1


def parse_prompt(text: str) -> PromptSpec:
    """Exact inverse of the grammar: ``parse_prompt(spec.text) == spec``.

    Raises ``ValueError`` for any text that :func:`format_prompt` cannot produce.
    """
    tokens = text.split(" ")
    if not text or "" in tokens:
        raise ValueError(f"not a toy prompt: {text!r}")
    try:
        objects: list[ObjReq] = []
        relation = None
        numeric = tokens[0] in NUMBERS
        i = 0
        while True:
            if numeric:
                if i >= len(tokens) or tokens[i] not in NUMBERS:
                    raise ValueError(f"expected a number at word {i + 1}")
                n = NUMBERS.index(tokens[i]) + 1
                req, i = _parse_np(tokens, i + 1, plural=n > 1)
                objects += [req] * n
            else:
                if i >= len(tokens) or tokens[i] not in ("a", "an"):
                    raise ValueError(f"expected 'a' or 'an' at word {i + 1}")
                req, i = _parse_np(tokens, i + 1, plural=False)
                objects.append(req)
            if i == len(tokens):
                break
            if tokens[i] == "and" and relation is None:
                i += 1
                continue
            for rel, phrase in RELATION_TEXT.items():
                words = phrase.split(" ")
                if not numeric and not relation and len(objects) == 1 and tokens[i : i + len(words)] == words:
                    relation, i = rel, i + len(words)
                    break
            else:
                raise ValueError(f"unexpected word {tokens[i]!r}")
        family = _family_of(objects, relation, numeric)
        if family is None:
            raise ValueError("the objects break every family's rules")
        spec = make_spec(family, objects, relation)
    except ValueError as err:
        raise ValueError(f"not a toy prompt: {text!r} ({err})") from None
    if spec.text != text:
        raise ValueError(f"not a toy prompt: {text!r} (canonical form is {spec.text!r})")
    return spec


# ---------------------------------------------------------------- prompt sampling


def _opt(rng: np.random.Generator, values: Sequence[str], p_none: float = 0.5) -> str | None:
    return None if rng.random() < p_none else str(values[rng.integers(len(values))])


def _pick(rng: np.random.Generator, values: Sequence[str]) -> str:
    return str(values[rng.integers(len(values))])


def sample_prompt(rng: np.random.Generator, family: str | None = None) -> PromptSpec:
    """A random prompt of ``family`` (uniform over FAMILIES when None)."""
    if family is None:
        family = _pick(rng, FAMILIES)
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")
    colors = tuple(COLORS)
    while True:  # rejection sampling against the family's constraints
        relation = None
        if family == "color":
            objs = [ObjReq(_pick(rng, SHAPES), color=_pick(rng, colors)) for _ in range(2)]
        elif family == "shape":
            objs = [
                ObjReq(_pick(rng, SHAPES), _opt(rng, colors), None, str(s)) for s in rng.permutation(SIZES)
            ]
        elif family == "texture":
            objs = [ObjReq(_pick(rng, SHAPES), _opt(rng, colors), str(t)) for t in rng.permutation(TEXTURES)]
        elif family == "spatial":
            shapes = rng.choice(SHAPES, 2, replace=False)
            objs = [ObjReq(str(s), _pick(rng, colors)) for s in shapes]
            relation = _pick(rng, RELATIONS)
        elif family == "complex":
            shapes = rng.choice(SHAPES, 2, replace=False)
            objs = [ObjReq(str(s), _pick(rng, colors), _opt(rng, TEXTURES), _opt(rng, SIZES)) for s in shapes]
            relation = _pick(rng, RELATIONS)
        else:  # numeracy
            counts = [[1], [2], [3], [1, 1], [1, 2], [2, 1], [1, 1, 1]][rng.integers(7)]
            shapes = rng.choice(SHAPES, len(counts), replace=False)
            objs = []
            for s, n in zip(shapes, counts, strict=True):
                objs += [ObjReq(str(s), _opt(rng, colors))] * n
        if _family_of(objs, relation, family == "numeracy") == family:
            return make_spec(family, objs, relation)


@functools.cache
def enumerate_prompts(family: str) -> tuple[PromptSpec, ...]:
    """Every prompt of a family, in a fixed order (complex has ~69k); memoised."""
    colors: tuple[str | None, ...] = tuple(COLORS)
    opt_colors = (None,) + colors
    out: list[PromptSpec] = []

    def add(objs: Sequence[ObjReq], relation: str | None = None) -> None:
        if _family_of(objs, relation, family == "numeracy") == family:
            out.append(make_spec(family, objs, relation))

    if family == "color":
        for (s1, c1), (s2, c2) in itertools.product(itertools.product(SHAPES, colors), repeat=2):
            add([ObjReq(s1, c1), ObjReq(s2, c2)])
    elif family in ("shape", "texture"):
        attr = SIZES if family == "shape" else TEXTURES
        key = "size" if family == "shape" else "texture"
        per_obj = [ObjReq(s, c, **{key: a}) for s, c, a in itertools.product(SHAPES, opt_colors, attr)]
        for a, b in itertools.product(per_obj, repeat=2):
            add([a, b])
    elif family in ("spatial", "complex"):
        extra = (
            [(None, None)]
            if family == "spatial"
            else list(itertools.product((None,) + TEXTURES, (None,) + SIZES))
        )
        per_obj = [ObjReq(s, c, t, z) for s, c, (t, z) in itertools.product(SHAPES, colors, extra)]
        for a, b in itertools.product(per_obj, repeat=2):
            for rel in RELATIONS:
                add([a, b], rel)
    elif family == "numeracy":
        singles = [ObjReq(s, c) for s, c in itertools.product(SHAPES, opt_colors)]
        for a in singles:
            for n in (1, 2, 3):
                add([a] * n)
        for a, b in itertools.product(singles, repeat=2):
            for na, nb in ((1, 1), (1, 2), (2, 1)) if a.shape != b.shape else ():
                add([a] * na + [b] * nb)
        for a, b, c in itertools.product(singles, repeat=3):
            if len({a.shape, b.shape, c.shape}) == 3:
                add([a, b, c])
    else:
        raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")
    return tuple(out)


def canonical_key(spec: PromptSpec) -> tuple:
    """Equal for prompts that mean the same thing ("A and B" == "B and A",
    "A left of B" == "B right of A"); used to keep splits semantically disjoint."""

    def k(r: ObjReq) -> tuple:
        return (r.shape, r.color or "", r.texture or "", r.size or "")

    if spec.relation is not None:
        a, b = spec.objects
        if spec.relation in ("right of", "below"):
            return (spec.family, k(b), OPPOSITE_RELATION[spec.relation], k(a))
        return (spec.family, k(a), spec.relation, k(b))
    return (spec.family,) + tuple(sorted(k(r) for r in spec.objects))


def prompt_splits(n_train: int, n_val: int, n_test: int, seed: int = 0) -> dict[str, list[PromptSpec]]:
    """Deterministic train/val/test prompt lists, disjoint by meaning (hence by text).

    Each split is balanced over FAMILIES: families are served from the smallest pool of
    distinct prompts up, each taking an equal share of what is still needed (capped by
    its pool), so a family that runs short passes its shortfall evenly to the others.
    Test is filled first, then val, then train. Each split is ordered round robin over the
    families (each family sorted by text), so every prefix is family-balanced too: callers
    that take the first n prompts (``--set num_train_prompts``, pairs for n prompts) get all
    families. Raises ValueError when the world has too few prompts.
    """
    rng = np.random.default_rng(seed)
    pools: dict[str, list[list[PromptSpec]]] = {}
    for fam in FAMILIES:
        by_key: dict[tuple, list[PromptSpec]] = {}
        for spec in enumerate_prompts(fam):
            by_key.setdefault(canonical_key(spec), []).append(spec)
        groups = list(by_key.values())
        pools[fam] = [groups[i] for i in rng.permutation(len(groups))]
    out: dict[str, list[PromptSpec]] = {}
    for split, n in (("test", n_test), ("val", n_val), ("train", n_train)):
        chosen: list[PromptSpec] = []
        left = n
        order = sorted(FAMILIES, key=lambda f: len(pools[f]))  # smallest pools first
        for j, fam in enumerate(order):
            take = min(-(-left // (len(order) - j)), len(pools[fam]))  # ceil share
            left -= take
            for group in pools[fam][:take]:
                chosen.append(group[rng.integers(len(group))])
            pools[fam] = pools[fam][take:]
        if left > 0:
            raise ValueError(f"the toy world has too few distinct prompts for a {split} split of {n}")
        out[split] = _round_robin_by_family(chosen)
    return {k: out[k] for k in ("train", "val", "test")}


def _round_robin_by_family(specs: Sequence[PromptSpec]) -> list[PromptSpec]:
    """Families in FAMILIES order, one prompt each per round (each family sorted by text) until all are used."""
    by_fam = [sorted((s for s in specs if s.family == f), key=lambda s: s.text) for f in FAMILIES]
    depth = max((len(g) for g in by_fam), default=0)
    return [g[i] for i in range(depth) for g in by_fam if i < len(g)]


# ---------------------------------------------------------------- layout


def _extents(shapes: Sequence[str], radii: np.ndarray) -> np.ndarray:
    """[..., n, 4] (left, right, top, bottom) extents for shapes and radii [..., n]."""
    factors = np.array([EXTENTS[s] for s in shapes])  # [n, 4]
    return radii[..., None] * factors


def _relation_ok(rel: str, ca: np.ndarray, cb: np.ndarray, ea: np.ndarray, eb: np.ndarray) -> np.ndarray:
    """Clear-margin relation test, vectorised over candidates. c*: [K,2], e*: [K,4]."""
    if rel in ("right of", "below"):  # mirror: "A right of B" == "B left of A"
        return _relation_ok(OPPOSITE_RELATION[rel], cb, ca, eb, ea)
    dx, dy = cb[:, 0] - ca[:, 0], cb[:, 1] - ca[:, 1]
    if rel == "left of":
        gap = (cb[:, 0] - eb[:, 0]) - (ca[:, 0] + ea[:, 1])
        return (gap >= MIN_GAP_PX) & (dx >= np.abs(dy) + RELATION_MARGIN_PX)
    gap = (cb[:, 1] - eb[:, 2]) - (ca[:, 1] + ea[:, 3])  # "above"
    return (gap >= MIN_GAP_PX) & (dy >= np.abs(dx) + RELATION_MARGIN_PX)


def _separated(c: np.ndarray, e: np.ndarray, shapes: Sequence[str], radii: np.ndarray) -> np.ndarray:
    """Pairwise non-overlap with a MIN_GAP_PX gap: bounding boxes apart on x or y, or
    bounding circles apart. Conservative and cheap. c: [K,n,2], e: [K,n,4] -> [K]."""
    circ = np.array([max(EXTENTS[s]) if s != "square" else SQUARE_HALF_SIDE * np.sqrt(2) for s in shapes])
    ok = np.ones(c.shape[0], dtype=bool)
    for i, j in itertools.combinations(range(len(shapes)), 2):
        gx = np.maximum(
            (c[:, j, 0] - e[:, j, 0]) - (c[:, i, 0] + e[:, i, 1]),
            (c[:, i, 0] - e[:, i, 0]) - (c[:, j, 0] + e[:, j, 1]),
        )
        gy = np.maximum(
            (c[:, j, 1] - e[:, j, 2]) - (c[:, i, 1] + e[:, i, 3]),
            (c[:, i, 1] - e[:, i, 2]) - (c[:, j, 1] + e[:, j, 3]),
        )
        dist = np.hypot(c[:, i, 0] - c[:, j, 0], c[:, i, 1] - c[:, j, 1])
        gc = dist - radii[i] * circ[i] - radii[j] * circ[j]
        ok &= np.maximum(np.maximum(gx, gy), gc) >= MIN_GAP_PX
    return ok


def _layout(
    shapes: Sequence[str],
    radii: np.ndarray,
    relation: str | None,
    rng: np.random.Generator,
    cut_index: int | None = None,
    candidates: int = 64,
) -> np.ndarray | None:
    """Random centres [n,2] meeting frame, gap and relation constraints; object
    ``cut_index`` (if given) sticks 30-60 % of its extent out of one frame edge."""
    n = len(shapes)
    e = _extents(shapes, radii)  # [n,4]
    lo = np.stack([e[:, 0], e[:, 2]], axis=1) + FRAME_MARGIN_PX  # [n,2] min centre
    hi = IMAGE_SIZE - np.stack([e[:, 1], e[:, 3]], axis=1) - FRAME_MARGIN_PX
    for _ in range(50):
        c = lo + (hi - lo) * rng.random((candidates, n, 2))
        if cut_index is not None:
            side = rng.integers(4, size=candidates)  # 0 left, 1 right, 2 top, 3 bottom
            frac = rng.uniform(0.3, 0.6, size=candidates)
            k = cut_index
            width, height = e[k, 0] + e[k, 1], e[k, 2] + e[k, 3]
            c[:, k, 0] = np.where(side == 0, e[k, 0] - frac * width, c[:, k, 0])
            c[:, k, 0] = np.where(side == 1, IMAGE_SIZE - e[k, 1] + frac * width, c[:, k, 0])
            c[:, k, 1] = np.where(side == 2, e[k, 2] - frac * height, c[:, k, 1])
            c[:, k, 1] = np.where(side == 3, IMAGE_SIZE - e[k, 3] + frac * height, c[:, k, 1])
        ek = np.broadcast_to(e, (candidates, n, 4))
        ok = _separated(c, ek, shapes, radii)
        if relation is not None:
            ok &= _relation_ok(relation, c[:, 0], c[:, 1], ek[:, 0], ek[:, 1])
        if ok.any():
            return c[int(np.argmax(ok))]
    return None


def _realise(
    reqs: Sequence[ObjReq],
    relation: str | None,
    rng: np.random.Generator,
    cut_index: int | None = None,
    fixed: Sequence[Obj] | None = None,
    attempts: int = 100,
) -> tuple[Obj, ...] | None:
    """Objects meeting ``reqs`` exactly (unspecified attributes random, or taken from
    ``fixed[i]`` when given), laid out by :func:`_layout`; None if no layout was found."""
    attrs = []
    for i, req in enumerate(reqs):
        base = fixed[i] if fixed is not None else None
        attrs.append(
            (
                req.shape,
                req.color or (base.color if base else _pick(rng, tuple(COLORS))),
                req.texture or (base.texture if base else _pick(rng, TEXTURES)),
                req.size or (base.size if base else _pick(rng, SIZES)),
            )
        )
    shapes = [a[0] for a in attrs]
    for _ in range(attempts):
        radii = np.array([rng.uniform(*RADIUS_RANGE_PX[a[3]]) for a in attrs])
        centres = _layout(shapes, radii, relation, rng, cut_index)
        if centres is not None:
            return tuple(
                Obj(s, c, t, z, float(r), float(x), float(y))
                for (s, c, t, z), r, (x, y) in zip(attrs, radii, centres, strict=True)
            )
    return None


def _realise_or_raise(
    reqs: Sequence[ObjReq], relation: str | None, rng: np.random.Generator, **kwargs
) -> tuple[Obj, ...]:
    objs = _realise(reqs, relation, rng, **kwargs)
    if objs is None:
        raise RuntimeError(f"could not lay out {reqs} with relation {relation!r}")
    return objs


def scene_for(spec: PromptSpec, rng: np.random.Generator) -> Scene:
    """A random clean scene that satisfies ``spec`` exactly (see :func:`satisfies`)."""
    return Scene(_realise_or_raise(spec.objects, spec.relation, rng))


def _obj_matches(obj: Obj, req: ObjReq) -> bool:
    return (
        obj.shape == req.shape
        and req.color in (None, obj.color)
        and req.texture in (None, obj.texture)
        and req.size in (None, obj.size)
    )


def relation_holds(relation: str, a: tuple[float, float], b: tuple[float, float]) -> bool:
    """T2I-CompBench centre rule for "A <relation> B" (y grows downwards)."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    return {
        "left of": dx > 0 and abs(dx) > abs(dy),
        "right of": dx < 0 and abs(dx) > abs(dy),
        "above": dy > 0 and abs(dy) > abs(dx),
        "below": dy < 0 and abs(dy) > abs(dx),
    }[relation]


def satisfies(scene: Scene, spec: PromptSpec) -> bool:
    """Exact symbolic alignment: a one-to-one match of requested and present objects
    (same count) under which the relation, if any, holds. Ignores aesthetics."""
    objs = scene.objects
    if len(objs) != len(spec.objects):
        return False
    for perm in itertools.permutations(range(len(objs))):
        if all(_obj_matches(objs[p], r) for p, r in zip(perm, spec.objects, strict=True)):
            if spec.relation is None:
                return True
            a, b = objs[perm[0]], objs[perm[1]]
            if relation_holds(spec.relation, (a.cx, a.cy), (b.cx, b.cy)):
                return True
    return False


# ---------------------------------------------------------------- corruptions


def _color_swaps(reqs: Sequence[ObjReq]) -> list[tuple[int, int]]:
    """Index pairs whose colour swap changes what is asked for."""

    def key(rs: Iterable[ObjReq]) -> list[str]:
        return sorted(repr(r) for r in rs)

    pairs = []
    for i, j in itertools.combinations(range(len(reqs)), 2):
        if None in (reqs[i].color, reqs[j].color):
            continue
        swapped = list(reqs)
        swapped[i], swapped[j] = replace(reqs[i], color=reqs[j].color), replace(reqs[j], color=reqs[i].color)
        if key(swapped) != key(reqs):
            pairs.append((i, j))
    return pairs


def applicable_corruptions(spec: PromptSpec) -> tuple[str, ...]:
    """The corruption kinds that make sense for ``spec`` (alignment kinds always break it)."""
    colors = [r.color for r in spec.objects if r.color is not None]
    ok = {
        "swap_color": bool(_color_swaps(spec.objects)),
        "wrong_color": bool(colors),
        "wrong_shape": True,
        "wrong_texture": any(r.texture is not None for r in spec.objects),
        "wrong_size": any(r.size is not None for r in spec.objects),
        "wrong_count": True,
        "swap_relation": spec.relation is not None,
    }
    return tuple(k for k in CORRUPTIONS if ok.get(k, True))


def _other(rng: np.random.Generator, values: Iterable[str], current: str) -> str:
    return _pick(rng, [v for v in values if v != current])


def _alignment_corruption(
    scene: Scene, spec: PromptSpec, rng: np.random.Generator, kind: str
) -> tuple[Obj, ...]:
    objs = list(scene.objects)
    reqs = list(spec.objects)
    relation = spec.relation
    idx = list(range(len(reqs)))
    if kind == "swap_color":
        pairs = _color_swaps(reqs)
        i, j = pairs[rng.integers(len(pairs))]
        reqs[i], reqs[j] = replace(reqs[i], color=reqs[j].color), replace(reqs[j], color=reqs[i].color)
    elif kind in ("wrong_color", "wrong_texture", "wrong_size"):
        field = kind[len("wrong_") :]
        values = {"color": tuple(COLORS), "texture": TEXTURES, "size": SIZES}[field]
        cands = [i for i in idx if getattr(reqs[i], field) is not None]
        i = cands[rng.integers(len(cands))]
        reqs[i] = replace(reqs[i], **{field: _other(rng, values, getattr(reqs[i], field))})
    elif kind == "wrong_shape":
        i = int(rng.integers(len(reqs)))
        taken = {r.shape for r in reqs} if relation else {reqs[i].shape}
        free = [s for s in SHAPES if s not in taken] or [s for s in SHAPES if s != reqs[i].shape]
        reqs[i] = replace(reqs[i], shape=_pick(rng, free))
        if relation and reqs[0].shape == reqs[1].shape:
            relation = None  # identical nouns: the relation cannot be checked anyway
    elif kind == "wrong_count":
        add = len(reqs) == 1 or (len(reqs) < 3 and rng.random() < 0.5)
        if add:
            i = int(rng.integers(len(reqs)))
            extra = reqs[i] if spec.family == "numeracy" else ObjReq(_pick(rng, SHAPES))
            reqs.insert(i + 1, extra)
            objs.insert(i + 1, objs[i])
        else:
            i = int(rng.integers(len(reqs)))
            del reqs[i], objs[i]
        relation = None
    elif kind == "swap_relation":
        relation = OPPOSITE_RELATION[relation]
    return _realise_or_raise(reqs, relation, rng, fixed=objs)


def corrupt(scene: Scene, spec: PromptSpec, rng: np.random.Generator, kind: str) -> Scene:
    """A defective version of ``scene`` (a clean scene for ``spec``).

    Alignment kinds (ALIGNMENT_CORRUPTIONS) re-lay out a scene that breaks ``spec`` in
    exactly one way (``satisfies`` is False): swap_color (two objects exchange colours),
    wrong_color / wrong_shape / wrong_texture / wrong_size (one object's attribute),
    wrong_count (one object added or removed), swap_relation (opposite relation).
    Aesthetic kinds keep the content: cut_off (one object 30-60 % outside the frame),
    speckle (background noise), blur (Gaussian blur). Raises ValueError for a kind not in
    ``applicable_corruptions(spec)``.
    """
    if kind not in applicable_corruptions(spec):
        raise ValueError(f"corruption {kind!r} does not apply to {spec.text!r}")
    if kind == "speckle":
        return replace(
            scene, noise=float(rng.uniform(*SPECKLE_STD_RANGE)), noise_seed=int(rng.integers(2**31))
        )
    if kind == "blur":
        return replace(scene, blur=float(rng.uniform(*BLUR_SIGMA_RANGE_PX)))
    if kind == "cut_off":
        k = int(rng.integers(len(spec.objects)))
        # Keep the relation when a layout allows it; otherwise drop it (the defect is
        # about framing, and some cut positions cannot also meet the relation).
        objs = _realise(spec.objects, spec.relation, rng, cut_index=k, fixed=scene.objects, attempts=5)
        if objs is None:
            objs = _realise_or_raise(spec.objects, None, rng, cut_index=k, fixed=scene.objects)
        return replace(scene, objects=objs)
    for _ in range(20):
        objs = _alignment_corruption(scene, spec, rng, kind)
        out = replace(scene, objects=objs)
        if not satisfies(out, spec):
            return out
    raise RuntimeError(f"corruption {kind!r} kept satisfying {spec.text!r}")


def sample_training_example(rng: np.random.Generator, defect_prob: float = 0.3) -> tuple[str, np.ndarray]:
    """(prompt text, image [32,32,3]); with probability ``defect_prob`` the image is a
    :func:`corrupt` version (kind uniform over the applicable ones), like noisy web captions."""
    texts, imgs = sample_training_batch(rng, 1, defect_prob)
    return texts[0], imgs[0]


def sample_training_batch(
    rng: np.random.Generator, n: int, defect_prob: float = 0.3
) -> tuple[list[str], np.ndarray]:
    """``n`` training examples at once: (texts, images [n,32,32,3]); rendered in a batch."""
    texts, scenes = [], []
    for _ in range(n):
        spec = sample_prompt(rng)
        scene = scene_for(spec, rng)
        if rng.random() < defect_prob:
            scene = corrupt(scene, spec, rng, _pick(rng, applicable_corruptions(spec)))
        texts.append(spec.text)
        scenes.append(scene)
    return texts, render_batch(scenes)


# ---------------------------------------------------------------- rendering

_SS = IMAGE_SIZE * SUPERSAMPLE
_COORDS = (np.arange(_SS, dtype=np.float32) + 0.5) / SUPERSAMPLE  # subsample centres, px


def palette(dark: bool = False) -> np.ndarray:
    """[6,3] base colours in COLORS order (``dark``: the stripe variant)."""
    p = np.array(list(COLORS.values()), dtype=np.float32)
    return p * STRIPE_DARKEN if dark else p


def shape_masks(
    shape: str,
    r: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    xs: np.ndarray = _COORDS,
    ys: np.ndarray = _COORDS,
) -> np.ndarray:
    """Inside-tests [m,len(ys),len(xs)] bool for m objects of one shape at sample points
    ``xs`` x ``ys`` (pixel units; default: the full 4x supersampled grid)."""
    dx = xs[None, None, :] - cx[:, None, None]
    dy = ys[None, :, None] - cy[:, None, None]
    r = r[:, None, None]
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        h = SQUARE_HALF_SIDE * r
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    big_r = TRIANGLE_CIRCUMRADIUS * r
    return (dy <= big_r / 2) & (dy >= -big_r + np.sqrt(3.0) * np.abs(dx))


def render_batch(scenes: Sequence[Scene], chunk: int = 256) -> np.ndarray:
    """Render scenes -> [b,32,32,3] float32 in [0,1]; deterministic.

    Objects are painted in order (later ones on top) into a 4x supersampled label map;
    each object's coverage is box-filtered to 32x32 and mixed with the background
    (stripe bands follow whole pixel rows, so one colour per object and pixel row), then
    the image is blurred (``scene.blur``) and speckled (``scene.noise``, background only).
    """
    out = np.empty((len(scenes), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    base, dark = palette(), palette(dark=True)
    color_idx = {c: i for i, c in enumerate(COLORS)}
    dark_rows = (np.arange(IMAGE_SIZE) // STRIPE_ROWS) % 2 == 1  # [32]
    for start in range(0, len(scenes), chunk):
        part = scenes[start : start + chunk]
        b = len(part)
        bg = np.array([s.background for s in part], dtype=np.float32)[:, None, None, None]
        label = np.full((b, _SS, _SS), -1, dtype=np.int8)
        n_slots = max((len(s.objects) for s in part), default=0)
        for slot in range(n_slots):
            rows = [i for i, s in enumerate(part) if len(s.objects) > slot]
            for shape in SHAPES:
                sel = [i for i in rows if part[i].objects[slot].shape == shape]
                if not sel:
                    continue
                sub = [part[i].objects[slot] for i in sel]
                m = shape_masks(
                    shape,
                    np.array([o.radius_px for o in sub], dtype=np.float32),
                    np.array([o.cx for o in sub], dtype=np.float32),
                    np.array([o.cy for o in sub], dtype=np.float32),
                )
                idx = np.array(sel)
                label[idx] = np.where(m, np.int8(slot), label[idx])
        img = np.broadcast_to(bg, (b, IMAGE_SIZE, IMAGE_SIZE, 3)).copy()
        blocks = label.reshape(b, IMAGE_SIZE, SUPERSAMPLE, IMAGE_SIZE, SUPERSAMPLE)
        cover = np.zeros((b, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        for slot in range(n_slots):
            cov = (blocks == slot).mean(axis=(2, 4), dtype=np.float32)  # [b,32,32]
            col = np.zeros((b, IMAGE_SIZE, 3), dtype=np.float32)  # colour per pixel row
            for i, s in enumerate(part):
                if len(s.objects) > slot:
                    o = s.objects[slot]
                    c = color_idx[o.color]
                    col[i] = np.where((dark_rows & (o.texture == "striped"))[:, None], dark[c], base[c])
            img += cov[..., None] * (col[:, :, None, :] - bg)
            cover += cov
        for i, s in enumerate(part):
            if s.blur > 0:
                img[i] = gaussian_filter(img[i], sigma=(s.blur, s.blur, 0), mode="nearest")
            if s.noise > 0:
                noise = np.random.default_rng(s.noise_seed).standard_normal(img[i].shape)
                img[i] += (s.noise * noise * (1.0 - cover[i])[..., None]).astype(np.float32)
        out[start : start + b] = np.clip(img, 0.0, 1.0)
    return out


def render(scene: Scene) -> np.ndarray:
    """Render one scene -> [32,32,3] float32 in [0,1]."""
    return render_batch([scene])[0]
