"""Released checkpoints (``released:<name>``): the strict state-dict check, pins, lookup, and the importers, on
checkpoints written from random weights in the layouts their authors published (tiny sizes, built in-process);
``eval --model``, ``train --reward-model`` and ``step-accuracy --reward-model`` resolving them offline from a
local directory; ``compare`` setting measured numbers beside the published ones."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lpo_bench import records, registry
from lpo_bench.errors import HarnessError
from lpo_bench.models import released
from lpo_bench.models.released import ReleasedFile, ReleasedModel
from lpo_bench.models.state_dicts import check_state_dict, drop_position_ids, read_state_dict

SD15_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
PROMPTS = ["a red circle", "two blue squares", "a green triangle"]


# ---------------------------------------------------------------------------- writers of the official layouts
def perturb(module: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Add seeded noise to every parameter, so an importer that skipped a tensor gives other outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype))
    return module


def write_official_lrm(model, root: Path) -> Path:
    """The layout ``SD15PreferenceModel.save`` / ``SDXLBasePreferenceModel.save`` write (Kwai-Kolors/LPO@9c2e8b8):
    ``unet/`` (diffusers), ``text_encoder/`` as transformers 4.27 wrote it (``pytorch_model.bin`` with
    ``text_model.*`` keys and the ``position_ids`` buffer), ``text_encoder_2/`` as newer versions write it
    (``model.safetensors``), and ``state_dict.pt``."""
    root.mkdir(parents=True)
    model.unet.save_pretrained(root / "unet")
    for i, enc in enumerate(model.text_encoders):
        d = root / ("text_encoder" if i == 0 else f"text_encoder_{i + 1}")
        if i == 0:
            d.mkdir()
            enc.config.save_pretrained(d)
            sd = {("" if k.startswith("text_model.") else "text_model.") + k: v.clone()
                  for k, v in enc.state_dict().items()}
            sd["text_model.embeddings.position_ids"] = torch.arange(enc.config.max_position_embeddings)[None]
            torch.save(sd, d / "pytorch_model.bin")
        else:
            enc.save_pretrained(d)
    heads = {"visual_projection": model.visual_projection.state_dict(), "logit_scale": model.logit_scale.data.clone()}
    if model.text_projection is not None:
        heads["text_projection"] = model.text_projection.state_dict()
    torch.save(heads, root / "state_dict.pt")
    return root


def official_spm_state(model) -> dict[str, torch.Tensor]:
    """What DeepSpeed's fp32 conversion of the SPO trainer's StepAwarePreferenceModel holds (RockeyCoss/SPO@27a8642):
    ``model.*`` keys, with the position-id buffers older transformers saved."""
    from lpo_bench.baselines.spo.released import official_key

    sd = {official_key(k): v.clone() for k, v in model.state_dict().items()}
    vc = model.clip.config.vision_config
    n_text = model.clip.config.text_config.max_position_embeddings
    sd["model.text_model.embeddings.position_ids"] = torch.arange(n_text)[None]
    sd["model.vision_model.embeddings.position_ids"] = torch.arange((vc.image_size // vc.patch_size) ** 2 + 1)[None]
    return sd


def write_pickscore_skeleton_files(spm, weights_dir: Path) -> None:
    """PickScore_v1's ``config.json`` and the LAION CLIP-H tokenizer files, here of a tiny CLIP."""
    from lpo_bench.metrics.pickscore import LAION_H14_PROCESSOR, PICKSCORE_MODEL

    spm.clip.config.save_pretrained(weights_dir / PICKSCORE_MODEL.repo)
    proc = weights_dir / LAION_H14_PROCESSOR.repo
    spm.tokenizer.save_pretrained(proc)
    (proc / "preprocessor_config.json").write_text(json.dumps({"crop_size": 224}))


@pytest.fixture
def unpinned(monkeypatch):
    monkeypatch.setenv(released.ALLOW_UNPINNED_ENV, "1")


@pytest.fixture(scope="module")
def sd15():
    from lpo_bench.models.tiny import tiny_bundle

    return tiny_bundle("sd15", seed=0)


