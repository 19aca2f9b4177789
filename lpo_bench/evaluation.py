"""Suite evaluation: sample with one generator per image, score every image, aggregate with CIs.

* :func:`evaluate_unet` (used by the runner during training): prompts of a suite -> images ->
  ``(measurement rows, per-sample rows)``; nothing is written.
* :func:`eval_run` (``lpo-bench eval``): the same for a base model, a finished train run or a LoRA
  directory, recorded as ``runs/eval/<run_id>/`` (run.json, measurements.parquet,
  per_sample.parquet, images/, samples_grid.png for toy suites, DONE last).

Image ``k`` of a prompt is sampled from ``sample_seed(suite.seed_base, prompt_id, k)`` by its own
generator, so batch size and prompt subsets never change an image. Images are quantised to 8 bits
before scoring, exactly as the saved PNGs that the official scripts score. Images are saved as
``images/<category>/samples/<prompt>_<NNNNNN>.png`` with ``NNNNNN = prompt index in the category ×
images_per_prompt + k`` (T2I-CompBench's naming; ``images/<category>`` is the official ``--outpath``).

Aggregates: per metric, one row per category it scored and, when it scored several, one for
"all". ``value`` is the mean score; the 95% CI is a bootstrap over prompts of the per-prompt mean
scores (images of one prompt share the prompt, so they are not independent samples); ``n`` is the
number of scored images and ``n_prompts`` the number of prompts.
"""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lpo_bench import records, registry
from lpo_bench.analysis import stats
from lpo_bench.data.suites import PromptItem, Suite, get_suite
from lpo_bench.errors import HarnessError

GRID_MAX_IMAGES = 64
MAX_NAME_CHARS = 180  # keeps "<prompt>_<NNNNNN>.png" under common 255-byte file-name limits


# ---------------------------------------------------------------------------- metrics
@dataclass
class LoadedMetric:
    """A metric adapter after ``load()``, with its provenance."""

    metric_id: str
    scorer: Any
    provenance: Any  # rewards.base.ScorerProvenance
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


T2I_DETECTOR_ENV = "LPO_BENCH_T2I_DETECTOR"
_SAVED_HINT = ("its images are still saved in T2I-CompBench naming under images/<category>/samples for "
               "T2I-CompBench's own scripts")


def external_scorer(metric_id: str, *, data_dir: str | Path | None = None) -> tuple[Any, str]:
    """(scorer, "") for a T2I-CompBench detector metric, or (None, why it is unavailable).

    The UniDet categories run T2I-CompBench's detector out of process
    (:class:`lpo_bench.metrics.external.ExternalDetectorScorer`); its command line comes from
    ``$LPO_BENCH_T2I_DETECTOR`` (shell syntax; ``{image_dir}``, ``{category}``, ``{out}`` are filled in).
    3-in-1 (complex) also needs CLIP ViT-B/32 on adjective-free prompts, which lpo-bench does not
    ship, so it is always left to the official ``3_in_1.py``.
    """
    import os
    import shlex

    from lpo_bench.data.suites import UNIDET_METRICS

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
    """Load every metric the categories need (missing weights: HarnessError); external ones may be absent."""
    out = SuiteMetrics()
    needed = {m for c in categories for m in suite.metrics_for(c)}
    for m in (m for m in suite.metrics if m in needed):
        if m in registry.METRICS:
            out.inproc[m] = load_metric(m, device=device, weights_dir=weights_dir)
        else:
            scorer, reason = external_scorer(m, data_dir=data_dir)
            if scorer is None:
                out.unavailable[m] = reason
            else:
                out.external[m] = scorer
    return out


# ---------------------------------------------------------------------------- images
def image_file_name(prompt: str, question_id: int) -> str:
    """``<prompt>_<NNNNNN>.png`` (T2I-CompBench). Characters a file name cannot hold ("/", and "_",
    which the official parser splits on) become spaces; long prompts are cut. T2I-CompBench val
    prompts need neither (metrics.md §4.2), so their names are exact."""
    safe = "".join(" " if (ch in "/\\_" or ord(ch) < 32) else ch for ch in prompt)[:MAX_NAME_CHARS]
    return f"{safe}_{question_id:06d}.png"


