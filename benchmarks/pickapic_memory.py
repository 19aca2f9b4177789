"""Peak memory of paper-scale preference data on the toy backbone (issue #14's acceptance benchmark; not a test).

Writes a synthetic Pick-a-Pic (``lpo_bench.data.synthetic``: the published schema and shard layout, 512 px JPEGs of
~110 KB, repeated captions with matching ``num_example_per_prompt``) of N training pairs, then, in this one process:

1. ``meta``: a full metadata pass (``open_pairs`` of the train split);
2. ``dpo``: a few Diffusion-DPO updates through the harness (``train_run``), whose PREP decodes every pair (in
   DataLoader workers) and VAE-encodes it into the on-disk latent cache;
3. ``lrm`` and ``spm``: a few updates of each step reward model through ``train_reward_run``.

A sampler thread reads /proc (psutil) every 20 ms and records, per stage, the peak of the whole process tree (this
process and its DataLoader workers): the sum of resident set sizes (RSS; pages shared after fork count once per
process, so this over-counts) and the sum of proportional set sizes (PSS: shared pages split between processes,
the tree's real footprint). Results are merged, keyed by (N, workers), into benchmarks/results/pickapic_memory.{json,md}.

    python benchmarks/pickapic_memory.py --pairs 2000
    python benchmarks/pickapic_memory.py --pairs 20000          # target: peak <= 3 GB and within 20% of 2,000's
    python benchmarks/pickapic_memory.py --pairs 2000 --workers 0   # decoding in the main process
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_GB, TARGET_RATIO = 3.0, 1.2
MB = 1 << 20


class TreeSampler:
    """Peak RSS / PSS sums of this process and all its descendants, sampled in a thread."""

    def __init__(self, interval_s: float = 0.02) -> None:
        import psutil

        self.proc, self.interval = psutil.Process(), interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.reset()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        with getattr(self, "_lock", threading.Lock()):
            self.peak_rss = self.peak_pss = 0
            self.peak_procs = 0
            self.samples = 0

    def sample(self) -> None:
        import psutil

        rss = pss = 0
        procs = [self.proc, *self.proc.children(recursive=True)]
        for p in procs:
            try:
                info = p.memory_full_info()
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        with self._lock:
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_procs = max(self.peak_procs, len(procs))
            self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _overrides(cfg_cls: Any, wanted: dict[str, Any]) -> dict[str, Any]:
    """The wanted settings a config class has (the reward trainers' fields may differ between versions)."""
    have = {f.name for f in fields(cfg_cls)}
    return {k: v for k, v in wanted.items() if k in have}


def _stage(name: str, sampler: TreeSampler, fn: Any) -> dict[str, Any]:
    import gc

    gc.collect()
    sampler.sample()
    sampler.reset()
    t0 = time.perf_counter()
    err = None
    try:
        note = fn()
    except Exception as exc:  # a stage that fails is reported, the others still run
        note, err = None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    sampler.sample()
    row = {"stage": name, "seconds": round(time.perf_counter() - t0, 1), "peak_rss_tree_mb": round(sampler.peak_rss / MB),
           "peak_pss_tree_mb": round(sampler.peak_pss / MB), "max_processes": sampler.peak_procs,
           "samples": sampler.samples, "note": note, "error": err}
    print(json.dumps(row), flush=True)
    return row


def run(n_pairs: int, data_root: Path, work: Path, *, workers: int, updates: int, stages: list[str]) -> dict[str, Any]:
    import resource

    import torch

    from lpo_bench import registry
    from lpo_bench.data.pairs import open_pairs
    from lpo_bench.harness.reward_run import RewardRequest, train_reward_run
    from lpo_bench.harness.train import TrainRequest, train_run

    torch.set_num_threads(1)
    data = data_root / f"pickapic_synth_{n_pairs}"
    t0 = time.perf_counter()
    if not (data / "DONE").exists():  # written by a child process, so this one starts without its buffers
        shutil.rmtree(data, ignore_errors=True)
        code = ("import sys; from lpo_bench.data.synthetic import write_synthetic_pickapic as w; "
                "w(sys.argv[1], n_train=int(sys.argv[2]), n_validation=200)")
        subprocess.run([sys.executable, "-c", code, str(data), str(n_pairs)], check=True)
        (data / "DONE").write_text("ok\n")
    write_s = time.perf_counter() - t0
    data_bytes = sum(p.stat().st_size for p in (data / "data").glob("*.parquet"))
    shutil.rmtree(work, ignore_errors=True)
    sampler = TreeSampler()
    rows = []
    quiet = lambda *_: None  # noqa: E731

    def meta() -> str:
        ix = open_pairs(data, "train")
        per_pair = ix.extra.memory_usage(deep=True).sum() / len(ix)
        return f"{len(ix)} pairs, metadata DataFrame {per_pair:.0f} B/pair"

    def dpo() -> str:
        cfg = registry.load_target(registry.method_spec("diffusion-dpo").config)
        req = TrainRequest(method="diffusion-dpo", backbone="toy", pairs=str(data), out_root=str(work), device="cpu",
                           overrides=_overrides(cfg, {"max_updates": updates, "num_workers": workers}),
                           checkpoint_every_updates=10**6)
        run_dir = train_run(req, log=quiet)
        cache = sum(p.stat().st_size for p in (run_dir / "latent_cache").glob("*.bin"))
        return f"{updates} updates, latent cache {cache / MB:.0f} MB on disk"

    def reward(kind: str) -> Any:
        def go() -> str:
            cfg = registry.load_target(registry.reward_model_spec(kind).config)
            over = _overrides(cfg, {"max_updates": updates, "warmup_updates": 1, "lr_decay_updates": updates,
                                    "clean_warmup_updates": 1, "num_workers": workers, "mpcf_strategy": 0,
                                    "max_val_pairs": 64, "val_timesteps": (0,)})
            req = RewardRequest(kind=kind, backbone="toy", pairs=str(data), out_root=str(work), device="cpu",
                                overrides=over, checkpoint_every_updates=10**6)
            train_reward_run(req, log=quiet)
            return f"{updates} updates"
        return go

    todo = {"meta": meta, "dpo": dpo, "lrm": reward("lrm"), "spm": reward("spm")}
    for name in stages:
        rows.append(_stage(name, sampler, todo[name]))
    sampler.stop()
    return {
        "n_pairs": n_pairs, "data_gb": round(data_bytes / 1e9, 2), "write_s": round(write_s, 1), "workers": workers,
        "updates": updates, "stages": rows,
        "peak_rss_tree_mb": max(r["peak_rss_tree_mb"] for r in rows),
        "peak_pss_tree_mb": max(r["peak_pss_tree_mb"] for r in rows),
        "ru_maxrss_self_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "ru_maxrss_children_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
    }


def markdown(runs: list[dict[str, Any]]) -> str:
    runs = sorted(runs, key=lambda r: (r["workers"], r["n_pairs"]))
    lines = ["# Peak memory of streaming Pick-a-Pic-schema data (toy backbone)", "",
             "Written by `benchmarks/pickapic_memory.py`. Peak of the whole process tree (main process + DataLoader "
             "workers), per stage, in MB: PSS (shared pages split between processes: the real footprint) / RSS sum "
             "(shared pages counted once per process).", "",
             "| pairs | workers | data on disk | stage | seconds | peak PSS (MB) | peak RSS sum (MB) | processes | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        for s in r["stages"]:
            note = s["error"] and f"FAILED: {s['error']}" or s["note"] or ""
            lines.append(f"| {r['n_pairs']:,} | {r['workers']} | {r['data_gb']} GB | {s['stage']} | {s['seconds']} | "
                         f"{s['peak_pss_tree_mb']:,} | {s['peak_rss_tree_mb']:,} | {s['max_processes']} | {note} |")
    lines += ["", "| pairs | workers | peak PSS (MB) | peak RSS sum (MB) | PSS vs the fewest pairs | RSS sum vs the fewest "
              "pairs | PSS <= 3 GB | RSS sum <= 3 GB |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        base = min((q for q in runs if q["workers"] == r["workers"]), key=lambda q: q["n_pairs"])
        lines.append(f"| {r['n_pairs']:,} | {r['workers']} | {r['peak_pss_tree_mb']:,} | {r['peak_rss_tree_mb']:,} | "
                     f"{r['peak_pss_tree_mb'] / base['peak_pss_tree_mb']:.2f}x | "
                     f"{r['peak_rss_tree_mb'] / base['peak_rss_tree_mb']:.2f}x | "
                     f"{'yes' if r['peak_pss_tree_mb'] <= TARGET_GB * 1024 else 'NO'} | "
                     f"{'yes' if r['peak_rss_tree_mb'] <= TARGET_GB * 1024 else 'NO'} |")
    lines += ["", f"Machine: {runs[-1]['machine']}; {runs[-1]['date']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=20_000, help="training pairs of the synthetic dataset")
    ap.add_argument("--data-root", default="/tmp/lpo_bench_pickapic", help="where the synthetic datasets are kept")
    ap.add_argument("--work", default=None, help="runs directory (default: DATA_ROOT/runs_N, wiped first)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers decoding images")
    ap.add_argument("--updates", type=int, default=3, help="updates per training stage")
    ap.add_argument("--stages", default="meta,dpo,lrm,spm")
    ap.add_argument("--out", default=str(RESULTS / "pickapic_memory"), help="results path without suffix")
    a = ap.parse_args(argv)
    root = Path(a.data_root)
    res = run(a.pairs, root, Path(a.work or root / f"runs_{a.pairs}"), workers=a.workers, updates=a.updates,
              stages=a.stages.split(","))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.with_suffix(".json")
    runs = [r for r in (json.loads(path.read_text())["runs"] if path.exists() else [])
            if (r["n_pairs"], r["workers"]) != (a.pairs, a.workers)]
    runs.append(res)
    path.write_text(json.dumps({"runs": sorted(runs, key=lambda r: (r["workers"], r["n_pairs"]))}, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(runs))
    print(markdown(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