# ---------------------------------------------------------------------------- pure checks
def test_check_state_dict_passes_only_identical_keys_and_shapes():
    exp = {"a.weight": (4, 2), "b.bias": (3,)}
    check_state_dict(exp, {"b.bias": [3], "a.weight": [4, 2]}, source="f", layout="L")  # order does not matter
    cases = [
        ({"a.weight": (4, 2)}, "1 missing key(s), first b.bias"),
        ({**exp, "c": (1,)}, "1 unexpected key(s), first c"),
        ({"a.weight": (2, 4), "b.bias": (3,)}, "1 shape mismatch(es), first a.weight [2, 4] (expected [4, 2])"),
        ({"b.bias": (2,), "x": (1,), "y": (1,)},
         "1 missing key(s), first a.weight; 2 unexpected key(s), first x; 1 shape mismatch(es), first b.bias [2]"),
    ]
    for got, want in cases:
        with pytest.raises(HarnessError) as ei:
            check_state_dict(exp, got, source="ckpt.bin", layout="the X layout")
        msg = str(ei.value)
        assert want in msg and msg.startswith("ckpt.bin does not have the expected layout (the X layout)")
        assert "\n" not in msg


def test_position_id_buffers_are_dropped_only_when_default():
    state = {"text_model.embeddings.position_ids": torch.arange(5)[None], "w": torch.zeros(1)}
    assert set(drop_position_ids(state, {"w"}, "f")) == {"w"}
    assert set(drop_position_ids(state, set(state), "f")) == set(state)  # expected by the model: kept
    with pytest.raises(HarnessError, match="position_ids is not arange"):
        drop_position_ids({"embeddings.position_ids": torch.tensor([[0, 2, 1]])}, set(), "f")


