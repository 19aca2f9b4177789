"""`lpo-bench bench` on the tiny SD1.5 bundle: the structure of the result (no timed assertions)."""

import json
import statistics

import pytest

from lpo_bench import bench, registry
from lpo_bench.bench import ratios, sampling_step, timing, train_step
from lpo_bench.bench.backbones import build_bundle
from lpo_bench.data.prompts import PromptList
from lpo_bench.errors import HarnessError
from lpo_bench.models.full_size import full_size_bundle

PROMPTS = PromptList(("a red circle", "two blue squares"))
FAST = {
    "lpo": {"num_inference_steps": 3, "prompts_per_round": 1, "train_batch_pairs": 2, "num_train_prompts": 2},
    "spo": {"num_inference_steps": 5, "prompts_per_round": 1, "train_batch_pairs": 2, "micro_batch_pairs": 2,
            "num_train_prompts": 2},
    "diffusion-dpo": {"pairs_per_update": 2, "micro_batch_pairs": 2},
}
SPO_PARTS = ("x0_pred", "vae_decode", "spm_reward")
THROWAWAY = {"winner-sft": "throwaway_method:SPEC"}  # a method only the tests register (tests/throwaway_method)


def test_bench_result_structure_on_tiny_sd15(tmp_path):
    out = tmp_path / "b" / "bench.json"
    with registry.extended("method", THROWAWAY):  # bench knows a method from its spec alone
        r = bench.run_bench(methods="all", backbone="tiny-sd15", repeats=1, warmup=0, device="cpu", out=out,
                            train_overrides=FAST, prompts=PROMPTS, log=lambda *_: None)
    assert json.loads(out.read_text())["methods"] == ["lpo", "spo", "diffusion-dpo", "winner-sft"]
    ss = r["sampling_step"]
    assert set(ss["methods"]) == {"lpo", "spo", "winner-sft"}  # Diffusion-DPO's spec has no sampling step
    lpo, spo = ss["methods"]["lpo"], ss["methods"]["spo"]
    assert set(lpo["components"]) == {"lrm_reward"} and set(spo["components"]) == set(SPO_PARTS)
    assert spo["components"]["x0_pred"]["evals"] == {"unet_fwd": 8}  # K = 4 candidates, CFG
    # FLOPs are linear in the batch: the candidates' CFG pass is exactly K = 4 denoising steps
    assert spo["components"]["x0_pred"]["tflop"] == pytest.approx(4 * ss["denoise"]["tflop"], rel=1e-9)
    rat = ss["ratios"]
    assert rat["reference"] == "lpo" and set(rat["over_reference"]) == {"spo", "winner-sft"}
    assert rat["over_reference"]["spo"]["tflop"] == pytest.approx(spo["total_tflop"] / lpo["total_tflop"])
    assert spo["total_s"] == pytest.approx(ss["denoise"]["median_s"] + sum(
        c["median_s"] for c in spo["components"].values()))
    assert rat["over_reference"]["spo"]["seconds"] == pytest.approx(spo["total_s"] / lpo["total_s"])
    assert ss["acceptance"]["applies"] is False  # a claim about full-size shapes, not tiny ones
    tab5 = {t["id"]: t for t in ss["published"]}["tab5"]
    assert {row["label"].split(" (")[0]: row["values"] for row in tab5["rows"]}["Total"] == [0.243, 0.039]
    assert ss["attention"]["unet"] == ["AttnProcessor2_0"]

    train = r["train_step"]
    # LPO: 3 steps x 1 prompt = 3 pairs -> 2 updates of 2; SPO trains t <= 751 only: 4 of 5 steps -> 2 updates
    assert train["lpo"]["updates_per_cycle"] == 2 and train["lpo"]["pairs_per_cycle"] == 3
    assert train["spo"]["updates_per_cycle"] == 2 and train["spo"]["pairs_per_cycle"] == 4
    assert train["diffusion-dpo"]["updates_per_cycle"] == 1 and train["diffusion-dpo"]["pairs_per_cycle"] == 2
    sft = train["winner-sft"]  # logs no pair count: its fixed pairs_per_update (bench preset) per update
    assert sft["updates_per_cycle"] == 1 and sft["pairs_per_cycle"] == sft["config"]["pairs_per_update"]
    lpo_n, spo_n, dpo_n = (train[m]["counts_per_cycle"] for m in ("lpo", "spo", "diffusion-dpo"))
    assert lpo_n["reward_fwd"] == 3 * 4 and lpo_n["unet_fwdbwd"] == 3 * 2 and "vae_decode" not in lpo_n
    assert spo_n["vae_decode"] == 4 * 4 and spo_n["reward_fwd"] == 4 * 4
    assert dpo_n == {"unet_fwdbwd": 4, "unet_fwd": 4, "text_fwd": 2}
    assert set(train["spo"]["seconds_by_phase"]) == {"SAMPLE", "SCORE", "UPDATE"}
    assert set(train["diffusion-dpo"]["seconds_by_phase"]) == {"UPDATE"}
    oh = train["lpo"]["overhead"]
    assert len(oh["harness_s"]) == len(oh["bare_s"]) == 1 and oh["ledger_self_s"][0] > 0
    train_ratios = r["train_step_ratios"]
    assert train_ratios["reference"] == "lpo"
    assert set(train_ratios["over_reference"]) == {"spo", "diffusion-dpo", "winner-sft"}
    assert train_ratios["over_reference"]["spo"]["reward_fwd_per_pair"] == pytest.approx(1.0)


