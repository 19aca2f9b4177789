"""GenEval suites end to end: toy-geneval on the toy world, the external Mask2Former path with a stand-in
detector command, and the one-line refusal when the detector is not there."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lpo_bench import evaluation, records, registry
from lpo_bench.cli import main
from lpo_bench.data import suites
from lpo_bench.errors import HarnessError
from lpo_bench.metrics import geneval as G
from lpo_bench.metrics import geneval_rules as R
from lpo_bench.metrics.geneval_detect import encode_mask
from lpo_bench.toy import geneval as toy_geneval
from lpo_bench.toy import world as W
from lpo_bench.toy.models import load_toy_bundle
from lpo_bench.toy.parser import parse_batch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "geneval"
needs_geneval = pytest.mark.skipif(not (SHARED / "evaluation_metadata.jsonl").is_file(), reason="GenEval metadata absent")


# ---------------------------------------------------------------------------- toy-geneval
def test_toy_geneval_prompts_cover_every_tag_with_their_metadata():
    items = suites.get_suite("toy-geneval").prompts("test")
    counts = Counter(it.category for it in items)
    assert counts == {"single_object": 3, "two_object": 6, "counting": 42, "colors": 18, "position": 24,
                      "color_attr": 24}
    for it in items:
        assert toy_geneval.toy_metadata(W.parse_prompt(it.text)).tag == it.category
    assert [it.text for it in items if it.category == "single_object"] == ["one circle", "one square", "one triangle"]
    val = {it.text for it in suites.get_suite("toy-geneval").prompts("val") if it.category == "position"}
    assert val.isdisjoint(it.text for it in items if it.category == "position")  # drawn from disjoint splits
    md = toy_geneval.toy_metadata(W.parse_prompt("a red circle on the left of a blue square"))
    assert md.include == (R.Requirement("square", 1), R.Requirement("circle", 1, None, ("left of", 0)))
    md = toy_geneval.toy_metadata(W.parse_prompt("three red squares"))
    assert (md.tag, md.include, md.exclude) == ("counting", (R.Requirement("square", 3),), (R.Requirement("square", 4),))
    with pytest.raises(ValueError, match="not a toy GenEval prompt"):
        toy_geneval.toy_metadata(W.parse_prompt("a large circle and a small red square"))


# tag -> the world's corruption that must break it
BREAKS = {"single_object": "wrong_shape", "two_object": "wrong_shape", "counting": "wrong_count",
          "colors": "wrong_color", "position": "swap_relation", "color_attr": "swap_color"}


def test_toy_rules_pass_clean_renders_and_fail_their_corruptions():
    rng = np.random.default_rng(0)
    items = suites.get_suite("toy-geneval").prompts("test")
    per_tag = {t: [it for it in items if it.category == t][:6] for t in R.TAGS}
    for tag, chosen in per_tag.items():
        specs = [W.parse_prompt(it.text) for it in chosen]
        clean = [W.scene_for(s, rng) for s in specs]
        broken = [W.corrupt(sc, s, rng, BREAKS[tag]) for sc, s in zip(clean, specs, strict=True)]
        for scenes, want in ((clean, 100.0), (broken, 0.0)):
            parsed = parse_batch(np.stack([W.render(sc) for sc in scenes]))
            got = [toy_geneval.score_parsed(p, s) for p, s in zip(parsed, specs, strict=True)]
            assert got == [want] * len(specs), (tag, want, got)


def test_toy_geneval_metric_through_the_registry():
    metric = registry.resolve("metric", "toy-geneval")()
    prov = metric.load()
    assert prov.metric_id == "toy-geneval" and prov.sha256
    spec = W.parse_prompt("one red circle")
    good = W.render(W.scene_for(spec, np.random.default_rng(1)))
    bad = W.render(W.corrupt(W.scene_for(spec, np.random.default_rng(1)), spec, np.random.default_rng(2), "wrong_color"))
    x = torch.from_numpy(np.stack([good, bad])).permute(0, 3, 1, 2)
    assert metric.score(x, [spec.text, spec.text]).tolist() == [100.0, 0.0]


def test_eval_toy_geneval_records_every_tag_and_the_overall_mean(tmp_path):
    fast = dataclasses.replace(suites.get_suite("toy-geneval"), sampler=suites.SamplerSpec("DDIMScheduler", 2, 5.0, 0.0))
    run = evaluation.eval_run("base:toy", fast, max_prompts=12, images_per_prompt=2, out_root=tmp_path,
                              bundle=load_toy_bundle(), log=lambda m: None)
    df = records.read_measurements(run / "measurements.parquet").set_index("category")
    assert set(df.index) == set(R.TAGS) | {"all"}
    tags = df.loc[list(R.TAGS), "value"]
    assert df.loc["all", "value"] == pytest.approx(tags.mean())  # GenEval's overall: mean of task accuracies
    ps = pd.read_parquet(run / "per_sample.parquet")
    assert set(ps["score"]) <= {0.0, 100.0} and len(ps) == 24


# ---------------------------------------------------------------------------- real geneval, external detector
FAKE_DETECTOR = """
import json, pathlib, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
plan = json.loads(pathlib.Path(args["--plan"]).read_text())
images = []
for p in sorted(pathlib.Path(args["--images"]).glob("*.png")):
    images.append({"image": p.name, "width": 16, "height": 16, "detections": plan[p.name]})
