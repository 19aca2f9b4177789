"""SPO and its step-aware preference model (SPM) on tiny SD1.5/SDXL-shaped bundles."""

import copy
import json
import math

import pytest
import torch
from helpers import PROMPTS, launch, method_ctx

from lpo_bench.baselines.spo.spm import StepAwarePreferenceModel, timestep_embedding

FAST_SPM = {"base": "tiny-clip", "tiny_layers": 1, "tiny_hidden": 32, "max_updates": 1, "clean_warmup_updates": 1,
            "batch_pairs": 4, "micro_batch_pairs": 2, "warmup_updates": 1, "max_val_pairs": 4, "lr": 1e-3}
# 5 steps: t = 801 (plain sampling, > 751), then 601, 401, 201, 1 are branched and trained
FAST_SPO = {"num_inference_steps": 5, "prompts_per_round": 2, "train_batch_pairs": 2, "micro_batch_pairs": 1,
            "num_train_prompts": 4, "epochs": 1, "max_updates": 2, "threshold_spo": 0.0, "lora_rank": 2,
            "num_candidates": 2, "lr": 1e-3}




def _ctx(bundle, cfg_cls, over, tmp_path, *, pairs=None, reward_model_dir=None):
    from lpo_bench.config import build_config

    return method_ctx(bundle, build_config(cfg_cls, over), tmp_path, pairs=pairs, reward_model_dir=reward_model_dir)


def _spm_dir(bundle, tmp_path):
    spm = StepAwarePreferenceModel.tiny(bundle.tokenizers[0], image_size=bundle.resolution, hidden=32, layers=1)
    return spm.save(tmp_path / "spm")


def _spo(bundle, tmp_path, spm_dir, **over):
    from lpo_bench.baselines.spo.config import SPOConfig
    from lpo_bench.baselines.spo.method import SPO

    ctx = _ctx(bundle, SPOConfig, {**FAST_SPO, **over}, tmp_path, reward_model_dir=spm_dir)
    m = SPO()
    m.setup(ctx)
    return m, ctx.ledger


def _run(m, ledger, start, n):
    out = []
    for s in range(start, start + n):
        with ledger.step(s):
            out.append(m.train_step(s))
    return out


# ---------------------------------------------------------------------------- SPM
def test_timestep_embedding_hand_values():
    e = timestep_embedding(torch.tensor([0, 1]), dim=4, max_period=100.0)
    # frequencies 100^(-0/2) = 1 and 100^(-1/2) = 0.1; layout [cos, cos, sin, sin]
    want = torch.tensor([[1.0, 1.0, 0.0, 0.0], [math.cos(1), math.cos(0.1), math.sin(1), math.sin(0.1)]])
    assert torch.allclose(e, want, atol=1e-6)


def test_spm_starts_equal_to_its_base_scorer_and_conditions_on_t():
    from lpo_bench.models import tiny

    b = tiny.tiny_bundle("sd15")
    spm = StepAwarePreferenceModel.tiny(b.tokenizers[0], image_size=32, hidden=32, layers=2)
    images = torch.rand(3, 3, 40, 48, generator=torch.Generator().manual_seed(0))  # resized + centre-cropped
    prompts = PROMPTS[:3]
    with torch.no_grad():
        got = spm.score(images, torch.tensor([0, 500, 999]), prompts)
        clip = spm.clip
        px = spm.preprocess(images)
        v = clip.get_image_features(pixel_values=px)
        v = v if torch.is_tensor(v) else v.pooler_output
        tok = spm.tokenizer(prompts, padding=True, return_tensors="pt")
        tf = clip.get_text_features(input_ids=tok.input_ids, attention_mask=tok.attention_mask)
        tf = tf if torch.is_tensor(tf) else tf.pooler_output
        base = clip.logit_scale.exp() * torch.nn.functional.cosine_similarity(v, tf)
    assert px.shape == (3, 3, 32, 32)
    assert torch.allclose(got, base, atol=1e-5)
    with torch.no_grad():  # once the modulation is non-zero, the score depends on t
        spm.final_adaln[1].weight.normal_(std=0.5)
        s0 = spm.score(images, 0, prompts)
        s9 = spm.score(images, 900, prompts)
    assert not torch.allclose(s0, s9)


def test_spm_save_load_is_strict(tmp_path):
    from safetensors.torch import load_file, save_file

    from lpo_bench.errors import HarnessError
    from lpo_bench.models import tiny

    b = tiny.tiny_bundle("sd15")
    spm = StepAwarePreferenceModel.tiny(b.tokenizers[0], image_size=32, hidden=32, layers=1).attach(b)
    with torch.no_grad():
        for p in spm.adaln.parameters():
            p.normal_(std=0.1)
    lat = torch.randn(2, *b.latent_shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1, 701])
    s = spm.score_noisy(lat, t, PROMPTS[:2])
    spm.save(tmp_path / "spm")
    spm2 = StepAwarePreferenceModel.load(tmp_path / "spm", b)
    assert torch.allclose(s, spm2.score_noisy(lat, t, PROMPTS[:2]), atol=1e-5)
    state = load_file(str(tmp_path / "spm" / "model.safetensors"))
    del state["final_adaln.1.bias"]
    save_file(state, str(tmp_path / "spm" / "model.safetensors"))
    with pytest.raises(HarnessError, match="could not load the SPM"):
        StepAwarePreferenceModel.load(tmp_path / "spm", b)
    with pytest.raises(HarnessError, match="not an SPM directory"):
        StepAwarePreferenceModel.load(tmp_path, b)


