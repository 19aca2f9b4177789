"""The cost of training updates through the harness, and the harness's own overhead.

A *cycle* is one call of ``method.train_step`` inside ``ledger.step`` (as the training loop runs it) plus the
updates the method can still run on data it already sampled (``method.pending_updates``): one sampling round
and the updates it feeds, or one update. The method is set up from its spec alone: config defaults, then
``MethodSpec.bench``, then the caller's overrides; a random-weight reward model (``StepRewardModelSpec.random_model``)
when it has a reward stage; random preference pairs when it reads pairs. Per-pair costs hold for bench settings
where every scored step yields a pair (thresholds 0); a real valid fraction f divides them by f.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lpo_bench import progress, registry
from lpo_bench.bench.backbones import build_bundle, is_full_size
from lpo_bench.bench.sampling_step import BENCH_PROMPT
from lpo_bench.bench.timing import NullLedger, SelfTimedLedger, autocast, median, sync_fn
from lpo_bench.harness.method import PromptSource
from lpo_bench.ledger import Ledger

OVERHEAD_TARGET_PCT = 2.0
BENCH_PAIRS = 16


def write_bench_pairs(out: Path, *, n: int, resolution: int, seed: int = 0) -> Path:
    """A Pick-a-Pic-schema train split of ``n`` random-image pairs (their content does not change what an update
    costs). Labels alternate so no pair is a tie."""
    import numpy as np
    import pandas as pd

    from lpo_bench.data.pairs import encode_png

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"caption": f"{BENCH_PROMPT} {i}", "jpg_0": encode_png(rng.random((resolution, resolution, 3))),
             "jpg_1": encode_png(rng.random((resolution, resolution, 3))), "label_0": float(i % 2),
             "label_1": float(1 - i % 2)} for i in range(n)]
    pd.DataFrame(rows).to_parquet(out / "train.parquet", index=False)
    return out


def random_reward_model_dir(spec: Any, bundle: Any, work: Path, *, full_size: bool) -> Path | None:
    """The spec's reward-stage model with random weights, saved under ``work`` (None without a reward stage)."""
    if spec.reward_stage is None:
        return None
    stage = registry.reward_model_spec(spec.reward_stage)
    model = registry.load_target(stage.random_model)(bundle, full_size=full_size, seed=0)
    out = work / stage.name
    model.save(out)
    return out


def setup_method(spec: Any, bundle: Any, work: Path, *, full_size: bool, prompts: PromptSource,
                 overrides: Mapping[str, Any] | None = None, gradient_checkpointing: bool = False,
                 compile: bool = False) -> Any:
    """``spec``'s method set up on ``bundle`` with its bench settings; its inputs are made in ``work``."""
    from lpo_bench.config import build_config
    from lpo_bench.harness.dist import Dist
    from lpo_bench.harness.method import RunInputs, TrainContext

    cfg = build_config(registry.load_target(spec.config), dict(spec.bench), dict(overrides or {}))
    pairs = (write_bench_pairs(work / "pairs", n=BENCH_PAIRS, resolution=bundle.resolution)
             if "pairs" in spec.inputs else None)
    reward_model_dir = random_reward_model_dir(spec, bundle, work, full_size=full_size)
    if gradient_checkpointing:
        bundle.unet.enable_gradient_checkpointing()
    ctx = TrainContext(bundle=bundle, cfg=cfg, seed=0, ledger=Ledger(work / "setup-ledger.jsonl"), run_dir=work,
                       inputs=RunInputs(pairs=pairs), prompts=prompts, dist=Dist(None),
                       reward_model_dir=reward_model_dir, log=lambda *_: None)
    method = registry.load_target(spec.method)()
    method.setup(ctx)
    if compile:
        bundle.unet.compile()
    return method


def run_cycle(method: Any, ledger: Any) -> list[dict[str, float]]:
    """One cycle (module docstring): ``ledger.step`` around each ``train_step``."""
    logs, step = [], 0
    while True:
        with ledger.step(step):
            logs.append(method.train_step(step))
        step += 1
        if getattr(method, "pending_updates", 0) == 0 or logs[-1].get("skipped"):
            return logs


def pairs_trained(logs: list[dict[str, float]], cfg: Any) -> float | None:
    """Pairs the cycle's updates trained on: the ``pairs`` the method logs per update, else its fixed
    ``pairs_per_update`` config key times the updates; None when it reports neither."""
    if any("pairs" in x for x in logs):
        return float(sum(x.get("pairs", 0.0) for x in logs))
    per_update = getattr(cfg, "pairs_per_update", None)
    return float(per_update * len(logs)) if per_update else None


def _step_rows(path: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("type") == "step"]


