"""Step reward models (LRM, SPM) at paper scale: the official learning-rate schedules, global batches split over
processes, streamed training data, and the switches for the official preprocessing and initialisation."""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import launch, method_ctx

from lpo_bench.config import build_config, load_target_config
from lpo_bench.data.global_batch import decoded_positions, epoch_order, global_batch_indices, rank_slice
from lpo_bench.methods.stepwise.losses import deepspeed_warmup_decay, official_update_lr, reward_model_lr


# ---------------------------------------------------------------------------- learning-rate schedules
def test_deepspeed_warmup_decay_hand_values():
    # W = 4, T = 10: log warmup ln(i + 1) / ln 4, then (10 - i) / 6
    f = lambda i, shape="log": deepspeed_warmup_decay(i, peak=2.0, warmup=4, total=10, shape=shape)  # noqa: E731
    assert f(-1) == 0.0
    assert f(0) == 0.0
    assert f(1) == pytest.approx(2.0 * math.log(2) / math.log(4))  # = 1.0
    assert f(3) == pytest.approx(2.0)  # ln 4 / ln 4: the peak at the last warmup iteration
    assert f(4) == pytest.approx(2.0)  # decay starts at (10 - 4) / 6 = 1
    assert f(7) == pytest.approx(1.0)  # (10 - 7) / 6
    assert f(10) == 0.0 and f(12) == 0.0
    assert f(1, "linear") == pytest.approx(0.5) and f(3, "linear") == pytest.approx(1.5)  # i / W
    # DeepSpeed raises warmup_num_steps to 2: warmup 0 or 1 behaves as 2
    assert deepspeed_warmup_decay(1, peak=1.0, warmup=0, total=5) == pytest.approx(1.0)  # ln 2 / ln 2
    assert deepspeed_warmup_decay(2, peak=1.0, warmup=1, total=5) == pytest.approx(1.0)  # (5 - 2) / 3
    with pytest.raises(ValueError):
        deepspeed_warmup_decay(0, peak=1.0, warmup=4, total=10, shape="cosine")


def test_official_update_lr_lags_one_update_and_starts_at_the_peak():
    # update 0 runs at the optimiser's own lr (the peak), update u >= 1 at DeepSpeed's iteration u - 1
    kw = dict(peak=1.0, warmup=4, total=10)
    assert official_update_lr(0, **kw) == 1.0
    assert official_update_lr(1, **kw) == 0.0
    assert official_update_lr(2, **kw) == pytest.approx(math.log(2) / math.log(4))
    assert official_update_lr(8, **kw) == pytest.approx(3 / 6)  # iteration 7
    assert reward_model_lr(2, warmup_shape="log", **kw) == official_update_lr(2, **kw)
    assert reward_model_lr(2, warmup_shape="linear", **kw) == pytest.approx(3 / 4)  # the earlier (u + 1) / W
    with pytest.raises(ValueError):
        reward_model_lr(2, warmup_shape="cosine", **kw)


# Official values by hand: update 0 at the peak; update u at iteration i = u - 1 of DeepSpeed's WarmupDecayLR,
# peak·ln(i + 1)/ln(W) during warmup, then peak·(T - i)/(T - W). T is max_updates for both trainers (the SPM's
# official scripts pass max_steps × 4 processes, which accelerate divides by the 4 processes again).
LRM_SD15 = [(0, 1e-5), (1, 0.0), (2, 1e-5 * math.log(2) / math.log(500)), (250, 1e-5 * math.log(250) / math.log(500)),
            (500, 1e-5), (501, 1e-5), (2251, 1e-5 * 1750 / 3500), (3999, 1e-5 * 2 / 3500)]
LRM_SDXL = [(0, 1e-5), (1, 0.0), (2, 1e-5 * math.log(2) / math.log(1000)), (500, 1e-5 * math.log(500) / math.log(1000)),
            (1000, 1e-5), (1001, 1e-5), (4501, 1e-5 * 3500 / 7000), (7999, 1e-5 * 2 / 7000)]
SPM_SD15 = [(0, 3e-6), (1, 0.0), (2, 3e-6 * math.log(2) / math.log(500)), (250, 3e-6 * math.log(250) / math.log(500)),
            (500, 3e-6), (501, 3e-6), (4251, 3e-6 * 3750 / 7500), (7999, 3e-6 * 2 / 7500)]
