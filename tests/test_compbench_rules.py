"""T2I-CompBench++ rules on synthetic boxes; expected values computed by hand from the official scripts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lpo_bench.errors import HarnessError
from lpo_bench.metrics import compbench_rules as R
from lpo_bench.metrics.compbench_rules import Detection, Token

A = (0, 0, 100, 100)  # centre (50, 50), area 10000


def toks(spec: str) -> list[Token]:
    """'a/DET dog/NOUN' -> tokens (all followed by a space)."""
    return [Token(*item.rsplit("/", 1)) for item in spec.split()]


# ---------------------------------------------------------------------------- naming
def test_image_names_round_trip_and_question_ids():
    assert R.image_file_name("a dog on the left of a cat", 12) == "a dog on the left of a cat_000012.png"
    assert R.parse_image_file_name("out/samples/a dog_000012.png") == ("a dog", 12)
    assert R.question_id(3, 4) == 34
    with pytest.raises(ValueError):
        R.image_file_name("a_b", 0)
    with pytest.raises(ValueError):
        R.question_id(0, 10)


# ---------------------------------------------------------------------------- 2D
def test_box_iou():
    assert R.box_iou(A, (50, 0, 150, 100)) == pytest.approx(5000 / 15000)
    assert R.box_iou(A, (300, 0, 400, 100)) == 0.0
    assert R.box_iou((0, 0, 0, 0), (1, 1, 1, 1)) == 0.0  # official: ZeroDivisionError


@pytest.mark.parametrize(
    "relation, box2, expected",
    [
        ("on the left of", (300, 0, 400, 100), 1.0),  # dx=300 > 0, |dx| > |dy|, IoU 0
        ("on the right of", (300, 0, 400, 100), 0.0),  # needs dx < 0
        ("on the right of", (-300, 0, -200, 100), 1.0),
        ("on the left of", (50, 0, 150, 100), 0.3),  # IoU 1/3 >= 0.1 -> 0.1 / (1/3)
        ("on the left of", (300, 300, 400, 400), 0.0),  # |dx| == |dy|
        ("on the top of", (0, 300, 100, 400), 1.0),  # dy=300 > 0 (object 2 lower in the image)
        ("on the bottom of", (0, 300, 100, 400), 0.0),
        ("on the bottom of", (0, -300, 100, -200), 1.0),
        ("next to", (300, 0, 400, 100), 1.0),  # |dy| = 0 < 150
        ("near", (400, 300, 500, 400), 150 / 400),  # dx=400, dy=300, both >= 150
        ("on side of", (100, 150, 200, 250), 1.0),  # dx = 100 < 150
        ("on top of", (0, 300, 100, 400), 0.0),  # not scored by the official rule
        (None, (300, 0, 400, 100), 0.0),
    ],
)
def test_position_score_2d(relation, box2, expected):
    assert R.position_score_2d(relation, A, box2) == pytest.approx(expected)


def test_find_relation_uses_official_order_and_substrings():
    assert R.find_relation("a dog on the left of a cat", R.VOCAB_SPATIAL_2D) == "on the left of"
    assert R.find_relation("a dog nearby a cat", R.VOCAB_SPATIAL_2D) == "near"  # substring match
    assert R.find_relation("a cat on side of a dog next to a car", R.VOCAB_SPATIAL_2D) == "on side of"
    assert R.find_relation("a cat", R.VOCAB_SPATIAL_2D) is None
    assert R.find_relation("a cat hidden behind a box", R.VOCAB_SPATIAL_3D) == "behind"


def test_spatial_2d_score_combination_and_threshold():
    dets = [Detection("dog", A, 0.9), Detection("cat", (300, 0, 400, 100), 0.8)]
    assert R.spatial_2d_score("dog", "cat", "on the left of", dets) == pytest.approx(0.25 * 0.9 + 0.25 * 0.8 + 0.5)
    assert R.spatial_2d_score("dog", "cat", "on the right of", dets) == 0.0  # 0.425 < 0.5
    assert R.spatial_2d_score("dog", "horse", "on the left of", dets) == 0.0  # 0.225 alone < 0.5
    assert R.spatial_2d_score(None, None, "on the left of", dets) == 0.0
    # girl -> person; the first (highest-scoring) detection of a label is used
    people = [Detection("person", A, 0.6), Detection("person", (600, 0, 700, 100), 1.0), Detection("cat", (300, 0, 400, 100), 0.8)]
    assert R.spatial_2d_score("girl", "cat", "on the left of", people) == pytest.approx(0.15 + 0.2 + 0.5)


def test_simple_and_complex_objects():
    assert R.simple_objects(toks("a/DET dog/NOUN on/ADP the/DET left/NOUN of/ADP a/DET cat/NOUN")) == ("dog", "cat")
    assert R.simple_objects(toks("hello/INTJ")) == (None, None)
    assert R.complex_objects(
        toks("a/DET red/ADJ dog/NOUN on/ADP the/DET left/NOUN of/ADP a/DET blue/ADJ car/NOUN")
    ) == ("dog", "car")
    # no NOUN after the preposition: PROPN fallback takes the last token of a PROPN run
    assert R.complex_objects(toks("a/DET dog/NOUN near/ADP John/PROPN Smith/PROPN ./PUNCT")) == ("dog", "Smith")
    # a PROPN run ending the prompt is not taken (official j + 1 < len(doc) check) -> one object only
    assert R.complex_objects(toks("a/DET dog/NOUN next/ADJ to/ADP Paris/PROPN")) == (None, None)
    # two prepositions -> four objects -> not scored
    assert R.complex_objects(toks("a/DET dog/NOUN near/ADP a/DET cat/NOUN next/ADJ to/ADP a/DET car/NOUN")) == (None, None)
    # span text follows spaCy whitespace: "left," is not "left"
    glued = [Token("a", "DET"), Token("dog", "NOUN"), Token("on", "ADP"), Token("the", "DET"),
             Token("left", "NOUN", space_after=False), Token(",", "PUNCT"), Token("cat", "NOUN")]
    assert R.complex_objects(glued) == ("dog", "cat")
    assert R._span_text(glued[3:6]) == "the left,"


# ---------------------------------------------------------------------------- 3D
@pytest.mark.parametrize(
    "relation, box2, d1, d2, expected",
    [
        ("in front of", (10, 0, 110, 100), 0.8, 0.3, 1.0),  # IoU 9000/11000 > 0.5, object 1 closer
        ("behind", (10, 0, 110, 100), 0.8, 0.3, 0.0),
        ("hidden", (10, 0, 110, 100), 0.3, 0.8, 1.0),
        ("in front of", (50, 0, 150, 100), 0.8, 0.3, (1 / 3) / 0.5),  # 0 < IoU < 0.5
        ("in front of", (300, 0, 400, 100), 0.8, 0.3, 0.0),  # no overlap
        ("in front of", (0, 0, 100, 50), 0.8, 0.3, 0.0),  # IoU exactly 0.5 scores 0 (official quirk)
        ("in front of", (10, 0, 110, 100), math.nan, 0.3, 0.0),
        ("on the left of", (300, 0, 400, 100), 0.8, 0.3, 0.0),
    ],
)
def test_position_score_3d(relation, box2, d1, d2, expected):
    assert R.position_score_3d(relation, A, box2, d1, d2) == pytest.approx(expected)


def test_spatial_3d_score_keeps_official_index_quirk():
    dets = [
        Detection("dog", A, 0.9, depth=0.2),
        Detection("dog", (10, 0, 110, 100), 0.6, depth=0.9),
        Detection("cat", (20, 0, 120, 100), 0.8, depth=0.1),
    ]
    # object 1's index is overwritten to the second dog before the cat is seen:
    # 0.25*0.6 + 0.25*0.8 + 0.5*1 (IoU(dog2, cat) = 9000/11000 > 0.5, 0.9 > 0.1); the first dog would give 0.925
    assert R.spatial_3d_score("dog", "cat", "in front of", dets) == pytest.approx(0.85)
    # substring matching ("hot dog" contains "dog"), no < 0.5 zeroing for one object
    assert R.spatial_3d_score("dog", "horse", "behind", [Detection("hot dog", A, 0.9, 0.5)]) == pytest.approx(0.225)
    assert R.spatial_3d_score(None, None, "behind", dets) == 0.0
    with pytest.raises(ValueError):
        R.spatial_3d_score("dog", "cat", "behind", [Detection("dog", A, 0.9), Detection("cat", A, 0.9)])


def test_box_mean_depth_transposed_window():
    depth = np.arange(16, dtype=float).reshape(4, 4)
    assert R.box_mean_depth(depth, (0, 1, 2, 4)) == pytest.approx(np.mean([1, 2, 3, 5, 6, 7]))
    assert R.box_mean_depth(depth, (0, 1, 2, 4), official_transposed=False) == pytest.approx(np.mean([4, 5, 8, 9, 12, 13]))
    assert math.isnan(R.box_mean_depth(depth, (2, 2, 2, 3)))


# ---------------------------------------------------------------------------- numeracy
SINGULAR, PLURAL = R.parse_new_objects("dog - dogs\ncat - cats\r\nsheep - sheep\n\nIce Cream - ice creams\n")


def test_parse_new_objects():
    assert SINGULAR == ["dog", "cat", "sheep", "ice cream"]
    assert PLURAL == ["dogs", "cats", "sheep", "ice creams"]


@pytest.mark.parametrize(
    "prompt, objects, counts",
    [
        ("two dogs and a cat", ["dog", "cat"], [2, 1]),
        ("three ice creams", ["ice cream"], [3]),
        ("one sheep", ["sheep"], [1]),
        ("Three dogs", [], []),  # case-sensitive number words (official quirk)
        ("a dogs and two cats", ["dog", "cat"], [2]),  # "a" + plural: no count appended (official quirk)
        ("two dog", ["dog"], [2]),  # official: ValueError
        ("the dogs sat on a", [], []),  # trailing number word (official: IndexError)
    ],
)
def test_parse_numeracy_objects(prompt, objects, counts):
    assert R.parse_numeracy_objects(prompt.split(), SINGULAR, PLURAL) == (objects, counts)


def test_numeracy_duplicates():
    assert R.numeracy_same_object((0, 0, 9, 9), (0, 0, 9, 9))
    assert R.numeracy_same_object((0, 0, 9, 9), (0, 0, 19, 9))  # IoU 0.5 but box 1 fully inside box 2
    assert not R.numeracy_same_object((0, 0, 9, 9), (5, 0, 14, 9))  # 50 px overlap of 100 and 100
    dets = [Detection("dog", (0, 0, 9, 9), 0.9), Detection("dog", (0, 0, 19, 9), 0.8),
            Detection("cat", (0, 0, 9, 9), 0.7), Detection("dog", (100, 100, 110, 110), 0.6)]
    assert [d.score for d in R.dedup_detections(dets)] == [0.9, 0.7, 0.6]


def test_numeracy_score():
    dets = [Detection("dog", (0, 0, 9, 9), 0.9), Detection("dog", (0, 0, 19, 9), 0.8),
            Detection("cat", (0, 0, 9, 9), 0.7), Detection("dog", (100, 100, 110, 110), 0.6)]
    words = "two dogs and a cat".split()
    assert R.numeracy_score(words, dets, SINGULAR, PLURAL) == 1.0  # 2 dogs after dedup, 1 cat
    assert R.numeracy_score(words, dets[:3], SINGULAR, PLURAL) == 0.75  # one dog: 0.25 + 0 + 0.5
    assert R.numeracy_score(words, [], SINGULAR, PLURAL) == 0.0
    assert R.numeracy_score("hello".split(), dets, SINGULAR, PLURAL) == 0.0  # official: ZeroDivisionError
    # alias painting -> picture, then labels containing it are renamed to it
    s, p = R.parse_new_objects("painting - paintings")
    assert R.numeracy_score(["a", "painting"], [Detection("picture, frame", (0, 0, 9, 9), 0.9)], s, p) == 1.0
    # "a" + plural shifts counts: the dog is compared with the cats' count 2
    assert R.numeracy_score("a dogs and two cats".split(), dets[:2] + [Detection("cat", (50, 50, 60, 60), 0.5)], SINGULAR, PLURAL) == pytest.approx(0.25 + 0.0 + 0.25)


# ---------------------------------------------------------------------------- BLIP-VQA, 3-in-1
def test_blip_question_rules():
    assert R.pre_question('A Red, "dog".!?') == "a red, dog?"
    assert R.blip_vqa_questions(["a red dog", "the left", "a blue car"], np_num=3) == ["a red dog?", "a blue car?", None]


def test_blip_image_score_rounds_like_official():
    assert R.blip_vqa_image_score([None, None]) == 1.0
    # 0.123456 -> "0.1235"; 0.1235 * 0.5 in float32 is 0.0617499985 -> "0.0617"
    assert R.blip_vqa_image_score([0.123456, None, 0.5]) == 0.0617
    assert R.blip_vqa_image_score([0.99996]) == 1.0


def test_three_in_one():
    complex_prompts = ["A dog on the left of a cat. It is sunny", "a man riding a horse", "a man riding a horse near a car"]
    spatial = ["a dog on the left of a cat"]
    action = ["A man riding a horse"]
    blip, unidet, clip = [0.2, 0.4, 0.6, 0.8, 0.3, 0.9], [1.0, 0.0, 0.5, 0.5, 0.6, 0.0], [0.3, 0.3, 0.2, 0.4, 0.3, 0.6]
    out = R.three_in_one_scores(complex_prompts, spatial, action, blip, unidet, clip, images_per_prompt=2)
    expected = [(1.0 + 0.2) / 2, (0.0 + 0.4) / 2, (0.2 + 0.6) / 2, (0.4 + 0.8) / 2, (0.3 + 0.6 + 0.3) / 3, (0.9 + 0.0 + 0.6) / 3]
    assert out == pytest.approx(expected)
    with pytest.raises(ValueError):
        R.three_in_one_scores(complex_prompts, spatial, action, blip[:5], unidet, clip, images_per_prompt=2)


# ---------------------------------------------------------------------------- external detector protocol
FAKE_DETECTOR = r'''
import json, os, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
plan = json.loads(os.environ["FAKE_PLAN"])
if plan.get("fail"):
    print("CUDA exploded", file=sys.stderr)
    sys.exit(3)
pos = {"dog": "NOUN", "cat": "NOUN", "dogs": "NOUN", "cats": "NOUN", "left": "NOUN"}
images = []
for name in sorted(os.listdir(args["--images"])):
    prompt = name.split("_")[0]
    qid = str(int(name.split("_")[-1].split(".")[0]))
    images.append({"image": name,
                   "tokens": [{"text": w, "pos": pos.get(w, "DET"), "space_after": True} for w in prompt.split()],
                   "detections": plan[qid]})
doc = {"format": "lpo-bench-detections/v1", "detector": {"name": "fake", "category": args["--category"]}, "images": images}
with open(args["--out"], "w") as f:
    f.write(plan.get("raw", json.dumps(doc)))
'''


def _detector(tmp_path, monkeypatch, plan, prompts):
    import sys

    from lpo_bench.metrics.external import ExternalDetectorScorer

    script = tmp_path / "fake_detector.py"
    script.write_text(FAKE_DETECTOR)
    images = tmp_path / "samples"
    images.mkdir(exist_ok=True)
    for qid, prompt in enumerate(prompts):
        (images / R.image_file_name(prompt, qid)).write_bytes(b"")
    monkeypatch.setenv("FAKE_PLAN", json.dumps(plan))
    singular, plural = R.parse_new_objects("dog - dogs\ncat - cats")
    cmd = [sys.executable, str(script), "--images", "{image_dir}", "--category", "{category}", "--out", "{out}"]
    return ExternalDetectorScorer(cmd, new_objects=(singular, plural)), images


def _det(label, box, score, depth=None):
    d = {"label": label, "box": list(box), "score": score}
    return d | ({"depth": depth} if depth is not None else {})


def test_external_detector_spatial_and_numeracy(tmp_path, monkeypatch):
    cat_right, cat_left = (300, 0, 400, 100), (-300, 0, -200, 100)
    plan = {"0": [_det("dog", A, 0.9), _det("cat", cat_right, 0.8)], "1": [_det("dog", A, 0.9), _det("cat", cat_left, 0.8)]}
    prompts = ["a dog on the left of a cat"] * 2
    scorer, images = _detector(tmp_path, monkeypatch, plan, prompts)
    rows = scorer.score_dir(images, "spatial")
    assert [(r.question_id, r.prompt) for r in rows] == [(0, prompts[0]), (1, prompts[1])]
    assert [r.score for r in rows] == pytest.approx([0.925, 0.0])
    assert scorer.detector_info == {"name": "fake", "category": "spatial"}

    plan = {"0": [_det("dog", (0, 0, 9, 9), 0.9), _det("dog", (50, 50, 59, 59), 0.8), _det("cat", (0, 0, 9, 9), 0.7)]}
    (tmp_path / "num").mkdir()
    scorer, images = _detector(tmp_path / "num", monkeypatch, plan, ["two dogs and a cat"])
    assert [r.score for r in scorer.score_dir(images, "numeracy")] == [1.0]


def test_external_detector_3d_needs_depth(tmp_path, monkeypatch):
    plan = {"0": [_det("dog", A, 0.9, depth=0.8), _det("cat", (10, 0, 110, 100), 0.7, depth=0.3)]}
    scorer, images = _detector(tmp_path, monkeypatch, plan, ["a dog in front of a cat"])
    assert [r.score for r in scorer.score_dir(images, "3d_spatial")] == pytest.approx([0.25 * 0.9 + 0.25 * 0.7 + 0.5])
    plan = {"0": [_det("dog", A, 0.9), _det("cat", (10, 0, 110, 100), 0.7)]}
    scorer, images = _detector(tmp_path, monkeypatch, plan, ["a dog in front of a cat"])
    with pytest.raises(HarnessError, match="must emit 'depth'"):
        scorer.score_dir(images, "3d_spatial")


def test_external_detector_failures_are_harness_errors(tmp_path, monkeypatch):
    from lpo_bench.metrics.external import ExternalDetectorScorer, parse_detections

    scorer, images = _detector(tmp_path, monkeypatch, {"fail": True}, ["a dog"])
    with pytest.raises(HarnessError, match="exit code 3: CUDA exploded"):
        scorer.score_dir(images, "spatial")
    scorer, images = _detector(tmp_path, monkeypatch, {"0": [], "raw": "{not json"}, ["a dog"])
    with pytest.raises(HarnessError, match="no valid JSON"):
        scorer.score_dir(images, "spatial")
    with pytest.raises(HarnessError, match="not found"):
        ExternalDetectorScorer(["/nonexistent/python"]).score_dir(images, "spatial")
    with pytest.raises(HarnessError, match="unknown detector category"):
        scorer.score_dir(images, "color")
    with pytest.raises(HarnessError, match="bad detection"):
        parse_detections({"format": "lpo-bench-detections/v1",
                          "images": [{"image": "a dog_000000.png", "tokens": [], "detections": [{"label": "dog", "box": [1, 2]}]}]})
    with pytest.raises(HarnessError, match="is not a 'lpo-bench-detections/v1' document"):
        parse_detections({"images": []})
