"""Suites and evaluation: prompts, seeds, batch-size invariance, aggregation, eval runs, skipped categories.

Models are the tiny random SD1.5 bundle; suites are the real ones with a 2-step sampler (only the
sampler is swapped, so prompts, seeds and metrics are those of the shipped suites).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lpo_bench import evaluation, records
from lpo_bench.analysis import stats
from lpo_bench.data import suites
from lpo_bench.diffusion.generate import generate_images
from lpo_bench.diffusion.seeding import sample_seed
from lpo_bench.errors import HarnessError
from lpo_bench.metrics.base import ScorerProvenance
from lpo_bench.models.tiny import tiny_bundle

FAST = suites.SamplerSpec("DDIMScheduler", 2, 5.0, 0.0)


@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle("sd15", resolution=32)


def fast(suite: suites.Suite) -> suites.Suite:
    return dataclasses.replace(suite, sampler=FAST)


class MeanPixel:
    higher_is_better = True

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return images.mean(dim=(1, 2, 3))


def fake_metric(metric_id: str) -> evaluation.LoadedMetric:
    return evaluation.LoadedMetric(metric_id, MeanPixel(), ScorerProvenance(metric_id, "9", f"ck/{metric_id}", "ab"), True)


# ---------------------------------------------------------------------------- suites
def test_toy_suite_prompts_are_the_toy_splits_balanced_and_stable():
    from lpo_bench.data.prompts import toy_prompt_splits

    test = suites.TOY_COMPBENCH.prompts("test")
    val = suites.TOY_GENERAL.prompts("val")
    assert [it.text for it in test] == toy_prompt_splits()["test"]
    assert len(test) == len(val) == 256 and not {it.text for it in test} & {it.text for it in val}
    assert {it.category for it in test} == set(suites.TOY_FAMILIES)
    assert len({it.prompt_id for it in test}) == 256 and test[0].prompt_id == "test/color/0000"
    sub = suites.TOY_COMPBENCH.prompts("test", max_prompts=12)
    assert [it.category for it in sub].count("numeracy") == 2 and len(sub) == 12
    assert all(it in test for it in sub) and sub == sorted(sub, key=test.index)
    with pytest.raises(HarnessError, match="splits 'val' and 'test'"):
        suites.TOY_COMPBENCH.prompts("train")


def test_balanced_subset_round_robin():
    items = [suites.PromptItem(f"{c}/{i}", f"{c}{i}", c, i) for c, n in (("a", 3), ("b", 1), ("c", 2)) for i in range(n)]
    got = suites.balanced_subset(items, ("a", "b", "c"), 4)
    assert [it.prompt_id for it in got] == ["a/0", "a/1", "b/0", "c/0"]
    assert suites.balanced_subset(items, ("a", "b", "c"), None) == items
    with pytest.raises(HarnessError):
        suites.balanced_subset(items, ("a", "b", "c"), 0)


def test_inputs_sha256_tracks_everything_that_moves_images():
    s = suites.TOY_COMPBENCH
    items = s.prompts("test", max_prompts=6)
    h = s.inputs_sha256(items)
    assert h == s.inputs_sha256(list(items), 4)
    assert h != s.inputs_sha256(items, 2)
    assert h != dataclasses.replace(s, seed_base=1).inputs_sha256(items)
    assert h != fast(s).inputs_sha256(items)
    assert h != s.inputs_sha256(items[:5])


def test_compbench_metric_map_and_missing_prompt_files(tmp_path):
    c = suites.COMPBENCH
    assert c.images_per_prompt == 10 and len(c.categories) == 8
    assert c.metrics_for("color") == ("blip-vqa",) and c.metrics_for("non_spatial") == ("clipscore",)
    assert c.metrics_for("complex") == ("t2i-compbench/3-in-1",)
    with pytest.raises(HarnessError, match="not found in data dir"):
        c.prompts("val", data_dir=tmp_path)


def test_general_suite_reads_a_local_pickapic_copy(tmp_path):
    with pytest.raises(HarnessError, match="--data-dir"):
        suites.GENERAL.prompts("test")
    with pytest.raises(HarnessError, match="no Pick-a-Pic v1"):
        suites.GENERAL.prompts("test", data_dir=tmp_path)
    data = tmp_path / "pickapic_v1" / "data"
    data.mkdir(parents=True)
    pd.DataFrame({"caption": ["a cat", "a dog", "a cat", "", "a bird"]}).to_parquet(
        data / "validation_unique-00000-of-00001.parquet")
    items = suites.GENERAL.prompts("test", data_dir=tmp_path)
    assert [it.text for it in items] == ["a cat", "a dog", "a bird"]
    assert {it.category for it in items} == {"pickapic_v1"} and "hpdv2" in suites.GENERAL.skipped_categories(tmp_path)
    (tmp_path / "HPDv2").mkdir()
    (tmp_path / "HPDv2" / "test.json").write_text(json.dumps([{"prompt": "a house"}, {"prompt": "a tree"}]))
    items = suites.GENERAL.prompts("test", data_dir=tmp_path, max_prompts=4)
    assert [it.prompt_id for it in items] == ["pickapic_v1/0000", "pickapic_v1/0001", "hpdv2/0000", "hpdv2/0001"]
    assert suites.GENERAL.skipped_categories(tmp_path) == {}


# ---------------------------------------------------------------------------- core
def test_batch_size_does_not_change_images_or_scores(bundle, tmp_path):
    suite = dataclasses.replace(suites.TOY_COMPBENCH, sampler=dataclasses.replace(FAST, num_inference_steps=1))
    items = suite.prompts("test", max_prompts=4)
    prompts = [it.text for it in items for _ in range(2)]
    seeds = [sample_seed(suite.seed_base, it.prompt_id, k) for it in items for k in range(2)]
    a = generate_images(bundle, prompts, seeds, num_inference_steps=1, batch_size=1)
    b = generate_images(bundle, prompts, seeds, num_inference_steps=1, batch_size=7)
    assert torch.allclose(a, b, atol=1e-5)
    metrics = evaluation.resolve_metrics(suite, suites.TOY_FAMILIES, device="cpu", weights_dir=None)
    outs = [evaluation.evaluate_items(bundle, None, suite, items, images_per_prompt=2, batch_size=bs, metrics=metrics,
                                      image_dir=tmp_path / f"bs{bs}") for bs in (1, 7)]
    assert outs[0].per_sample == outs[1].per_sample and len(outs[0].per_sample) == 8
    names = sorted(p.relative_to(tmp_path / "bs1") for p in (tmp_path / "bs1").rglob("*.png"))
    assert names == sorted(p.relative_to(tmp_path / "bs7") for p in (tmp_path / "bs7").rglob("*.png"))
    for n in names:
        x, y = (np.asarray(Image.open(tmp_path / f"bs{bs}" / n), dtype=int) for bs in (1, 7))
        assert np.abs(x - y).max() <= 1
    row = outs[0].per_sample[1]
    assert row["image_idx"] == 1 and row["sample_seed"] == sample_seed(42, row["prompt_id"], 1)


def test_aggregate_hand_values():
    suite = suites.TOY_GENERAL
    items = [suites.PromptItem("p0", "x", "color", 0), suites.PromptItem("p1", "y", "color", 1),
             suites.PromptItem("p2", "z", "shape", 0)]
    scores = {("p0", 0): 1.0, ("p0", 1): 3.0, ("p1", 0): 4.0, ("p1", 1): 6.0, ("p2", 0): 0.0, ("p2", 1): 0.0}
    per_sample = [{"prompt_id": p, "category": next(it.category for it in items if it.prompt_id == p), "image_idx": k,
                   "metric": "toy-vqa", "score": s} for (p, k), s in scores.items()]
    per_sample.append({"prompt_id": "p0", "category": "color", "image_idx": 0, "metric": "toy-clip", "score": 0.5})
    rows = evaluation.aggregate(per_sample, suite, items, images_per_prompt=2, batch_size=3,
                                scorers={"toy-vqa": {"metric_version": "1", "checkpoint": "c", "sha256": "s"}})
    by = {(r["metric"], r["category"]): r for r in rows}
    assert set(by) == {("toy-vqa", "color"), ("toy-vqa", "shape"), ("toy-vqa", "all"), ("toy-clip", "color")}
    color = by[("toy-vqa", "color")]
    assert color["value"] == 3.5 and color["n"] == 4 and color["n_prompts"] == 2
    assert (color["ci_low"], color["ci_high"]) == stats.mean_ci([2.0, 5.0])[1:]  # bootstrap over prompt means
    assert by[("toy-vqa", "all")]["value"] == pytest.approx(7 / 3) and by[("toy-vqa", "all")]["n"] == 6
    assert color["scorer_checkpoint"] == "c" and color["suite_version"] == "1" and color["kind"] == "eval_metric"
    assert color["inputs_sha256"] == suite.inputs_sha256(items, 2) and color["sampler"] == "DDIMScheduler"


def test_compbench_unidet_categories_are_skipped_not_faked(bundle, tmp_path, monkeypatch):
    import lpo_bench.data.datasets as datasets

    monkeypatch.setattr(datasets, "load_prompt_file",
                        lambda cat, data_dir=None, allow_download=None: [f"a {cat} thing", f"two {cat} things."])
    monkeypatch.delenv(evaluation.T2I_DETECTOR_ENV, raising=False)
    suite = fast(suites.COMPBENCH)
    items = suite.prompts("val", max_prompts=8)
    assert len(items) == 8 and {it.index for it in items} == {0}
    metrics = evaluation.SuiteMetrics(inproc={"blip-vqa": fake_metric("blip-vqa"), "clipscore": fake_metric("clipscore")})
    for m in suites.UNIDET_METRICS.values():
        scorer, why = evaluation.external_scorer(m)
        assert scorer is None
        metrics.unavailable[m] = why
    out = evaluation.evaluate_items(bundle, None, suite, items[:8], images_per_prompt=2, batch_size=16,
                                    metrics=metrics, image_dir=tmp_path / "images")
    assert {r["category"] for r in out.per_sample} == {"color", "shape", "texture", "non_spatial"}
    assert {s["category"] for s in out.skipped} == set(suites.UNIDET_METRICS)
    assert all("UniDet" in s["reason"] for s in out.skipped)
    assert {r["category"] for r in out.rows} == {"color", "shape", "texture", "non_spatial", "all"}
    assert out.n_images == 16  # skipped categories are still generated and saved for offline scoring
    assert (tmp_path / "images" / "spatial" / "samples" / "a spatial thing_000001.png").exists()
    out2 = evaluation.evaluate_items(bundle, None, suite, items[:8], images_per_prompt=1, batch_size=16, metrics=metrics)
    assert out2.n_images == 4  # without an image dir, unscorable categories are not sampled


FAKE_DETECTOR = """
import json, pathlib, sys
images, out = pathlib.Path(sys.argv[1]), sys.argv[2]
entries = []
for p in sorted(images.glob("*.png")):
    prompt, qid = p.stem.rsplit("_", 1)
    words = prompt.split(" ")
    tokens = [{"text": w, "pos": "NOUN" if w in ("dog", "cat") else "X"} for w in words]
    dets = []
    if int(qid) % 2 == 0:  # even question ids: both objects, dog left of cat -> score 1
        dets = [{"label": "dog", "box": [0, 0, 10, 10], "score": 1.0}, {"label": "cat", "box": [300, 0, 310, 10], "score": 1.0}]
    entries.append({"image": p.name, "tokens": tokens, "detections": dets})