SPM_SDXL = [(0, 1e-6), (1, 0.0), (2, 1e-6 * math.log(2) / math.log(500)), (250, 1e-6 * math.log(250) / math.log(500)),
            (500, 1e-6), (501, 1e-6), (3751, 1e-6 * 3250 / 6500), (6999, 1e-6 * 2 / 6500)]


@pytest.mark.parametrize(("kind", "backbone", "want"), [
    ("lrm", "sd15", LRM_SD15), ("lrm", "sd21", LRM_SD15), ("lrm", "sdxl", LRM_SDXL),
    ("spm", "sd15", SPM_SD15), ("spm", "sdxl", SPM_SDXL)])
def test_reward_model_presets_follow_the_official_schedule(kind, backbone, want):
    from lpo_bench import registry
    from lpo_bench.harness import reward_stage

    stage = registry.reward_model_spec(kind)
    cfg = reward_stage.stage_config(stage, backbone)
    lr_at = registry.load_target(stage.trainer.rsplit(":", 1)[0] + ":lr_at")
    assert cfg.lr_warmup_shape == "log"
    got = [lr_at(u, cfg) for u, _ in want]
    assert got == pytest.approx([v for _, v in want], rel=1e-12, abs=1e-20)
    if kind == "spm":  # the decay reaches 0 where training ends (not at 4 × max_updates: ≈0.76 × peak at the end)
        assert cfg.lr_decay_updates == cfg.max_updates
        assert lr_at(cfg.max_updates + 1, cfg) == 0.0


def test_linear_warmup_switch_restores_the_earlier_schedule():
    from lpo_bench.methods.lpo.lrm_config import LRMConfig
    from lpo_bench.methods.lpo.lrm_train import lr_at

    cfg = build_config(LRMConfig, {"lr_warmup_shape": "linear", "warmup_updates": 4, "max_updates": 10, "lr": 1.0})
    assert [lr_at(u, cfg) for u in (0, 3, 4, 7, 10)] == pytest.approx([0.25, 1.0, 1.0, 0.5, 0.0])


# ---------------------------------------------------------------------------- global batches
def test_rank_slice_hand_values():
    assert [rank_slice(5, r, 2) for r in (0, 1)] == [slice(0, 3), slice(3, 5)]
    assert [rank_slice(8, r, 4) for r in range(4)] == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    assert [rank_slice(1, r, 2) for r in (0, 1)] == [slice(0, 1), slice(1, 1)]  # rank 1 holds nothing
    assert rank_slice(7, 0, 1) == slice(0, 7)
    with pytest.raises(ValueError):
        rank_slice(4, 2, 2)


def test_global_batches_walk_shuffled_epochs():
    n, batch = 7, 3
    e0, e1 = (epoch_order(n, e, seed=0, purpose="t") for e in (0, 1))
    assert sorted(e0) == list(range(n)) and sorted(e1) == list(range(n)) and not np.array_equal(e0, e1)
    stream = np.concatenate([e0, e1])
    for u in range(4):  # update 2 takes positions 6, 7, 8: the last row of epoch 0 and two of epoch 1
        assert np.array_equal(global_batch_indices(n, u, batch, seed=0, purpose="t"), stream[3 * u: 3 * u + 3])
    assert not np.array_equal(epoch_order(n, 0, seed=1, purpose="t"), e0) or not np.array_equal(
        epoch_order(n, 1, seed=1, purpose="t"), e1)
    big = global_batch_indices(3, 0, 7, seed=0, purpose="t")  # a batch larger than the data: whole epochs
    assert sorted(big[:3]) == [0, 1, 2] and sorted(big[3:6]) == [0, 1, 2]
    with pytest.raises(ValueError):
        global_batch_indices(0, 0, 3, seed=0, purpose="t")


def test_decoded_positions_hand_values():
    assert decoded_positions(np.array([4, 9, 2]), [4, 2]).tolist() == [0, 2]
    assert decoded_positions(np.array([5, 1, 5]), [5, 5]).tolist() == [0, 2]  # a repeated row that decoded
    assert decoded_positions(np.array([3, 3]), []).tolist() == []
    with pytest.raises(ValueError):
        decoded_positions(np.array([1, 2]), [2, 1])


class _TwoRanks:
    """A stand-in accelerator for rank 0 of two: ``reduce`` adds the other rank's tensors, given in call order."""

    num_processes, process_index, is_main_process, device = 2, 0, True, torch.device("cpu")

    def __init__(self, others):
        self.others = list(others)

    def reduce(self, t, reduction="sum"):
        assert reduction == "sum"
        return t + self.others.pop(0)