pathlib.Path(args["--out"]).write_text(json.dumps({"format": "lpo-bench-geneval-detections/v1",
                                                  "detector": {"model": "fake"}, "images": images}))
"""

PALETTE = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 50)}


def nearest_color(classname, crops):
    """A stand-in colour classifier: the palette colour nearest to the crop's non-grey mean."""
    out = []
    for c in crops:
        px = c.reshape(-1, 3).astype(float)
        px = px[np.abs(px - 153).sum(1) > 30]
        mean = px.mean(0)
        out.append(min(PALETTE, key=lambda k: np.abs(np.asarray(PALETTE[k]) - mean).sum()))
    return out


def _square(img, box, rgb):
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = rgb
    mask = np.zeros(img.shape[:2], bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_external_geneval_scorer_with_a_stand_in_detector(tmp_path):
    metadata = [
        {"tag": "colors", "include": [{"class": "cup", "count": 1, "color": "red"}], "prompt": "a photo of a red cup"},
        {"tag": "colors", "include": [{"class": "cup", "count": 1, "color": "blue"}], "prompt": "a photo of a blue cup"},
    ]
    d = tmp_path / "colors" / "samples"
    d.mkdir(parents=True)
    plan = {}
    for name, rgb in (("a photo of a red cup_000000.png", PALETTE["red"]), ("a photo of a blue cup_000004.png",
                                                                              PALETTE["red"])):
        img = np.full((16, 16, 3), 200, np.uint8)
        mask = _square(img, (3, 3, 9, 9), rgb)
        img[0:3, 0:16] = PALETTE["green"]  # outside the mask: composited away
        Image.fromarray(img).save(d / name)
        plan[name] = [{"class": "cup", "box": [2.6, 2.6, 9.4, 9.4], "score": 0.8, "mask": encode_mask(mask, (2.6, 2.6, 9.4, 9.4))}]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    (tmp_path / "fake.py").write_text(FAKE_DETECTOR)
    cmd = [sys.executable, str(tmp_path / "fake.py"), "--images", "{image_dir}", "--out", "{out}", "--plan",
           str(tmp_path / "plan.json")]
    scorer = G.GenEvalScorer(cmd, metadata, colors=nearest_color, colors_ref="stand-in")
    rows = scorer.score_dir(d, "colors")
    assert [(r.prompt, r.question_id, r.score) for r in rows] == [("a photo of a red cup", 0, 100.0),
                                                                    ("a photo of a blue cup", 4, 0.0)]
    assert scorer.detector_info == {"model": "fake", "color_classifier": "stand-in"}
    with pytest.raises(HarnessError, match="no GenEval prompt"):
        scorer.score_dir(d, "color_attr")


def test_parse_detections_rejects_other_documents():
    with pytest.raises(HarnessError, match="lpo-bench-geneval-detections/v1"):
        G.parse_detections({"format": "lpo-bench-detections/v1", "images": []})
    bad = {"format": G.DETECTIONS_FORMAT, "images": [{"image": "x_000000.png", "width": 4, "height": 4,
                                                      "detections": [{"class": "cup", "box": [1, 2], "score": 1}]}]}
    with pytest.raises(HarnessError, match="box needs 4 numbers"):
        G.parse_detections(bad)


@needs_geneval
def test_geneval_without_the_detector_stops_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv(G.GENEVAL_DETECTOR_ENV, raising=False)
    code = main(["eval", "--suite", "geneval", "--model", "base:sd15", "--data-dir", str(SHARED),
                 "--out-root", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "Mask2Former" in err and G.GENEVAL_DETECTOR_ENV in err and "nox -s geneval-env" in err
    assert not (tmp_path / "eval").exists()  # refused before any run or model


def test_geneval_without_the_prompts_names_the_file(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("LPO_BENCH_CACHE", str(tmp_path / "cache"))
    code = main(["eval", "--suite", "geneval", "--model", "base:sd15", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "evaluation_metadata.jsonl" in err
