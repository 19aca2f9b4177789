"""analysis.compare on fixture run records: hand-checked costs and speed-ups (relative to the proposed method),
time-to-target with misses, hardware refusal, published numbers only where backbone and suite match, a
self-contained HTML report."""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from lpo_bench import records
from lpo_bench.analysis import stats
from lpo_bench.analysis.compare import compare
from lpo_bench.analysis.render import fmt_signed_ci
from lpo_bench.analysis.time_to_target import parse_target
from lpo_bench.errors import HarnessError
from lpo_bench.published import load_published

H100 = "NVIDIA H100 80GB HBM3"
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
TOY = "lpo-bench/toy"


def _prov(device: str = H100) -> dict:
    return {"git_commit": "c0ffee", "git_dirty": False, "lpo_bench_version": "0.1.0", "python": "3.11",
            "torch": "t", "diffusers": "d", "transformers": "tr", "device_name": device, "device_count": 1,
            "command": "lpo-bench train"}


def make_train(root, method, seed, phases_s, curve=(), *, role="baseline", reward_stage=None, given_rm=None,
               device=H100, backbone="toy", backbone_id=TOY, suite="toy-general", metric="toy-oracle"):
    """A finished train run: ledger.jsonl with ``phases_s`` seconds (plus uncounted SETUP), train_cost rows and
    eval_metric rows along ``curve`` [(gpu_h, value)]. ``reward_stage`` names the method's step reward model
    (None: it has none), trained in the run unless ``given_rm`` (a reward model's path) was passed."""
    run_id = f"{method}-{backbone}-fixture-s{seed}"
    d = root / "train" / run_id
    d.mkdir(parents=True)
    gpu = {p: s / 3600 for p, s in phases_s.items()}
    counted = sum(gpu.get(p, 0.0) for p in ("PREP", "SAMPLE", "SCORE", "UPDATE"))
    rm = gpu.get("RM_TRAIN", 0.0)
    prov = _prov(device)
    summary = {"seconds_by_phase": {"SETUP": 5.0, **phases_s}, "gpu_h_counted": counted, "gpu_h_rm": rm,
               "gpu_h_total_incl_rm": counted + rm, "devices": 1, "lost_s": 0.0}
    inputs = {"pairs": None, "pairs_sha256": None, "reward_model": None if given_rm is None else str(given_rm),
              "reward_model_sha256": None, "reward_stage_overrides": {}}
    stage = None if reward_stage is None else {
        "name": reward_stage, "source": "trained" if given_rm is None else "given",
        "model_dir": str(d / reward_stage if given_rm is None else given_rm), "config": {}}
    records.atomic_write_json(d / "run.json", {
        "run_id": run_id, "kind": "train", "method": method, "method_role": role, "method_version": "1",
        "backbone": backbone, "seed": seed, "inputs": inputs, "reward_stage": stage,
        "backbone_provenance": {"backbone_id": backbone_id}, "provenance": prov, "status": "done",
        "ledger": summary})
    with open(d / "ledger.jsonl", "w") as fh:
        fh.write(json.dumps({"type": "phase", "phase": "SETUP", "seconds": {"SETUP": 5.0}}) + "\n")
        fh.write(json.dumps({"type": "step", "step": 0, "seconds": phases_s}) + "\n")
    base = {"run_id": run_id, "method": method, "backbone_id": backbone_id, "seed": seed, **prov}
    rows = [{"kind": "train_cost", "metric": m, "value": v} for m, v in
            (("gpu_h_counted", counted), ("gpu_h_rm", rm), ("gpu_h_total_incl_rm", counted + rm), ("updates", 10.0))]
    rows += [{"kind": "train_cost", "metric": f"seconds_{p}", "value": s} for p, s in phases_s.items()]
    rows += [{"kind": "eval_metric", "suite": suite, "metric": metric, "category": "all", "value": v, "train_step": i,
              "gpu_h_at_measurement": g, "gpu_h_rm": rm, "higher_is_better": True} for i, (g, v) in enumerate(curve)]
    records.write_measurements(d, rows, base)
    records.mark_done(d)
    return d