def _sum_rows(rows: list[dict[str, Any]], key: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for row in rows:
        for name, v in row.get(key, {}).items():
            out[name] = out.get(name, 0.0) + v
    return out


def train_step_costs(
    name: str,
    backbone: str,
    *,
    random_weights: bool,
    device: str,
    prompts: PromptSource | None = None,
    repeats: int = 3,
    warmup: int = 1,
    overhead: bool = True,
    overrides: Mapping[str, Any] | None = None,
    autocast_dtype: str | None = None,
    gradient_checkpointing: bool = False,
    compile: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Seconds by ledger phase, work counters and (``overhead``) the harness overhead of one cycle of method
    ``name``. ``prompts``: its training prompts (default: the toy world's train split, no data files needed)."""
    from lpo_bench.config import config_dict
    from lpo_bench.data.prompts import BackbonePrompts

    spec = registry.method_spec(registry.check_name("method", name))
    sync = sync_fn(device)
    bundle = build_bundle(backbone, random_weights=random_weights, device=device)  # fresh: setup adds adapters
    with tempfile.TemporaryDirectory(prefix="lpo-bench-") as tmp:
        work = Path(tmp)
        method = setup_method(spec, bundle, work, full_size=is_full_size(backbone),
                              prompts=prompts or BackbonePrompts("toy"), overrides=overrides,
                              gradient_checkpointing=gradient_checkpointing, compile=compile)
        snapshot = copy.deepcopy(method.state_dict())

        def cycle(ledger: Any) -> tuple[float, list[dict[str, float]]]:
            method.load_state_dict(copy.deepcopy(snapshot))  # identical work every time
            method.ctx.ledger = ledger
            sync()
            t0 = time.perf_counter()
            with autocast(device, autocast_dtype):
                logs = run_cycle(method, ledger)
            sync()
            return time.perf_counter() - t0, logs

        def harness_ledger(i: int) -> SelfTimedLedger:
            return SelfTimedLedger(work / f"ledger-{i}.jsonl", sync=sync if device.startswith("cuda") else None)

        with progress.task(f"bench {name} train step", total=warmup + repeats, unit="repeat") as bar:
            log(f"[bench] {name}: warm-up ...")
            for i in range(warmup):
                cycle(harness_ledger(-1 - i))
                bar.advance(1, cycle="warm-up")
            harness_s, bare_s, self_s, phases, counts, logs = [], [], [], [], {}, []
            for r in range(repeats):
                for kind in ("harness", "bare") if r % 2 == 0 else ("bare", "harness"):  # cancels drift of machine load
                    if kind == "bare":
                        if overhead:
                            bare_s.append(cycle(NullLedger())[0])
                        continue
                    ledger = harness_ledger(r)
                    s, logs = cycle(ledger)
                    harness_s.append(s)
                    self_s.append(ledger.self_s)
                    rows = _step_rows(work / f"ledger-{r}.jsonl")
                    phases.append(_sum_rows(rows, "seconds"))
                    counts = _sum_rows(rows, "counts")
                log(f"[bench] {name}: repeat {r + 1}/{repeats}: harness {harness_s[-1]:.3f} s"
                    + (f", bare {bare_s[-1]:.3f} s" if bare_s else ""))
                bar.advance(1, cycle="timed")
        cfg = method.cfg
    return _cycle_result(name, config_dict(cfg), logs, pairs_trained(logs, cfg), harness_s, phases, counts,
                         (bare_s, self_s) if overhead else None)


def _cycle_result(name: str, config: dict[str, Any], logs: list[dict[str, float]], pairs: float | None,
                  harness_s: list[float], phases: list[dict[str, float]], counts: dict[str, float],
                  overhead: tuple[list[float], list[float]] | None) -> dict[str, Any]:
    updates = max(len(logs), 1)
    cycle_s = median(harness_s)
    sec_by_phase = {p: median([ph.get(p, 0.0) for ph in phases]) for p in sorted({p for ph in phases for p in ph})}
    res: dict[str, Any] = {
        "method": name, "config": config, "updates_per_cycle": len(logs), "pairs_per_cycle": pairs,
        "pairs_scored_per_cycle": float(sum(x.get("pairs_scored", 0.0) for x in logs)),
        "cycle_s": cycle_s, "cycle_samples_s": harness_s,
        "per_update_s": cycle_s / updates, "per_pair_s": cycle_s / pairs if pairs else None,
        "seconds_by_phase": sec_by_phase,
        "seconds_by_phase_per_update": {p: s / updates for p, s in sec_by_phase.items()},
        "counts_per_cycle": counts,
        "counts_per_update": {c: v / updates for c, v in counts.items()},
        "counts_per_pair": {c: v / pairs for c, v in counts.items()} if pairs else {},
    }
    if overhead is not None:
        bare_s, self_s = overhead
        paired = [h / b for h, b in zip(harness_s, bare_s, strict=True)]
        res["overhead"] = {
            "harness_s": harness_s, "bare_s": bare_s, "harness_median_s": cycle_s, "bare_median_s": median(bare_s),
            # paired runs (order alternating): median of harness/bare - 1, and the same from the fastest runs
            "overhead_pct": 100.0 * (median(paired) - 1.0),
            "overhead_min_pct": 100.0 * (min(harness_s) / min(bare_s) - 1.0),
            # the ledger's own bookkeeping seconds over the harness cycle
            "ledger_self_s": self_s,
            "ledger_self_pct": 100.0 * median([a / b for a, b in zip(self_s, harness_s, strict=True)]),
            "target_pct": OVERHEAD_TARGET_PCT}
    return res