def test_torch_pickles_are_read_weights_only(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.bin")
    assert torch.equal(read_state_dict(tmp_path / "ok.bin")["w"], torch.ones(2))
    torch.save({"w": torch.ones(2), "f": Path("x")}, tmp_path / "bad.bin")  # an arbitrary object: refused
    with pytest.raises(HarnessError, match="could not read .*bad.bin"):
        read_state_dict(tmp_path / "bad.bin")


def _entry(files, **kw) -> ReleasedModel:
    return ReleasedModel(name="x", kind="unet", backbone="sd15", repo_id="org/repo", revision=None, files=files,
                         importer="m:f", summary="s", source="c", layout="L", pin_note="no hash published", **kw)


def test_pins_refuse_mismatches_and_unpinned_files(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.json"
    pinned = _entry((ReleasedFile("a.bin", sha256="0" * 64), ReleasedFile("b.json")))
    paths, digests = {"a.bin": a, "b.json": b}, {"a.bin": "0" * 64, "b.json": "f" * 64}
    released.check_pins(pinned, paths, digests, unpinned_ok=True)
    with pytest.raises(HarnessError, match=r"released:x: 1 of its files have no pinned sha256 \(no hash published\), "
                                           r"e.g. b.json \(here sha256 f{64}\); set LPO_BENCH_ALLOW_UNPINNED=1"):
        released.check_pins(pinned, paths, digests, unpinned_ok=False)
    with pytest.raises(HarnessError, match=r"a.bin has sha256 111111111111\.\.\., not the pinned 000000000000"):
        released.check_pins(pinned, paths, {**digests, "a.bin": "1" * 64}, unpinned_ok=True)
    with pytest.raises(HarnessError, match="instead of the pinned a.bin"):
        released.check_pins(pinned, {**paths, "a.bin": tmp_path / "a.safetensors"}, digests, unpinned_ok=True)


def test_spm_official_key_names():
    from lpo_bench.baselines.spo.released import official_key

    assert official_key("adaln.12.1.bias") == "model.vision_model.encoder.layers.12.adaLN_modulation.1.bias"
    assert official_key("final_adaln.1.weight") == "model.vision_model.adaLN_modulation.1.weight"
    assert official_key("clip.vision_model.post_layernorm.weight") == "model.vision_model.post_layernorm.weight"
    assert official_key("clip.logit_scale") == "model.logit_scale"
    assert official_key("t_embedder.mlp.2.weight") == "model.t_embedder.mlp.2.weight"


# ---------------------------------------------------------------------------- the registry table
def test_every_entry_is_registered_described_and_honest_about_pins():
    entries = released.released_entries()
    assert {e.name for e in entries} == set(registry.RELEASED)
    for e in entries:
        assert e.kind in (released.UNET, released.STEP_REWARD_MODEL) and e.backbone in registry.BACKBONES
        assert registry.origin(e.importer).endswith(".py"), e.importer
        if e.kind == released.STEP_REWARD_MODEL:
            assert e.reward_model in registry.STEP_REWARD_MODELS
        else:
            assert e.method in registry.METHODS and e.protocol is not None and e.published_rows
        # no invented hash: an unpinned file or revision is explained
        if e.revision is None or any(f.sha256 is None for f in e.files):
            assert e.pin_note
    assert {e.ref for e in released.released_entries(released.STEP_REWARD_MODEL)} == {
        "released:lrm-sd15", "released:lrm-sdxl", "released:spm-sd15", "released:spm-sdxl"}


def test_unknown_and_mismatched_names_are_one_line_errors():
    with pytest.raises(HarnessError) as ei:
        released.resolve_released("released:lpo-sd16", kind=released.UNET)
    msg = str(ei.value)
    assert "unknown released model 'lpo-sd16'. Did you mean 'lpo-sd15'?" in msg and "spm-sdxl" in msg
    assert "\n" not in msg
    with pytest.raises(HarnessError, match=r"released:lrm-sd15 is a lrm, not a UNet \(for eval --model\); pass one of: "
                                           r"released:lpo-sd15, released:lpo-sdxl"):
        released.resolve_released("released:lrm-sd15", kind=released.UNET)
    with pytest.raises(HarnessError, match=r"released:spm-sd15 is a spm, not a lrm \(for --reward-model\); pass one "
                                           r"of: released:lrm-sd15, released:lrm-sdxl$"):
        released.resolve_released("released:spm-sd15", kind=released.STEP_REWARD_MODEL, reward_model="lrm")
    with pytest.raises(HarnessError, match="released:lpo-sdxl was trained for backbone sdxl, not sd15"):
        released.resolve_released("released:lpo-sdxl", kind=released.UNET, backbone="sd15")


def test_missing_files_name_the_first_missing_file_and_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv(released.RELEASED_DIR_ENV, raising=False)
    part = tmp_path / "casiatao" / "LPO" / "lpo_sd15_merge" / "unet"
    part.mkdir(parents=True)
    (part / "config.json").write_text("{}")
    with pytest.raises(HarnessError) as ei:
        released.resolve_released("released:lpo-sd15", kind=released.UNET, weights_dir=tmp_path)
    msg = str(ei.value)
    assert msg.startswith("weights not found: released:lpo-sd15 (casiatao/LPO@(no pinned revision)) file "
                          "lpo_sd15_merge/unet/diffusion_pytorch_model.safetensors; checked ")
    assert str(tmp_path / "casiatao" / "LPO") in msg and "the Hugging Face cache" in msg and "\n" not in msg


# ---------------------------------------------------------------------------- LRM
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_official_lrm_imports_strictly_and_scores_as_the_model_it_was_written_from(family, tmp_path, unpinned):
    from lpo_bench.methods.lpo.lrm import LatentRewardModel
    from lpo_bench.models.tiny import tiny_bundle

    bundle = tiny_bundle(family, seed=0)
    ref = perturb(LatentRewardModel.from_bundle(bundle), seed=1)
    with torch.no_grad():
        ref.logit_scale.fill_(2.0)
    write_official_lrm(ref, tmp_path / "casiatao" / "LRM" / f"lrm_{family}")
    lat = torch.randn(3, *bundle.latent_shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1, 501, 951])
    want = ref.eval().score_noisy(lat, t, PROMPTS)
    fresh = LatentRewardModel.from_bundle(bundle).eval().score_noisy(lat, t, PROMPTS)
    assert not torch.allclose(fresh, want, atol=1e-3)  # the check below can fail

    r = released.resolve_released(f"released:lrm-{family}", kind=released.STEP_REWARD_MODEL, reward_model="lrm",
                                  backbone=family, weights_dir=tmp_path)
    model = released.load_reward_model(r, bundle, device="cpu")
    assert torch.allclose(model.score_noisy(lat, t, PROMPTS), want, atol=1e-6, rtol=1e-6)
    assert set(r.provenance()["files"]) == {f.path for f in r.entry.files} and len(r.sha256) == 64


@pytest.mark.parametrize("damage, message", [
    ("rename-unet-key", r"unet/diffusion_pytorch_model.safetensors does not have the expected layout .*1 missing "
                        r"key\(s\), first conv_in.weight; 1 unexpected key\(s\), first conv_in.weights"),
    ("drop-text-projection", r"state_dict.pt does not have the expected layout \(a dict with keys \['logit_scale', "
                             r"'text_projection', 'visual_projection'\]\): it has "
                             r"\['logit_scale', 'visual_projection'\]"),
    ("visual-shape", r"state_dict.pt\[visual_projection\] does not have the expected layout .*shape mismatch\(es\), "
                     r"first weight \[32, 3\] \(expected \[32, \d+\]\)"),
    ("encoder-key", r"text_encoder/pytorch_model.bin does not have the expected layout .*1 missing key\(s\), first "
                    r"final_layer_norm.weight"),
    ("unet-config", r"unet/config.json describes another architecture than backbone tiny-sd15's .*first "
                    r"cross_attention_dim"),
])
def test_wrong_lrm_layouts_fail_in_one_line(damage, message, sd15, tmp_path, unpinned):
    from safetensors.torch import load_file, save_file

    from lpo_bench.methods.lpo.lrm import LatentRewardModel

    root = write_official_lrm(LatentRewardModel.from_bundle(sd15), tmp_path / "lrm_sd15")
    if damage == "rename-unet-key":
        f = root / "unet" / "diffusion_pytorch_model.safetensors"
        sd = load_file(str(f))
        sd["conv_in.weights"] = sd.pop("conv_in.weight")
        save_file(sd, str(f))
    elif damage in ("drop-text-projection", "visual-shape"):
        heads = torch.load(root / "state_dict.pt", weights_only=True)
        if damage == "drop-text-projection":
            heads.pop("text_projection")
        else:
            heads["visual_projection"] = {"weight": torch.zeros(32, 3)}
        torch.save(heads, root / "state_dict.pt")
    elif damage == "encoder-key":
        sd = torch.load(root / "text_encoder" / "pytorch_model.bin", weights_only=True)
        sd.pop("text_model.final_layer_norm.weight")
        torch.save(sd, root / "text_encoder" / "pytorch_model.bin")
    else:
        cfg = json.loads((root / "unet" / "config.json").read_text())
        cfg["cross_attention_dim"] = 1024
        (root / "unet" / "config.json").write_text(json.dumps(cfg))
    r = released.resolve_released("released:lrm-sd15", kind=released.STEP_REWARD_MODEL, weights_dir=tmp_path)
    with pytest.raises(HarnessError, match=message) as ei:
        released.load_reward_model(r, sd15, device="cpu")
    assert "\n" not in str(ei.value) and str(ei.value).startswith("released:lrm-sd15 ")


def test_unpinned_files_are_refused_by_default(sd15, tmp_path, monkeypatch):
    from lpo_bench.methods.lpo.lrm import LatentRewardModel

    monkeypatch.delenv(released.ALLOW_UNPINNED_ENV, raising=False)
    write_official_lrm(LatentRewardModel.from_bundle(sd15), tmp_path / "lrm_sd15")
    with pytest.raises(HarnessError, match=r"released:lrm-sd15: 5 of its files have no pinned sha256 \(the authors "
                                           r"publish no sha256.*\), e.g. lrm_sd15/unet/config.json \(here sha256 "
                                           r"[0-9a-f]{64}\); set LPO_BENCH_ALLOW_UNPINNED=1"):
        released.resolve_released("released:lrm-sd15", kind=released.STEP_REWARD_MODEL, weights_dir=tmp_path)


# ---------------------------------------------------------------------------- SPM
def _tiny_spm(bundle, seed: int):
    from lpo_bench.baselines.spo.spm import StepAwarePreferenceModel

    return StepAwarePreferenceModel.tiny(bundle.tokenizers[0], text_encoder=bundle.text_encoders[0], seed=seed)


def test_official_spm_imports_strictly_and_scores_as_the_model_it_was_written_from(sd15, tmp_path, monkeypatch,
                                                                                 unpinned):
    from lpo_bench.baselines.spo.released import load_official_spm

    ref = perturb(_tiny_spm(sd15, 0), seed=2).eval()
    state = official_spm_state(ref)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 500, 999])
    want = ref.score(images, t, PROMPTS)
    other = _tiny_spm(sd15, 1).eval()
    assert not torch.allclose(other.score(images, t, PROMPTS), want, atol=1e-3)
    assert torch.allclose(load_official_spm(other, dict(state), "f").score(images, t, PROMPTS), want, atol=1e-6)

    # through released:spm-sd15, from a local directory: the file, PickScore_v1's config and the LAION tokenizer
    monkeypatch.delenv(released.RELEASED_DIR_ENV, raising=False)
    repo = tmp_path / "SPO-Diffusion-Models" / "Step-Aware_Preference_Models"
    repo.mkdir(parents=True)
    torch.save(state, repo / "sd-v1-5_step-aware_preference_model.bin")
    write_pickscore_skeleton_files(ref, tmp_path)
    r = released.resolve_released("released:spm-sd15", kind=released.STEP_REWARD_MODEL, reward_model="spm",
                                  backbone="sd15", weights_dir=tmp_path)
    model = released.load_reward_model(r, sd15, device="cpu")
    assert model.base == "pickscore" and not model.antialias
    assert torch.allclose(model.score(images, t, PROMPTS), want, atol=1e-6)

    state["vision_model.post_layernorm.weight"] = state.pop("model.vision_model.post_layernorm.weight")
    with pytest.raises(HarnessError, match=r"1 missing key\(s\), first model.vision_model.post_layernorm.weight; 1 "
                                           r"unexpected key\(s\), first vision_model.post_layernorm.weight"):
        load_official_spm(_tiny_spm(sd15, 1), state, "f")


