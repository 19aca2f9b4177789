"""Diffusion-DPO: loss against hand-computed values, and training on tiny SD1.5/SDXL-shaped bundles."""

import json
import math

import pytest
import torch
from helpers import launch, method_ctx

from lpo_bench.baselines.diffusion_dpo.config import DiffusionDPOConfig
from lpo_bench.baselines.diffusion_dpo.losses import (
    diffusion_dpo_loss,
    dpo_logit,
    implicit_accuracy,
    per_sample_mse,
    sft_loss,
)

FAST = {"pairs_per_update": 4, "micro_batch_pairs": 2, "max_updates": 2, "lr": 1e-3, "scale_lr": False,
        "lr_warmup_updates": 0, "lora_rank": 2, "random_flip": False}


def _t(*v):
    return torch.tensor(v, dtype=torch.float64)


# ---------------------------------------------------------------------------- losses
def test_dpo_loss_hand_values_sign_and_half_beta():
    # Δ = (e_w - e_l) - (ref_w - ref_l) = (0.10 - 0.12) - (0.11 - 0.11) = -0.02; z = -(β/2)Δ = +1 at β = 100
    loss = diffusion_dpo_loss(_t(0.10), _t(0.12), _t(0.11), _t(0.11), beta_dpo=100.0)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), rel=1e-12)  # 0.3133: winner improved
    # the same errors with winner and loser swapped: z = -1, the loss rises
    swapped = diffusion_dpo_loss(_t(0.12), _t(0.10), _t(0.11), _t(0.11), beta_dpo=100.0)
    assert swapped.item() == pytest.approx(math.log1p(math.exp(1.0)), rel=1e-12)
    # policy = reference: log 2 whatever β
    assert diffusion_dpo_loss(_t(0.3), _t(0.1), _t(0.3), _t(0.1), beta_dpo=5000.0).item() == pytest.approx(math.log(2))
    # the reference enters with the opposite sign: a worse reference on the winner also helps
    assert dpo_logit(_t(0.1), _t(0.1), _t(0.12), _t(0.1), beta_dpo=100.0).item() == pytest.approx(1.0)


def test_dpo_loss_equals_diffusers_sd15_parameterisation():
    """diffusers SD1.5: -log σ(β'·(ref_diff - model_diff)) with β' = 2500 and no ½ ≡ β = 5000 here."""
    g = torch.Generator().manual_seed(0)
    e = torch.rand(4, 8, generator=g, dtype=torch.float64) * 1e-3 + 0.1
    ew, el, rw, rl = e
    diffusers = -torch.nn.functional.logsigmoid(2500.0 * ((rw - rl) - (ew - el)))
    assert torch.allclose(diffusion_dpo_loss(ew, el, rw, rl, beta_dpo=5000.0), diffusers, rtol=1e-12)


def test_per_sample_mse_is_a_mean_and_sft_loss():
    pred = torch.zeros(2, 4, 2, 2)
    target = torch.ones(2, 4, 2, 2)
    target[1] *= 3.0
    assert per_sample_mse(pred, target).tolist() == [1.0, 9.0]  # mean over C,H,W (a sum would give 16, 144)
    assert sft_loss(pred, target).tolist() == [1.0, 9.0]
    assert sft_loss(pred, target).mean().item() == pytest.approx(torch.nn.functional.mse_loss(pred, target).item())


def test_implicit_accuracy_branches():
    acc = implicit_accuracy(_t(0.1, 0.2, 0.1), _t(0.2, 0.1, 0.1), _t(0.1, 0.1, 0.3), _t(0.1, 0.1, 0.3))
    assert acc.tolist() == [1.0, 0.0, 0.5]


# ---------------------------------------------------------------------------- training
def _setup(bundle, pairs, tmp_path, **over):
    from lpo_bench.baselines.diffusion_dpo.method import DiffusionDPO
    from lpo_bench.config import build_config

    ctx = method_ctx(bundle, build_config(DiffusionDPOConfig, FAST, over), tmp_path, pairs=pairs)
    m = DiffusionDPO()
    m.setup(ctx)
    return m, ctx.ledger


def _steps(m, ledger, n, start=0):
    out = []
    for s in range(start, start + n):
        with ledger.step(s):
            out.append(m.train_step(s))
    return out


