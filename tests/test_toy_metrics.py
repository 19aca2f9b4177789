"""Toy parser, oracle and evaluators: exact rules on hand-made parses, end-to-end on renders."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from lpo_bench.toy import metrics as M
from lpo_bench.toy import oracle as O
from lpo_bench.toy import parser as P
from lpo_bench.toy import world as W

EPS = P.EPS_PROB


def _vec(values: tuple[str, ...], top: str, p: float) -> np.ndarray:
    """Probability vector with ``p`` on ``top`` and the rest spread evenly."""
    v = np.full(len(values), (1 - p) / (len(values) - 1))
    v[values.index(top)] = p
    return v


def _pobj(shape, p_shape, color, p_color, det=1.0, box=(0, 0, 4, 4), texture="solid", size="small"):
    x0, y0, x1, y1 = box
    return P.ParsedObject(
        shape_probs=_vec(W.SHAPES, shape, p_shape),
        color_probs=_vec(tuple(W.COLORS), color, p_color),
        texture_probs=_vec(W.TEXTURES, texture, 1.0),
        size_probs=_vec(W.SIZES, size, 1.0),
        detection=det,
        bbox=box,
        cx=(x0 + x1) / 2,
        cy=(y0 + y1) / 2,
        area_px=30.0,
        radius_px=4.0,
        border_contact=0.0,
        edge_width=0.7,
    )


def _pscene(*objs, speckle=0.0, clutter=0.0, border=0.0, edge=0.7):
    return P.ParsedScene(tuple(objs), np.full(3, W.BACKGROUND), speckle, clutter, border, edge)


# A: circle (p 0.9), red (p 0.8), detection 1, box centre (7, 15)
# B: square (p 1.0), blue (p 0.5), detection 0.8, box centre (25, 15)
A = _pobj("circle", 0.9, "red", 0.8, 1.0, (2, 10, 12, 20))
B = _pobj("square", 1.0, "blue", 0.5, 0.8, (20, 10, 30, 20))


# ---------------------------------------------------------------- exact rules on hand-made parses


def test_vqa_is_product_of_phrase_yes_probabilities():
    spec = W.parse_prompt("a red circle and a blue square")
    # phrase 1: max(0.9*0.8*1, 0) = 0.72; phrase 2: max(0.05*0.04*1, 1*0.5*0.8) = 0.4
    expected = (EPS / 2 + (1 - EPS) * 0.72) * (EPS / 2 + (1 - EPS) * 0.4)
    assert M.vqa_from_parsed(_pscene(A, B), spec) == pytest.approx(expected)
    # a missing object answers "no": the floor EPS/2
    assert M.vqa_from_parsed(_pscene(A), spec) == pytest.approx(
        (EPS / 2 + (1 - EPS) * 0.72) * (EPS / 2 + (1 - EPS) * 0.002)
    )
    # "two red circles" asks for the second best match
    two = W.parse_prompt("two red circles")
    a2 = _pobj("circle", 1.0, "red", 0.5, 1.0)
    assert M.vqa_from_parsed(_pscene(A, a2), two) == pytest.approx(EPS / 2 + (1 - EPS) * 0.5)
    assert M.vqa_from_parsed(_pscene(A), two) == pytest.approx(EPS / 2)


def test_spatial_official_rule():
    spec = W.parse_prompt("a red circle on the left of a blue square")
    assert M.spatial_from_parsed(_pscene(A, B), spec) == pytest.approx(0.25 * 0.9 + 0.25 * 0.8 + 0.5)
    wrong = W.parse_prompt("a red circle on the right of a blue square")
    assert M.spatial_from_parsed(_pscene(A, B), wrong) == 0.0  # 0.425 < 0.5 -> 0
    above = W.parse_prompt("a red circle above a blue square")
    assert M.spatial_from_parsed(_pscene(A, B), above) == 0.0  # |dy| = 0 < |dx|
    only_one = W.parse_prompt("a red circle on the left of a blue triangle")
    assert M.spatial_from_parsed(_pscene(A, B), only_one) == 0.0  # 0.25 * 0.9 < 0.5
    weak = _pobj(
        "square", 0.4, "blue", 1.0, 1.0, (20, 10, 30, 20)
    )  # labelled square? no: circle/triangle 0.3
    assert M.spatial_from_parsed(_pscene(A, weak), spec) == 0.0  # below the detector threshold


def test_spatial_pos_box_rule():
    b1, b2 = (0, 0, 10, 10), (20, 0, 30, 10)
    assert M.spatial_pos("left of", b1, b2) == 1.0
    assert M.spatial_pos("right of", b2, b1) == 1.0
    assert M.spatial_pos("right of", b1, b2) == 0.0
    assert M.spatial_pos("above", (0, 0, 10, 10), (2, 20, 12, 30)) == 1.0
    assert M.spatial_pos("below", (2, 20, 12, 30), (0, 0, 10, 10)) == 1.0
    # overlapping boxes: IoU = 50 / 150 -> pos = 0.1 / (1/3)
    assert M.spatial_pos("left of", (0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(0.3)


def test_numeracy_official_rule():
    tri = _pobj("triangle", 1.0, "green", 1.0)
    two = W.parse_prompt("two green triangles")
    assert M.numeracy_from_parsed(_pscene(tri, tri), two) == 1.0
    assert M.numeracy_from_parsed(_pscene(tri), two) == 0.5
    assert M.numeracy_from_parsed(_pscene(tri, tri, tri), two) == 0.5
    assert M.numeracy_from_parsed(_pscene(), two) == 0.0
    mixed = W.parse_prompt("one red square and two blue circles")
    sq, ci = _pobj("square", 1.0, "red", 1.0), _pobj("circle", 1.0, "blue", 1.0)
    assert M.numeracy_from_parsed(_pscene(sq, ci), mixed) == 0.75
    assert M.numeracy_from_parsed(_pscene(sq, ci, ci), mixed) == 1.0


def test_clip_like_is_bag_of_words_and_complex_combines():
    spec = W.parse_prompt("a red circle and a blue square")
    # words circle, red, square, blue -> best 0.9, 0.8, 0.8, 0.4
    assert M.clip_like_from_parsed(_pscene(A, B), spec) == pytest.approx((0.9 + 0.8 + 0.8 + 0.4) / 4)
    swapped = W.parse_prompt("a blue circle and a red square")
    # red and blue are still present, on other objects: CLIP-like barely notices
    assert M.clip_like_from_parsed(_pscene(A, B), swapped) == pytest.approx((0.9 + 0.4 + 0.8 + 0.8) / 4)
    cx = W.parse_prompt("a small red circle on the left of a blue square")
    parsed = _pscene(A, B)
    assert M.complex_from_parsed(parsed, cx) == pytest.approx(
        (M.vqa_from_parsed(parsed, cx) + M.spatial_from_parsed(parsed, cx)) / 2
    )
    for text, fn in [
        ("a red circle and a blue square", M.vqa_from_parsed),
        ("a small circle and a large square", M.vqa_from_parsed),
        ("a solid circle and a striped square", M.vqa_from_parsed),
        ("a red circle on the left of a blue square", M.spatial_from_parsed),
        ("one circle and one square", M.numeracy_from_parsed),
        ("a small red circle on the left of a blue square", M.complex_from_parsed),
    ]:
        spec = W.parse_prompt(text)
        assert M.category_from_parsed(parsed, spec) == fn(parsed, spec)


def test_oracle_alignment_and_aesthetic_rules():
    spec = W.parse_prompt("a red circle on the left of a blue square")
    # objects (0.72 + 0.4) / 2, no extra object, relation margin 18 px -> 1
    assert O.alignment_from_parsed(_pscene(A, B), spec) == pytest.approx(0.56)
    extra = _pobj("triangle", 1.0, "green", 1.0, 0.5, (0, 24, 4, 28))
    assert O.alignment_from_parsed(_pscene(A, B, extra), spec) == pytest.approx(0.56 / 1.5)
    low = _pobj("square", 1.0, "blue", 0.5, 0.8, (4, 26, 14, 36))  # centre (9, 31): dx 2, dy 16
    assert O.alignment_from_parsed(_pscene(A, low), spec) == 0.0
    assert O.relation_margin("left of", (7, 15), (8, 15)) == 1.0  # ramp 0.5 + 1/2 = 1
    assert O.relation_margin("above", (7, 5), (8, 15)) == 9.0
    assert O.relation_margin("below", (7, 5), (8, 15)) == -10.0
    parts = O.aesthetic_parts(_pscene(speckle=0.04, border=0.7, edge=1.3))
    assert parts == pytest.approx({"inside": math.exp(-1), "clean": math.exp(-1), "crisp": 0.5})
    assert O.aesthetic_from_parsed(_pscene()) == pytest.approx((1 + 1 + 1 / (1 + math.exp(-4))) / 3)
    assert M.aesthetic_from_parsed(_pscene()) == pytest.approx(1 + 9 * O.aesthetic_from_parsed(_pscene()))


def test_label_pairs_ties_and_bradley_terry():
    rng = np.random.default_rng(0)
    r0 = np.array([1.0, 1.0, 1.0, 1.5, 0.0])
    r1 = np.array([1.0, 1.014, 0.986, 0.0, 1.5])  # gaps under the tie margin 0.015 are ties
    assert O.label_pairs(r0, r1, rng).tolist() == [0.5, 0.5, 0.5, 1.0, 0.0]
    n = 20000
    t = O.DEFAULT_TEMPERATURE
    labels = O.label_pairs(np.full(n, t), np.zeros(n), np.random.default_rng(1), tie_margin=0.0)
    assert set(np.unique(labels)) <= {0.0, 1.0}
    assert labels.mean() == pytest.approx(1 / (1 + math.exp(-1)), abs=0.015)  # sigmoid(T / T)
    assert O.label_pairs(np.zeros(n), np.full(n, t), np.random.default_rng(1), tie_margin=0.0).mean() == pytest.approx(
        1 - 1 / (1 + math.exp(-1)), abs=0.015
    )
    wider = O.label_pairs(np.full(n, 0.05), np.zeros(n), np.random.default_rng(1), tie_margin=0.1)
    assert np.all(wider == 0.5)


def test_label_agreement_counts_decided_pairs_only():
    r0, r1 = np.array([1.0, 0.2, 0.5, 0.7, 0.3]), np.array([0.5, 0.6, 0.5, 0.7, 0.1])
    # decided: pair 0 (gap +, won: agrees), pair 1 (gap -, won: disagrees), pair 2 (gap 0: half); pair 3 tie;
    # pair 4 (gap +, lost: disagrees) -> (1 + 0 + 0.5 + 0) / 4
    assert O.label_agreement(r0, r1, np.array([1.0, 1.0, 0.0, 0.5, 0.0])) == pytest.approx(0.375)
    assert math.isnan(O.label_agreement(r0, r1, np.full(5, 0.5)))
    # at the default temperature and margin, labels drawn from gaps like the toy pairs' agree >= 0.9
    gaps = np.random.default_rng(0).exponential(0.15, 50000)
    labels = O.label_pairs(gaps, np.zeros_like(gaps), np.random.default_rng(1))
    assert O.label_agreement(gaps, np.zeros_like(gaps), labels) >= 0.9


# ---------------------------------------------------------------- end to end on renders


def _scene(*objs):
    return W.Scene(tuple(W.Obj(*o) for o in objs))


def test_parser_exact_on_clean_renders():
    rng = np.random.default_rng(11)
    specs = [W.sample_prompt(rng) for _ in range(2000)]
    scenes = [W.scene_for(s, rng) for s in specs]
    parsed = P.parse_batch(W.render_batch(scenes))
    exact = sizes = 0
    for scene, p in zip(scenes, parsed, strict=True):
        exact += Counter((o.shape, o.color, o.texture) for o in scene.objects) == Counter(
            (o.shape, o.color, o.texture) for o in p.objects
        )
        sizes += Counter(o.size for o in scene.objects) == Counter(o.size for o in p.objects)
        assert p.speckle == 0.0 and p.clutter == 0.0 and p.border_contact == 0.0
    assert exact / len(scenes) >= 0.99
    assert sizes / len(scenes) >= 0.99


def test_parser_centres_and_boxes():
    img = W.render(_scene(("square", "red", "solid", "large", 5 / W.SQUARE_HALF_SIDE, 16.0, 16.0)))
    (obj,) = P.parse_image(img).objects
    assert obj.bbox == (11, 11, 21, 21)
    assert (obj.cx, obj.cy) == pytest.approx((16.0, 16.0), abs=1e-4)
    assert obj.area_px == pytest.approx(100.0, abs=1e-3)
    assert obj.radius_px == pytest.approx(5 / W.SQUARE_HALF_SIDE, abs=0.05)


@pytest.mark.parametrize("kind", ["noise", "black", "white", "blur", "speckle", "cut_off"])
def test_parser_degrades_gracefully(kind):
    rng = np.random.default_rng(2)
    if kind in ("noise", "black", "white"):
        imgs = {
            "noise": rng.random((8, 32, 32, 3)),
            "black": np.zeros((8, 32, 32, 3)),
            "white": np.ones((8, 32, 32, 3)),
        }[kind]
    else:
        specs = [W.sample_prompt(rng) for _ in range(8)]
        imgs = W.render_batch([W.corrupt(W.scene_for(s, rng), s, rng, kind) for s in specs])
    for p in P.parse_batch(imgs):
        assert np.isfinite([p.speckle, p.clutter, p.border_contact, p.edge_width]).all()
        for o in p.objects:
            for attr in ("shape", "color", "texture", "size"):
                v = o.probs(attr)
                assert v.sum() == pytest.approx(1.0) and v.min() > 0 and v.max() < 1
            assert 0 <= o.detection < 1
    c = O.oracle_components(np.asarray(imgs, dtype=np.float32), [W.parse_prompt("two circles")] * 8)
    assert np.all((c["reward"] >= 0) & (c["reward"] <= 1.5))


def test_oracle_prefers_clean_scenes_over_every_corruption():
    rng = np.random.default_rng(4)
    specs = [W.sample_prompt(rng, f) for f in W.FAMILIES for _ in range(8)]
    clean = [W.scene_for(s, rng) for s in specs]
    r_clean = O.oracle_reward(W.render_batch(clean), specs)
    for kind in W.CORRUPTIONS:
        idx = [i for i, s in enumerate(specs) if kind in W.applicable_corruptions(s)]
        bad = W.render_batch([W.corrupt(clean[i], specs[i], rng, kind) for i in idx])
        comps = O.oracle_components(bad, [specs[i] for i in idx])
        assert comps["reward"].mean() < r_clean[idx].mean() - 0.1, kind
        assert np.allclose(comps["reward"], comps["alignment"] + O.AESTHETIC_WEIGHT * comps["aesthetic"])


def test_rendered_spatial_and_numeracy_scenes():
    spec = W.parse_prompt("a red circle on the left of a blue square")
    good = _scene(
        ("circle", "red", "solid", "large", 5.0, 8.0, 16.0),
        ("square", "blue", "solid", "large", 5.0, 24.0, 16.0),
    )
    flipped = _scene(
        ("circle", "red", "solid", "large", 5.0, 24.0, 16.0),
        ("square", "blue", "solid", "large", 5.0, 8.0, 16.0),
    )
    stacked = _scene(
        ("circle", "red", "solid", "large", 5.0, 12.0, 8.0),
        ("square", "blue", "solid", "large", 5.0, 16.0, 24.0),
    )
    imgs = W.render_batch([good, flipped, stacked])
    scores = M.spatial_score(imgs, [spec] * 3)
    assert scores[0] > 0.97 and scores[1] == 0.0 and scores[2] == 0.0
    assert M.category_score(imgs, [spec] * 3).tolist() == scores.tolist()
    align = O.oracle_components(imgs, [spec] * 3)["alignment"]
    assert align[0] > 0.9 and align[1] == 0.0 and align[2] == 0.0

    num = W.parse_prompt("two green triangles")
    tri = ("triangle", "green", "solid", "small", 4.0)
    imgs = W.render_batch(
        [
            _scene(tri + (8.0, 16.0), tri + (24.0, 16.0)),
            _scene(tri + (8.0, 16.0)),
            _scene(tri + (6.0, 16.0), tri + (16.0, 16.0), tri + (26.0, 16.0)),
            _scene(("square", "green", "solid", "small", 4.0, 8.0, 16.0)),
        ]
    )
    assert M.numeracy_score(imgs, [num] * 4).tolist() == [1.0, 0.5, 0.5, 0.0]


def test_vqa_catches_binding_errors_clip_like_does_not():
    spec = W.parse_prompt("a red circle and a blue square")
    good = _scene(
        ("circle", "red", "solid", "large", 5.0, 8.0, 16.0),
        ("square", "blue", "solid", "large", 5.0, 24.0, 16.0),
    )
    swapped = _scene(
        ("circle", "blue", "solid", "large", 5.0, 8.0, 16.0),
        ("square", "red", "solid", "large", 5.0, 24.0, 16.0),
    )
    imgs = W.render_batch([good, swapped])
    vqa, clip = M.vqa_score(imgs, [spec] * 2), M.clip_like_score(imgs, [spec] * 2)
    assert vqa[0] > 0.85 and vqa[1] < 1e-3
    assert clip[0] > 0.9 and abs(clip[0] - clip[1]) < 0.02
    aes = M.aesthetic_score(imgs, [spec] * 2)
    assert np.all((aes > 9.5) & (aes <= 10))


# ---------------------------------------------------------------- adapters


def test_adapters_follow_the_reward_model_protocol():
    torch = pytest.importorskip("torch")
    from lpo_bench import registry
    from lpo_bench.errors import HarnessError

    rng = np.random.default_rng(6)
    specs = [W.sample_prompt(rng) for _ in range(3)]
    imgs = W.render_batch([W.scene_for(s, rng) for s in specs])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2)
    texts = [s.text for s in specs]
    expected = {
        "toy-oracle": O.oracle_reward(imgs, specs),
        "toy-aesthetic": M.aesthetic_score(imgs, specs),
        "toy-clip": M.clip_like_score(imgs, specs),
        "toy-vqa": M.vqa_score(imgs, specs),
        "toy-compbench": M.category_score(imgs, specs),
    }
    for name, want in expected.items():
        cls = registry.resolve("metric", name)
        scorer = cls()
        assert cls.id == name and cls.higher_is_better
        prov = scorer.load("cpu")
        assert prov.checkpoint == f"lpo_bench.toy@{M.TOY_VERSION}" and len(prov.sha256) == 64
        out = scorer.score(x, texts)
        assert out.dtype == torch.float32 and out.shape == (3,)
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-6)
        big = torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest")
        assert torch.allclose(scorer.score(big, texts), out, atol=0.1)
    with pytest.raises(HarnessError):
        M.ToyVQA().score(x, ["a photo of a cat"] * 3)
    with pytest.raises(HarnessError):
        M.ToyVQA().score(x, texts[:2])