def make_eval(root, tag, method, seed, scores, *, backbone="toy", backbone_id=TOY, suite="toy-general",
              metric="toy-oracle", images=False, device=H100):
    """A finished eval run; ``scores[(prompt_idx, image_idx)]`` -> score, categories alternate color/shape."""
    from PIL import Image

    from lpo_bench.evaluation import image_file_name

    run_id = f"{tag}-{suite}-test-fixture"
    d = root / "eval" / run_id
    d.mkdir(parents=True)
    spec = {"kind": "base", "backbone": backbone} if method == "base" else {
        "kind": "train-run", "backbone": backbone, "train_run": {"run_id": f"{method}-s{seed}", "method": method,
                                                                 "seed": seed}}
    records.atomic_write_json(d / "run.json", {
        "run_id": run_id, "kind": "eval", "model": tag, "model_spec": spec, "backbone": backbone,
        "backbone_provenance": {"backbone_id": backbone_id}, "suite": {"name": suite}, "split": "test",
        "n_prompts": 10, "images_per_prompt": 2, "inputs_sha256": "feedbeef" * 8, "provenance": _prov(device),
        "status": "done"})
    ps = []
    for (i, k), s in sorted(scores.items()):
        cat = ("color", "shape")[i % 2]
        prompt = f"a {cat} thing number {i}"
        ps.append({"prompt_id": f"p{i}", "prompt": prompt, "category": cat, "image_idx": k, "sample_seed": 100 * i + k,
                   "metric": metric, "score": s})
        if images:
            p = d / "images" / cat / "samples" / image_file_name(prompt, (i // 2) * 2 + k)
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8, 3), int(255 * min(max(s, 0), 1)), dtype=np.uint8)).save(p)
    records.write_per_sample(d, ps)
    df = pd.DataFrame(ps)
    rows = []
    for cat, g in [*df.groupby("category"), ("all", df)]:
        v, lo, hi = stats.mean_ci(g.groupby("prompt_id")["score"].mean().to_numpy())
        rows.append({"kind": "eval_metric", "suite": suite, "metric": metric, "category": cat, "value": v,
                     "ci_low": lo, "ci_high": hi, "n": len(g), "n_prompts": g["prompt_id"].nunique(),
                     "images_per_prompt": 2, "inputs_sha256": "feedbeef" * 8, "higher_is_better": True})
    records.write_measurements(d, rows, {"run_id": run_id, "method": method, "backbone_id": backbone_id, "seed": seed,
                                         **_prov(device)})
    records.mark_done(d)
    return d


def make_step_accuracy(root):
    d = root / "step_accuracy" / "sa-toy"
    d.mkdir(parents=True)
    records.atomic_write_json(d / "run.json", {"run_id": "sa-toy", "kind": "step_accuracy", "backbone": "toy",
                                               "provenance": _prov(), "status": "done"})
    rows = [{"kind": "step_reward_acc", "metric": m, "timestep": t, "input_mode": mode, "value": v, "ci_low": v - 0.05,
             "ci_high": v + 0.05, "n": 256}
            for m, mode, vals in (("lrm", "noisy_latent", (0.8, 0.7, 0.6)),
                                  ("toy-oracle", "x0_pred_decoded", (0.9, 0.6, 0.5)))
            for t, v in zip((1, 501, 951), vals, strict=True)]
    records.write_measurements(d, rows, {"run_id": "sa-toy", **_prov()})
    records.mark_done(d)


# LPO seeds: counted 1.8 / 2.7 / 0.9 GPU-h, RM 1.0; SPO: counted 3.6, RM 1.8; DPO: counted 9.0, no RM.
LPO_PHASES = [{"PREP": 360.0 * f, "SAMPLE": 3600.0 * f, "SCORE": 720.0 * f, "UPDATE": 1800.0 * f, "RM_TRAIN": 3600.0}
              for f in (1.0, 1.5, 0.5)]
SPO_PHASES = {"SAMPLE": 7200.0, "SCORE": 3600.0, "UPDATE": 2160.0, "RM_TRAIN": 6480.0}
DPO_PHASES = {"UPDATE": 32400.0}
LPO = {"role": "proposed", "reward_stage": "lrm"}  # the proposed method: speed-ups are relative to it
SPO = {"reward_stage": "spm"}
# time to target 0.6: LPO 1.0, 0.5, miss (median 1.0); DPO 3.0, 2.0, 4.0 (median 3.0); SPO 2.0, miss, miss.
LPO_CURVES = [[(0.5, 0.4), (1.0, 0.62), (1.5, 0.7)], [(0.5, 0.61), (1.0, 0.65), (1.5, 0.66)],
              [(0.5, 0.3), (1.0, 0.5), (1.5, 0.55)]]
