"""The released-model importers at the released models' sizes, on random weights (no downloads).

For SD1.5 (full-size UNet and CLIP-L text encoder) and an SPM of CLIP ViT-H/14 vision size: write a checkpoint in
the layout its authors published (LRM-1.5: ``unet/``, ``text_encoder/pytorch_model.bin`` as transformers 4.27
wrote it, ``state_dict.pt``; LPO: a merged diffusers UNet; SPM: one ``model.*`` pickle), import it through
``released:<name>`` from a local folder, and compare with the model it was written from (LRM and SPM scores, UNet
tensors). Not a pytest file::

    OMP_NUM_THREADS=2 python benchmarks/released_full_size.py [--out DIR]

Took 254 s with a peak RSS of 13.0 GiB on 2 shared CPU cores; writes up to 3.7 GiB under ``--out`` at a time (removed
at the end unless ``--out`` is given).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_released import official_spm_state, perturb, write_official_lrm, write_pickscore_skeleton_files  # noqa: E402


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ["LPO_BENCH_ALLOW_UNPINNED"] = "1"
    from lpo_bench.baselines.spo.bench import random_spm
    from lpo_bench.methods.lpo.lrm import LatentRewardModel
    from lpo_bench.models import released
    from lpo_bench.models.full_size import full_size_bundle

    root = Path(args.out or tempfile.mkdtemp(prefix="released-full-"))
    os.environ["LPO_BENCH_CACHE"] = str(root / "cache")
    prompts = ["a photo of a cat", "a red bicycle"]
    t0 = time.perf_counter()
    bundle = full_size_bundle("sd15", seed=0)

    ref = perturb(LatentRewardModel.from_bundle(bundle), seed=1, scale=0.01).eval()
    write_official_lrm(ref, root / "w" / "casiatao" / "LRM" / "lrm_sd15")
    lat = torch.randn(2, *bundle.latent_shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1, 951])
    want = ref.score_noisy(lat, t, prompts)
    del ref
    r = released.resolve_released("released:lrm-sd15", kind=released.STEP_REWARD_MODEL, backbone="sd15",
                                  weights_dir=root / "w")
    got = released.load_reward_model(r, bundle, device="cpu").score_noisy(lat, t, prompts)
    n_lrm = sum(f.stat().st_size for f in (root / "w").rglob("*") if f.is_file()) / 2**30
    print(f"LRM-1.5 (visual 4800 -> 768): scores {want.tolist()} vs imported {got.tolist()}, max |diff| "
          f"{(want - got).abs().max().item():.2e}; {n_lrm:.2f} GiB written; {time.perf_counter() - t0:.0f} s, "
          f"peak RSS {_peak_gb():.1f} GiB", flush=True)
    shutil.rmtree(root / "w")

    perturb(bundle.unet, seed=2, scale=0.01).save_pretrained(root / "w" / "casiatao" / "LPO" / "lpo_sd15_merge" / "unet")
    r = released.resolve_released("released:lpo-sd15", kind=released.UNET, backbone="sd15", weights_dir=root / "w")
    unet = released.load_unet(r, bundle, device="cpu")
    ours, theirs = bundle.unet.state_dict(), unet.state_dict()
    same = all(torch.equal(ours[k], v) for k, v in theirs.items()) and set(ours) == set(theirs)
    print(f"LPO SD1.5 UNet ({sum(v.numel() for v in theirs.values()) / 1e6:.0f} M params): every tensor equal: "
          f"{same}; {time.perf_counter() - t0:.0f} s, peak RSS {_peak_gb():.1f} GiB", flush=True)
    del unet, theirs
    shutil.rmtree(root / "w")

    spm = perturb(random_spm(bundle, full_size=True, seed=0), seed=3, scale=0.01).eval()
    repo = root / "w" / "SPO-Diffusion-Models" / "Step-Aware_Preference_Models"
    repo.mkdir(parents=True)
    torch.save(official_spm_state(spm), repo / "sd-v1-5_step-aware_preference_model.bin")
    write_pickscore_skeleton_files(spm, root / "w")
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    ts = torch.tensor([0, 750])
    want = spm.score(images, ts, prompts)
    n_spm = sum(v.numel() for v in spm.state_dict().values()) / 1e6
    del spm
    r = released.resolve_released("released:spm-sd15", kind=released.STEP_REWARD_MODEL, backbone="sd15",
                                  weights_dir=root / "w")
    got = released.load_reward_model(r, bundle, device="cpu").score(images, ts, prompts)
    print(f"SPM (ViT-H/14 vision, {n_spm:.0f} M params): scores {want.tolist()} vs imported {got.tolist()}, max |diff| "
          f"{(want - got).abs().max().item():.2e}; {time.perf_counter() - t0:.0f} s, peak RSS {_peak_gb():.1f} GiB")
    if args.out is None:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
