"""`lpo-bench bench` on the tiny SD1.5 bundle: the structure of the result (no timed assertions)."""

import json

import pytest

from lpo_bench import bench
from lpo_bench.errors import HarnessError

FAST = {
    "lpo": {"num_inference_steps": 3, "prompts_per_round": 1, "train_batch_pairs": 2, "num_train_prompts": 2},
    "spo": {"num_inference_steps": 5, "prompts_per_round": 1, "train_batch_pairs": 2, "micro_batch_pairs": 2,
            "num_train_prompts": 2},
    "diffusion-dpo": {"pairs_per_update": 2, "micro_batch_pairs": 2},
}


def test_bench_result_structure_on_tiny_sd15(tmp_path, monkeypatch):
    prompts = ["a red circle", "two blue squares"]
    for mod in ("lpo_bench.methods.lpo.method", "lpo_bench.baselines.spo.method"):  # skip building the toy splits
        monkeypatch.setattr(f"{mod}.training_prompts", lambda backbone, **kw: prompts)
    out = tmp_path / "b" / "bench.json"
    r = bench.run_bench(method="all", backbone="tiny-sd15", repeats=1, warmup=0, device="cpu", out=out,
                        train_overrides=FAST, log=lambda *_: None)
    assert json.loads(out.read_text())["methods"] == ["lpo", "spo", "diffusion-dpo"]
    ss = r["sampling_step"]
    assert set(ss["components"]) == {"denoise", "lrm_reward", "x0_pred", "vae_decode", "spm_reward"}
    comps = ss["components"]
    assert comps["x0_pred"]["evals"] == {"unet_fwd": 8}  # K = 4 candidates, CFG
    # FLOPs are linear in the batch: the candidates' CFG pass is exactly K = 4 denoising steps
    assert comps["x0_pred"]["tflop"] == pytest.approx(4 * comps["denoise"]["tflop"], rel=1e-9)
    assert ss["ratio_spo_over_lpo_flops"] == pytest.approx(ss["spo_total_tflop"] / ss["lpo_total_tflop"])
    assert ss["spo_total_s"] == pytest.approx(sum(c["median_s"] for n, c in ss["components"].items()
                                                  if n != "lrm_reward"))
    assert ss["ratio_spo_over_lpo"] == pytest.approx(ss["spo_total_s"] / ss["lpo_total_s"])
    assert ss["acceptance"]["applies"] is False  # the criterion is about SD1.5 shapes, not tiny ones
    assert ss["paper_tab5"]["spo"]["total"] == 0.243 and ss["paper_tab5"]["lpo"]["total"] == 0.039
    assert ss["attention"]["unet"] == ["AttnProcessor2_0"]

    train = r["train_step"]
    # LPO: 3 steps x 1 prompt = 3 pairs -> 2 updates of 2; SPO trains t <= 751 only: 4 of 5 steps -> 2 updates
    assert train["lpo"]["updates_per_cycle"] == 2 and train["lpo"]["pairs_per_cycle"] == 3
    assert train["spo"]["updates_per_cycle"] == 2 and train["spo"]["pairs_per_cycle"] == 4
    assert train["diffusion-dpo"]["updates_per_cycle"] == 1 and train["diffusion-dpo"]["pairs_per_cycle"] == 2
    lpo, spo, dpo = (train[m]["counts_per_cycle"] for m in ("lpo", "spo", "diffusion-dpo"))
    assert lpo["reward_fwd"] == 3 * 4 and lpo["unet_fwdbwd"] == 3 * 2 and "vae_decode" not in lpo
    assert spo["vae_decode"] == 4 * 4 and spo["reward_fwd"] == 4 * 4
    assert dpo == {"unet_fwdbwd": 4, "unet_fwd": 4, "text_fwd": 2}
    assert set(train["spo"]["seconds_by_phase"]) == {"SAMPLE", "SCORE", "UPDATE"}
    assert set(train["diffusion-dpo"]["seconds_by_phase"]) == {"UPDATE"}
    oh = train["lpo"]["overhead"]
    assert len(oh["harness_s"]) == len(oh["bare_s"]) == 1 and oh["ledger_self_s"][0] > 0
    ratios = r["train_step_ratios"]
    assert set(ratios) == {"spo_over_lpo", "dpo_over_lpo"}
    assert ratios["spo_over_lpo"]["reward_fwd_per_pair"] == pytest.approx(1.0)