# ---------------------------------------------------------------------------- UNets and eval --model
def _released_unet_dir(bundle, weights_dir: Path, repo: str, folder: str, seed: int = 3) -> torch.nn.Module:
    import copy

    unet = perturb(copy.deepcopy(bundle.unet), seed=seed)
    unet.save_pretrained(weights_dir / repo / folder)
    return unet


def test_released_unet_loads_strictly_into_the_backbone(sd15, tmp_path, unpinned):
    from safetensors.torch import load_file, save_file

    from lpo_bench.evaluation.models import load_model, resolve_model

    want = _released_unet_dir(sd15, tmp_path, "casiatao/LPO", "lpo_sd15_merge/unet")
    spec = resolve_model("released:lpo-sd15", weights_dir=tmp_path)
    assert spec.kind == "released" and spec.backbone == "sd15" and spec.tag == "released-lpo-sd15"
    assert spec.describe()["released"]["repo_id"] == "casiatao/LPO"
    import copy

    bundle = load_model(spec, weights_dir=tmp_path, device="cpu", bundle=copy.deepcopy(sd15))
    got = bundle.unet.state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.state_dict().items()) and not bundle.unet.training

    f = tmp_path / "casiatao/LPO/lpo_sd15_merge/unet/diffusion_pytorch_model.safetensors"
    sd = load_file(str(f))
    sd["conv_out.bias"] = sd["conv_out.bias"][:2]
    save_file(sd, str(f))
    spec = resolve_model("released:lpo-sd15", weights_dir=tmp_path)
    with pytest.raises(HarnessError, match=r"released:lpo-sd15 .*diffusion_pytorch_model.safetensors does not have the "
                                           r"expected layout .*1 shape mismatch\(es\), first conv_out.bias \[2\] "
                                           r"\(expected \[4\]\)"):
        load_model(spec, weights_dir=tmp_path, device="cpu", bundle=copy.deepcopy(sd15))