DPO_CURVES = [[(1, 0.3), (2, 0.5), (3, 0.6)], [(1, 0.4), (2, 0.65), (3, 0.7)], [(1, 0.2), (2, 0.3), (4, 0.61)]]
SPO_CURVES = [[(1, 0.5), (2, 0.6), (3, 0.62)], [(1, 0.4), (2, 0.45), (3, 0.5)], [(1, 0.3), (2, 0.35), (3, 0.4)]]


@pytest.fixture(scope="module")
def toy_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for s in range(3):
        make_train(root, "lpo", s, LPO_PHASES[s], LPO_CURVES[s], **LPO)
        make_train(root, "diffusion-dpo", s, DPO_PHASES, DPO_CURVES[s])
        make_train(root, "spo", s, SPO_PHASES, SPO_CURVES[s], **SPO)
    rng = np.random.default_rng(0)
    base = {(i, k): float(rng.uniform(0.2, 0.6)) for i in range(10) for k in range(2)}
    make_eval(root, "base-toy", "base", None, base, images=True)
    make_eval(root, "lpo-s0", "lpo", 0, {key: v + 0.1 + float(rng.normal(0, 0.01)) for key, v in base.items()},
              images=True)
    make_step_accuracy(root)
    (root / "train" / "unfinished").mkdir()
    records.atomic_write_json(root / "train" / "unfinished" / "run.json", {"run_id": "unfinished", "kind": "train"})
    out = tmp_path_factory.mktemp("report")
    md = compare([root], out, target="toy-oracle@toy-general>=0.6")
    return root, out, md


def test_cost_table_and_speedups_match_hand_computation(toy_report):
    _, out, _ = toy_report
    cost = pd.read_csv(out / "cost.csv").set_index("method")
    assert cost.loc["lpo", "gpu_h_counted_median"] == pytest.approx(1.8)
    assert cost.loc["lpo", "gpu_h_counted_min"] == pytest.approx(0.9)
    assert cost.loc["lpo", "gpu_h_counted_max"] == pytest.approx(2.7)
    assert cost.loc["lpo", "gpu_h_rm_median"] == pytest.approx(1.0)
    assert cost.loc["lpo", "gpu_h_total_incl_rm_median"] == pytest.approx(2.8)
    assert cost.loc["lpo", "gpu_h_SAMPLE_median"] == pytest.approx(1.0)
    assert cost.loc["spo", "speedup_excl_rm"] == pytest.approx(3.6 / 1.8)
    assert cost.loc["spo", "speedup_incl_rm"] == pytest.approx(5.4 / 2.8)
    assert cost.loc["diffusion-dpo", "speedup_excl_rm"] == pytest.approx(9.0 / 1.8)
    assert cost.loc["diffusion-dpo", "speedup_incl_rm"] == pytest.approx(9.0 / 2.8)
    assert cost.loc["lpo", "speedup_incl_rm"] == pytest.approx(1.0)
    by_run = pd.read_csv(out / "cost_by_run.csv")
    assert len(by_run) == 9 and set(by_run["rm_source"]) == {"this run (RM_TRAIN)", "none"}
    rep = json.loads((out / "report.json").read_text())
    assert rep["cost"]["toy"]["spo"]["speedup_excl_rm"] == pytest.approx(2.0)


def test_time_to_target_with_misses_through_the_report(toy_report):
    _, out, md = toy_report
    ttt = pd.read_csv(out / "time_to_target.csv").set_index("method")
    assert ttt.loc["lpo", "median_gpu_h_to_target"] == pytest.approx(1.0)
    assert ttt.loc["lpo", "seeds_reached"] == 2
    assert ttt.loc["diffusion-dpo", "median_gpu_h_to_target"] == pytest.approx(3.0)
    assert math.isinf(ttt.loc["spo", "median_gpu_h_to_target"])
    assert ttt.loc["diffusion-dpo", "speedup_excl_rm"] == pytest.approx(3.0)
    assert math.isinf(ttt.loc["spo", "speedup_excl_rm"])  # only LPO reached it
    # incl. RM: LPO 2.0, 1.5, miss -> 2.0 (RM 1 GPU-h); DPO has no RM -> 3.0
    assert ttt.loc["lpo", "median_gpu_h_to_target_incl_rm"] == pytest.approx(2.0)
    assert ttt.loc["diffusion-dpo", "speedup_incl_rm"] == pytest.approx(1.5)
    text = md.read_text()
    assert "not reached" in text and "1/3" in text
    assert "lpo-bench compare" in text and "--target 'toy-oracle@toy-general>=0.6'" in text
    assert "no base-model match" not in text
    assert "skipped unfinished run" in text and "TOY WORLD" in text
    rep = json.loads((out / "report.json").read_text())
    spo = next(r for r in rep["time_to_target"] if r["method"] == "spo")
    assert spo["median_gpu_h_to_target"] == "inf"