def _to_uint8(images: Any) -> Any:
    """[b,3,H,W] in [0,1] (already 8-bit quantised) -> uint8 numpy [b,H,W,3]."""
    import torch

    return (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def save_grid(path: Path, images_u8: Any, ncol: int = 8) -> None:
    """Tile uint8 images [n,H,W,3] into one PNG (rows of ``ncol``)."""
    import numpy as np
    from PIL import Image

    n, h, w, _ = images_u8.shape
    rows = (n + ncol - 1) // ncol
    grid = np.full((rows * h, min(n, ncol) * w, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = images_u8[i]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)


# ---------------------------------------------------------------------------- core
@dataclass
class EvalOutput:
    rows: list[dict[str, Any]]
    per_sample: list[dict[str, Any]]
    skipped: list[dict[str, str]]  # {"category", "metric", "reason"}
    scorers: dict[str, dict[str, Any]]  # metric -> provenance
    grid: Any = None  # uint8 [n,H,W,3]: image 0 of the first prompts (for a preview)
    n_images: int = 0


def _sampler_name(suite: Suite) -> str:
    s = suite.sampler
    return s.scheduler if s.eta == 0 else f"{s.scheduler}(eta={s.eta:g})"


def evaluate_items(
    bundle: Any,
    unet: Any,
    suite: Suite,
    items: list[PromptItem],
    *,
    images_per_prompt: int,
    batch_size: int = 64,
    metrics: SuiteMetrics,
    image_dir: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> EvalOutput:
    """Generate ``images_per_prompt`` images per item, score them, aggregate (see module docstring).

    With ``image_dir`` every image is saved (and every category generated, even one whose metrics
    are unavailable, so it can be scored offline); without it only scorable categories are sampled.
    """
    from lpo_bench.diffusion.generate import generate_images
    from lpo_bench.diffusion.seeding import sample_seed
    from lpo_bench.metrics._common import quantize_8bit

    if images_per_prompt < 1 or batch_size < 1:
        raise HarnessError(f"images per prompt and batch size must be >= 1 (got {images_per_prompt}, {batch_size})")
    cats = [c for c in suite.categories if any(it.category == c for it in items)]
    skipped = [{"category": c, "metric": m, "reason": metrics.unavailable[m]}
               for c in cats for m in suite.metrics_for(c) if m in metrics.unavailable]
    gen_cats = set(cats) if image_dir is not None else {c for c in cats if metrics.available_for(suite, c)}
    needs_dir = any(m in metrics.external for c in gen_cats for m in suite.metrics_for(c))
    tmp = tempfile.TemporaryDirectory(prefix="lpo-bench-eval-") if image_dir is None and needs_dir else None
    out_dir = Path(tmp.name) if tmp is not None else image_dir
    try:
        jobs = [(it, k) for it in items if it.category in gen_cats for k in range(images_per_prompt)]
        seeds = [sample_seed(suite.seed_base, it.prompt_id, k) for it, k in jobs]
        per_sample: list[dict[str, Any]] = []
        grid: list[Any] = []
        if out_dir is not None:
            for c in gen_cats:
                (out_dir / c / "samples").mkdir(parents=True, exist_ok=True)
        sp = suite.sampler
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            prompts = [it.text for it, _ in chunk]
            imgs = quantize_8bit(generate_images(
                bundle, prompts, seeds[start : start + batch_size], num_inference_steps=sp.num_inference_steps,
                guidance_scale=sp.guidance_scale, eta=sp.eta, batch_size=batch_size, unet=unet,
            ))
            u8 = _to_uint8(imgs) if out_dir is not None or suite.kind == "toy" else None
            if out_dir is not None:
                _save_images(out_dir, chunk, u8, images_per_prompt)
            if suite.kind == "toy":
                grid += [u8[j] for j, (_, k) in enumerate(chunk) if k == 0][: GRID_MAX_IMAGES - len(grid)]
            for m, lm in metrics.inproc.items():
                idx = [j for j, (it, _) in enumerate(chunk) if m in suite.metrics_for(it.category)]
                if not idx:
                    continue
                scores = lm.scorer.score(imgs[idx], [prompts[j] for j in idx])
                for j, s in zip(idx, scores.tolist(), strict=True):
                    it, k = chunk[j]
                    per_sample.append(_sample_row(it, k, seeds[start + j], m, s))
            if log is not None:
                log(f"[eval {suite.name}] {min(start + batch_size, len(jobs))}/{len(jobs)} images")
        for m, scorer in metrics.external.items():
            for c in cats:
                if m in suite.metrics_for(c) and out_dir is not None:
                    per_sample += _external_rows(scorer, m, c, out_dir, items, images_per_prompt, suite.seed_base)
    finally:
        if tmp is not None:
            tmp.cleanup()
    scorers = {m: lm.provenance.as_dict() for m, lm in metrics.inproc.items()}
    for m, scorer in metrics.external.items():
        scorers[m] = {"metric_id": m, "metric_version": str(scorer.version), "checkpoint": " ".join(scorer.command),
                      "sha256": records.sha256_of(scorer.detector_info), "detector": scorer.detector_info}
    hib = {m: lm.higher_is_better for m, lm in metrics.inproc.items()}
    rows = aggregate(per_sample, suite, items, images_per_prompt=images_per_prompt, batch_size=batch_size,
                     scorers=scorers, higher_is_better=hib)
    import numpy as np

    return EvalOutput(rows, per_sample, skipped, scorers, np.stack(grid) if grid else None, len(jobs))


def _sample_row(it: PromptItem, k: int, seed: int, metric: str, score: float) -> dict[str, Any]:
    return {"prompt_id": it.prompt_id, "prompt": it.text, "category": it.category, "image_idx": k,
            "sample_seed": seed, "metric": metric, "score": float(score)}


def _save_images(out_dir: Path, chunk: list[tuple[PromptItem, int]], u8: Any, ipp: int) -> None:
    from PIL import Image

    for (it, k), arr in zip(chunk, u8, strict=True):
        Image.fromarray(arr).save(out_dir / it.category / "samples" / image_file_name(it.text, it.index * ipp + k))


def _external_rows(scorer: Any, metric: str, category: str, out_dir: Path, items: list[PromptItem], ipp: int,
                   seed_base: int) -> list[dict[str, Any]]:
    """Per-image rows from an external scorer's per-image scores (matched by question_id)."""
    from lpo_bench.diffusion.seeding import sample_seed

    by_qid = {int(r.question_id): float(r.score) for r in scorer.score_dir(out_dir / category / "samples", category)}
    rows = []
    for it in items:
        if it.category != category:
            continue
        for k in range(ipp):
            qid = it.index * ipp + k
            if qid not in by_qid:
                raise HarnessError(f"external scorer {metric} returned no score for image {qid} of {category} "
                                   f"(images in {out_dir / category / 'samples'}); check the detector's output")
            rows.append(_sample_row(it, k, sample_seed(seed_base, it.prompt_id, k), metric, by_qid[qid]))
    return rows


def aggregate(
    per_sample: list[dict[str, Any]],
    suite: Suite,
    items: list[PromptItem],
    *,
    images_per_prompt: int,
    batch_size: int,
    scorers: dict[str, dict[str, Any]],
    higher_is_better: dict[str, bool] | None = None,
) -> list[dict[str, Any]]:
    """Measurement rows (kind "eval_metric") per (metric, category) and (metric, "all")."""
    import numpy as np
    import pandas as pd

    if not per_sample:
        return []
    df = pd.DataFrame(per_sample)
    common = {
        "kind": "eval_metric", "suite": suite.name, "suite_version": str(suite.version),
        "inputs_sha256": suite.inputs_sha256(items, images_per_prompt), "images_per_prompt": images_per_prompt,
        "sampler": _sampler_name(suite), "num_inference_steps": suite.sampler.num_inference_steps,
        "guidance_scale": suite.sampler.guidance_scale, "sample_seed_base": suite.seed_base, "batch_size": batch_size,
    }
    rows = []
    for metric in [m for m in suite.metrics if m in set(df["metric"])]:
        sub = df[df["metric"] == metric]
        cats = [c for c in suite.categories if c in set(sub["category"])]
        groups = [(c, sub[sub["category"] == c]) for c in cats] + ([("all", sub)] if len(cats) > 1 else [])
        prov = scorers.get(metric, {})
        for cat, g in groups:
            per_prompt = g.groupby("prompt_id", sort=False)["score"].mean()
            value, lo, hi = stats.mean_ci(per_prompt.to_numpy())
            rows.append({
                **common, "metric": metric, "category": cat, "value": value, "ci_low": lo, "ci_high": hi,
                "n": int(np.isfinite(g["score"].to_numpy(dtype=float)).sum()), "n_prompts": int(len(per_prompt)),
                "metric_version": str(prov.get("metric_version", "")), "scorer_checkpoint": str(prov.get("checkpoint", "")),
                "scorer_sha256": str(prov.get("sha256", "")),
                "higher_is_better": (higher_is_better or {}).get(metric, True),
            })
    return rows


def evaluate_unet(
    bundle: Any,
    unet: Any,
    suite_name: str,
    *,
    split: str = "test",
    max_prompts: int | None = None,
    images_per_prompt: int | None = None,
    batch_size: int = 64,
    data_dir: str | Path | None = None,
    weights_dir: str | Path | None = None,
    seed_base: int | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Evaluate ``unet`` (None: ``bundle.unet``) on a suite; returns (measurement rows, per-sample rows).

    Categories whose metrics are unavailable (T2I-CompBench's UniDet categories without the
    external scorer) are not sampled and produce no rows.
    """
    suite = get_suite(suite_name)
    if seed_base is not None:
        suite = replace(suite, seed_base=int(seed_base))
    items = suite.prompts(split, data_dir=data_dir, max_prompts=max_prompts)
    ipp = int(images_per_prompt or suite.images_per_prompt)
    cats = sorted({it.category for it in items})
    metrics = resolve_metrics(suite, cats, device=str(bundle.device), weights_dir=weights_dir, data_dir=data_dir)
    net = unet if unet is not None else bundle.unet
    was_training = bool(getattr(net, "training", False))
    net.eval()
    try:
        out = evaluate_items(bundle, unet, suite, items, images_per_prompt=ipp, batch_size=batch_size, metrics=metrics)
    finally:
        net.train(was_training)
    return out.rows, out.per_sample


# ---------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelSpec:
    """What ``--model`` named: a base backbone, a train run's exported LoRA, or a LoRA directory."""

    kind: str  # "base" | "train-run" | "lora" | "unet"
    backbone: str
    tag: str  # used in the eval run id
    lora_path: str | None = None
    lora_sha256: str | None = None
    train_run: dict[str, Any] | None = None
    unet_path: str | None = None  # a fully fine-tuned UNet (diffusers layout) instead of a LoRA

    def describe(self) -> dict[str, Any]:
        d = {"kind": self.kind, "backbone": self.backbone, "lora_path": self.lora_path, "lora_sha256": self.lora_sha256,
             "unet_path": self.unet_path}
        if self.train_run is not None:
            d["train_run"] = {k: self.train_run.get(k) for k in ("run_id", "method", "method_version", "config_hash",
                                                                  "seed", "status", "backbone_provenance")}
        return d


def _unet_dir(path: Path) -> Path | None:
    """A diffusers UNet directory at ``path`` or ``path/unet`` (full fine-tuning exports), else None."""
    for cand in (path, path / "unet"):
        if (cand / "config.json").is_file() and any(cand.glob("diffusion_pytorch_model*.safetensors")):
            return cand
    return None


def _unet_sha256(d: Path) -> str:
    from lpo_bench.models.weights import file_sha256

    return file_sha256(sorted(d.glob("diffusion_pytorch_model*.safetensors"))[0])


def _lora_file(path: Path) -> Path:
    from lpo_bench.models.lora import LORA_WEIGHT_NAME

    f = path if path.is_file() else path / LORA_WEIGHT_NAME
    if not f.is_file():
        raise HarnessError(f"no LoRA weights at {f}; pass a directory written by export_lora (a train run's export/)")
    return f


def resolve_model(model: str, backbone: str | None = None) -> ModelSpec:
    """Parse ``--model``: ``base:<backbone>``, a train run directory, or a LoRA path (needs ``backbone``)."""
    from lpo_bench.models.weights import file_sha256

    if model.startswith("base:"):
        bb = registry.check_name("backbone", model[len("base:"):])
        if backbone is not None and backbone != bb:
            raise HarnessError(f"--model {model} and --backbone {backbone} disagree; drop --backbone")
        return ModelSpec("base", bb, f"base-{bb}")
    path = Path(model)
    if not path.exists():
        raise HarnessError(f"--model {model!r} is neither 'base:<backbone>' nor an existing path; pass e.g. base:toy, "
                           f"runs/train/<run_id> or a LoRA directory")
    if (path / "run.json").exists():
        info = records.read_run(path)
        if info.get("kind") != "train":
            raise HarnessError(f"{path} is a {info.get('kind')} run, not a train run; pass runs/train/<run_id>")
        export = path / "export"
        if not export.is_dir():
            raise HarnessError(f"train run {path} has no export/ (it has not finished); finish it with "
                               f"`lpo-bench train ... --resume` or pass a LoRA directory")
        bb = registry.check_name("backbone", str(info["backbone"]))
        if backbone is not None and backbone != bb:
            raise HarnessError(f"train run {path} used backbone {bb}, not --backbone {backbone}; drop --backbone")
        unet_dir = _unet_dir(export)
        if unet_dir is not None:
            return ModelSpec("train-run", bb, str(info["run_id"]), None, _unet_sha256(unet_dir), info, str(unet_dir))
        f = _lora_file(export)
        return ModelSpec("train-run", bb, str(info["run_id"]), str(export), file_sha256(f), info)
    if backbone is None:
        raise HarnessError(f"--model {path} is a LoRA or UNet path; say which backbone it belongs to with --backbone")
    bb = registry.check_name("backbone", backbone)
    unet_dir = _unet_dir(path)
    if unet_dir is not None:
        return ModelSpec("unet", bb, f"unet-{path.name or 'unet'}", None, _unet_sha256(unet_dir), None, str(unet_dir))
    f = _lora_file(path)
    name = (path.name if path.is_dir() else path.parent.name) or "lora"
    return ModelSpec("lora", bb, f"lora-{name}", str(path), file_sha256(f))


def load_model(spec: ModelSpec, *, weights_dir: str | Path | None, device: str) -> Any:
    """The backbone bundle with the spec's LoRA (if any) loaded into its UNet and active."""
    from lpo_bench.runner import load_backbone

    bundle = load_backbone(spec.backbone, weights_dir=str(weights_dir) if weights_dir else None, device=device)
    if spec.unet_path is not None:
        from diffusers import UNet2DConditionModel

        try:
            unet = UNet2DConditionModel.from_pretrained(spec.unet_path)
        except Exception as exc:
            raise HarnessError(f"could not load the UNet at {spec.unet_path}: {type(exc).__name__}; "
                               f"pass a directory written by a full fine-tuning export") from None
        arch = lambda cfg: {k: v for k, v in dict(cfg).items() if not k.startswith("_")}  # noqa: E731
        if arch(unet.config) != arch(bundle.unet.config):
            raise HarnessError(f"the UNet at {spec.unet_path} does not match the {spec.backbone} architecture; "
                               f"pass --backbone for the model it was trained from")
        bundle.unet = unet.to(device=device, dtype=bundle.dtype).requires_grad_(False)
    if spec.lora_path is not None:
        from lpo_bench.models.lora import load_lora_into

        load_lora_into(bundle.unet, spec.lora_path)
        bundle.unet.to(device)
    return bundle.eval()


# ---------------------------------------------------------------------------- runs
def _measurement_base(run_id: str, spec: ModelSpec, bundle: Any, prov: dict[str, Any]) -> dict[str, Any]:
    bp = bundle.provenance or {}
    tr = spec.train_run or {}
    return {
        "run_id": run_id,
        "method": str(tr.get("method", spec.kind)),
        "method_version": str(tr.get("method_version", "")),
        "config_hash": str(tr.get("config_hash", spec.lora_sha256 or "")),
        "backbone_id": str(bp.get("backbone_id", spec.backbone)),
        "backbone_revision": str(bp.get("backbone_revision", "")),
        "dtype": str(bp.get("dtype", "fp32")),
        "seed": tr.get("seed"),
        **{k: prov[k] for k in records.PROVENANCE_KEYS},
    }


def eval_run(
    model: str,
    suite: str,
    *,
    backbone: str | None = None,
    split: str = "test",
    max_prompts: int | None = None,
    images_per_prompt: int | None = None,
    batch_size: int = 64,
    out_root: str | Path | None = None,
    overwrite: bool = False,
    weights_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    device: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Evaluate ``model`` on ``suite`` and record it as ``runs/eval/<run_id>/``; returns the run dir.

    The run id is ``<model tag>-<suite>-<split>-<hash of model weights and inputs>``; a finished
    run is never replaced without ``overwrite=True``.
    """
    from lpo_bench.runner import pick_device

    s = get_suite(suite)
    items = s.prompts(split, data_dir=data_dir, max_prompts=max_prompts)
    ipp = int(images_per_prompt or s.images_per_prompt)
    if ipp < 1:
        raise HarnessError(f"--images-per-prompt must be >= 1, got {ipp}")
    spec = resolve_model(model, backbone)
    split_used = s.split_name(split)
    inputs = s.inputs_sha256(items, ipp)
    key = records.sha256_of({"model": spec.describe(), "suite": s.name, "version": s.version, "inputs": inputs})
    run_id = f"{spec.tag}-{s.name}-{split_used}-{key[:8]}"
    root = records.runs_root(out_root)
    existing = root / "eval" / run_id
    if existing.exists() and not overwrite:
        state = "finished" if records.is_done(existing) else "unfinished (an interrupted evaluation)"
        raise HarnessError(f"eval run {existing} already exists and is {state}; pass --overwrite to redo it")
    dev = pick_device(device)
    bundle = load_model(spec, weights_dir=weights_dir, device=dev)
    cats = [c for c in s.categories if any(it.category == c for it in items)]
    metrics = resolve_metrics(s, cats, device=dev, weights_dir=weights_dir, data_dir=data_dir)
    run_dir = records.prepare_run_dir(root, "eval", run_id, overwrite=overwrite, resume=False)
    prov = records.provenance()
    sp = s.sampler
    run_info: dict[str, Any] = {
        "run_id": run_id, "kind": "eval", "status": "running", "model": model, "model_spec": spec.describe(),
        "backbone": spec.backbone, "backbone_provenance": bundle.provenance, "suite": s.describe(),
        "split": split_used, "n_prompts": len(items), "images_per_prompt": ipp, "inputs_sha256": inputs,
        "sampler": {"scheduler": sp.scheduler, "num_inference_steps": sp.num_inference_steps,
                    "guidance_scale": sp.guidance_scale, "eta": sp.eta, "negative_prompt": ""},
        "seed_rule": f"sample_seed({s.seed_base}, prompt_id, image_idx)", "batch_size": batch_size,
        "image_naming": "images/<category>/samples/<prompt>_<prompt index in category * images_per_prompt + "
                        "image_idx, 6 digits>.png (T2I-CompBench)",
        "provenance": prov,
    }
    if s.skipped_categories(data_dir):
        run_info["skipped_sources"] = s.skipped_categories(data_dir)
    records.atomic_write_json(run_dir / "run.json", run_info)
    out = evaluate_items(bundle, None, s, items, images_per_prompt=ipp, batch_size=batch_size, metrics=metrics,
                         image_dir=run_dir / "images", log=log)
    for sk in out.skipped:
        log(f"skipped {sk['category']} ({sk['metric']}): {sk['reason']}")
    for cat, why in run_info.get("skipped_sources", {}).items():
        log(f"skipped {cat}: {why}")
    records.write_measurements(run_dir, out.rows, _measurement_base(run_id, spec, bundle, prov))
    if out.per_sample:
        records.write_per_sample(run_dir, out.per_sample)
    if out.grid is not None:
        save_grid(run_dir / "samples_grid.png", out.grid)
    run_info.update(status="done", n_images=out.n_images, skipped=out.skipped, scorers=out.scorers)
    records.atomic_write_json(run_dir / "run.json", run_info)
    records.mark_done(run_dir)
    return run_dir
