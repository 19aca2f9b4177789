"""Toy world: grammar, layout, corruptions, splits and renderer."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from lpo_bench.toy import world as W


def _specs(n: int, seed: int = 0, family: str | None = None) -> list[W.PromptSpec]:
    rng = np.random.default_rng(seed)
    return [W.sample_prompt(rng, family) for _ in range(n)]


# ---------------------------------------------------------------- grammar


def test_round_trip_thousands_of_prompts():
    specs = _specs(4000)
    assert Counter(s.family for s in specs).keys() == set(W.FAMILIES)
    for spec in specs:
        assert W.parse_prompt(spec.text) == spec
        assert set(spec.text.split(" ")) <= set(W.VOCAB)


def test_enumerated_prompts_round_trip_and_sampler_stays_inside():
    for family in ("color", "shape", "texture", "spatial", "numeracy"):
        every = W.enumerate_prompts(family)
        texts = {s.text for s in every}
        assert len(texts) == len(every)
        assert all(W.parse_prompt(s.text) == s for s in every)
        assert {s.text for s in _specs(200, 1, family)} <= texts


def test_prompt_shapes_per_family():
    assert W.parse_prompt("an orange circle and a blue square").family == "color"
    assert W.parse_prompt("a large circle and a small red square").family == "shape"
    assert W.parse_prompt("a striped circle and a solid triangle").family == "texture"
    spatial = W.parse_prompt("a red circle on the left of a blue square")
    assert (spatial.family, spatial.relation) == ("spatial", "left of")
    complex_ = W.parse_prompt("a large striped red circle above a small blue square")
    assert complex_.family == "complex"
    assert complex_.objects == (
        W.ObjReq("circle", "red", "striped", "large"),
        W.ObjReq("square", "blue", None, "small"),
    )
    num = W.parse_prompt("one red square and two blue circles")
    assert (num.family, num.count) == ("numeracy", 3)
    assert num.objects == (W.ObjReq("square", "red"),) + (W.ObjReq("circle", "blue"),) * 2
    assert W.numeracy_groups(num) == [(W.ObjReq("square", "red"), 1), (W.ObjReq("circle", "blue"), 2)]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a orange circle and a red square",  # wrong article
        "a red circle and",  # dangling
        "two red circle",  # singular after "two"
        "one circle and one circle",  # canonical form is "two circles"
        "two circles and two squares",  # more than three objects
        "a red circle on the left of a blue circle",  # same noun on both sides
        "a red circle and a red square",  # colour binding needs two colours
        "a large circle and a large square",  # shape binding needs two sizes
        "a red circle",  # single object outside numeracy
        "a red  circle and a blue square",  # double space
        "a red circle next to a blue square",
        "a striped large circle and a small square",  # word order
    ],
)
def test_parse_rejects_text_outside_grammar(text):
    with pytest.raises(ValueError):
        W.parse_prompt(text)


# ---------------------------------------------------------------- scenes


def _bbox(o: W.Obj) -> tuple[float, float, float, float]:
    left, right, top, bottom = (o.radius_px * f for f in W.EXTENTS[o.shape])
    return o.cx - left, o.cx + right, o.cy - top, o.cy + bottom


def _min_gap_px(scene: W.Scene) -> float:
    """Smallest distance between two objects, measured on the supersampled masks."""
    masks = [
        W.shape_masks(o.shape, np.array([o.radius_px]), np.array([o.cx]), np.array([o.cy]))[0]
        for o in scene.objects
    ]
    return min(
        distance_transform_edt(~a)[b].min() / W.SUPERSAMPLE for a, b in itertools.combinations(masks, 2)
    )


def test_scene_for_satisfies_spec_inside_frame_with_margins():
    rng = np.random.default_rng(3)
    for spec in _specs(1500, 2):
        scene = W.scene_for(spec, rng)
        assert W.satisfies(scene, spec)
        for o in scene.objects:
            x0, x1, y0, y1 = _bbox(o)
            assert x0 >= 1 and y0 >= 1 and x1 <= 31 and y1 <= 31
            lo, hi = W.RADIUS_RANGE_PX[o.size]
            assert lo <= o.radius_px <= hi
        if len(scene.objects) > 1:
            assert _min_gap_px(scene) >= W.MIN_GAP_PX - 0.5  # 0.5: supersampling grid
        if spec.relation is not None:
            a, b = scene.objects
            dx, dy = b.cx - a.cx, b.cy - a.cy
            if spec.relation in ("right of", "below"):
                dx, dy = -dx, -dy
            main, other = (dx, dy) if spec.relation in ("left of", "right of") else (dy, dx)
            assert main >= abs(other) + W.RELATION_MARGIN_PX


def test_relation_rule_hand_cases():
    assert W.relation_holds("left of", (5, 10), (20, 12))
    assert not W.relation_holds("left of", (5, 10), (10, 20))  # |dy| > |dx|
    assert W.relation_holds("right of", (20, 12), (5, 10))
    assert W.relation_holds("above", (10, 5), (12, 20))
    assert W.relation_holds("below", (12, 20), (10, 5))
    assert not W.relation_holds("above", (12, 20), (10, 5))


def test_corruptions_break_alignment_and_aesthetic_ones_keep_it():
    rng = np.random.default_rng(5)
    seen = Counter()
    for spec in _specs(400, 4):
        scene = W.scene_for(spec, rng)
        for kind in W.applicable_corruptions(spec):
            bad = W.corrupt(scene, spec, rng, kind)
            seen[kind] += 1
            if kind in W.ALIGNMENT_CORRUPTIONS:
                assert not W.satisfies(bad, spec), (kind, spec.text)
            else:
                assert W.satisfies(bad, spec), (kind, spec.text)
            if kind == "cut_off":
                outside = [o for o in bad.objects if min(_bbox(o)[::2]) < 0 or max(_bbox(o)[1::2]) > 32]
                assert len(outside) == 1
    assert set(seen) == set(W.CORRUPTIONS)


def test_corrupt_rejects_inapplicable_kind():
    spec = W.parse_prompt("two circles")
    scene = W.scene_for(spec, np.random.default_rng(0))
    assert "swap_relation" not in W.applicable_corruptions(spec)
    with pytest.raises(ValueError):
        W.corrupt(scene, spec, np.random.default_rng(0), "swap_relation")
    with pytest.raises(ValueError):
        W.corrupt(scene, spec, np.random.default_rng(0), "wrong_color")  # no colour asked for


def test_training_examples_mix_clean_and_defective():
    texts, imgs = W.sample_training_batch(np.random.default_rng(7), 64, defect_prob=0.5)
    assert imgs.shape == (64, 32, 32, 3) and imgs.dtype == np.float32
    assert all(W.parse_prompt(t) for t in texts)
    text, img = W.sample_training_example(np.random.default_rng(7), defect_prob=0.0)
    assert isinstance(text, str) and img.shape == (32, 32, 3)


# ---------------------------------------------------------------- splits


def test_prompt_splits_deterministic_disjoint_balanced():
    a = W.prompt_splits(120, 30, 60, seed=1)
    assert a == W.prompt_splits(120, 30, 60, seed=1)
    assert a != W.prompt_splits(120, 30, 60, seed=2)
    assert [len(a[k]) for k in ("train", "val", "test")] == [120, 30, 60]
    keys = {k: {W.canonical_key(s) for s in v} for k, v in a.items()}
    assert not (keys["train"] & keys["test"] or keys["train"] & keys["val"] or keys["val"] & keys["test"])
    assert Counter(s.family for s in a["test"]) == {f: 10 for f in W.FAMILIES}
    assert W.canonical_key(W.parse_prompt("a red circle on the left of a blue square")) == W.canonical_key(
        W.parse_prompt("a blue square on the right of a red circle")
    )


def test_every_prefix_of_a_split_covers_the_families_evenly():
    """Methods train on the first n prompts of a split: each prefix must be family-balanced, not one family."""
    train = W.prompt_splits(2048, 256, 256, seed=0)["train"]
    left = Counter(s.family for s in train)
    for n in (6, 60, 256, 1024):
        c = Counter(s.family for s in train[:n])
        open_fams = [f for f in W.FAMILIES if c[f] < left[f]]  # families not yet exhausted
        assert max(c[f] for f in open_fams) - min(c[f] for f in open_fams) <= 1, (n, c)
    assert [s.family for s in train[:6]] == list(W.FAMILIES)
    assert Counter(s.family for s in train[:256])["color"] == 43  # not 49 colour + 207 shape prompts, as sorted


def test_prompt_splits_too_large_raises():
    with pytest.raises(ValueError):
        W.prompt_splits(200_000, 0, 0)


# ---------------------------------------------------------------- rendering


def test_render_hand_computed_square_and_stripes():
    red = np.array(W.COLORS["red"], dtype=np.float32)
    bg = np.float32(W.BACKGROUND)
    # half-side 5 px centred on 16: covers pixels 11..20 exactly
    sq = W.Obj("square", "red", "solid", "large", 5 / W.SQUARE_HALF_SIDE, 16.0, 16.0)
    img = W.render(W.Scene((sq,)))
    np.testing.assert_allclose(img[16, 16], red, atol=1e-6)
    np.testing.assert_allclose(img[10, 16], bg, atol=1e-6)
    np.testing.assert_allclose(img[16, 21], bg, atol=1e-6)
    # shifted half a pixel right: column 11 and column 21 are half covered
    img = W.render(W.Scene((W.Obj("square", "red", "solid", "large", 5 / W.SQUARE_HALF_SIDE, 16.5, 16.0),)))
    np.testing.assert_allclose(img[16, 11], 0.5 * red + 0.5 * bg, atol=1e-6)
    np.testing.assert_allclose(img[16, 21], 0.5 * red + 0.5 * bg, atol=1e-6)
    # stripes: rows 12-13 (band 6, even) base colour, rows 14-15 (band 7, odd) dark
    img = W.render(W.Scene((W.Obj("square", "red", "striped", "large", 5 / W.SQUARE_HALF_SIDE, 16.0, 16.0),)))
    np.testing.assert_allclose(img[12, 16], red, atol=1e-6)
    np.testing.assert_allclose(img[14, 16], red * W.STRIPE_DARKEN, atol=1e-6)


def test_render_batch_deterministic_in_range_and_matches_single():
    rng = np.random.default_rng(9)
    specs = _specs(40, 9)
    scenes = [W.scene_for(s, rng) for s in specs]
    scenes[0] = W.corrupt(scenes[0], specs[0], rng, "speckle")
    scenes[1] = W.corrupt(scenes[1], specs[1], rng, "blur")
    a = W.render_batch(scenes)
    b = W.render_batch(scenes, chunk=7)
    assert a.shape == (40, 32, 32, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[3], W.render(scenes[3]))
    assert a.min() >= 0 and a.max() <= 1
    clean = W.render_batch([replace(scenes[0], noise=0.0), replace(scenes[1], blur=0.0)])
    assert np.abs(a[0] - clean[0]).max() > 0.05  # speckled
    assert np.abs(a[1] - clean[1]).max() > 0.05  # blurred


def test_colours_far_apart_and_from_background():
    cols = np.concatenate([W.palette(), W.palette(dark=True)])
    dists = np.linalg.norm(cols[:, None] - cols[None], axis=-1)[~np.eye(12, dtype=bool)]
    assert dists.min() > 0.15
    assert np.linalg.norm(cols - W.BACKGROUND, axis=-1).min() > 0.5