def test_sum_grads_keeps_unused_parameters_gradient_free():
    from lpo_bench.harness.dist import Dist

    a, b, c = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    a.grad = torch.tensor([1.0, 2.0])  # b: a gradient on the other rank only; c: on no rank
    # calls: the has-gradient mask, then one bucket [a, b] (bucket_numel 4), as the other rank sends them
    dist = Dist(_TwoRanks([torch.tensor([1.0, 1.0, 0.0]), torch.tensor([10.0, 20.0, 5.0, 6.0])]))
    dist.sum_grads_([a, b, c], bucket_numel=4)
    assert a.grad.tolist() == [11.0, 22.0] and b.grad.tolist() == [5.0, 6.0] and c.grad is None
    d, e = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    d.grad, e.grad = torch.ones(3), torch.ones(2)
    dist = Dist(_TwoRanks([torch.ones(2), torch.full((3,), 2.0), torch.full((2,), 3.0)]))
    dist.sum_grads_([d, e], bucket_numel=4)  # 3 + 2 > 4 elements: two buckets
    assert d.grad.tolist() == [3.0] * 3 and e.grad.tolist() == [4.0] * 2


# ---------------------------------------------------------------------------- trainers on tiny bundles
FAST_LRM = {"max_updates": 2, "batch_pairs": 4, "micro_batch_pairs": 4, "warmup_updates": 1, "max_val_pairs": 4,
            "timestep_stride": 475, "mpcf_strategy": 0, "num_workers": 0, "lr": 1e-4}
FAST_SPM = {"base": "tiny-clip", "tiny_layers": 1, "tiny_hidden": 32, "max_updates": 1, "clean_warmup_updates": 0,
            "batch_pairs": 4, "micro_batch_pairs": 4, "warmup_updates": 1, "lr_decay_updates": 2, "max_val_pairs": 4,
            "val_timesteps": (0,), "lr": 1e-3, "num_workers": 0}


def _trainer(kind, bundle, over, run_dir, pairs, **ctx_over):
    from lpo_bench import registry

    stage = registry.reward_model_spec(kind)
    cfg = load_target_config(stage.config, backbone="sd15", overrides=over, preset_prefix=f"{kind}_")
    ctx = replace(method_ctx(bundle, cfg, run_dir, pairs=pairs), **ctx_over)
    tr = registry.load_target(stage.trainer)()
    tr.setup(ctx)
    return tr, ctx


def _train(tr, ctx, updates):
    logs = []
    for s in range(updates):
        with ctx.ledger.phase("RM_TRAIN"):
            logs.append(tr.train_step(s))
    return logs


def _counts(ledger_path):
    out = {}
    for line in Path(ledger_path).read_text().splitlines():
        for k, v in json.loads(line).get("counts", {}).items():
            out[k] = out.get(k, 0) + v
    return out


def _record_step_grads(tr):
    """Wrap the trainer's optimiser step to keep the (summed, clipped) gradient it applies, per update."""
    grads, step = [], tr.opt.step

    def recording_step(*args, **kwargs):
        grads.append([None if p.grad is None else p.grad.detach().clone() for p in tr.params])
        return step(*args, **kwargs)

    tr.opt.step = recording_step
    return grads


def _close(a, b, total_norm):
    """Two float32 gradients of one tensor agree: ‖a − b‖ <= 1e-4 ‖a‖ + 1e-6 ‖whole gradient‖. (Summed in another
    order, a gradient moves by ~1e-5 of its norm; a tensor whose exact gradient is 0, such as an attention key bias,
    holds rounding noise only, so it is measured against the whole gradient.)"""
    return float((a - b).norm()) <= 1e-4 * float(a.norm()) + 1e-6 * total_norm


def _norm(tensors):
    return math.sqrt(sum(float(t.norm()) ** 2 for t in tensors if t is not None))


