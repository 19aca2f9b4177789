"""``lpo-bench score-pairs``: the per-pair aesthetic / CLIP / VQA scores a step reward model's data filter needs,
as a resumable, data-parallel run of its own under ``runs/pair_scores/<run_id>``.

The table (``<run>/scores/part-*.parquet``, see :mod:`lpo_bench.data.pair_scores`) is passed to
``train-reward`` / ``train`` with ``--pair-scores <run>``; it is part of their run identity, and ``compare`` charges
this run's GPU-hours to the reward model that used it (shown as a column of its own, since the published headline leaves
this cost out of its headline). Shard i is scored by rank i mod P; ``--resume`` scores only the missing shards.
All scoring time is PREP on the run's ledger.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpo_bench import progress
from lpo_bench.data import pair_scores
from lpo_bench.errors import HarnessError
from lpo_bench.harness.dist import make_dist, pick_device
from lpo_bench.harness.identity import data_manifest_sha256, files_manifest_sha256
from lpo_bench.harness.loop import close_session, open_ledger
from lpo_bench.harness.run import RunRecorder
from lpo_bench.ledger import Phase

RUN_KIND = "pair_scores"
# score name -> metric id. Real data: the LAION aesthetic head and CLIP score as the authors used (their CLIP was
# ViT-H-14, Kwai-Kolors/LPO issue #3); BLIP-VQA stands in for VQAScore (CLIP-FlanT5-XXL), whose package does not
# install on current stacks. Toy data: the toy world's own three scores.
REAL_METRICS = {"aesthetic": "aesthetic", "clipscore": "clipscore", "vqascore": "blip-vqa"}
TOY_METRICS = {"aesthetic": "toy-aesthetic", "clipscore": "toy-clip", "vqascore": "toy-vqa"}
PICKAPIC_RESOLUTION = 512  # Pick-a-Pic images vary in size; the metrics resize to their own input size anyway


@dataclass(kw_only=True)
class ScorePairsRequest:
    pairs: str
    split: str = "train"
    metrics: dict[str, str] | None = None  # None: TOY_METRICS for toy pairs, else REAL_METRICS
    resolution: int | None = None  # decode size; None: native for toy pairs, PICKAPIC_RESOLUTION otherwise
    shard_pairs: int = 4096
    batch_pairs: int = 64
    num_workers: int = 0
    max_rows: int | None = None
    out_root: str | None = None
    run_id: str | None = None
    overwrite: bool = False
    resume: bool = False
    weights_dir: str | None = None
    device: str | None = None


def _is_toy(source: Path) -> bool:
    return (source / "pairs.json").exists()  # written by `lpo-bench toy make-pairs`


def score_pairs_run(req: ScorePairsRequest, *, clock: Callable[[], float] = time.perf_counter,
                    log: Callable[[str], None] = print,
                    scorers: dict[str, pair_scores.ScoreFn] | None = None) -> Path:
    """Score every pair of ``req.pairs`` / ``req.split``; returns the run directory (scores in ``<run>/scores``).
    ``scorers`` replaces the registered metrics (tests pass tiny functions)."""
    from lpo_bench.data.pairs import open_pairs

    source = Path(req.pairs)
    if not source.exists():
        raise HarnessError(f"--pairs {source} does not exist; pass a toy pairs directory or a local Pick-a-Pic copy")
    if req.shard_pairs < 1 or req.batch_pairs < 1:
        raise HarnessError(f"--shard-pairs ({req.shard_pairs}) and --batch-pairs ({req.batch_pairs}) must be >= 1")
    toy = _is_toy(source)
    metrics = dict(req.metrics or (TOY_METRICS if toy else REAL_METRICS))
    if scorers is None and set(metrics) != set(pair_scores.SCORE_NAMES):
        raise HarnessError(f"score-pairs needs exactly the scores {', '.join(pair_scores.SCORE_NAMES)}; got "
                           f"{', '.join(sorted(metrics))}")
    resolution = req.resolution if req.resolution is not None else (None if toy else PICKAPIC_RESOLUTION)
    identity = {"kind": RUN_KIND, "pairs": data_manifest_sha256(source), "split": req.split,
                "metrics": metrics if scorers is None else sorted(scorers), "resolution": resolution,
                "max_rows": req.max_rows, "shard_pairs": req.shard_pairs}
    device = pick_device(req.device)
    dist = make_dist(device)
    with RunRecorder(RUN_KIND, f"scores-{req.split}", identity, out_root=req.out_root, run_id=req.run_id,
                     overwrite=req.overwrite, resume=req.resume, dist=dist) as run:
        ledger = open_ledger(run.dir, device=device, dist=dist, clock=clock)
        wall_start = ledger.now()
        with ledger.phase(Phase.SETUP):
            index = open_pairs(source, req.split, max_rows=req.max_rows)
            fns, provenance = _scorers(metrics, scorers, dist.device(device), req.weights_dir)
        run.keep_on_error = True  # finished shards are worth keeping: --resume scores only the missing ones
        with ledger.phase(Phase.CHECKPOINT):
            run.start({"pairs": str(source), "pairs_sha256": identity["pairs"], "split": req.split, "n_pairs": len(index),
                       "metrics": provenance, "resolution": resolution, "scores_dir": str(run.dir / pair_scores.SCORES_DIR)},
                      base_extra={"method": RUN_KIND, "seed": 0, "config_hash": run.identity_sha256})
        total = pair_scores.n_shards(len(index), req.shard_pairs)
        with progress.task("score-pairs", total=total, unit="shard", quiet=not dist.is_main) as bar:
            def done(shard: int, n: int) -> None:
                ledger.count("metric_fwd", 2 * len(fns) * n)
                bar.advance(1)

            with ledger.phase(Phase.PREP):
                pair_scores.write_scores(index, fns, run.dir / pair_scores.SCORES_DIR, shard_pairs=req.shard_pairs,
                                         batch_pairs=req.batch_pairs, resolution=resolution,
                                         num_workers=req.num_workers, rank=dist.rank, world_size=dist.world_size,
                                         on_shard=done)
        with ledger.phase(Phase.CHECKPOINT):
            dist.barrier()
        if not dist.is_main:
            return run.dir
        wall_s, residual, summary = close_session(ledger, wall_start)
        gpu_h = float(summary["gpu_h_counted"])
        run.write_measurements([{"kind": "train_cost", "metric": "gpu_h_pair_scores", "value": gpu_h,
                                 "wall_s_total": wall_s, "higher_is_better": False}])
        run.finish(n_pairs=len(index), ledger=summary, ledger_identity_residual=residual, wall_s=wall_s,
                   gpu_h_pair_scores=gpu_h)
    log(f"pair scores of {len(index)} pairs written to {run.dir / pair_scores.SCORES_DIR}; pass --pair-scores {run.dir}")
    return run.dir


def _scorers(metrics: dict[str, str], given: dict[str, Any] | None, device: str,
             weights_dir: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    if given is not None:
        return given, {k: {"metric_id": k, "checkpoint": "given in-process"} for k in given}
    from lpo_bench.evaluation.loading import load_metric

    fns, prov = {}, {}
    for name, metric_id in metrics.items():
        m = load_metric(metric_id, device=device, weights_dir=weights_dir)
        fns[name], prov[name] = m.scorer.score, m.provenance.as_dict()
    return fns, prov


def pair_scores_inputs(path: str | None) -> dict[str, Any]:
    """The RunInputs fields of ``--pair-scores PATH`` (none without it): the run directory (so ``compare`` finds its
    cost) and the manifest hash of its shards."""
    if not path:
        return {}
    table = pair_scores.table_dir(path)
    run = table.parent if table.name == pair_scores.SCORES_DIR else table
    return {"pair_scores": run, "pair_scores_sha256": files_manifest_sha256(table, sorted(table.glob(pair_scores.PART_GLOB)))}
