"""Diffusion-DPO at scale: the on-disk latent cache (content, determinism, completing an interrupted PREP, workers),
undecodable pairs, global batches (micro-batching and process count do not change an update)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import launch, method_ctx

from lpo_bench.baselines.diffusion_dpo.config import DiffusionDPOConfig
from lpo_bench.config import build_config
from lpo_bench.data.pairs import open_pairs
from lpo_bench.errors import HarnessError
from lpo_bench.models import tiny

BASE = {"pairs_per_update": 4, "micro_batch_pairs": 4, "max_updates": 2, "lr": 1e-4, "scale_lr": False,
        "lr_warmup_updates": 0, "lora_rank": 0, "random_flip": True, "encode_batch": 4, "latent_cache_shard_pairs": 8}
SCRIPT = Path(__file__).parent / "scripts" / "dpo_ddp.py"


def _setup(pairs, run_dir, bundle=None, **over):
    from lpo_bench.baselines.diffusion_dpo.method import DiffusionDPO

    ctx = method_ctx(bundle or tiny.tiny_bundle("sd15", seed=0), build_config(DiffusionDPOConfig, {**BASE, **over}),
                     run_dir, pairs=pairs)
    m = DiffusionDPO()
    m.setup(ctx)
    return m, ctx


def _encodes(run_dir):
    n = 0
    for line in (run_dir / "ledger.jsonl").read_text().splitlines():
        n += json.loads(line).get("counts", {}).get("vae_encode", 0)
    return n


def _cache_files(run_dir):
    root = run_dir / "latent_cache"
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.suffix in (".bin", ".npy")}


def test_the_cache_holds_each_winner_and_loser_posterior(tiny_pairs, tmp_path):
    m, ctx = _setup(tiny_pairs, tmp_path / "run")
    ix = open_pairs(tiny_pairs, "train", drop_ties=True)
    assert m.n_pairs == len(ix) and m.cache.streams == ("w", "l", "w_flip", "l_flip")
    assert len(list((tmp_path / "run" / "latent_cache").glob("shard-*.bin"))) == -(-len(ix) // 8)
    rows = np.array([len(ix) - 1, 0, 5])
    data = m.cache.read(rows)
    im0, im1 = ix.images(rows, 0, resolution=32), ix.images(rows, 1, resolution=32)
    win0 = torch.from_numpy(ix.label_0[rows] == 1.0)[:, None, None, None]
    w = torch.where(win0, im0, im1)
    for k, img in ((0, w), (3, torch.where(win0, im1, im0).flip(-1))):  # winner; mirrored loser
        mean, std = ctx.bundle.encode_posterior(img)
        assert torch.allclose(torch.from_numpy(data[:, k, 0]), mean, atol=1e-6)
        assert torch.allclose(torch.from_numpy(data[:, k, 1]), std, atol=1e-6)
    assert [m.captions[i] for i in rows] == [ix.captions[i] for i in rows]
    assert _encodes(tmp_path / "run") == 4 * len(ix)  # 2 images x 2 orientations


def test_an_interrupted_prep_is_completed_and_the_cache_is_deterministic(tiny_pairs, tmp_path):
    _setup(tiny_pairs, tmp_path / "a")
    want = _cache_files(tmp_path / "a")
    _setup(tiny_pairs, tmp_path / "b", num_workers=2, latent_cache_dtype="fp32")
    assert _cache_files(tmp_path / "b") == want  # same bytes, decoded in two workers
    root = tmp_path / "a" / "latent_cache"
    (root / "shard-00001.json").unlink()  # killed while writing shard 1: no json, a truncated bin, a temp file
    (root / "shard-00001.bin").write_bytes(b"\0" * 10)
    (root / ".shard-00002.bin.tmp").write_bytes(b"partial")
    (tmp_path / "a" / "ledger.jsonl").unlink()
    m, _ = _setup(tiny_pairs, tmp_path / "a")
    assert _cache_files(tmp_path / "a") == want and not list(root.glob(".*"))
    assert _encodes(tmp_path / "a") == 4 * 8  # only shard 1 (8 pairs) encoded again
    (tmp_path / "a" / "ledger.jsonl").unlink()
    _setup(tiny_pairs, tmp_path / "a", bundle=tiny.tiny_bundle("sd15", seed=1))  # another VAE: all rebuilt
    assert _encodes(tmp_path / "a") == 4 * m.n_pairs and _cache_files(tmp_path / "a") != want


def test_fp16_cache_stores_half_the_bytes(tiny_pairs, tmp_path):
    m32, _ = _setup(tiny_pairs, tmp_path / "a", random_flip=False)
    m16, _ = _setup(tiny_pairs, tmp_path / "b", random_flip=False, latent_cache_dtype="fp16")
    assert m16.cache.row_bytes * 2 == m32.cache.row_bytes == 2 * 2 * (4 * 8 * 8) * 4  # 2 streams x (mean, std) x 4x8x8 fp32
    a, b = m32.cache.read(np.arange(m32.n_pairs)), m16.cache.read(np.arange(m16.n_pairs))
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-3)


def _with_broken_images(src, dst, n_bad):
    dst.mkdir()
    for f in src.glob("*.parquet"):
        df = pd.read_parquet(f)
        if f.stem == "train":  # twice the rows: 36 decided pairs
            df = pd.concat([df, df], ignore_index=True)
            decided = df.index[df["label_0"] != 0.5][:n_bad]
            df.loc[decided, "jpg_1"] = [b"\x89PNG broken"] * len(decided)
        df.to_parquet(dst / f.name)
    return dst


def test_undecodable_pairs_are_left_out_and_too_many_refused(tiny_pairs, tmp_path):
    n = 2 * len(open_pairs(tiny_pairs, "train", drop_ties=True))
    m, _ = _setup(_with_broken_images(tiny_pairs, tmp_path / "one", 1), tmp_path / "r1")
    assert n == 36 and m.n_pairs == n - 1 and m.cache.failed == 1 and 0 not in m.cache.positions
    with pytest.raises(HarnessError, match=r"2 of 36 training pairs .* above the 5% threshold"):
        _setup(_with_broken_images(tiny_pairs, tmp_path / "two", 2), tmp_path / "r2")


def test_micro_batching_does_not_change_an_update(tiny_pairs, tmp_path):
    """The update's randomness is drawn for the global batch, so gradient accumulation only changes float sums."""
    init = {k: v.detach().clone() for k, v in tiny.tiny_bundle("sd15", seed=0).unet.named_parameters()}
    deltas = []
    for micro in (4, 1, 3):
        m, ctx = _setup(tiny_pairs, tmp_path / f"m{micro}", micro_batch_pairs=micro, caption_dropout=0.5)
        for s in range(2):
            with ctx.ledger.step(s):
                logs = m.train_step(s)
        deltas.append(torch.cat([(p.detach() - init[k]).flatten() for k, p in m.unet.named_parameters()]))
        assert logs["pairs_global"] == 4
    for d in deltas[1:]:
        assert (d - deltas[0]).norm() <= 1e-3 * deltas[0].norm() and (d - deltas[0]).abs().max() < 1e-4