@pytest.mark.parametrize("kind", ["lrm", "spm"])
def test_micro_batches_accumulate_exactly(kind, tiny_pairs, tmp_path):
    """The same updates in micro-batches of 1 and in one micro-batch apply the same gradients and logs."""
    from lpo_bench.models import tiny

    fast = FAST_LRM if kind == "lrm" else FAST_SPM
    runs = []
    for mb in (1, 4):
        tr, ctx = _trainer(kind, tiny.tiny_bundle("sd15", seed=0), {**fast, "micro_batch_pairs": mb},
                           tmp_path / f"mb{mb}", tiny_pairs)
        grads = _record_step_grads(tr)
        logs = _train(tr, ctx, 2 if kind == "lrm" else 1)
        runs.append((grads, logs))
        assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in logs)
    (g1, l1), (g4, l4) = runs
    for a, b in zip(l1, l4, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    for u1, u4 in zip(g1, g4, strict=True):
        assert [x is None for x in u1] == [x is None for x in u4]
        assert all(x is None or _close(x, y, _norm(u1)) for x, y in zip(u1, u4, strict=True))


def test_training_streams_its_pairs_and_decodes_nothing_at_setup(tmp_path):
    """Setup reads metadata only: with every training image undecodable it succeeds, and each update then asks
    for exactly its own pairs (all left out, counted); readable pairs are VAE-encoded per update."""
    import pandas as pd
    from helpers import write_pairs_dir

    from lpo_bench.models import tiny

    good = write_pairs_dir(tmp_path / "good", n_per_split=(8, 4, 4), seed=1)
    bad = tmp_path / "bad"
    bad.mkdir()
    for split in ("train", "val"):
        df = pd.read_parquet(good / f"{split}.parquet")
        if split == "train":
            df["jpg_0"] = [b"not an image"] * len(df)
        df.to_parquet(bad / f"{split}.parquet", index=False)
    tr, ctx = _trainer("lrm", tiny.tiny_bundle("sd15", seed=0), FAST_LRM, tmp_path / "run_bad", bad)
    assert tr.train.decode_failures == 0  # nothing decoded yet
    logs = _train(tr, ctx, 1)
    assert tr.train.decode_failures == FAST_LRM["batch_pairs"] and logs[0]["loss"] == 0.0
    tr, ctx = _trainer("lrm", tiny.tiny_bundle("sd15", seed=0), FAST_LRM, tmp_path / "run_good", good)
    _train(tr, ctx, 2)
    counts = _counts(tmp_path / "run_good" / "ledger.jsonl")
    assert counts["vae_encode"] == 2 * 2 * FAST_LRM["batch_pairs"]  # two images per pair, per update
    assert counts["reward_fwdbwd"] == 2 * 2 * FAST_LRM["batch_pairs"]


def test_loss_weights_are_normalised_over_the_global_batch(tiny_pairs, tmp_path):
    """The logged loss is Σ w ℓ / Σ w over the update's global batch with w = 1/num_example_per_prompt."""
    from lpo_bench.methods.stepwise.losses import pair_ce_per_pair
    from lpo_bench.models import tiny

    tr, ctx = _trainer("lrm", tiny.tiny_bundle("sd15", seed=0), {**FAST_LRM, "lr": 1e-12}, tmp_path / "r",
                       tiny_pairs)
    tr.weight = torch.arange(1, len(tr.weight) + 1, dtype=torch.float64)  # unequal weights, known by hand
    rows = tr.data.global_indices(0)
    chunk = tr.data.local(0)[0]
    with torch.no_grad():
        xt0, xt1, t = tr._noisy_latents(0, chunk)
        caps = [tr.train.captions[i] for i in rows.tolist()]
        tr.model.train()
        s = tr.model.score(torch.cat([xt0, xt1]), torch.cat([t, t]), tr.model.encode_text(caps + caps))
        per = pair_ce_per_pair(*s.chunk(2), tr.label[rows]).double()
    w = torch.tensor((rows + 1).tolist(), dtype=torch.float64)
    logs = _train(tr, ctx, 1)  # asks for update 0 again: the stream restarts there
    assert logs[0]["loss"] == pytest.approx(float((per * w).sum() / w.sum()), rel=1e-5)


def test_lrm_text_projection_starts_from_clip_l14_when_found(tiny_pairs, tmp_path):
    from safetensors.torch import save_file

    from lpo_bench.methods.lpo.lrm import LatentRewardModel
    from lpo_bench.metrics.clipscore import OPENAI_CLIP_L14
    from lpo_bench.models import tiny

    bundle = tiny.tiny_bundle("sd15", seed=0)
    d = int(bundle.text_encoders[0].config.hidden_size)
    weights = tmp_path / "weights"
    snap = weights / OPENAI_CLIP_L14.repo
    snap.mkdir(parents=True)
    proj = torch.randn(d, d, generator=torch.Generator().manual_seed(3))
    save_file({"text_projection.weight": proj, "logit_scale": torch.tensor(4.6)}, str(snap / "model.safetensors"))
    tr, _ = _trainer("lrm", bundle, FAST_LRM, tmp_path / "a", tiny_pairs, weights_dir=weights)
    assert torch.equal(tr.model.text_projection.weight.detach(), proj)
    assert tr.model.text_projection_init == f"{OPENAI_CLIP_L14.ref}:text_projection.weight"
    tr.save(tmp_path / "lrm")
    assert json.loads((tmp_path / "lrm" / "lrm_config.json").read_text())["text_projection_init"].startswith(
        "openai/clip-vit-large-patch14@")
    assert LatentRewardModel.load(tmp_path / "lrm", bundle).text_projection_init == tr.model.text_projection_init
    # not found (or switched off): identity, recorded
    for over, wdir in (({}, tmp_path / "empty"), ({"text_projection_init": "identity"}, weights)):
        tr, _ = _trainer("lrm", tiny.tiny_bundle("sd15", seed=0), {**FAST_LRM, **over}, tmp_path / "b", tiny_pairs,
                         weights_dir=wdir)
        assert torch.equal(tr.model.text_projection.weight.detach(), torch.eye(d))
        assert tr.model.text_projection_init == "identity"


# ---------------------------------------------------------------------------- SPM preprocessing
def _bicubic_matrix(n_in, n_out, a=-0.75):
    """PyTorch's bicubic interpolation (align_corners=False, no antialias) as a [n_out, n_in] matrix: source
    x = (i + 0.5)·n_in/n_out − 0.5, Keys' cubic kernel with a = −0.75 on the 4 nearest pixels, edges replicated."""
    def k(s):
        s = abs(s)
        if s <= 1:
            return (a + 2) * s**3 - (a + 3) * s**2 + 1
        if s < 2:
            return a * s**3 - 5 * a * s**2 + 8 * a * s - 4 * a
        return 0.0

    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        x = (i + 0.5) * n_in / n_out - 0.5
        x0 = math.floor(x)
        for j in range(x0 - 1, x0 + 3):
            m[i, min(max(j, 0), n_in - 1)] += k(x - j)
    return m


def test_spm_preprocess_defaults_to_the_official_resize_without_antialias():
    from lpo_bench.baselines.spo.spm import CLIP_MEAN, CLIP_STD, StepAwarePreferenceModel
    from lpo_bench.models import tiny

    tok = tiny.tiny_bundle("sd15").tokenizers[0]
    spm = StepAwarePreferenceModel.tiny(tok, image_size=32, hidden=32, layers=1)
    assert spm.antialias is False
    images = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    # short side 40 -> 32: new size (int(40·0.8 + 0.5), int(48·0.8 + 0.5)) = (32, 38); centre crop columns 3..34
    x = images.double().numpy()
    hand = np.einsum("oh,bchw,pw->bcop", _bicubic_matrix(40, 32), x, _bicubic_matrix(48, 38))[..., 3:35]
    hand = (np.clip(hand, 0, 1) - np.array(CLIP_MEAN)[None, :, None, None]) / np.array(CLIP_STD)[None, :, None, None]
    got = spm.preprocess(images)
    assert got.shape == (2, 3, 32, 32)
    assert np.allclose(got.double().numpy(), hand, atol=1e-4)
    spm.antialias = True
    smooth = spm.preprocess(images)
    assert (smooth - got).abs().max() > 0.05  # the antialiased resize is a different image


def test_spm_saves_and_loads_its_resize_switch(tmp_path):
    from lpo_bench.baselines.spo.spm import StepAwarePreferenceModel
    from lpo_bench.baselines.spo.spm_config import SPMConfig
    from lpo_bench.models import tiny

    assert SPMConfig().antialias is False and SPMConfig().lr_decay_updates == SPMConfig().max_updates
    b = tiny.tiny_bundle("sd15")
    for flag in (False, True):
        d = StepAwarePreferenceModel.tiny(b.tokenizers[0], hidden=32, layers=1, antialias=flag).save(tmp_path / str(flag))
        assert StepAwarePreferenceModel.load(d, b).antialias is flag
    cfg_path = tmp_path / "False" / "spm_config.json"  # a directory saved before the switch: trained antialiased
    cfg = json.loads(cfg_path.read_text())
    del cfg["antialias"]
    cfg_path.write_text(json.dumps(cfg))
    assert StepAwarePreferenceModel.load(tmp_path / "False", b).antialias is True


# ---------------------------------------------------------------------------- two processes
def _launch(kind, pairs, out, nproc):
    launch(Path(__file__).parent / "scripts" / "rm_ddp.py", [kind, pairs, out], nproc)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lrm", "spm"])
def test_two_processes_train_the_one_process_model(kind, tiny_pairs, tmp_path):
    """2 gloo ranks train on exactly the pairs of 1 process. Even split (4 pairs: 2 + 2, one micro-batch each): the
    final weights are bitwise the 1-process ones. Uneven split (5 pairs: 3 + 2): every update applies the
    1-process gradient within float tolerance (the weights then differ only where AdamW's first steps turn
    rounding-level gradients into ±lr). Ranks always end bitwise identical. Each rank does its share of the work,
    so the ledger's RM GPU-hours are per-device time x 2 devices."""
    from safetensors.torch import load_file

    from lpo_bench.data.global_batch import rank_slice as share

    _launch(kind, tiny_pairs, tmp_path / "one", 1)
    _launch(kind, tiny_pairs, tmp_path / "two", 2)
    for split in ("even", "uneven"):
        one = load_file(str(tmp_path / "one" / split / "rank0.safetensors"))
        r0, r1 = (load_file(str(tmp_path / "two" / split / f"rank{r}.safetensors")) for r in (0, 1))
        assert set(one) == set(r0) == set(r1) and any(k.startswith("g2/") for k in one)
        norms = {g: _norm(v for k, v in one.items() if k.startswith(g + "/")) for g in {k.split("/")[0] for k in one}}
        for k in one:
            assert torch.equal(r0[k], r1[k]), (split, k)  # the same summed gradient, clipping and step everywhere
            if split == "even" or k.startswith("w/"):
                continue
            assert _close(one[k], r0[k], norms[k.split("/")[0]]), (split, k, float((one[k] - r0[k]).norm()))
        if split == "even":
            assert all(torch.equal(one[k], r0[k]) for k in one), split
    runs = {n: Path(json.loads((tmp_path / n / "uneven" / "rank0.json").read_text())["run_dir"]) for n in ("one", "two")}
    info = {n: json.loads((d / "run.json").read_text()) for n, d in runs.items()}
    assert info["one"]["ledger"]["devices"] == 1 and info["two"]["ledger"]["devices"] == 2
    s = info["two"]["ledger"]
    assert s["gpu_h_rm"] == pytest.approx(s["seconds_by_phase"]["RM_TRAIN"] * 2 / 3600)
    updates = info["one"]["updates"]
    assert info["two"]["updates"] == updates
    log1, log2 = ([json.loads(x) for x in (d / "train_log.jsonl").read_text().splitlines()] for d in runs.values())
    for a, b in zip(log1, log2, strict=True):  # global quantities: loss over the global batch, norm of the sum
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    c1, c2 = _counts(runs["one"] / "ledger.jsonl"), _counts(runs["two"] / "ledger.jsonl")
    mine = share(5, 0, 2).stop - share(5, 0, 2).start  # rank 0 (the ledger's writer) holds 3 of 5 pairs
    assert c1["reward_fwdbwd"] == 2 * 5 * updates and c2["reward_fwdbwd"] == 2 * mine * updates
    assert (runs["two"] / "model").is_dir() and not (runs["two"] / ".model.tmp").exists()


def test_pair_ce_batch_sums_by_hand():
    from lpo_bench.methods.stepwise.losses import pair_ce_batch_sums

    s0, s1 = torch.tensor([2.0, 0.0, 1.0, 3.0]), torch.tensor([1.0, 1.0, 1.0, 0.0])
    label = torch.tensor([1.0, 1.0, 0.5, 0.0])  # right, wrong, a tie (never counted), wrong
    per = torch.tensor([0.5, 1.5, 0.0, 3.0])
    w = torch.tensor([1.0, 0.5, 2.0, 0.25])
    got = pair_ce_batch_sums(per, s0, s1, label, w)
    assert got.dtype == torch.float64 and got.tolist() == [0.5 + 0.75 + 0.0 + 0.75, 1.0, 3.0]
    # a tie with s0 == s1 and a win/lose pair with equal scores count as not correct
    eq = pair_ce_batch_sums(torch.zeros(2), torch.ones(2), torch.ones(2), torch.tensor([1.0, 0.5]), torch.ones(2))
    assert eq.tolist() == [0.0, 0.0, 1.0]