def test_default_target_is_the_weakest_methods_median_best(tmp_path):
    for s in range(3):
        make_train(tmp_path, "lpo", s, LPO_PHASES[s], LPO_CURVES[s], **LPO)
        make_train(tmp_path, "spo", s, SPO_PHASES, SPO_CURVES[s], **SPO)
    out = tmp_path / "rep"
    compare([tmp_path / "train"], out)
    rep = json.loads((out / "report.json").read_text())
    # medians of per-seed best: LPO 0.66, SPO 0.5 -> target 0.5 (SPO, the weakest)
    assert rep["targets"][0]["target"] == "toy-oracle@toy-general>=0.5"
    ttt = pd.read_csv(out / "time_to_target.csv").set_index("method")
    assert ttt.loc["spo", "median_gpu_h_to_target"] == pytest.approx(3.0)  # 1.0, 3.0 and a miss (best 0.4)
    assert ttt.loc["lpo", "median_gpu_h_to_target"] == pytest.approx(1.0)  # 1.0, 0.5, 1.0


def test_quality_tables_and_paired_difference_vs_base(toy_report):
    _, out, md = toy_report
    q = pd.read_csv(out / "quality_toy-general.csv")
    assert set(q["method"]) == {"base", "lpo"} and set(q["category"]) == {"color", "shape", "all"}
    d = pd.read_csv(out / "quality_vs_base_toy-general.csv").set_index("category")
    assert d.loc["all", "diff_vs_base"] == pytest.approx(0.1, abs=0.01)
    assert d.loc["all", "ci_low"] > 0.08 and d.loc["all", "n_prompts"] == 10
    assert d.loc["all", "win_rate_images"] == 1.0
    assert (out / "grid_toy-general.png").exists() and (out / "fig_step_accuracy.png").exists()
    sa = pd.read_csv(out / "step_accuracy.csv")
    assert set(sa["reward_model"]) == {"lrm", "toy-oracle"} and len(sa) == 6


def test_html_is_self_contained_and_csvs_are_written(toy_report):
    _, out, _ = toy_report
    page = (out / "report.html").read_text()
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", page)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs)
    assert "<table" in page and "Cost per method" in page and "Time to target: median over seeds" in page
    assert "Trained minus base model (paired)" in page
    for name in ("cost", "cost_by_run", "time_to_target", "time_to_target_by_run", "quality_toy-general",
                 "quality_vs_base_toy-general", "eval_protocol", "step_accuracy", "runs"):
        assert (out / f"{name}.csv").exists(), name
    assert not list(out.glob("published_*.csv"))  # toy runs: no published numbers
    assert "published (paper), not measured here" not in page


def test_mixed_hardware_refused_then_labelled(tmp_path):
    make_train(tmp_path, "lpo", 0, LPO_PHASES[0], LPO_CURVES[0], **LPO)
    make_train(tmp_path, "spo", 0, SPO_PHASES, SPO_CURVES[0], device="NVIDIA A100-SXM4-80GB", **SPO)
    with pytest.raises(HarnessError, match="different hardware"):
        compare([tmp_path / "train"], tmp_path / "rep")
    md = compare([tmp_path / "train"], tmp_path / "rep", allow_mixed_hardware=True)
    text = md.read_text()
    assert "MIXED HARDWARE" in text and "[MIXED HARDWARE] Cost per method" in text
    assert "MIXED HARDWARE" in (tmp_path / "rep" / "report.html").read_text()
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["mixed_hardware"] is True