def test_pickscore_pair_loss_hand_values():
    from lpo_bench.methods.stepwise.losses import pair_ce_per_pair as pickscore_pair_loss

    s0, s1 = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 1.0])
    per = pickscore_pair_loss(s0, s1, torch.tensor([1.0, 0.0, 0.5]))
    assert per.tolist() == pytest.approx([math.log1p(math.exp(-2.0)), math.log1p(math.exp(-1.0)), 0.0], abs=1e-6)


def test_spm_trainer_steps_and_validation_rows(tiny_pairs, tmp_path):
    from lpo_bench.baselines.spo.spm_config import SPMConfig
    from lpo_bench.baselines.spo.spm_train import SPMTrainer
    from lpo_bench.models import tiny

    b = tiny.tiny_bundle("sdxl")
    ctx = _ctx(b, SPMConfig, FAST_SPM, tmp_path, pairs=tiny_pairs)
    tr = SPMTrainer()
    tr.setup(ctx)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    step = 0
    while not tr.is_done(step):
        with ctx.ledger.phase("RM_TRAIN"):
            logs = tr.train_step(step)
        step += 1
    assert step == 2 and math.isfinite(logs["loss"])
    assert any(not torch.equal(before[k], v) for k, v in tr.model.state_dict().items())
    rows = tr.validate()
    assert [r["timestep"] for r in rows] == [0, 251, 501, 701, 951]
    assert all(r["kind"] == "rm_val_acc" and r["metric"] == "spm_pair_acc" and 0 <= r["value"] <= 1 for r in rows)
    counts = {}
    for line in (tmp_path / "ledger.jsonl").read_text().splitlines():
        for k, v in json.loads(line).get("counts", {}).items():
            counts[k] = counts.get(k, 0) + v
    # one noisy update of 4 pairs: 2 images × CFG = 4 UNet evals, 2 decodes and 2 SPM fwd+bwd per pair
    assert counts["unet_fwd"] == 16 and counts["vae_decode"] == 8
    assert counts["reward_fwdbwd"] == 2 * 4 * 2  # clean + noisy update


# ---------------------------------------------------------------------------- SPO
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_spo_steps_change_lora_and_book_decodes_under_score(family, tmp_path, monkeypatch):
    from lpo_bench.ledger import Phase
    from lpo_bench.models import tiny

    b = tiny.tiny_bundle(family)
    m, ledger = _spo(b, tmp_path, _spm_dir(b, tmp_path))
    booked = []
    orig = ledger.count
    monkeypatch.setattr(ledger, "count", lambda name, n=1: (booked.append((ledger._stack[-1].value, name, n)),
                                                           orig(name, n))[1])
    before = {k: v.detach().clone() for k, v in b.unet.named_parameters() if "lora_" in k}
    logs = _run(m, ledger, 0, 2)
    after = dict(b.unet.named_parameters())
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert m.is_done(2)
    assert logs[0]["pairs_scored"] == 4 * 2  # 4 branched steps × 2 prompts
    by = {}
    for phase, name, n in booked:
        by[(phase, name)] = by.get((phase, name), 0) + n
    k, bp = 2, 2  # candidates, prompts per round
    assert by[("SCORE", "vae_decode")] == 4 * k * bp  # every candidate of every branched step, incl. final x0
    assert by[("SCORE", "reward_fwd")] == 4 * k * bp
    assert by[("SCORE", "unet_fwd")] == 3 * k * bp * 2  # CFG pass on candidates at t' = 401, 201, 1 (not 0)
    assert by[("SAMPLE", "unet_fwd")] == 2 * bp * 2  # t = 801 and 601; later steps reuse the scorer's ε̂
    assert not any(name in ("vae_decode", "reward_fwd") for phase, name, _ in booked if phase != "SCORE")
    assert by[("UPDATE", "unet_fwdbwd")] == 2 * 2 * 2  # 2 updates × 2 pairs × CFG
    assert ledger.totals[Phase.SCORE] > 0 and ledger.totals[Phase.SAMPLE] > 0