def test_eval_released_resolves_offline_from_the_released_dir_env(tmp_path, monkeypatch, unpinned):
    """(The backbone is passed in: the registered sd15 would sample the tiny UNet at 512 px; loading a registered
    backbone from --weights-dir is tested in test_backbones.)"""
    from lpo_bench.data.suites import get_suite
    from lpo_bench.evaluation import eval_run
    from lpo_bench.models.tiny import tiny_bundle

    bundle = tiny_bundle("sd15", seed=0)
    want = _released_unet_dir(bundle, tmp_path / "copies", "mhdang/dpo-sd1.5-text2image-v1", "unet")
    monkeypatch.setenv(released.RELEASED_DIR_ENV, str(tmp_path / "copies"))
    run = eval_run("released:diffusion-dpo-sd15", get_suite("toy-general"), max_prompts=2, images_per_prompt=1,
                   bundle=bundle, out_root=tmp_path / "runs", device="cpu", log=lambda *_: None)
    assert all(torch.equal(bundle.unet.state_dict()[k], v) for k, v in want.state_dict().items())
    info = json.loads((run / "run.json").read_text())
    assert records.is_done(run) and info["model_spec"]["kind"] == "released"
    assert "released-diffusion-dpo-sd15" in run.name
    rel = info["model_spec"]["released"]
    assert rel["name"] == "released:diffusion-dpo-sd15" and rel["protocol"]["guidance_scale"] == 7.5
    assert all(not f["pinned"] for f in rel["files"].values())
    meas = records.read_measurements(run / "measurements.parquet")
    assert set(meas["method"]) == {"released"} and (meas["kind"] == "eval_metric").any()