def test_bench_rejects_bad_input():
    with pytest.raises(HarnessError, match="unknown method"):
        bench.run_bench(method="ppo", backbone="tiny-sd15")
    with pytest.raises(HarnessError, match="--random-weights builds"):
        bench.run_bench(method="lpo", backbone="sd21", random_weights=True)
    with pytest.raises(HarnessError, match="unknown bench part"):
        bench.run_bench(method="lpo", backbone="tiny-sd15", parts=["flops"])


def test_null_ledger_is_a_no_op():
    led = bench.NullLedger()
    with led.step(0), led.phase("SAMPLE"):
        led.count("unet_fwd", 2)


def test_full_size_architectures_match_the_public_models_and_flop_table():
    """Meta-device builds (no memory, no compute): parameter counts of the released SD1.5 / SDXL components,
    and the per-unit FLOPs of baselines.md §3 (SD1.5 UNet 0.803 TFLOP, VAE decode 2.515, CLIP-H vision 0.335)."""
    def n(m):
        return sum(p.numel() for p in m.parameters())

    sd15 = bench.full_size_bundle("sd15", device="meta")
    assert (n(sd15.unet), n(sd15.vae), n(sd15.text_encoders[0])) == (859_520_964, 83_653_863, 123_060_480)
    sdxl = bench.full_size_bundle("sdxl", device="meta")
    assert n(sdxl.unet) == 2_567_463_684 and n(sdxl.text_encoders[1]) == 694_659_840
    f = bench.sampling_step_flops("sd15", ["lpo", "spo"], random_weights=True)
    assert f["denoise"] / 2 == pytest.approx(0.803, abs=5e-4)  # one CFG step = 2 UNet evaluations
    assert f["x0_pred"] == pytest.approx(4 * f["denoise"], rel=1e-9)
    assert f["vae_decode"] / 4 == pytest.approx(2.515, abs=5e-4)
    assert f["spm_reward"] / 4 == pytest.approx(0.335, abs=5e-4)  # + the adaLN modulation (< 0.2 %)
    # LRM: 4 candidates x (cond + uncond) trunk passes; the down + mid trunk is under half a UNet evaluation
    assert f["lrm_reward"] / 8 < 0.5 * f["denoise"] / 2


@pytest.mark.parametrize("interleave", [True, False])
def test_sampling_step_totals_and_ratio_per_mode(interleave):
    """Interleaved rounds: totals and the SPO/LPO ratio are medians of per-round values (paired within a round);
    sequential: sums of component medians. Both keep the per-call samples they came from."""
    import statistics

    bundle = bench.build_bundle("tiny-sd15", random_weights=False, device="cpu")
    ss = bench.sampling_step_costs(bundle, ["lpo", "spo"], full_size=False, repeats=3, warmup=0,
                                   interleave=interleave, log=lambda *_: None)
    c = ss["components"]
    assert ss["interleaved"] is interleave and all(len(x["samples_s"]) == 3 for x in c.values())
    spo_parts, lpo_parts = ("denoise", "x0_pred", "vae_decode", "spm_reward"), ("denoise", "lrm_reward")
    if interleave:
        lpo = [sum(c[p]["samples_s"][r] for p in lpo_parts) for r in range(3)]
        spo = [sum(c[p]["samples_s"][r] for p in spo_parts) for r in range(3)]
        assert ss["lpo_total_samples_s"] == pytest.approx(lpo) and ss["spo_total_s"] == statistics.median(spo)
        assert ss["ratio_spo_over_lpo_rounds"] == pytest.approx([s / lp for s, lp in zip(spo, lpo)])
        assert ss["ratio_spo_over_lpo"] == statistics.median(ss["ratio_spo_over_lpo_rounds"])
    else:
        assert ss["spo_total_s"] == pytest.approx(sum(c[p]["median_s"] for p in spo_parts))
        assert ss["ratio_spo_over_lpo"] == pytest.approx(ss["spo_total_s"] / ss["lpo_total_s"])
        assert "ratio_spo_over_lpo_rounds" not in ss