def test_spo_loss_is_the_shared_step_dpo_loss(tmp_path, monkeypatch):
    from lpo_bench.methods.stepwise import rounds
    from lpo_bench.models import tiny

    b = tiny.tiny_bundle("sd15")
    m, ledger = _spo(b, tmp_path, _spm_dir(b, tmp_path), micro_batch_pairs=2)
    seen = []
    real = rounds.step_dpo_loss

    def spy(lw, ll, rw, rl, *, beta, clip):
        seen.append((lw.detach().clone(), ll.detach().clone(), rw.clone(), rl.clone(), beta, clip))
        return real(lw, ll, rw, rl, beta=beta, clip=clip)

    monkeypatch.setattr(rounds, "step_dpo_loss", spy)
    logs = _run(m, ledger, 0, 2)
    assert len(seen) == 2 and all(s[4] == 10.0 and s[5] == 0.1 for s in seen)
    lw, ll, rw, rl, _, _ = seen[1]  # second update: the policy has moved, ratios != 1
    assert not torch.equal(lw, rw)
    hand = []
    for i in range(len(lw)):
        cw = min(max(float(lw[i] - rw[i]), math.log(0.9)), math.log(1.1))
        cl = min(max(float(ll[i] - rl[i]), math.log(0.9)), math.log(1.1))
        hand.append(math.log1p(math.exp(-10.0 * (cw - cl))))
    assert logs[1]["loss"] == pytest.approx(sum(hand) / len(hand), rel=1e-5)


def test_spo_without_valid_pairs_ends_without_an_update(tmp_path):
    from lpo_bench.models import tiny

    b = tiny.tiny_bundle("sd15")
    m, ledger = _spo(b, tmp_path, _spm_dir(b, tmp_path), threshold_spo=0.9999, max_updates=None)  # no gap passes
    before = {k: v.detach().clone() for k, v in b.unet.named_parameters() if "lora_" in k}
    assert not m.is_done(0)
    assert _run(m, ledger, 0, 1) == [{"skipped": 1.0}]
    assert m.is_done(1) and m.rounds == 2  # both rounds of the single epoch were sampled
    assert all(torch.equal(v, dict(b.unet.named_parameters())[k]) for k, v in before.items())


def test_spo_resumes_bitwise(tmp_path):
    from lpo_bench.models import tiny

    spm_dir = _spm_dir(tiny.tiny_bundle("sd15"), tmp_path)
    b = tiny.tiny_bundle("sd15")
    m, ledger = _spo(b, tmp_path / "a", spm_dir, max_updates=3, train_batch_pairs=4)
    _run(m, ledger, 0, 1)
    state = copy.deepcopy(m.state_dict())
    _run(m, ledger, 1, 2)  # the third update samples a new round: generators and prompt order must resume too
    want = {k: v.detach().clone() for k, v in b.unet.named_parameters() if "lora_" in k}

    b2 = tiny.tiny_bundle("sd15")
    m2, ledger2 = _spo(b2, tmp_path / "b", spm_dir, max_updates=3, train_batch_pairs=4)
    m2.load_state_dict(state)
    _run(m2, ledger2, 1, 2)
    got = dict(b2.unet.named_parameters())
    assert m2.rounds == m.rounds == 2
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_spo_through_the_harness_trains_the_spm_first(tiny_pairs, tmp_path):
    from lpo_bench import records
    from lpo_bench.data.prompts import PromptList
    from lpo_bench.harness.train import TrainRequest, train_run
    from lpo_bench.models import tiny

    req = TrainRequest(method="spo", backbone="sd15", overrides=dict(FAST_SPO), reward_stage_overrides=FAST_SPM,
                       out_root=str(tmp_path), pairs=str(tiny_pairs), checkpoint_every_updates=1)
    run_dir = train_run(req, bundle=tiny.tiny_bundle("sd15", seed=0), prompts=PromptList(PROMPTS), log=lambda *_: None)
    assert records.is_done(run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    secs = info["ledger"]["seconds_by_phase"]
    assert info["updates"] == 2 and secs["RM_TRAIN"] > 0 and secs["SCORE"] > 0 and secs["SAMPLE"] > 0
    assert StepAwarePreferenceModel.is_saved(run_dir / "spm")
    assert (run_dir / "export" / "pytorch_lora_weights.safetensors").exists()
    df = records.read_measurements(run_dir / "measurements.parquet")
    assert sorted(df.loc[df["kind"] == "rm_val_acc", "timestep"].astype(int)) == [0, 251, 501, 701, 951]


def _torchrun(args, nproc):
    from pathlib import Path

    launch(Path(__file__).parent / "scripts" / "baselines_ddp.py", args, nproc)


@pytest.mark.slow
def test_two_processes_keep_every_pair_and_identical_weights(tiny_pairs, tmp_path):
    """Under 2 gloo ranks SPO trains on the same 9 pairs as one process (odd count: no pair dropped) and the
    summed LoRA gradients leave both ranks with bitwise identical weights."""
    _torchrun(["spo", str(tiny_pairs), str(tmp_path / "one")], 1)
    _torchrun(["spo", str(tiny_pairs), str(tmp_path / "two")], 2)
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    r0, r1 = (json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1))
    assert one["pairs_global"] == r0["pairs_global"] == 9
    assert r0["weights_sha256"] == r1["weights_sha256"]