# ---------------------------------------------------------------------------- --reward-model released:...
def test_train_and_step_accuracy_take_a_released_lrm(tiny_pairs, tmp_path, unpinned):
    from lpo_bench.config import parse_set
    from lpo_bench.data.prompts import PromptList
    from lpo_bench.evaluation.step_accuracy import step_accuracy_run
    from lpo_bench.harness.train import TrainRequest, train_run
    from lpo_bench.methods.lpo.lrm import LatentRewardModel
    from lpo_bench.models.tiny import tiny_bundle

    bundle = tiny_bundle("sd15", seed=0)
    ref = perturb(LatentRewardModel.from_bundle(bundle), seed=1)
    write_official_lrm(ref, tmp_path / "w" / "lrm_sd15")  # the configs' relative ft_model_path layout
    fast = parse_set(["num_inference_steps=4", "prompts_per_round=2", "train_batch_pairs=2", "num_train_prompts=4",
                      "epochs=1", "max_updates=1", "threshold_min=0.0", "threshold_max=0.0", "lora_rank=2"])
    req = TrainRequest(method="lpo", backbone="sd15", overrides=fast, reward_model="released:lrm-sd15",
                       weights_dir=str(tmp_path / "w"), out_root=str(tmp_path / "runs"))
    run = train_run(req, bundle=bundle, prompts=PromptList(tuple(PROMPTS)), log=lambda *_: None)
    info = json.loads((run / "run.json").read_text())
    stage = info["reward_stage"]
    assert stage["source"] == "released:lrm-sd15"
    assert stage["released"]["sha256"] == info["inputs"]["reward_model_sha256"]
    assert info["ledger"]["seconds_by_phase"].get("RM_TRAIN", 0.0) == 0.0 and info["updates"] == 1
    lat = torch.randn(2, *bundle.latent_shape, generator=torch.Generator().manual_seed(0))
    used = LatentRewardModel.load(stage["model_dir"], bundle)  # what the method loaded: the imported weights
    assert torch.allclose(used.score_noisy(lat, torch.tensor([1, 951]), PROMPTS[:2]),
                          ref.eval().score_noisy(lat, torch.tensor([1, 951]), PROMPTS[:2]), atol=1e-6)

    sa = step_accuracy_run(pairs_dir=tiny_pairs, backbone="sd15", reward_models=[Path("released:lrm-sd15")],
                           timesteps=[1, 501], max_pairs=4, weights_dir=str(tmp_path / "w"),
                           bundle=tiny_bundle("sd15", seed=0),  # the run above put LoRA layers into its bundle
                           out_root=tmp_path / "runs", log=lambda *_: None)
    meas = records.read_measurements(sa / "measurements.parquet")
    assert set(meas["metric"]) == {"released:lrm-sd15", "released:lrm-sd15+shuffled-prompt"} and len(meas) == 4
    assert meas["scorer_checkpoint"].iloc[0] == "released:lrm-sd15=casiatao/LRM@unpinned"
    with pytest.raises(HarnessError, match="released:lrm-sd15 is a lrm, not a spm"):
        train_run(TrainRequest(method="spo", backbone="sd15", reward_model="released:lrm-sd15",
                               weights_dir=str(tmp_path / "w"), out_root=str(tmp_path / "runs")), bundle=bundle,
                  prompts=PromptList(tuple(PROMPTS)), log=lambda *_: None)