def test_published_numbers_only_beside_matching_backbone_and_suite(tmp_path):
    scores = {(i, 0): 20.0 + 0.1 * i for i in range(10)}
    make_eval(tmp_path, "base-sd15", "base", None, scores, backbone="sd15", backbone_id=SD15, suite="general",
              metric="pickscore")
    make_eval(tmp_path, "lpo-sd15", "lpo", 0, {k: v + 0.5 for k, v in scores.items()}, backbone="sd15",
              backbone_id=SD15, suite="general", metric="pickscore")
    make_train(tmp_path, "lpo", 0, LPO_PHASES[0], backbone="sd15", backbone_id=SD15, **LPO)
    out = tmp_path / "rep"
    compare([tmp_path], out)
    page = (out / "report.html").read_text()
    assert (out / "published_tab2_sd15.csv").exists() and (out / "published_tab6_sd15.csv").exists()
    assert not (out / "published_tab3_sd15.csv").exists()  # compbench was not evaluated
    pub = pd.read_csv(out / "published_tab2_sd15.csv")
    assert set(pub["backbone"]) == {"sd15"} and not list(out.glob("published_*sdxl*.csv"))
    # SDXL appears only as the projected-FLOP architecture, never as published numbers
    assert "SDXL" not in page.replace("projected SDXL", "").replace("SD1.5 and SDXL architectures", "")
    assert pub.set_index("published row").loc["LPO", "pickscore"] == pytest.approx(21.69)
    assert "published (paper), not measured here: Tab. 2" in page
    # the measured table holds only measured numbers
    measured = pd.read_csv(out / "quality_general.csv")
    assert not np.isclose(measured["value"], 21.69).any()
    # a tiny random-weight sd15 has another backbone_id: no published numbers
    tiny = tmp_path / "tiny"
    make_eval(tiny, "base-tiny", "base", None, scores, backbone="sd15", backbone_id="tiny-sd15", suite="general",
              metric="pickscore")
    compare([tiny], tmp_path / "rep_tiny")
    assert not list((tmp_path / "rep_tiny").glob("published_*.csv"))


def test_published_data_is_consistent():
    pub = load_published()
    tabs = {t.id: t for t in pub.tables}
    assert {"tab2", "tab3", "tab5", "tab6"} <= set(tabs)
    for r in tabs["tab6"].rows:  # RM + PO = total, as printed
        assert r.values[0] + r.values[1] == pytest.approx(r.values[2])
    spm, lrm = zip(*(r.values for r in tabs["tab5"].rows), strict=True)
    assert sum(spm[:-1]) == pytest.approx(spm[-1]) and sum(lrm[:-1]) == pytest.approx(lrm[-1])
    m = pub.matching("quality", SD15, "general")
    assert [t.id for t in m] == ["tab2"] and all(r.backbone == "sd15" for r in m[0].rows)
    assert pub.matching("quality", SD15, "toy-general") == [] and pub.matching("cost", TOY) == []
    assert pub.matching("step_cost", SD15) == []  # Tab. 5 states no backbone


def test_target_parsing_and_bad_inputs(tmp_path):
    assert parse_target("toy-oracle@toy-general>=0.62") == ("toy-oracle", "toy-general", None, ">=", 0.62)
    assert parse_target("hpsv2.1@general:pickapic_v1 <= 1e1")[2:] == ("pickapic_v1", "<=", 10.0)
    with pytest.raises(HarnessError, match="must look like"):
        compare([tmp_path], tmp_path / "r", target="toy-oracle>0.6")
    with pytest.raises(HarnessError, match="no finished runs"):
        compare([tmp_path], tmp_path / "r")
    with pytest.raises(HarnessError, match="does not exist"):
        compare([tmp_path / "nope"], tmp_path / "r")
    make_train(tmp_path, "lpo", 0, LPO_PHASES[0], LPO_CURVES[0], **LPO)
    with pytest.raises(HarnessError, match="recorded: toy-oracle@toy-general"):
        compare([tmp_path], tmp_path / "r", target="pickscore@general>=20")


def test_reward_model_trained_in_a_separate_run_is_charged_to_the_total(tmp_path):
    rd = tmp_path / "reward" / "lrm-toy-fixture-s0"
    rd.mkdir(parents=True)
    records.atomic_write_json(rd / "run.json", {"run_id": "lrm-toy-fixture-s0", "kind": "reward", "reward_model": "lrm",
                                                "model_dir": str(rd / "model"), "backbone": "toy",
                                                "provenance": _prov(), "ledger": {"gpu_h_rm": 2.0}})
    rows = [{"kind": "train_cost", "metric": "gpu_h_rm", "value": 2.0},
            {"kind": "rm_val_acc", "metric": "lrm_pair_acc", "timestep": 1, "input_mode": "noisy_latent",
             "value": 0.7, "ci_low": 0.6, "ci_high": 0.8, "n": 64}]
    records.write_measurements(rd, rows, {"run_id": "lrm-toy-fixture-s0", **_prov()})
    records.mark_done(rd)
    counted_only = {p: s for p, s in LPO_PHASES[0].items() if p != "RM_TRAIN"}
    make_train(tmp_path, "lpo", 0, counted_only, given_rm=rd / "model", **LPO)
    make_train(tmp_path, "lpo", 1, counted_only, given_rm=tmp_path / "elsewhere", **LPO)
    out = tmp_path / "rep"
    compare([tmp_path / "train"], out)
    by_run = pd.read_csv(out / "cost_by_run.csv").set_index("seed")
    assert by_run.loc[0, "gpu_h_rm"] == pytest.approx(2.0) and by_run.loc[0, "rm_source"].startswith("reward run")
    assert by_run.loc[0, "gpu_h_total_incl_rm"] == pytest.approx(3.8)
    assert math.isnan(by_run.loc[1, "gpu_h_rm"])
    cost = pd.read_csv(out / "cost.csv")
    assert math.isnan(cost.loc[0, "gpu_h_total_incl_rm_median"])  # one seed's RM cost is unknown
    assert "training cost is unknown" in (out / "report.md").read_text()