json.dump({"format": "lpo-bench-detections/v1", "detector": {"name": "fake"}, "images": entries}, open(out, "w"))
"""


def test_compbench_spatial_with_an_external_detector(bundle, tmp_path, monkeypatch):
    import sys

    import lpo_bench.data.datasets as datasets

    script = tmp_path / "fake_detector.py"
    script.write_text(FAKE_DETECTOR)
    monkeypatch.setenv(evaluation.T2I_DETECTOR_ENV, f"{sys.executable} {script} {{image_dir}} {{out}}")
    monkeypatch.setattr(datasets, "load_prompt_file",
                        lambda cat, data_dir=None, allow_download=None: ["a dog on the left of a cat", "a cat near a dog"])
    suite = fast(suites.COMPBENCH)
    items = [it for it in suite.prompts("val") if it.category == "spatial"]
    metrics = evaluation.resolve_metrics(suite, ["spatial"], device="cpu", weights_dir=None)
    assert list(metrics.external) == ["t2i-compbench/unidet-2d"]
    out = evaluation.evaluate_items(bundle, None, suite, items, images_per_prompt=3, batch_size=8, metrics=metrics)
    got = {(r["prompt_id"], r["image_idx"]): r["score"] for r in out.per_sample}
    # question id = index * 3 + k; even ids were given a correct detection (score 1), odd ones none (0)
    assert got == {(f"spatial/{i:04d}", k): float((i * 3 + k) % 2 == 0) for i in range(2) for k in range(3)}
    assert out.scorers["t2i-compbench/unidet-2d"]["detector"] == {"name": "fake"}
    assert [r["category"] for r in out.rows] == ["spatial"] and out.rows[0]["value"] == pytest.approx(0.5)


def test_image_file_names():
    assert evaluation.image_file_name("a red book and a yellow vase.", 12) == "a red book and a yellow vase._000012.png"
    assert evaluation.image_file_name("a/b_c", 3) == "a b c_000003.png"
    assert len(evaluation.image_file_name("x" * 500, 0)) == evaluation.MAX_NAME_CHARS + len("_000000.png")


# ---------------------------------------------------------------------------- runs
def toy_bundle():
    """A fresh tiny bundle standing in for base:toy (fresh per run, as LoRA loading edits the UNet)."""
    return tiny_bundle("sd15", resolution=32)


TOY_COMPBENCH_FAST = fast(suites.TOY_COMPBENCH)


def test_eval_run_toy_records(tmp_path):
    run = evaluation.eval_run("base:toy", TOY_COMPBENCH_FAST, max_prompts=6, images_per_prompt=2, batch_size=5,
                              out_root=tmp_path, bundle=toy_bundle(), log=lambda m: None)
    assert run.parent == tmp_path / "eval" and run.name.startswith("base-toy-toy-compbench-test-")
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "done" and info["sampler"]["num_inference_steps"] == 2 and info["n_images"] == 12
    assert info["model_spec"]["kind"] == "base" and info["inputs_sha256"]
    df = records.read_measurements(run / "measurements.parquet")
    assert len(df) == 7 and set(df["category"]) == set(suites.TOY_FAMILIES) | {"all"}
    assert (df["run_id"] == run.name).all() and (df["metric"] == "toy-compbench").all() and (df["n"][df["category"] != "all"] == 2).all()
    ps = pd.read_parquet(run / "per_sample.parquet")
    assert len(ps) == 12 and set(ps.columns) >= {"prompt_id", "prompt", "category", "image_idx", "sample_seed", "metric", "score"}
    assert len(list((run / "images").rglob("*.png"))) == 12 and (run / "samples_grid.png").exists()
    assert records.is_done(run)
    with pytest.raises(HarnessError, match="already exists and is finished"):
        evaluation.eval_run("base:toy", TOY_COMPBENCH_FAST, max_prompts=6, images_per_prompt=2, out_root=tmp_path)
    (run / "DONE").unlink()
    with pytest.raises(HarnessError, match="unfinished"):
        evaluation.eval_run("base:toy", TOY_COMPBENCH_FAST, max_prompts=6, images_per_prompt=2, out_root=tmp_path)
    again = evaluation.eval_run("base:toy", TOY_COMPBENCH_FAST, max_prompts=6, images_per_prompt=2, batch_size=12,
                                out_root=tmp_path, overwrite=True, bundle=toy_bundle(), log=lambda m: None)
    assert again == run
    assert pd.read_parquet(again / "per_sample.parquet")["score"].tolist() == ps["score"].tolist()


def test_eval_run_loads_a_lora(tmp_path):
    from lpo_bench.models.lora import add_lora, export_lora

    b = tiny_bundle("sd15", resolution=32)
    params = add_lora(b.unet, rank=2)
    with torch.no_grad():
        for p in params:
            p.add_(0.5 * torch.randn_like(p))
    export_lora(b.unet, tmp_path / "my-lora")
    with pytest.raises(HarnessError, match="--backbone"):
        evaluation.eval_run(str(tmp_path / "my-lora"), TOY_COMPBENCH_FAST, out_root=tmp_path)
    kw = dict(max_prompts=2, images_per_prompt=1, out_root=tmp_path, log=lambda m: None)
    lora_run = evaluation.eval_run(str(tmp_path / "my-lora"), TOY_COMPBENCH_FAST, backbone="toy",
                                   bundle=toy_bundle(), **kw)
    base_run = evaluation.eval_run("base:toy", TOY_COMPBENCH_FAST, bundle=toy_bundle(), **kw)
    assert lora_run.name.startswith("lora-my-lora-")
    assert json.loads((lora_run / "run.json").read_text())["model_spec"]["lora_sha256"]
    imgs = [sorted((r / "images").rglob("*.png")) for r in (lora_run, base_run)]
    assert [p.name for p in imgs[0]] == [p.name for p in imgs[1]]
    assert any(not np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))) for a, b in zip(*imgs, strict=True))


def test_resolve_model_errors(tmp_path):
    assert evaluation.resolve_model("base:toy").tag == "base-toy"
    with pytest.raises(HarnessError, match="unknown backbone"):
        evaluation.resolve_model("base:nope")
    with pytest.raises(HarnessError, match="neither"):
        evaluation.resolve_model(str(tmp_path / "missing"))
    run = tmp_path / "runs" / "train" / "r1"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"kind": "train", "run_id": "r1", "backbone": "toy"}))
    with pytest.raises(HarnessError, match="no export"):
        evaluation.resolve_model(str(run))
