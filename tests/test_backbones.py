"""Backbone bundles (tiny, in-process) and the offline-first loaders of the real backbones."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_diffusers_dir

from lpo_bench.errors import HarnessError
from lpo_bench.models import backbones
from lpo_bench.models.backbones import (
    BACKBONE_SPECS,
    SD15,
    SD21,
    SDXL,
    load_dir,
    load_from_components,
)
from lpo_bench.models.tiny import clip_tokenizer, tiny_bundle, tiny_components

os.environ.setdefault("HF_HUB_OFFLINE", "1")


FAMILIES = ("sd15", "sd21", "sdxl")
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundles():
    return {f: tiny_bundle(f) for f in FAMILIES}


@pytest.fixture(scope="module")
def sd15_dir(tmp_path_factory):
    return tiny_diffusers_dir(tmp_path_factory.mktemp("w"), "sd15")


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, whatever the developer's machine holds."""
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


# ---------------------------------------------------------------------------- tiny bundles
@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_step_shapes_and_finiteness(bundles, family):
    b = bundles[family]
    prompts = ["a photo of a cat", "two red cubes"]
    cond, uncond = b.encode_prompts(prompts), b.encode_negative(2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *b.latent_shape, generator=g)
    assert x.shape == (2, 4, 8, 8)
    ddim = b.ddim_scheduler(20)
    t = ddim.timesteps[0]
    eps = b.guided_eps(x, t, cond, uncond, guidance_scale=5.0)
    assert eps.shape == x.shape and torch.isfinite(eps).all()
    x_prev = ddim.step(eps, t, x).prev_sample
    img = b.decode(x_prev)
    assert img.shape == (2, 3, 32, 32) and torch.isfinite(img).all()
    assert img.min() >= 0 and img.max() <= 1
    # CFG with scale 1 is the conditional prediction; prompts change the prediction.
    e1 = b.guided_eps(x, t, cond, uncond, guidance_scale=1.0)
    assert torch.allclose(e1, b.unet_forward(x, t, cond))
    assert not torch.allclose(b.unet_forward(x, t, cond), b.unet_forward(x, t, uncond))


def test_text_paths_follow_the_backbone(bundles):
    sd15, sd21, sdxl = bundles["sd15"], bundles["sd21"], bundles["sdxl"]
    for b in (sd15, sd21):
        e = b.encode_prompts(["a cat"])
        assert len(b.text_encoders) == 1 and e.time_ids is None
        assert e.hidden.shape == (1, 77, b.unet.config.cross_attention_dim)
    assert sd21.unet.config.use_linear_projection and list(sd21.unet.config.attention_head_dim) == [2, 4]
    assert not sd15.unet.config.use_linear_projection

    e = sdxl.encode_prompts(["a cat", "a dog"])
    assert len(sdxl.text_encoders) == 2 and len(sdxl.tokenizers) == 2
    assert sdxl.unet.config.addition_embed_type == "text_time"
    d1, d2 = (enc.config.hidden_size for enc in sdxl.text_encoders)
    assert e.hidden.shape == (2, 77, d1 + d2) == (2, 77, sdxl.unet.config.cross_attention_dim)
    assert e.pooled.shape == (2, sdxl.text_encoders[1].config.projection_dim)
    assert torch.equal(e.time_ids, torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2))
    neg = sdxl.encode_negative(2)
    assert sdxl.force_zeros_for_empty_prompt and neg.hidden.abs().sum() == 0 and neg.pooled.abs().sum() == 0
    # The added conditioning is used: other time_ids give another prediction.
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([500, 500])
    other = type(e)(e.hidden, e.pooled, e.time_ids * 2)
    assert not torch.allclose(sdxl.unet_forward(x, t, e), sdxl.unet_forward(x, t, other))


def test_vae_scaling_factors(bundles):
    assert bundles["sd15"].scaling_factor == pytest.approx(0.18215)
    assert bundles["sdxl"].scaling_factor == pytest.approx(0.13025)


def test_ddim_timesteps_and_training_schedule(bundles):
    b = bundles["sd15"]
    assert b.ddim_scheduler(20).timesteps.tolist() == list(range(951, 0, -50))
    s = b.scheduler
    assert (s.config.beta_schedule, s.config.beta_start, s.config.beta_end) == (
        "scaled_linear",
        0.00085,
        0.012,
    )
    assert b.num_train_timesteps == 1000
    # scaled_linear: beta_t = (sqrt(b0) + t/999 (sqrt(b1) - sqrt(b0)))^2
    assert float(s.betas[-1]) == pytest.approx(0.012, rel=1e-5)
    assert float(s.alphas_cumprod[0]) == pytest.approx(1 - 0.00085, rel=1e-6)


