"""Toy backbone: shipped tokenizer and weights, strict loading, deterministic pretraining."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lpo_bench.errors import HarnessError
from lpo_bench.toy import world
from lpo_bench.toy.models import (
    BASE_WEIGHTS_DIR,
    TOKENIZER_DIR,
    TOY_BACKBONE_ID,
    TOY_MODEL_VERSION,
    WEIGHT_FILES,
    load_toy_bundle,
    load_toy_tokenizer,
    write_toy_tokenizer,
)
from lpo_bench.toy.pretrain import flip_prompt, min_snr_weights, pretrain


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LPO_BENCH_CACHE", str(tmp_path_factory.mktemp("cache")))  # no stale sha256 hits


@pytest.fixture(scope="module")
def bundle():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads crawl when the 2-core machine is oversubscribed
    yield load_toy_bundle()
    torch.set_num_threads(threads)


def test_shipped_model_loads_offline_and_generates(bundle) -> None:
    from lpo_bench.diffusion.generate import generate_images

    assert bundle.name == "toy" and bundle.resolution == 32 and bundle.text_kind == "sd"
    assert bundle.latent_shape == (4, 8, 8)
    prov = bundle.provenance
    assert prov["backbone_id"] == TOY_BACKBONE_ID and prov["backbone_revision"] == TOY_MODEL_VERSION
    assert len(prov["weights_sha256"]) == 64 and set(prov["weights_files_sha256"]) == set(WEIGHT_FILES)
    rng = np.random.default_rng(0)
    prompts = [world.sample_prompt(rng).text for _ in range(4)]
    images = generate_images(bundle, prompts, [0, 1, 2, 3], num_inference_steps=20, guidance_scale=5.0)
    assert images.shape == (4, 3, 32, 32)
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    assert images.std() > 0.05  # not a blank canvas


def test_pooled_output_is_the_eos_position(bundle) -> None:
    tok, enc = bundle.tokenizers[0], bundle.text_encoders[0]
    ids = tok(["a red circle"], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    out = enc(ids)
    eos_pos = int((ids[0] == tok.eos_token_id).nonzero()[0])
    assert eos_pos == 4
    torch.testing.assert_close(out.pooler_output[0], out.last_hidden_state[0, eos_pos])


def test_every_vocab_word_is_one_token_and_round_trips() -> None:
    tok = load_toy_tokenizer()
    unk = tok.unk_token_id
    ids = {w: tok(w, add_special_tokens=False).input_ids for w in world.VOCAB}
    assert all(len(v) == 1 and v[0] != unk for v in ids.values()), ids
    assert len({v[0] for v in ids.values()}) == len(world.VOCAB)
    rng = np.random.default_rng(1)
    longest = max(len(world.sample_prompt(rng).text.split()) for _ in range(500))
    assert longest + 2 <= tok.model_max_length
    for family in world.FAMILIES:
        text = world.sample_prompt(rng, family).text
        enc = tok(text, padding="max_length", max_length=tok.model_max_length).input_ids
        assert enc[0] == tok.bos_token_id and len(enc) == tok.model_max_length
        assert len(tok(text, add_special_tokens=False).input_ids) == len(text.split())
        assert tok.decode(enc, skip_special_tokens=True) == text


def test_shipped_tokenizer_matches_the_world_vocabulary(tmp_path: Path) -> None:
    rebuilt = write_toy_tokenizer(tmp_path, world.VOCAB)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (rebuilt / name).read_bytes() == (TOKENIZER_DIR / name).read_bytes(), name


def test_flip_prompt_swaps_only_left_and_right() -> None:
    assert flip_prompt("a red circle on the left of a blue square") == "a red circle on the right of a blue square"
    assert flip_prompt("a red circle above a blue square") == "a red circle above a blue square"


def test_min_snr_weights_hand_values() -> None:
    # SNR = a / (1 - a): 1/9, 1, 9, 99 -> weights min(SNR, 5) / SNR = 1, 1, 5/9, 5/99
    w = min_snr_weights(torch.tensor([0.1, 0.5, 0.9, 0.99], dtype=torch.float64), 5.0)
    torch.testing.assert_close(w, torch.tensor([1.0, 1.0, 5 / 9, 5 / 99], dtype=torch.float64))


def _sha(path: Path) -> dict[str, str]:
    return {k: hashlib.sha256((path / rel).read_bytes()).hexdigest() for k, rel in WEIGHT_FILES.items()}


def test_pretrain_is_deterministic(tmp_path: Path) -> None:
    kw = dict(steps_vae=3, steps_unet=3, batch_size=8, log=lambda _: None)
    r1 = pretrain(tmp_path / "a", seed=0, **kw)
    r2 = pretrain(tmp_path / "b", seed=0, **kw)
    pretrain(tmp_path / "c", seed=1, **kw)
    assert _sha(tmp_path / "a") == _sha(tmp_path / "b") == r1["weights_sha256"] == r2["weights_sha256"]
    diff = _sha(tmp_path / "c")
    assert all(diff[k] != r1["weights_sha256"][k] for k in diff)
    assert (tmp_path / "a" / "pretrain_report.json").exists()
    b = load_toy_bundle(weights_dir=tmp_path / "a")  # the layout load_toy_bundle reads
    assert b.provenance["weights_path"] == str(tmp_path / "a")
    assert b.provenance["weights_sha256"] == r1["sha256"]


def _copy_base(tmp_path: Path) -> Path:
    dst = tmp_path / "toy"
    shutil.copytree(BASE_WEIGHTS_DIR, dst)
    return dst


def test_corrupt_weights_raise_harness_error(tmp_path: Path) -> None:
    root = _copy_base(tmp_path)
    (root / WEIGHT_FILES["vae"]).write_bytes(b"not a safetensors file")
    with pytest.raises(HarnessError, match="vae weights unreadable"):
        load_toy_bundle(weights_dir=tmp_path)


def test_wrong_shape_weights_raise_harness_error(tmp_path: Path) -> None:
    root = _copy_base(tmp_path)
    path = root / WEIGHT_FILES["unet"]
    state = load_file(str(path))
    key = "conv_in.weight"
    state[key] = torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])
    save_file(state, str(path))
    with pytest.raises(HarnessError, match="do not match the toy architecture"):
        load_toy_bundle(weights_dir=tmp_path)


def test_missing_weights_raise_harness_error(tmp_path: Path) -> None:
    root = _copy_base(tmp_path)
    (root / WEIGHT_FILES["text_encoder"]).unlink()
    with pytest.raises(HarnessError, match="text encoder weights missing"):
        load_toy_bundle(weights_dir=root)