def test_the_reference_is_the_proposed_method_else_the_first_given():
    dpo, spo, lpo = (registry.method_spec(m) for m in ("diffusion-dpo", "spo", "lpo"))
    assert ratios.reference_method([dpo, spo, lpo]) == "lpo"
    assert ratios.reference_method([dpo, spo]) == "diffusion-dpo"


def test_bench_rejects_bad_input():
    with pytest.raises(HarnessError, match="unknown method"):
        bench.run_bench(methods="ppo", backbone="tiny-sd15")
    with pytest.raises(HarnessError, match="--method is empty"):
        bench.run_bench(methods=" , ", backbone="tiny-sd15")
    with pytest.raises(HarnessError, match="--random-weights builds"):
        bench.run_bench(methods="lpo", backbone="sd21", random_weights=True)
    with pytest.raises(HarnessError, match="unknown bench part"):
        bench.run_bench(methods="lpo", backbone="tiny-sd15", parts=["flops"])


def test_method_lists():
    assert bench.parse_methods("all") == list(registry.METHODS)
    assert bench.parse_methods("lpo, spo,lpo") == ["lpo", "spo"]  # the committed results' command line
    assert bench.parse_methods(["diffusion-dpo"]) == ["diffusion-dpo"]


def test_null_ledger_is_a_no_op():
    led = timing.NullLedger()
    with led.step(0), led.phase("SAMPLE"):
        led.count("unet_fwd", 2)


def test_full_size_architectures_match_the_public_models_and_flop_table():
    """Meta-device builds (no memory, no compute): parameter counts of the released SD1.5 / SDXL components,
    and per-unit FLOPs at the released sizes (SD1.5 UNet at 512 px: 0.803 TFLOP per evaluation; VAE decode to
    512 px: 2.515; CLIP ViT-H/14 vision tower at 224 px: 0.335)."""
    def n(m):
        return sum(p.numel() for p in m.parameters())

    sd15 = full_size_bundle("sd15", device="meta")
    assert (n(sd15.unet), n(sd15.vae), n(sd15.text_encoders[0])) == (859_520_964, 83_653_863, 123_060_480)
    sdxl = full_size_bundle("sdxl", device="meta")
    assert n(sdxl.unet) == 2_567_463_684 and n(sdxl.text_encoders[1]) == 694_659_840
    specs = [registry.method_spec(m) for m in ("lpo", "spo")]
    f = sampling_step.sampling_step_flops("sd15", specs, random_weights=True)
    lpo, spo = f["methods"]["lpo"], f["methods"]["spo"]
    assert f["denoise"] / 2 == pytest.approx(0.803, abs=5e-4)  # one CFG step = 2 UNet evaluations
    assert spo["x0_pred"] == pytest.approx(4 * f["denoise"], rel=1e-9)
    assert spo["vae_decode"] / 4 == pytest.approx(2.515, abs=5e-4)
    assert spo["spm_reward"] / 4 == pytest.approx(0.335, abs=5e-4)  # + the adaLN modulation (< 0.2 %)
    # LRM: 4 candidates x (cond + uncond) trunk passes; the down + mid trunk is under half a UNet evaluation
    assert lpo["lrm_reward"] / 8 < 0.5 * f["denoise"] / 2


@pytest.mark.parametrize("interleave", [True, False])
def test_sampling_step_totals_and_ratio_per_mode(interleave):
    """Interleaved rounds: totals and ratios over the reference are medians of per-round values (paired within a
    round); sequential: sums of component medians. Both keep the per-call samples they came from."""
    bundle = build_bundle("tiny-sd15", random_weights=False, device="cpu")
    specs = [registry.method_spec(m) for m in ("spo", "lpo")]  # the reference is the proposed one, not the first
    ss = sampling_step.sampling_step_costs(bundle, specs, full_size=False, repeats=3, warmup=0,
                                           interleave=interleave, log=lambda *_: None)
    d, m = ss["denoise"], ss["methods"]
    comps = {name: [d, *m[name]["components"].values()] for name in m}
    assert ss["interleaved"] is interleave and all(len(c["samples_s"]) == 3 for cs in comps.values() for c in cs)
    rat = ss["ratios"]
    assert rat["reference"] == "lpo" and set(rat["over_reference"]) == {"spo"}
    if interleave:
        lpo = [sum(c["samples_s"][r] for c in comps["lpo"]) for r in range(3)]
        spo = [sum(c["samples_s"][r] for c in comps["spo"]) for r in range(3)]
        assert m["lpo"]["total_samples_s"] == pytest.approx(lpo) and m["spo"]["total_s"] == statistics.median(spo)
        rounds = rat["over_reference"]["spo"]["seconds_rounds"]
        assert rounds == pytest.approx([s / lp for s, lp in zip(spo, lpo)])
        assert rat["over_reference"]["spo"]["seconds"] == statistics.median(rounds)
    else:
        assert m["spo"]["total_s"] == pytest.approx(sum(c["median_s"] for c in comps["spo"]))
        assert rat["over_reference"]["spo"]["seconds"] == pytest.approx(m["spo"]["total_s"] / m["lpo"]["total_s"])
        assert "seconds_rounds" not in rat["over_reference"]["spo"]


def test_write_bench_pairs_has_no_ties(tmp_path):
    import pandas as pd

    out = train_step.write_bench_pairs(tmp_path / "pairs", n=4, resolution=8)
    df = pd.read_parquet(out / "train.parquet")
    assert len(df) == 4 and (df["label_0"] != df["label_1"]).all()