def test_clip_tokenizer_matches_openai_clip_ids():
    tok = clip_tokenizer()
    assert len(tok) == 49408
    # Known CLIP BPE ids (openai/clip-vit-large-patch14 tokenizer).
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    ids = tok(["x"], padding="max_length", max_length=6, return_tensors="pt").input_ids[0].tolist()
    assert ids == [49406, 343, 49407, 49407, 49407, 49407]
    ids = clip_tokenizer(pad_token="!")(["x"], padding="max_length", max_length=6).input_ids[0]
    assert ids == [49406, 343, 49407, 0, 0, 0]


def test_tiny_bundle_is_seeded():
    a, b, c = tiny_bundle("sd15", seed=3), tiny_bundle("sd15", seed=3), tiny_bundle("sd15", seed=4)
    assert a.provenance["weights_sha256"] == b.provenance["weights_sha256"] != c.provenance["weights_sha256"]
    assert a.provenance["weights_sha256"] != tiny_bundle("sd21", seed=3).provenance["weights_sha256"]


# ---------------------------------------------------------------------------- loaders
def test_SD15_from_weights_dir_matches_tiny_bundle(bundles, sd15_dir, empty_hf_cache):
    b = SD15(weights_dir=sd15_dir)
    ref = bundles["sd15"]
    e, e_ref = b.encode_prompts(["a cat"]), ref.encode_prompts(["a cat"])
    assert torch.equal(e.hidden, e_ref.hidden)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    assert torch.equal(b.unet_forward(x, t, e), ref.unet_forward(x, t, e_ref))
    unet_file = sd15_dir / "unet" / "diffusion_pytorch_model.safetensors"
    assert b.provenance["weights_sha256"] == hashlib.sha256(unet_file.read_bytes()).hexdigest()
    spec = BACKBONE_SPECS["sd15"]
    assert (b.provenance["backbone_id"], b.provenance["backbone_revision"]) == (spec.model_id, spec.revision)
    assert b.provenance["dtype"] == "fp32" and b.text_kind == "sd" and b.resolution == 512
    assert type(b.scheduler).__name__ == "DDPMScheduler"
    assert not any(p.requires_grad for p in b.unet.parameters())


def test_load_from_hf_cache_at_pinned_revision(sd15_dir, empty_hf_cache):
    spec = BACKBONE_SPECS["sd21"]
    snap = empty_hf_cache / f"models--{spec.model_id.replace('/', '--')}" / "snapshots" / spec.revision
    shutil.copytree(sd15_dir, snap)
    b = SD21()
    assert b.provenance["backbone_revision"] == spec.revision
    assert Path(b.provenance["weights_path"]) == snap
    with pytest.raises(HarnessError, match="deadbeef"):
        SD21(revision="deadbeef" * 5)


def test_SDXL_uses_the_fp16_fix_vae_repo(tmp_path, empty_hf_cache):
    root = tmp_path / "weights"
    root.mkdir()
    shutil.move(str(tiny_diffusers_dir(tmp_path, "sdxl")), root / "stable-diffusion-xl-base-1.0")
    with pytest.raises(HarnessError, match="madebyollin/sdxl-vae-fp16-fix"):
        SDXL(weights_dir=root)
    vae = tiny_components("sdxl", seed=7)["vae"]
    vae.save_pretrained(root / "sdxl-vae-fp16-fix")
    b = SDXL(weights_dir=root)
    assert b.text_kind == "sdxl" and b.force_zeros_for_empty_prompt and len(b.text_encoders) == 2
    assert b.provenance["vae_id"] == "madebyollin/sdxl-vae-fp16-fix"
    assert torch.equal(b.vae.decoder.conv_out.weight, vae.decoder.conv_out.weight)
    e = b.encode_prompts(["a cat"])
    assert torch.isfinite(b.unet_forward(torch.randn(1, 4, 8, 8), torch.tensor([10]), e)).all()