def test_speedups_are_relative_to_the_proposed_method_whatever_its_name_or_order(tmp_path):
    # beta is given first; alpha (role proposed) is still the reference. Counted GPU-h: alpha 1.0, beta 2.0;
    # time to 0.6: alpha 0.5, beta 1.0.
    alpha = make_train(tmp_path, "alpha", 0, {"UPDATE": 3600.0}, [(0.5, 0.7)], role="proposed")
    beta = make_train(tmp_path, "beta", 0, {"UPDATE": 7200.0}, [(0.5, 0.5), (1.0, 0.7)])
    out = tmp_path / "rep"
    compare([beta, alpha], out, target="toy-oracle@toy-general>=0.6")
    cost = pd.read_csv(out / "cost.csv").set_index("method")
    assert cost.loc["beta", "speedup_excl_rm"] == pytest.approx(2.0)
    assert cost.loc["alpha", "speedup_excl_rm"] == pytest.approx(1.0)
    assert set(cost["reference_method"]) == {"alpha"}
    ttt = pd.read_csv(out / "time_to_target.csv").set_index("method")
    assert ttt.loc["beta", "speedup_excl_rm"] == pytest.approx(2.0)
    rep = json.loads((out / "report.json").read_text())
    assert rep["reference_method"] == "alpha" and not any("proposed" in n for n in rep["notes"])
    assert "speed-up of alpha (excl. RM)" in (out / "report.md").read_text()


def test_without_a_proposed_method_the_first_given_is_the_reference_with_a_note(tmp_path):
    alpha = make_train(tmp_path, "alpha", 0, {"UPDATE": 3600.0})
    beta = make_train(tmp_path, "beta", 0, {"UPDATE": 7200.0})
    out = tmp_path / "rep"
    compare([beta, alpha], out)
    cost = pd.read_csv(out / "cost.csv").set_index("method")
    assert cost.loc["alpha", "speedup_excl_rm"] == pytest.approx(0.5)
    rep = json.loads((out / "report.json").read_text())
    assert rep["reference_method"] == "beta"
    assert any("no train run is marked method_role 'proposed'" in n for n in rep["notes"])


# ---------------------------------------------------------------------------- the headline
def _answers(out) -> dict[str, str]:
    rep = json.loads((out / "report.json").read_text())
    return {a["question"]: a["answer"] for a in rep["headline"]["answers"]}


def test_report_opens_with_the_headline_table_and_answers(toy_report):
    _, out, md = toy_report
    lines = md.read_text().splitlines()

    def at(text: str) -> int:
        return next(i for i, line in enumerate(lines) if text in line)

    order = [at("## Headline"), at("| method |"), at("**Which method improved quality most?**"),
             at("**At what cost?**"), at("**How fast to the target?**"), at("## Provenance"),
             at("<details><summary>Command"), at("lpo-bench compare /"), at("</details>"), at("## How to read this")]
    assert order == sorted(order) and order[-1] < 45, order
    assert at("| lpo (reference) |") < at("| diffusion-dpo |")  # the only evaluated method first
    page = (out / "report.html").read_text()
    pos = [page.index('<section class="headline">'), page.index("<table"), page.index("At what cost?"),
           page.index("<details>"), page.index("lpo-bench compare /"), page.index("</details>"),
           page.index("How to read this")]
    assert pos == sorted(pos)
    head = pd.read_csv(out / "headline.csv").set_index("method")
    assert head.loc["spo", "speedup_incl_rm"] == pytest.approx(5.4 / 2.8)
    assert head.loc["lpo", "gpu_h_excl_rm_median"] == pytest.approx(1.8) and bool(head.loc["lpo", "reference"])


