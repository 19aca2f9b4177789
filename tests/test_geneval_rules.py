"""GenEval's scoring rules (djghosh13/geneval@af4902f evaluation/evaluate_images.py) on hand-made detections:
every tag, each rule, hand-computed geometry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lpo_bench.analysis import stats
from lpo_bench.metrics import geneval_rules as R

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "geneval"


def det(box, score, color=None):
    return R.Detection(tuple(float(v) for v in box), float(score), color)


def md(row):
    return R.PromptMetadata.from_json(row)


def score(dets, row, classify=None):
    return R.score_image(dets, md(row), classify)


# ---------------------------------------------------------------------------- geometry
def test_iou_uses_inclusive_pixel_areas():
    # each box is 10 x 10 inclusive pixels; the overlap 5..9 is 5 x 5 -> 25 / (100 + 100 - 25)
    assert R.compute_iou((0, 0, 9, 9), (5, 5, 14, 14)) == pytest.approx(25 / 175)
    assert R.compute_iou((0, 0, 9, 9), (20, 20, 29, 29)) == 0.0
    assert R.compute_iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0


@pytest.mark.parametrize(("box_a", "box_b", "expected"), [
    ((0, 0, 10, 10), (30, 0, 40, 10), {"left of"}),        # offset (-30, 0), shrunk by 2 -> dx = -28/30
    ((30, 0, 40, 10), (0, 0, 10, 10), {"right of"}),
    ((0, 0, 10, 10), (0, 30, 10, 40), {"above"}),          # image y grows downwards
    ((0, 30, 10, 40), (0, 0, 10, 10), {"below"}),
    ((0, 0, 10, 10), (10, 10, 20, 20), {"left of", "above"}),  # (-10, -10) -> (-8, -8) / 14.14 = -0.566 each
    ((0, 0, 2, 2), (10, 3, 12, 5), {"left of"}),           # (-10, -3) -> (-9.6, -2.6) / 10.44: dy = -0.25
    ((0, 0, 10, 10), (1.5, 0, 11.5, 10), set()),           # |dx| 1.5 within the margin 0.1 x 20 = 2
])
def test_relative_position_hand_values(box_a, box_b, expected):
    assert R.relative_position(box_a, box_b) == expected


def test_relative_position_margin_scales_with_object_sizes():
    # centres 5 px apart; boxes 10 wide: margin 2, (5 - 2) / 5 = 0.6 > 0.5 -> left of;
    # boxes 20 wide: margin 4, 1 / 5 = 0.2 -> nothing; threshold 0.05 on the wide boxes: margin 2 again
    assert R.relative_position((0, 0, 10, 10), (5, 0, 15, 10)) == {"left of"}
    assert R.relative_position((0, 0, 20, 10), (5, 0, 25, 10)) == set()
    assert R.relative_position((0, 0, 20, 10), (5, 0, 25, 10), position_threshold=0.05) == {"left of"}


# ---------------------------------------------------------------------------- thresholds
def test_keep_detections_threshold_is_strict_and_per_tag():
    dets = {"dog": [det((0, 0, 1, 1), 0.3), det((0, 0, 1, 1), 0.31), det((0, 0, 1, 1), 0.95), det((0, 0, 1, 1), 0.9)]}
    kept = R.keep_detections(dets, "single_object")
    assert [d.score for d in kept["dog"]] == [0.95, 0.9, 0.31]  # most confident first; 0.3 is not above 0.3
    assert [d.score for d in R.keep_detections(dets, "counting")["dog"]] == [0.95]  # counting: above 0.9
    assert R.keep_detections({"cat": [det((0, 0, 1, 1), 0.2)]}, "colors") == {}  # empty classes are dropped


def test_keep_detections_caps_at_16_and_does_not_suppress_overlaps():
    same_box = {"cup": [det((0, 0, 9, 9), 0.5 + i / 100) for i in range(20)]}
    kept = R.keep_detections(same_box, "two_object")["cup"]
    assert len(kept) == 16 and kept[0].score == pytest.approx(0.69)  # identical boxes all kept (max_overlap 1.0)
    suppressed = R.keep_detections(same_box, "two_object", max_overlap=0.5)["cup"]
    assert len(suppressed) == 1


# ---------------------------------------------------------------------------- every tag
def test_single_object():
    row = {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"}
    assert score({"bench": [det((0, 0, 5, 5), 0.31)]}, row) == (True, "")
    ok, why = score({"bench": [det((0, 0, 5, 5), 0.29)], "dog": [det((0, 0, 5, 5), 0.99)]}, row)
    assert not ok and why == "expected bench>=1, found 0"


def test_two_object_clauses_are_anded():
    row = {"tag": "two_object", "include": [{"class": "bench", "count": 1}, {"class": "sports ball", "count": 1}],
           "prompt": "a photo of a bench and a sports ball"}
    both = {"bench": [det((0, 0, 5, 5), 0.8)], "sports ball": [det((9, 9, 12, 12), 0.4)]}
    assert score(both, row)[0]
    assert not score({"bench": both["bench"]}, row)[0]
    assert not score({"sports ball": both["sports ball"]}, row)[0]


def test_counting_include_and_exclude_at_the_counting_threshold():
    row = {"tag": "counting", "include": [{"class": "clock", "count": 2}], "exclude": [{"class": "clock", "count": 3}],
           "prompt": "a photo of two clocks"}
    two = [det((0, 0, 5, 5), 0.95), det((10, 0, 15, 5), 0.92)]
    assert score({"clock": two}, row) == (True, "")
    ok, why = score({"clock": [*two, det((20, 0, 25, 5), 0.91)]}, row)
    assert not ok and why == "expected clock<3, found 3"  # exclude: 3 or more fail
    assert score({"clock": [*two, det((20, 0, 25, 5), 0.89)]}, row)[0]  # a third below 0.9 does not count
    assert not score({"clock": [two[0], det((10, 0, 15, 5), 0.85)]}, row)[0]  # only one above 0.9


def test_exclude_clauses_are_ored():
    row = {"tag": "counting", "include": [{"class": "cup", "count": 1}],
           "exclude": [{"class": "cup", "count": 2}, {"class": "dog", "count": 1}], "prompt": "p"}
    assert score({"cup": [det((0, 0, 1, 1), 0.95)]}, row)[0]
    assert not score({"cup": [det((0, 0, 1, 1), 0.95)], "dog": [det((0, 0, 1, 1), 0.95)]}, row)[0]


def test_colors_judged_on_the_most_confident_objects_only():
    row = {"tag": "colors", "include": [{"class": "fire hydrant", "count": 1, "color": "blue"}],
           "prompt": "a photo of a blue fire hydrant"}
    assert score({"fire hydrant": [det((0, 0, 5, 5), 0.8, "blue")]}, row)[0]
    ok, why = score({"fire hydrant": [det((0, 0, 5, 5), 0.8, "red"), det((6, 0, 9, 5), 0.5, "blue")]}, row)
    assert not ok and why == "expected blue fire hydrant>=1, found 0 blue; and 1 red"
    seen = []

    def classify(name, objs):
        seen.append((name, [o.score for o in objs]))
        return ["blue"] * len(objs)

    assert score({"fire hydrant": [det((0, 0, 5, 5), 0.5), det((6, 0, 9, 5), 0.8)]}, row, classify)[0]
    assert seen == [("fire hydrant", [0.8])]  # the classifier sees only the top-count object


def test_color_classifier_not_called_when_the_count_is_short():
    row = {"tag": "color_attr", "include": [{"class": "wine glass", "count": 1, "color": "purple"},
                                            {"class": "apple", "count": 1, "color": "black"}],
           "prompt": "a photo of a purple wine glass and a black apple"}
    calls = []

    def classify(name, objs):
        calls.append(name)
        return ["purple"] * len(objs)

    ok, why = score({"wine glass": [det((0, 0, 5, 5), 0.9)]}, row, classify)
    assert not ok and calls == ["wine glass"] and why == "expected apple>=1, found 0"


def test_color_attr_binding():
    row = {"tag": "color_attr", "include": [{"class": "wine glass", "count": 1, "color": "purple"},
                                            {"class": "apple", "count": 1, "color": "black"}], "prompt": "p"}
    right = {"wine glass": [det((0, 0, 5, 5), 0.9, "purple")], "apple": [det((9, 0, 12, 5), 0.9, "black")]}
    swapped = {"wine glass": [det((0, 0, 5, 5), 0.9, "black")], "apple": [det((9, 0, 12, 5), 0.9, "purple")]}
    assert score(right, row)[0] and not score(swapped, row)[0]


def test_position_against_every_target_object():
    row = {"tag": "position", "include": [{"class": "teddy bear", "count": 1},
                                          {"class": "dog", "count": 1, "position": ["right of", 0]}],
           "prompt": "a photo of a dog right of a teddy bear"}
    bear = [det((0, 0, 10, 10), 0.9)]
    assert score({"teddy bear": bear, "dog": [det((30, 0, 40, 10), 0.9)]}, row) == (True, "")
    ok, why = score({"teddy bear": bear, "dog": [det((30, 30, 40, 40), 0.9)]}, row)  # below-right: both relations
    assert ok
    ok, why = score({"teddy bear": bear, "dog": [det((0, 30, 10, 40), 0.9)]}, row)
    assert not ok and why == "expected dog right of target, found below target"
    # a less confident dog on the wrong side is not judged
    assert score({"teddy bear": bear, "dog": [det((30, 0, 40, 10), 0.9), det((-40, 0, -30, 10), 0.5)]}, row)[0]
    ok, why = score({"dog": [det((30, 0, 40, 10), 0.9)]}, row)
    assert not ok and why == "expected teddy bear>=1, found 0\nno target for dog to be right of"


def test_position_skipped_when_the_colour_already_failed():
    row = {"tag": "position", "include": [{"class": "cat", "count": 1},
                                          {"class": "dog", "count": 1, "color": "red", "position": ["left of", 0]}],
           "prompt": "p"}
    ok, why = score({"cat": [det((30, 0, 40, 10), 0.9)], "dog": [det((50, 0, 60, 10), 0.9, "blue")]}, row)
    assert not ok and why.count("\n") == 0 and why.startswith("expected red dog>=1")


def test_overall_is_the_mean_of_task_accuracies():
    assert R.overall({"single_object": 1.0, "counting": 0.5, "position": 0.0}) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        R.overall({})
    # stratified CI of a mean of group means: one-value groups have no spread
    assert stats.mean_of_means_ci([[1.0, 1.0], [0.0]]) == (0.5, 0.5, 0.5)
    m, lo, hi = stats.mean_of_means_ci([[0.0, 100.0, 100.0, 100.0], [0.0, 0.0]])
    assert m == pytest.approx(37.5) and 0.0 <= lo < m < hi <= 50.0


# ---------------------------------------------------------------------------- colour crops
@pytest.mark.parametrize("box", [(2.5, 1.4, 9.6, 7.5), (-3.0, -2.0, 5.2, 4.0), (6.0, 5.0, 14.7, 11.2)])
def test_color_crop_matches_pillow_composite_and_crop(box):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
    mask = rng.random((10, 12)) > 0.4
    pil = Image.composite(Image.fromarray(img), Image.new("RGB", (12, 10), color="#999"), Image.fromarray(mask))
    expected = np.asarray(pil.crop(box))
    got = R.color_crop(img, box, mask)
    assert got.dtype == np.uint8 and np.array_equal(got, expected)
    assert np.array_equal(R.color_crop(img, box, None), np.asarray(Image.fromarray(img).crop(box)))


# ---------------------------------------------------------------------------- metadata
def test_metadata_validation():
    with pytest.raises(ValueError, match="unknown tag"):
        md({"tag": "shapes", "include": [], "prompt": "p"})
    with pytest.raises(ValueError, match="unknown colour"):
        md({"tag": "colors", "include": [{"class": "cup", "count": 1, "color": "teal"}], "prompt": "p"})
    with pytest.raises(ValueError, match="does not precede"):
        md({"tag": "position", "include": [{"class": "cup", "count": 1, "position": ["above", 0]}], "prompt": "p"})


@pytest.mark.skipif(not (SHARED / "evaluation_metadata.jsonl").is_file(), reason="GenEval metadata absent")
def test_every_published_prompt_parses_and_round_trips():
    rows = [json.loads(line) for line in (SHARED / "evaluation_metadata.jsonl").read_text().splitlines() if line]
    parsed = [md(r) for r in rows]
    assert len(parsed) == 553 and [p.to_json() for p in parsed] == rows
    counts = {t: sum(p.tag == t for p in parsed) for t in R.TAGS}
    assert counts == {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94, "position": 100,
                      "color_attr": 100}
    names = set((SHARED / "object_names.txt").read_text().split("\n")) - {""}
    assert {r.class_name for p in parsed for r in p.include} <= names