@pytest.mark.slow
def test_two_processes_train_on_the_pairs_and_reach_the_weights_of_one(tiny_pairs, tmp_path):
    """5 pairs per update (global) over 2 gloo ranks (3 + 2): the same pairs, in order, with the same timesteps as one
    process; both ranks end bitwise equal, and equal to one process up to float summation order."""
    launch(SCRIPT, [tiny_pairs, tmp_path / "one"], 1)
    launch(SCRIPT, [tiny_pairs, tmp_path / "two"], 2)
    one = torch.load(tmp_path / "one" / "rank0.pt")
    r0, r1 = (torch.load(tmp_path / "two" / f"rank{r}.pt") for r in (0, 1))
    assert len(one["seen"]) == len(r0["seen"]) == 3
    for u1, a, b in zip(one["seen"], r0["seen"], r1["seen"], strict=True):
        assert (len(a["idx"]), len(b["idx"])) == (3, 2)
        assert a["idx"] + b["idx"] == u1["idx"] and a["t"] + b["t"] == u1["t"]
    assert all(torch.equal(r0["weights"][k], r1["weights"][k]) for k in r0["weights"])
    init = {k: v.detach() for k, v in tiny.tiny_bundle("sd15", seed=0).unet.named_parameters()}
    d1 = torch.cat([(one["weights"][k] - init[k]).flatten() for k in sorted(init)])
    d2 = torch.cat([(r0["weights"][k] - init[k]).flatten() for k in sorted(init)])
    assert d1.norm() > 0 and (d1 - d2).norm() <= 1e-3 * d1.norm() and (d1 - d2).abs().max() < 1e-4