def test_headline_answers_carry_the_hand_computed_numbers(toy_report):
    _, out, md = toy_report
    ans = _answers(out)
    # quality: the same paired difference as the section's table (one evaluated seed)
    d = pd.read_csv(out / "quality_vs_base_toy-general.csv").set_index("category").loc["all"]
    assert ans["Which method improved quality most?"].startswith(
        f"lpo: {fmt_signed_ci(d['diff_vs_base'], d['ci_low'], d['ci_high'])} toy-oracle vs base on toy-general "
        f"(paired 95% CI over 10 prompts, excludes 0).")
    assert "only method evaluated" in ans["Which method improved quality most?"]
    assert "1 evaluated seed per method" in ans["Which method improved quality most?"]
    # cost (see LPO_PHASES): medians 1.8 / 2.8, 3.6 / 5.4, 9 / 9; speed-ups 3.6/1.8, 5.4/2.8, 9/1.8, 9/2.8
    cost = ans["At what cost?"]
    assert "lpo 1.8 / 2.8, spo 3.6 / 5.4, diffusion-dpo 9 / 9." in cost
    assert "spo 2× / 1.93×, diffusion-dpo 5× / 3.21×." in cost
    assert "3 training seeds per method" in cost and "(lpo 0.9–2.7, spo 3.6–3.6) do not overlap" in cost
    # time to 0.6 (see LPO_CURVES): medians 1.0 / 2.0 (RM 1 GPU-h), 3 / 3, a majority of misses for spo
    ttt = ans["How fast to the target?"]
    assert ("lpo 1 / 2 (2/3 seeds reached), diffusion-dpo 3 / 3 (3/3 seeds reached), spo not reached / not "
            "reached (1/3 seeds reached)") in ttt
    assert "diffusion-dpo 3× / 1.5×" in ttt and "(given)" in ttt
    assert all(a in md.read_text() for a in ans.values())


def _two_methods(root, offsets):
    """Base plus two evaluated seeds of each method on 10 prompts x 2 images: image score = base + the
    method's per-prompt offset ± 0.01 (seed 0 +, seed 1 -), so the mean over seeds is the offset."""
    rng = np.random.default_rng(1)
    base = {(i, k): float(rng.uniform(0.2, 0.6)) for i in range(10) for k in range(2)}
    make_eval(root, "base-toy", "base", None, base)
    pooled = {}
    for method, off in offsets.items():
        per_seed = []
        for s, shift in enumerate((0.01, -0.01)):
            scores = {(i, k): v + off[i] + shift for (i, k), v in base.items()}
            make_eval(root, f"{method}-s{s}", method, s, scores)
            per_seed.append(np.array([(scores[i, 0] + scores[i, 1]) / 2 - (base[i, 0] + base[i, 1]) / 2
                                      for i in range(10)]))
        pooled[method] = (per_seed[0] + per_seed[1]) / 2  # the per-prompt change, mean over seeds
    out = root / "rep"
    compare([root / "eval"], out)
    return out, pooled


def test_non_overlapping_cis_give_a_definite_answer(tmp_path):
    u, w = np.random.default_rng(2).normal(0, 0.02, size=(2, 10))
    out, pooled = _two_methods(tmp_path, {"alpha": 0.3 + u, "beta": 0.05 + w})
    a, b = stats.mean_ci(pooled["alpha"]), stats.mean_ci(pooled["beta"])
    assert a[0] == pytest.approx(0.3 + u.mean()) and b[0] == pytest.approx(0.05 + w.mean())
    ans = _answers(out)
    best = ans["Which method improved quality most?"]
    assert best.startswith(f"alpha: {fmt_signed_ci(*a)} toy-oracle vs base on toy-general (paired 95% CI over 10 "
                           f"prompts of the mean over 2 seeds, excludes 0).")
    assert f"The runner-up's CI does not overlap alpha's (beta: {fmt_signed_ci(*b)})." in best
    gap = ans["Is the difference between the best two methods resolved?"]
    diff = stats.paired_diff_ci(pooled["alpha"], pooled["beta"])
    assert diff[0] == pytest.approx(0.25 + u.mean() - w.mean())
    assert gap.startswith(f"Yes on these prompts: alpha − beta = {fmt_signed_ci(*diff)} toy-oracle on toy-general "
                          f"(paired 95% CI over the same 10 prompts excludes 0), so alpha is ahead.")
    assert "do not overlap" in gap and "could reverse" not in gap
    head = pd.read_csv(out / "headline.csv").set_index("method")
    assert head.loc["alpha", "toy-oracle on toy-general: diff_vs_base"] == pytest.approx(0.3 + u.mean())
    assert head.loc["alpha", "toy-oracle on toy-general: n_eval_seeds"] == 2
    assert ans["At what cost?"].startswith("Not measured")


