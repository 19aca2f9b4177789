"""Evaluation: suites sampled and scored with CIs, eval runs, and step-level reward accuracy.

* :mod:`.loading`: metric adapters (loaded once per process) and T2I-CompBench's external detector.
* :mod:`.images`: T2I-CompBench image file names, saved PNGs and preview grids.
* :mod:`.evaluate`: :func:`evaluate_items` / :func:`evaluate_unet` (nothing written) and :func:`aggregate`.
* :mod:`.models`: ``--model`` (``base:<backbone>``, a train run, a LoRA or UNet directory) into a bundle.
* :mod:`.run`: :func:`eval_run`, recorded as ``runs/eval/<run_id>/``.
* :mod:`.step_accuracy`: pairwise accuracy of step reward models and pixel metrics across timesteps.
"""

from lpo_bench.evaluation.evaluate import EvalOutput, aggregate, evaluate_items, evaluate_unet
from lpo_bench.evaluation.images import MAX_NAME_CHARS, image_file_name, save_grid
from lpo_bench.evaluation.loading import (
    T2I_DETECTOR_ENV,
    LoadedMetric,
    SuiteMetrics,
    external_scorer,
    load_metric,
    resolve_metrics,
)
from lpo_bench.evaluation.models import ModelSpec, load_model, resolve_model
from lpo_bench.evaluation.run import eval_run

__all__ = [
    "MAX_NAME_CHARS",
    "T2I_DETECTOR_ENV",
    "EvalOutput",
    "LoadedMetric",
    "ModelSpec",
    "SuiteMetrics",
    "aggregate",
    "eval_run",
    "evaluate_items",
    "evaluate_unet",
    "external_scorer",
    "image_file_name",
    "load_metric",
    "load_model",
    "resolve_metrics",
    "resolve_model",
    "save_grid",
]
