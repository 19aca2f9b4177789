"""Test-only helpers: tiny inputs built in-process and passed in (no module globals patched)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PROMPTS = ("a red circle", "two blue squares", "a green triangle", "a striped yellow square")


def method_ctx(bundle: Any, cfg: Any, run_dir: Path, *, pairs: Path | None = None,
               reward_model_dir: Path | None = None, prompts: tuple[str, ...] = PROMPTS, seed: int = 0) -> Any:
    """A single-process TrainContext for calling a method's or a reward trainer's setup directly."""
    from lpo_bench.data.prompts import PromptList
    from lpo_bench.harness.dist import Dist
    from lpo_bench.harness.method import RunInputs, TrainContext
    from lpo_bench.ledger import Ledger

    run_dir.mkdir(parents=True, exist_ok=True)
    return TrainContext(bundle=bundle, cfg=cfg, seed=seed, ledger=Ledger(run_dir / "ledger.jsonl"), run_dir=run_dir,
                        inputs=RunInputs(pairs=Path(pairs) if pairs else None), prompts=PromptList(tuple(prompts)),
                        dist=Dist(None), reward_model_dir=reward_model_dir, log=lambda *_: None)


def write_pairs_dir(out, n_per_split=(24, 12, 12), seed=0):
    """A tiny Pick-a-Pic-schema pairs dir from toy renders: the winner satisfies its prompt, the loser is a
    corrupted scene; every fourth pair is a tie (two satisfying scenes). MPCF gap columns are consistent."""
    import numpy as np
    import pandas as pd

    from lpo_bench.data.pairs import encode_png
    from lpo_bench.toy import world

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "val", "test"), n_per_split):
        rows = []
        for i in range(n):
            spec = world.sample_prompt(rng)
            good = world.scene_for(spec, rng)
            tie = i % 4 == 3
            bad = world.scene_for(spec, rng) if tie else world.corrupt(
                good, spec, rng, world.applicable_corruptions(spec)[0])
            a, b = world.render(good), world.render(bad)
            flip = rng.random() < 0.5
            label0 = 0.5 if tie else (0.0 if flip else 1.0)
            if flip:
                a, b = b, a
            rows.append({"caption": spec.text, "jpg_0": encode_png(a), "jpg_1": encode_png(b), "label_0": label0,
                         "label_1": 1 - label0, "num_example_per_prompt": 1, "different_flag": int(not tie),
                         "aesthetic_gap": 0.01 if tie else 0.1, "clipscore_gap": 0.01 if tie else 0.2,
                         "vqascore_gap": 0.01 if tie else 0.3})
        pd.DataFrame(rows).to_parquet(out / f"{split}.parquet", index=False)
    return out


def tiny_diffusers_dir(
    tmp_path: str | Path, family: str = "sd15", seed: int = 0, resolution: int = 32
) -> Path:
    """Save a tiny ``family`` model as a diffusers pipeline directory (``save_pretrained``) and return it.

    The directory has the layout of the hub repos (model_index.json, unet/, vae/, text_encoder/,
    tokenizer/, scheduler/; SDXL adds text_encoder_2/, tokenizer_2/), so it can be passed to
    the loaders as ``weights_dir``.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from lpo_bench.models.tiny import tiny_components

    comps = tiny_components(family, seed, resolution)
    if family == "sdxl":
        pipe: Any = StableDiffusionXLPipeline(**comps, force_zeros_for_empty_prompt=True)
    else:
        pipe = StableDiffusionPipeline(
            **comps, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    out = Path(tmp_path) / f"tiny-{family}"
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def launch(script, args, nproc: int, timeout: int = 300) -> None:
    """Run ``script args`` as one plain process (``nproc`` 1) or under ``torchrun --nproc_per_node nproc`` (gloo on
    the CPU, a free port), in a new process group so a hang kills torchrun's workers too; asserts it succeeded."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    from pathlib import Path

    if nproc > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        launcher = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(nproc),
                    "--master_port", str(port)]
    else:
        launcher = [sys.executable]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*launcher, str(script), *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