def test_overlapping_cis_give_a_hedged_answer(tmp_path):
    u = np.random.default_rng(3).normal(0, 0.05, size=10)
    out, pooled = _two_methods(tmp_path, {"alpha": 0.1 + u, "beta": 0.098 + u[::-1]})
    a, b = stats.mean_ci(pooled["alpha"]), stats.mean_ci(pooled["beta"])
    assert stats.overlap(a[1], a[2], b[1], b[2])
    ans = _answers(out)
    best = ans["Which method improved quality most?"]
    assert best.startswith(f"alpha: {fmt_signed_ci(*a)} toy-oracle")
    assert (f"The runner-up's CI overlaps alpha's (beta: {fmt_signed_ci(*b)}), so these intervals alone do not "
            f"rank the two") in best
    gap = ans["Is the difference between the best two methods resolved?"]
    diff = stats.paired_diff_ci(pooled["alpha"], pooled["beta"])
    assert diff[0] == pytest.approx(0.002, abs=1e-12)
    assert gap == (f"No: alpha − beta = {fmt_signed_ci(*diff)} toy-oracle on toy-general (paired 95% CI over the "
                   f"same 10 prompts includes 0); these runs do not separate them (2 evaluated seeds per method).")


def test_interval_helpers():
    assert stats.excludes(0.01, 0.2) and stats.excludes(-0.3, -0.1) and not stats.excludes(-0.1, 0.2)
    assert not stats.excludes(math.nan, math.nan)
    assert stats.overlap(0, 1, 1, 2) and not stats.overlap(0, 1, 1.5, 2) and stats.overlap(0, 1, math.nan, 2)


def test_pair_scoring_behind_the_reward_model_is_charged_to_it_and_shown(tmp_path):
    sd = tmp_path / "pair_scores" / "scores-train-fixture"
    sd.mkdir(parents=True)
    records.atomic_write_json(sd / "run.json", {"run_id": "scores-train-fixture", "kind": "pair_scores",
                                                "gpu_h_pair_scores": 0.5, "provenance": _prov()})
    records.mark_done(sd)
    rd = tmp_path / "reward" / "lrm-toy-fixture-s0"
    rd.mkdir(parents=True)
    records.atomic_write_json(rd / "run.json", {"run_id": "lrm-toy-fixture-s0", "kind": "reward", "reward_model": "lrm",
                                                "model_dir": str(rd / "model"), "backbone": "toy",
                                                "inputs": {"pair_scores": str(sd)},
                                                "provenance": _prov(), "ledger": {"gpu_h_rm": 2.0}})
    records.write_measurements(rd, [{"kind": "train_cost", "metric": "gpu_h_rm", "value": 2.0}],
                               {"run_id": "lrm-toy-fixture-s0", **_prov()})
    records.mark_done(rd)
    counted_only = {p: s for p, s in LPO_PHASES[0].items() if p != "RM_TRAIN"}
    make_train(tmp_path, "lpo", 0, counted_only, given_rm=rd / "model", **LPO)
    rd_missing = tmp_path / "reward" / "lrm-toy-fixture-s1"
    shutil.copytree(rd, rd_missing)
    info = records.read_run(rd_missing)
    records.atomic_write_json(rd_missing / "run.json", {**info, "inputs": {"pair_scores": str(tmp_path / "gone")}})
    make_train(tmp_path, "lpo", 1, counted_only, given_rm=rd_missing / "model", **LPO)
    out = tmp_path / "rep"
    compare([tmp_path / "train"], out)
    by_run = pd.read_csv(out / "cost_by_run.csv").set_index("seed")
    assert by_run.loc[0, "gpu_h_rm"] == pytest.approx(2.5) and by_run.loc[0, "gpu_h_rm_pair_scoring"] == 0.5
    assert by_run.loc[0, "rm_source"].endswith("+ pair scoring")
    assert by_run.loc[0, "gpu_h_total_incl_rm"] == pytest.approx(4.3)
    assert math.isnan(by_run.loc[1, "gpu_h_rm"])
    text = (out / "report.md").read_text()
    assert "of which pair scoring" in text and "cost of scoring the pairs is unknown" in text