def test_missing_weights_error_is_fast_and_actionable(tmp_path):
    """Fresh interpreter, empty HF_HOME, offline: a HarnessError before torch is ever imported."""
    code = (
        "import sys\n"
        "from lpo_bench.models.backbones import SD15\n"
        "from lpo_bench.errors import HarnessError\n"
        "try:\n"
        "    SD15()\n"
        "except HarnessError as e:\n"
        "    print('ERR', e)\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    ).stdout
    assert "ERR weights not found: stable-diffusion-v1-5/stable-diffusion-v1-5@451f4fe" in out
    assert "unet/diffusion_pytorch_model.safetensors" in out and "--weights-dir" in out and "HF_HOME" in out
    assert str(tmp_path / "hf" / "hub") in out
    assert "TORCH False" in out


def test_opt_in_download_fetches_only_the_needed_files(sd15_dir, empty_hf_cache, monkeypatch):
    """The download branch, with the hub replaced by a fake that serves the tiny pipeline."""
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, *, revision, allow_patterns, local_files_only=False):
        calls.append((repo_id, revision, list(allow_patterns), local_files_only))
        if local_files_only:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        return str(sd15_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr("lpo_bench.models.weights._check_hub_reachable", lambda *a, **k: None)  # the fake hub is "up"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    b = SD15(allow_download=True)
    assert b.provenance["backbone_revision"] == BACKBONE_SPECS["sd15"].revision
    downloads = [c for c in calls if not c[3]]
    assert len(downloads) == 1 and downloads[0][0] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    patterns = downloads[0][2]
    assert "unet/diffusion_pytorch_model.safetensors" in patterns and "unet/*" not in patterns
    assert not any(p.endswith(".bin") or "fp16" in p for p in patterns)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline wins over the opt-in: no hub call at all
    calls.clear()
    with pytest.raises(HarnessError, match="weights not found"):
        SD15(allow_download=True)
    assert all(c[3] for c in calls)


def test_partial_weights_dir_names_the_missing_file(tmp_path, sd15_dir, empty_hf_cache):
    partial = tmp_path / "partial"
    shutil.copytree(sd15_dir, partial)
    (partial / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(
        HarnessError, match=r"file vae/diffusion_pytorch_model\.safetensors; checked .*partial"
    ):
        SD15(weights_dir=partial)
    with pytest.raises(HarnessError, match=r"vae/diffusion_pytorch_model\.safetensors is missing"):
        load_dir(partial, "sd15")


def test_half_precision_prefers_fp16_variant_and_falls_back(tmp_path, sd15_dir, empty_hf_cache):
    b = SD15(weights_dir=sd15_dir, dtype="bf16")  # only fp32 files present
    assert b.dtype == torch.bfloat16 and b.provenance["weights_variant"] == "fp32"
    assert b.text_encoders[0].dtype == torch.bfloat16
    fp16_dir = tmp_path / "fp16"
    shutil.copytree(sd15_dir, fp16_dir)
    for sub, stem in (
        ("unet", "diffusion_pytorch_model"),
        ("vae", "diffusion_pytorch_model"),
        ("text_encoder", "model"),
    ):
        (fp16_dir / sub / f"{stem}.safetensors").rename(fp16_dir / sub / f"{stem}.fp16.safetensors")
    b16 = SD15(weights_dir=fp16_dir, dtype="fp16")
    assert b16.provenance["weights_variant"] == "fp16" and b16.dtype == torch.float16


def test_load_dir_and_bad_arguments(sd15_dir, empty_hf_cache):
    b = load_dir(sd15_dir, "sd15")
    assert b.provenance["backbone_revision"] == "local" and b.name == "sd15-local"
    with pytest.raises(HarnessError, match="unknown dtype"):
        SD15(weights_dir=sd15_dir, dtype="fp8")
    with pytest.raises(HarnessError, match="family"):
        load_dir(sd15_dir, "sd3")
    with pytest.raises(HarnessError, match="text_encoder_2"):
        load_dir(sd15_dir, "sdxl")


def test_load_from_components_freezes_and_builds_ddpm():
    c = tiny_components("sd15", seed=1)
    c["unet"].requires_grad_(True)
    b = load_from_components(
        "mine",
        c["unet"],
        c["vae"],
        (c["text_encoder"],),
        (c["tokenizer"],),
        c["scheduler"],
        text_kind="sd",
        resolution=32,
        provenance={"backbone_id": "mine"},
    )
    assert not any(p.requires_grad for p in b.unet.parameters())
    assert type(b.scheduler).__name__ == "DDPMScheduler" and b.provenance == {"backbone_id": "mine"}
    with pytest.raises(HarnessError, match="text_kind"):
        load_from_components(
            "x", c["unet"], c["vae"], (), (), c["scheduler"], text_kind="sd3", resolution=32, provenance={}
        )


def test_specs_are_pinned_to_commits():
    for name, spec in BACKBONE_SPECS.items():
        assert spec.family == name
        for rev in (spec.revision, spec.vae_revision):
            if rev is not None:
                assert len(rev) == 40 and int(rev, 16) >= 0
    assert backbones.BACKBONE_SPECS["sdxl"].vae_id == "madebyollin/sdxl-vae-fp16-fix"


def test_unreachable_hub_fails_fast_with_one_error(empty_hf_cache, monkeypatch):
    """An opted-in download against an unreachable hub is one HarnessError, not minutes of retries."""
    import socket

    def refuse(*a, **k):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(HarnessError, match="unreachable.*--weights-dir"):
        SD15(allow_download=True)
