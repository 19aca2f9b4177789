"""Cost in FLOPs: per-call FLOPs measured with torch's FLOP counter, the ledger's counts kept per phase, pricing,
unpriced counters, the projected SD1.5/SDXL tables, and compare's FLOP columns and speed-ups (hand-computed), then
one quick toy-world LPO and Diffusion-DPO run end to end."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from helpers import PROMPTS
from test_reporting import make_train

from lpo_bench import registry
from lpo_bench.harness import flop_probes
from lpo_bench.harness.flop_probes import fwd_bwd, measure, run_record
from lpo_bench.harness.flops import (
    FlopRecord,
    FlopTable,
    cost_rows,
    price,
    read_record,
    summary,
    write_record,
)
from lpo_bench.harness.spec import FlopProbe
from lpo_bench.ledger import NO_PHASE, UNKNOWN_PHASE, Ledger, Phase


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 1.0
        return self.t


# ---------------------------------------------------------------------------- measuring
def test_linear_probes_count_two_flops_per_multiply_add():
    lin, lin2 = torch.nn.Linear(8, 4, bias=False), torch.nn.Linear(4, 3, bias=False)
    x = torch.zeros(1, 8)
    xg = torch.zeros(1, 8, requires_grad=True)
    table = measure([
        FlopProbe("lin_fwd", lambda: lin(x), "8 -> 4"),  # 2 * 8 * 4
        FlopProbe("lin_fwdbwd", lambda: fwd_bwd(lambda: lin(x), [lin.weight]), "fwd + weight grad"),  # 64 + 64
        FlopProbe("lin_fwdbwd_input", lambda: fwd_bwd(lambda: lin(xg), [lin.weight, xg]), "+ input grad"),  # + 64
        FlopProbe("lin_pair", lambda: lin(torch.zeros(2, 8)), "a pair", samples=2),  # 128 / 2
        FlopProbe("two_layers", lambda: lin2(lin(x)), "8 -> 4 -> 3", net_of={"lin_fwd": 1}),  # 64 + 24 - 64
        FlopProbe("broken", lambda: 1 / 0, "raises"),
        FlopProbe("net_of_broken", lambda: lin(x), "depends on a failed probe", net_of={"broken": 1}),
    ], label="test", resolution=None)
    assert table.flops_per_call == {"lin_fwd": 64, "lin_fwdbwd": 128, "lin_fwdbwd_input": 192, "lin_pair": 64,
                                    "two_layers": 24}
    assert set(table.unpriced) == {"broken", "net_of_broken"}
    assert "ZeroDivisionError" in table.unpriced["broken"]
    assert lin.weight.grad is None and xg.grad is None  # probes leave no gradient behind
    assert "minus 1 x lin_fwd" in table.how["two_layers"] and "per sample of 2" in table.how["lin_pair"]


def test_run_record_measures_the_runs_models_without_side_effects(monkeypatch):
    from lpo_bench.models import lora
    from lpo_bench.models.tiny import tiny_bundle

    bundle = tiny_bundle("sd15", seed=0)
    params = lora.add_lora(bundle.unet, rank=2)
    bundle.unet.eval()
    rng = torch.random.get_rng_state()
    rec = run_record(bundle, policy=bundle.unet, stage=registry.reward_model_spec("lrm"), projected=False)
    assert torch.equal(rng, torch.random.get_rng_state())  # the run's random stream is untouched
    assert all(p.grad is None and p.requires_grad for p in params) and not bundle.unet.training
    t = rec.measured
    assert set(t.flops_per_call) == {"unet_fwd", "unet_fwdbwd", "vae_encode", "vae_decode", "text_fwd",
                                     "lrm_trunk_fwd", "reward_fwd", "reward_fwdbwd"} and not t.unpriced
    cond = bundle.encode_prompts(["a"])
    with torch.no_grad():
        assert t.flops_per_call["unet_fwd"] == flop_probes.count_flops(
            lambda: bundle.unet_forward(torch.zeros(1, 4, 8, 8), torch.tensor([500]), cond))
    # LoRA: the backward runs through the activations (~1x the forward) plus the adapter's weight grads
    assert 1.5 < t.flops_per_call["unet_fwdbwd"] / t.flops_per_call["unet_fwd"] < 3.5
    assert 0 < t.flops_per_call["reward_fwd"] < t.flops_per_call["lrm_trunk_fwd"]  # heads only: net of the trunk
    assert rec.policy["mode"] == "adapter" and rec.projected == {} and "not computed" in rec.projected_skipped


def _tiny_meta(arch):
    from lpo_bench.models.tiny import tiny_bundle

    return tiny_bundle("sdxl" if arch == "sdxl" else "sd15", seed=0).to("meta")


@pytest.fixture
def tiny_projection(monkeypatch):
    """The projected architectures replaced by tiny meta bundles (the real ones take ~10 s), caches cleared."""
    flop_probes.clear_cache()
    monkeypatch.setattr(flop_probes, "projected_bundle", _tiny_meta)
    monkeypatch.setenv("LPO_BENCH_PROJECTED_FLOPS", "1")
    yield
    flop_probes.clear_cache()


def test_projected_tables_price_the_same_counters_at_each_architecture(tiny_projection):
    from lpo_bench.models.tiny import tiny_bundle

    lrm = registry.reward_model_spec("lrm")
    full = flop_probes.projected_tables(policy_mode="full", stage=lrm, stage_cfg=None)
    adapter = flop_probes.projected_tables(policy_mode="adapter", stage=lrm, stage_cfg=None)
    assert set(full) == {"sd15", "sdxl"}
    for arch, t in full.items():
        assert "projected" in t.label and {"unet_fwd", "unet_fwdbwd", "reward_fwdbwd", "lrm_trunk_fwd"} <= set(t.flops_per_call)
        # every weight gets a gradient in full fine-tuning: more backward FLOPs than an adapter's
        assert t.flops_per_call["unet_fwdbwd"] > adapter[arch].flops_per_call["unet_fwdbwd"]
    assert full["sdxl"].flops_per_call["text_fwd"] > full["sd15"].flops_per_call["text_fwd"]  # two text encoders
    rec = run_record(tiny_bundle("sd15", seed=0), stage=lrm)  # the environment turns the projection on
    assert set(rec.projected) == {"sd15", "sdxl"} and rec.projected_skipped == ""


@pytest.mark.slow
def test_projected_tables_at_the_released_sizes():
    """SD1.5's UNet is about 0.8 TFLOP per sample at 64x64 latents and SDXL's about 6.8 at 128x128; PickScore's
    image tower (CLIP ViT-H/14, 632 M parameters, 257 tokens) about 2 x 632e6 x 257 = 0.33 TFLOP."""
    flop_probes.clear_cache()
    t = flop_probes.projected_tables(policy_mode="adapter", stage=registry.reward_model_spec("spm"), stage_cfg=None)
    assert 0.7e12 < t["sd15"].flops_per_call["unet_fwd"] < 0.9e12
    assert 6.0e12 < t["sdxl"].flops_per_call["unet_fwd"] < 7.5e12
    assert 0.28e12 < t["sd15"].flops_per_call["reward_fwd"] < 0.38e12
    flop_probes.clear_cache()


# ---------------------------------------------------------------------------- ledger counts per phase
def test_ledger_keeps_counts_per_phase_and_replays_them(tmp_path):
    path = tmp_path / "ledger.jsonl"
    led = Ledger(path, clock=FakeClock())
    with led.phase(Phase.SETUP), led.phase(Phase.RM_TRAIN):
        led.count("reward_fwdbwd", 5)
    with led.step(0):
        led.count("unet_fwdbwd", 4)  # unclaimed step work: UPDATE, like its time
        with led.phase(Phase.SAMPLE):
            led.count("unet_fwd", 10)
    led.count("metric_fwd", 2)  # outside any phase: flushed with the next row
    with led.phase(Phase.EVAL):
        led.count("unet_fwd", 7)
    want = {"RM_TRAIN": {"reward_fwdbwd": 5}, "UPDATE": {"unet_fwdbwd": 4}, "SAMPLE": {"unet_fwd": 10},
            NO_PHASE: {"metric_fwd": 2}, "EVAL": {"unet_fwd": 7}}
    assert led.counts_by_phase() == want and led.summary()["counts_by_phase"] == want
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert rows[1]["counts"] == {"unet_fwdbwd": 4, "unet_fwd": 10}  # the per-row totals, as before
    assert rows[1]["counts_by_phase"] == {"UPDATE": {"unet_fwdbwd": 4}, "SAMPLE": {"unet_fwd": 10}}
    again = Ledger(path, write=False)
    assert again.counts_by_phase() == want
    again.rewind(again.totals_dict(), {"SAMPLE": {"unet_fwd": 3}})  # resume: back to the checkpoint's counts
    assert again.counts_by_phase() == {"SAMPLE": {"unet_fwd": 3}}


def test_rows_of_older_ledgers_count_in_no_known_phase(tmp_path):
    path = tmp_path / "ledger.jsonl"
    path.write_text(json.dumps({"type": "step", "step": 0, "seconds": {"UPDATE": 1.0}, "counts": {"unet_fwd": 6}})
                    + "\n")
    counts = Ledger(path, write=False).counts_by_phase()
    assert counts == {UNKNOWN_PHASE: {"unet_fwd": 6}}
    priced = price(counts, FlopTable("t", {"unet_fwd": 1.0}))
    assert math.isnan(priced.counted) and math.isnan(priced.rm)  # unknown, not 0


# ---------------------------------------------------------------------------- pricing
COUNTS = {"SAMPLE": {"unet_fwd": 10}, "UPDATE": {"unet_fwdbwd": 4}, "RM_TRAIN": {"reward_fwdbwd": 5},
          "EVAL": {"unet_fwd": 100, "metric_fwd": 9}}
TABLE = FlopTable("own", {"unet_fwd": 2.0, "unet_fwdbwd": 6.0, "reward_fwdbwd": 7.0})


def test_pricing_by_phase_and_unpriced_counters():
    p = price(COUNTS, TABLE, devices=2)
    # SAMPLE 2 x 10 x 2 = 40; UPDATE 2 x 4 x 6 = 48; RM 2 x 5 x 7 = 70; EVAL (off the clock) has an unpriced counter
    assert {k: v for k, v in p.by_phase.items() if k != "EVAL"} == {"SAMPLE": 40.0, "UPDATE": 48.0, "RM_TRAIN": 70.0}
    assert math.isnan(p.by_phase["EVAL"])
    assert (p.counted, p.rm, p.total) == (88.0, 70.0, 158.0)
    assert p.unpriced_counts == {}  # off the clock: not part of any headline
    p = price({**COUNTS, "UPDATE": {"unet_fwdbwd": 4, "metric_fwd": 3}}, TABLE, devices=2)
    assert p.unpriced_counts == {"metric_fwd": 3.0}  # listed, and the counted FLOPs are unknown, not an undercount
    assert math.isnan(p.by_phase["UPDATE"]) and math.isnan(p.counted) and p.rm == 70.0


def test_summary_and_cost_rows_carry_measured_and_projected_flops(tmp_path):
    proj = FlopTable("sd15 architecture (projected)", {"unet_fwd": 20.0, "unet_fwdbwd": 60.0})
    rec = FlopRecord(torch="t", counter="c", devices=1, measured=TABLE, projected={"sd15": proj})
    write_record(tmp_path, rec)
    assert read_record(tmp_path) == rec and read_record(tmp_path / "nowhere") is None
    s = summary(COUNTS, rec)
    assert (s["flops_counted"], s["flops_rm"], s["flops_total_incl_rm"]) == (44.0, 35.0, 79.0)
    assert s["flops_by_phase"]["SAMPLE"] == 20.0 and s["unpriced_counts"] == {}
    sd15 = s["projected"]["sd15"]
    assert sd15["flops_counted"] == 440.0 and math.isnan(sd15["flops_rm"])  # no projected reward model
    assert sd15["unpriced_counts"] == {"reward_fwdbwd": 5.0}
    rows = {r["metric"]: r["value"] for r in cost_rows(s)}
    assert set(rows) == {"flops_counted", "flops_rm", "flops_total_incl_rm", "projected_sd15_flops_counted",
                         "projected_sd15_flops_rm", "projected_sd15_flops_total_incl_rm"}
    assert (rows["flops_counted"], rows["flops_rm"], rows["projected_sd15_flops_counted"]) == (44.0, 35.0, 440.0)


# ---------------------------------------------------------------------------- compare
def _with_flops(run_dir, counts, measured, projected):
    """Give a fixture train run per-phase counts (one more ledger row) and a flops.json."""
    with open(run_dir / "ledger.jsonl", "a") as fh:
        fh.write(json.dumps({"type": "step", "step": 1, "seconds": {}, "counts_by_phase": counts,
                             "counts": {k: v for c in counts.values() for k, v in c.items()}}) + "\n")
    write_record(run_dir, FlopRecord(torch="t", counter="c", devices=1, measured=FlopTable("own", measured),
                                     projected={a: FlopTable(a, t) for a, t in projected.items()}))


def test_compare_reports_flops_and_speedups_by_hand(tmp_path):
    from lpo_bench.analysis.compare import compare

    root = tmp_path / "runs"
    lpo = make_train(root, "lpo", 0, {"SAMPLE": 3600.0, "RM_TRAIN": 3600.0}, role="proposed", reward_stage="lrm")
    dpo = make_train(root, "diffusion-dpo", 0, {"UPDATE": 3600.0 * 3})
    make_train(root, "spo", 0, {"SAMPLE": 7200.0}, reward_stage="spm")  # an older run: no FLOP record
    own = {"unet_fwd": 1e9, "unet_fwdbwd": 3e9, "reward_fwdbwd": 2e9}
    sd15 = {"unet_fwd": 1e12, "unet_fwdbwd": 2e12, "reward_fwdbwd": 5e12}
    # LPO: counted 100 x 1e9 + 10 x 3e9 = 130e9, RM 50 x 2e9 = 100e9; projected 120e12 / 250e12
    _with_flops(lpo, {"SAMPLE": {"unet_fwd": 100}, "UPDATE": {"unet_fwdbwd": 10}, "RM_TRAIN": {"reward_fwdbwd": 50}},
                own, {"sd15": sd15, "sdxl": {}})
    # DPO: counted 100 x 3e9 + 100 x 1e9 = 400e9; projected 300e12
    _with_flops(dpo, {"UPDATE": {"unet_fwdbwd": 100, "unet_fwd": 100}}, own, {"sd15": sd15, "sdxl": {}})
    out = tmp_path / "report"
    md = compare([root], out).read_text()
    cost = pd.read_csv(out / "cost.csv").set_index("method")
    assert cost.loc["lpo", "flops_counted_median"] == pytest.approx(130e9)
    assert cost.loc["lpo", "flops_rm_median"] == pytest.approx(100e9)
    assert cost.loc["lpo", "flops_total_incl_rm_median"] == pytest.approx(230e9)
    assert cost.loc["lpo", "projected_sd15_flops_counted_median"] == pytest.approx(120e12)
    assert cost.loc["lpo", "projected_sd15_flops_total_incl_rm_median"] == pytest.approx(370e12)
    assert cost.loc["diffusion-dpo", "speedup_flops_excl_rm"] == pytest.approx(400 / 130)
    assert cost.loc["diffusion-dpo", "speedup_flops_incl_rm"] == pytest.approx(400 / 230)
    assert cost.loc["diffusion-dpo", "projected_sd15_speedup_excl_rm"] == pytest.approx(300 / 120)
    assert cost.loc["diffusion-dpo", "projected_sd15_speedup_incl_rm"] == pytest.approx(300 / 370)
    assert cost.loc["diffusion-dpo", "speedup_excl_rm"] == pytest.approx(3.0)  # GPU-hours, unchanged
    assert math.isnan(cost.loc["spo", "flops_counted_median"]) and math.isnan(cost.loc["spo", "speedup_flops_excl_rm"])
    assert math.isnan(cost.loc["lpo", "projected_sdxl_flops_counted_median"])  # every sdxl counter unpriced
    sp = pd.read_csv(out / "speedup.csv").set_index("method")
    assert sp.loc["diffusion-dpo", "speedup_flops_excl_rm"] == pytest.approx(400 / 130)
    assert "Speed-up of lpo: FLOPs, GPU-hours and projected FLOPs" in md
    assert "projected SD1.5 FLOPs (excl. / incl. RM)" in md and "projected SDXL FLOPs" in md
    assert "runs without a FLOP record (spo-toy-fixture-s0)" in md
    assert "projected sdxl FLOPs of their phases are unknown (n/a): reward_fwdbwd (50 samples)" in md
    rep = json.loads((out / "report.json").read_text())
    assert rep["cost"]["toy"]["diffusion-dpo"]["speedup_flops_excl_rm"] == pytest.approx(400 / 130)


# ---------------------------------------------------------------------------- end to end, toy world
def test_quick_toy_runs_record_flops_and_compare_prices_them(tiny_pairs, tmp_path, tiny_projection):
    """LPO (with its LRM stage) and Diffusion-DPO at the demo's quick settings on the shipped toy model."""
    from lpo_bench.analysis.compare import compare
    from lpo_bench.data.prompts import PromptList
    from lpo_bench.harness.train import TrainRequest, train_run
    from lpo_bench.toy.models import load_toy_bundle

    dirs = {}
    for m in ("lpo", "diffusion-dpo"):
        spec = registry.method_spec(m)
        req = TrainRequest(method=m, backbone="toy", overrides=dict(spec.quick), out_root=str(tmp_path / "runs"),
                           reward_stage_overrides=dict(spec.quick_reward_stage), pairs=str(tiny_pairs))
        dirs[m] = train_run(req, bundle=load_toy_bundle(), prompts=PromptList(PROMPTS), log=lambda *_: None)
    counted = {}
    for m, d in dirs.items():
        rec = read_record(d)
        rows = [json.loads(x) for x in (d / "ledger.jsonl").read_text().splitlines()]
        by_hand = {"counted": 0.0, "rm": 0.0}
        for r in rows:
            for phase, counts in r.get("counts_by_phase", {}).items():
                key = "rm" if phase == "RM_TRAIN" else "counted" if phase in ("PREP", "SAMPLE", "SCORE", "UPDATE") else None
                if key:
                    by_hand[key] += sum(n * rec.measured.flops_per_call[c] for c, n in counts.items())
        info = json.loads((d / "run.json").read_text())["ledger"]["flops"]
        assert info["flops_counted"] == pytest.approx(by_hand["counted"]) and by_hand["counted"] > 0
        assert info["flops_rm"] == pytest.approx(by_hand["rm"]) and info["unpriced_counts"] == {}
        assert set(info["projected"]) == {"sd15", "sdxl"} and rec.measured.resolution == 32
        counted[m] = by_hand["counted"]
        proj_by_hand = sum(n * rec.projected["sdxl"].flops_per_call[c] for r in rows
                           for phase, counts in r.get("counts_by_phase", {}).items()
                           if phase in ("PREP", "SAMPLE", "SCORE", "UPDATE") for c, n in counts.items())
        assert info["projected"]["sdxl"]["flops_counted"] == pytest.approx(proj_by_hand) and proj_by_hand > 0
    assert read_record(dirs["lpo"]).measured.flops_per_call["reward_fwdbwd"] > 0  # the LRM, from its spec
    out = tmp_path / "report"
    md = compare([tmp_path / "runs"], out).read_text()
    cost = pd.read_csv(out / "cost.csv").set_index("method")
    assert cost.loc["diffusion-dpo", "speedup_flops_excl_rm"] == pytest.approx(counted["diffusion-dpo"] / counted["lpo"])
    assert cost.loc["lpo", "flops_counted_median"] == pytest.approx(counted["lpo"])
    assert cost.loc["lpo", "projected_sdxl_flops_counted_median"] > 0  # (tiny stand-ins for SDXL here)
    assert "speed-up of lpo in FLOPs" in md


@pytest.mark.parametrize("name", ["lrm", "spm"])
def test_reward_model_probes_count_the_same_on_the_meta_device(name, tmp_path):
    """Off the CPU the run's reward model is probed on the meta device: the same FLOPs as running it."""
    from lpo_bench.harness.reward_stage import stage_config
    from lpo_bench.models.tiny import tiny_bundle

    bundle = tiny_bundle("sd15", seed=0)
    stage = registry.reward_model_spec(name)
    cfg = stage_config(stage, "toy")  # the toy preset: no hub weights
    real = measure(flop_probes.stage_probes(stage, bundle, model_dir=None, cfg=cfg, full_size=False),
                   label="real", resolution=32)
    meta = measure(flop_probes.stage_probes(stage, bundle, model_dir=None, cfg=cfg, full_size=False, device="meta"),
                   label="meta", resolution=32)
    assert real.flops_per_call == meta.flops_per_call and not real.unpriced
    assert {"reward_fwd", "reward_fwdbwd"} <= set(real.flops_per_call)
    assert real.flops_per_call["reward_fwdbwd"] > 2 * real.flops_per_call["reward_fwd"]