def _counts(path, row_type=None):
    tot = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if row_type and r.get("type") != row_type and r.get("phase") != row_type:
            continue
        for k, v in r.get("counts", {}).items():
            tot[k] = tot.get(k, 0) + v
    return tot


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_lora_dpo_steps_change_lora_and_start_at_log2(family, tiny_pairs, tmp_path):
    from lpo_bench.data.pairs import load_pairs
    from lpo_bench.models import tiny

    b = tiny.tiny_bundle(family, seed=0)
    m, ledger = _setup(b, tiny_pairs, tmp_path)
    n_decided = len(load_pairs(tiny_pairs, "train", drop_ties=True))
    assert m.n_pairs == n_decided  # ties dropped
    before = {k: v.clone() for k, v in m._trainable_state().items()}
    logs = _steps(m, ledger, 2)
    # LoRA B starts at 0: policy == reference on the first update, so loss = log 2 and accuracy 1/2
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert logs[0]["implicit_acc"] == pytest.approx(0.5)
    assert logs[0]["mse_w"] == pytest.approx(logs[0]["ref_mse_w"], abs=1e-6)
    after = m._trainable_state()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert logs[1]["mse_w"] != pytest.approx(logs[1]["ref_mse_w"], abs=1e-9)  # policy moved away from reference
    counts = _counts(tmp_path / "ledger.jsonl")
    assert counts["vae_encode"] == 2 * n_decided
    assert counts["unet_fwdbwd"] == 2 * 2 * FAST["pairs_per_update"]  # 2 updates × (winner + loser) per pair
    assert counts["unet_fwd"] == counts["unet_fwdbwd"]  # reference forwards
    assert m.is_done(2) and not m.is_done(1)


def test_full_finetune_keeps_a_frozen_reference_and_resumes_bitwise(tiny_pairs, tmp_path):
    import copy

    from lpo_bench.models import tiny

    b = tiny.tiny_bundle("sd15", seed=0)
    m, ledger = _setup(b, tiny_pairs, tmp_path, lora_rank=0, lr=1e-4, random_flip=True, caption_dropout=0.5)
    ref0 = {k: v.clone() for k, v in m.ref_unet.state_dict().items()}
    _steps(m, ledger, 1)
    state = copy.deepcopy(m.state_dict())
    _steps(m, ledger, 1, start=1)
    want = m._trainable_state()
    assert all(torch.equal(v, m.ref_unet.state_dict()[k]) for k, v in ref0.items())
    assert any(not torch.equal(want[k], ref0[k]) for k in ref0)

    b2 = tiny.tiny_bundle("sd15", seed=0)
    m2, ledger2 = _setup(b2, tiny_pairs, tmp_path / "again", lora_rank=0, lr=1e-4, random_flip=True,
                         caption_dropout=0.5)
    m2.load_state_dict(state)
    _steps(m2, ledger2, 1, start=1)
    got = m2._trainable_state()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert _counts(tmp_path / "again" / "ledger.jsonl")["vae_encode"] == 4 * m.n_pairs  # both orientations


def test_sft_variant_trains_without_reference(tiny_pairs, tmp_path):
    from lpo_bench.models import tiny

    b = tiny.tiny_bundle("sd15", seed=0)
    m, ledger = _setup(b, tiny_pairs, tmp_path, sft=True, lora_rank=0)
    assert m.ref_unet is None
    logs = _steps(m, ledger, 1)
    assert set(logs[0]) >= {"loss", "mse_w"} and "implicit_acc" not in logs[0]
    assert logs[0]["loss"] == pytest.approx(logs[0]["mse_w"])
    assert "unet_fwd" not in _counts(tmp_path / "ledger.jsonl")


def test_lr_scaling_and_warmup(tiny_pairs, tmp_path):
    from lpo_bench.models import tiny

    b = tiny.tiny_bundle("sd15", seed=0)
    m, _ = _setup(b, tiny_pairs, tmp_path, lr=1e-8, scale_lr=True, pairs_per_update=4, lr_warmup_updates=4)
    assert m.lr_peak == pytest.approx(4e-8)
    assert [m.lr_at(s) for s in (0, 1, 3, 10)] == pytest.approx([1e-8, 2e-8, 4e-8, 4e-8])


def test_missing_pairs_is_a_harness_error(tmp_path):
    from lpo_bench.errors import HarnessError
    from lpo_bench.models import tiny

    with pytest.raises(HarnessError, match="--pairs"):
        _setup(tiny.tiny_bundle("sd15"), None, tmp_path)


def test_dpo_through_the_harness_exports_lora(tiny_pairs, tmp_path):
    from lpo_bench import records
    from lpo_bench.harness.train import TrainRequest, train_run
    from lpo_bench.models import tiny

    req = TrainRequest(method="diffusion-dpo", backbone="sdxl", out_root=str(tmp_path), pairs=str(tiny_pairs),
                       overrides={**FAST, "optimizer": "adamw", "gradient_checkpointing": False},
                       checkpoint_every_updates=1)
    run_dir = train_run(req, bundle=tiny.tiny_bundle("sdxl", seed=0), log=lambda *_: None)
    assert records.is_done(run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["updates"] == 2
    assert info["ledger"]["seconds_by_phase"]["PREP"] > 0 and info["ledger"]["seconds_by_phase"]["UPDATE"] > 0
    assert (run_dir / "export" / "pytorch_lora_weights.safetensors").exists()


@pytest.mark.slow
def test_two_processes_sum_gradients_into_identical_weights(tiny_pairs, tmp_path):
    """Full fine-tuning under 2 gloo ranks: each rank sees different pairs, the all-reduced gradients keep the
    two UNets bitwise identical."""
    from pathlib import Path

    launch(Path(__file__).parent / "scripts" / "baselines_ddp.py", ["diffusion-dpo", tiny_pairs, tmp_path], 2)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["updates"] == 2 and r0["weights_sha256"] == r1["weights_sha256"]