# ---------------------------------------------------------------------------- compare
def _fake_released_eval(root: Path, name: str, backbone_id: str, values: dict[str, tuple[float, float, float]],
                        guidance: float) -> Path:
    """A finished eval run of ``released:<name>`` on the general suite with the given (value, lo, hi) per metric."""
    entry = released.released_entry(name)
    run_id = f"released-{name}-general-validation_unique-fixture"
    d = root / "eval" / run_id
    d.mkdir(parents=True)
    prov = {"git_commit": "c0ffee", "git_dirty": False, "device_name": "cpu", "device_count": 1}
    records.atomic_write_json(d / "run.json", {
        "run_id": run_id, "kind": "eval", "model": entry.ref, "backbone": entry.backbone,
        "model_spec": {"kind": "released", "backbone": entry.backbone, "released": entry.describe()},
        "backbone_provenance": {"backbone_id": backbone_id}, "suite": {"name": "general"},
        "split": "validation_unique", "n_prompts": 500, "inputs_sha256": "ab" * 32, "provenance": prov,
        "sampler": {"guidance_scale": guidance}, "status": "done"})
    rows = [{"kind": "eval_metric", "suite": "general", "metric": m, "category": "pickapic_v1", "value": v,
             "ci_low": lo, "ci_high": hi, "n": 500, "n_prompts": 500, "higher_is_better": True}
            for m, (v, lo, hi) in values.items()]
    records.write_measurements(d, rows, {"run_id": run_id, "method": "released", "backbone_id": backbone_id, **prov})
    records.mark_done(d)
    return d


def test_compare_sets_released_models_beside_their_published_rows(tmp_path):
    import pandas as pd

    from lpo_bench.analysis.compare import compare

    _fake_released_eval(tmp_path, "lpo-sd15", SD15_ID, {"pickscore": (21.60, 21.50, 21.65),
                                                        "imagereward": (0.70, 0.60, 0.80)}, 5.0)
    _fake_released_eval(tmp_path, "diffusion-dpo-sd15", SD15_ID, {"pickscore": (20.90, 20.80, 20.95)}, 5.0)
    out = tmp_path / "rep"
    compare([tmp_path], out)
    df = pd.read_csv(out / "released_vs_published_general.csv")
    lpo = df[df["released_model"] == "released:lpo-sd15"].set_index("metric")
    assert list(lpo["published_row"]) == ["LPO", "LPO"]  # tab2 only: no GenEval or CompBench measured
    assert lpo.loc["pickscore", "published"] == pytest.approx(21.69)
    assert lpo.loc["pickscore", "measured_minus_published"] == pytest.approx(21.60 - 21.69)
    assert not lpo.loc["pickscore", "published_in_ci"]  # 21.69 is above the CI's 21.65
    assert lpo.loc["imagereward", "published"] == pytest.approx(0.6588) and lpo.loc["imagereward", "published_in_ci"]
    dpo = df[df["released_model"] == "released:diffusion-dpo-sd15"].iloc[0]
    assert dpo["published"] == pytest.approx(20.99) and not dpo["same_guidance"] and dpo["guidance_scale_paper"] == 7.5
    assert math.isclose(dpo["measured_minus_published"], 20.90 - 20.99, abs_tol=1e-9)
    page = (out / "report.md").read_text()
    assert "Released models: measured here beside the published numbers" in page and "5 / 7.5 (differs)" in page
