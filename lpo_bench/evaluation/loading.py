"""Metrics of a suite, ready to score: in-process adapters (loaded once per process) and the out-of-process
detectors (T2I-CompBench's UniDet, GenEval's Mask2Former), with the reason for every metric that cannot run here."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpo_bench import registry
from lpo_bench.data.suites import Suite
from lpo_bench.errors import HarnessError

T2I_DETECTOR_ENV = "LPO_BENCH_T2I_DETECTOR"
_SAVED_HINT = ("its images are still saved in T2I-CompBench naming under images/<category>/samples for "
               "T2I-CompBench's own scripts")


@dataclass
class LoadedMetric:
    """A metric adapter after ``load()``, with its provenance."""

    metric_id: str
    scorer: Any
    provenance: Any  # lpo_bench.metrics.base.ScorerProvenance
    higher_is_better: bool


_LOADED: dict[tuple[str, str, str], LoadedMetric] = {}  # per-process cache: weights load once


def load_metric(metric_id: str, *, device: str = "cpu", weights_dir: str | Path | None = None) -> LoadedMetric:
    """Construct and ``load()`` the adapter registered as ``metric_id`` (cached per process)."""
    key = (metric_id, str(device), str(weights_dir or ""))
    if key not in _LOADED:
        cls = registry.resolve("metric", metric_id)
        kwargs = {"weights_dir": weights_dir} if "weights_dir" in inspect.signature(cls).parameters else {}
        scorer = cls(**kwargs)
        prov = scorer.load(str(device))
        _LOADED[key] = LoadedMetric(metric_id, scorer, prov, bool(getattr(cls, "higher_is_better", True)))
    return _LOADED[key]


def external_scorer(metric_id: str, *, data_dir: str | Path | None = None, weights_dir: str | Path | None = None,
                    device: str = "cpu") -> tuple[Any, str]:
    """(scorer, "") for an out-of-process detector metric, or (None, why it is unavailable).

    GenEval (``geneval``): :func:`lpo_bench.metrics.geneval.external_geneval_scorer`.

    The UniDet categories run T2I-CompBench's detector out of process
    (:class:`lpo_bench.metrics.external.ExternalDetectorScorer`); its command line comes from
    ``$LPO_BENCH_T2I_DETECTOR`` (shell syntax; ``{image_dir}``, ``{category}``, ``{out}`` are filled in).
    3-in-1 (complex) also needs CLIP ViT-B/32 on adjective-free prompts, which lpo-bench does not
    ship, so it is always left to the official ``3_in_1.py``.
    """
    import os
    import shlex

    from lpo_bench.data.suites import GENEVAL_METRIC, UNIDET_METRICS

    if metric_id == GENEVAL_METRIC:
        from lpo_bench.metrics.geneval import external_geneval_scorer

        return external_geneval_scorer(data_dir=data_dir, weights_dir=weights_dir, device=device)
    if metric_id == UNIDET_METRICS["complex"]:
        return None, (f"{metric_id} combines BLIP-VQA, UniDet-2D and CLIP ViT-B/32 on adjective-free prompts "
                      f"(T2I-CompBench 3_in_1.py); lpo-bench has no ViT-B/32 CLIP adapter, so it is not computed "
                      f"here; {_SAVED_HINT}")
    command = os.environ.get(T2I_DETECTOR_ENV, "").strip()
    if not command:
        return None, (f"{metric_id} needs T2I-CompBench's UniDet detector, which is not configured (set "
                      f"{T2I_DETECTOR_ENV} to its command, see lpo_bench.metrics.external); {_SAVED_HINT}")
    from lpo_bench.metrics.external import ExternalDetectorScorer

    new_objects = None
    if metric_id == UNIDET_METRICS["numeracy"]:
        from lpo_bench.data.datasets import load_compbench_aux
        from lpo_bench.metrics.compbench_rules import parse_new_objects

        new_objects = parse_new_objects("\n".join(load_compbench_aux("new_objects", data_dir=data_dir)))
    return ExternalDetectorScorer(shlex.split(command), new_objects=new_objects), ""


@dataclass
class SuiteMetrics:
    """Metrics of a suite resolved for one environment: in-process, external and unavailable ones."""

    inproc: dict[str, LoadedMetric] = field(default_factory=dict)
    external: dict[str, Any] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)  # metric -> reason

    def available_for(self, suite: Suite, category: str) -> list[str]:
        return [m for m in suite.metrics_for(category) if m in self.inproc or m in self.external]


def resolve_metrics(suite: Suite, categories: Sequence[str], *, device: str, weights_dir: str | Path | None,
                    data_dir: str | Path | None = None) -> SuiteMetrics:
    """Load every metric the categories need (missing weights: HarnessError); external ones may be absent, but
    when no category can be scored at all the suite is refused in one line naming what is missing."""
    out = SuiteMetrics()
    needed = {m for c in categories for m in suite.metrics_for(c)}
    for m in (m for m in suite.metrics if m in needed):
        if m in registry.METRICS:
            out.inproc[m] = load_metric(m, device=device, weights_dir=weights_dir)
        else:
            scorer, reason = external_scorer(m, data_dir=data_dir, weights_dir=weights_dir, device=device)
            if scorer is None:
                out.unavailable[m] = reason
            else:
                out.external[m] = scorer
    if categories and not any(out.available_for(suite, c) for c in categories):
        why = "; ".join(dict.fromkeys(out.unavailable.values()))
        raise HarnessError(f"suite {suite.name} cannot be scored here: {why}")
    return out
