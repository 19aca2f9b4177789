"""Step-level reward accuracy across timesteps (architecture.md §4.6).

For held-out preference pairs ``(prompt, x_w, x_l)`` (split "test", ties dropped) and each t on a
grid: both images are encoded with the VAE (posterior mean, so the latents are deterministic) and
noised with the SAME ε, drawn from a generator seeded by ``(pair_id, t)``:
``x_t = scheduler.add_noise(z, ε, t)`` on the backbone's training schedule. Each reward model
scores winner and loser (in separate, equally shaped batches, so equal inputs give bitwise equal
scores); a pair is correct when ``s_w > s_l``, a tie counts one half (``stats.pairwise_accuracy``).

Reward models and what they see (``input_mode``):

* LRM (LPO): ``noisy_latent``, ``score_noisy(x_t, t, prompts)``.
* SPM (SPO): ``x0_pred_decoded`` (its ``score_noisy`` predicts and decodes x̂0 itself).
* pixel metrics (``--metric``): the base UNet's one-step prediction
  ``x̂0 = (x_t - sqrt(1 - ᾱ_t) ε̂) / sqrt(ᾱ_t)`` with CFG-guided ε̂ (guidance 5), decoded
  (``x0_pred_decoded``), and the decoded noisy latent itself (``noisy_decoded``).

Outputs ``runs/step_accuracy/<run_id>/``: run.json (grid, num_train_timesteps, pairs sha256, models),
measurements.parquet (kind "step_reward_acc": one row per (reward model, t, input mode) with
accuracy, bootstrap CI over pairs and n), per_sample.parquet (s_w, s_l per pair), step_accuracy.png.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpo_bench import records, registry
from lpo_bench.analysis import stats
from lpo_bench.errors import HarnessError

DEFAULT_TIMESTEPS = (1, 101, 201, 301, 401, 501, 601, 701, 801, 901, 951)
X0_GUIDANCE_SCALE = 5.0
NOISE_SEED = 0  # the ε of pair i at step t comes from purpose_generator(NOISE_SEED, "step-accuracy", i, t)
INPUT_MODES = ("noisy_latent", "x0_pred_decoded", "noisy_decoded")


@dataclass
class StepScorer:
    """One scored view: ``fn(x_t [b,c,h,w], t [b], prompts) -> scores [b]`` under a name and input mode.

    ``needs`` says what ``fn`` receives: "latent" (x_t), "x0_image" (decoded x̂0) or "xt_image" (decoded x_t).
    """

    name: str
    input_mode: str
    needs: str
    fn: Callable[..., Any]
    provenance: dict[str, Any]


def pixel_scorers(name: str, adapter: Any, provenance: dict[str, Any]) -> list[StepScorer]:
    """A pixel metric scored on the decoded x̂0 prediction and on the decoded noisy latent."""
    fn = lambda images, prompts: adapter.score(images, prompts)  # noqa: E731
    return [StepScorer(name, "x0_pred_decoded", "x0_image", fn, provenance),
            StepScorer(name, "noisy_decoded", "xt_image", fn, provenance)]


def step_model_scorer(name: str, model: Any, provenance: dict[str, Any], input_mode: str) -> StepScorer:
    """A StepRewardModel (``score_noisy(latents, timesteps, prompts)``) fed x_t."""
    return StepScorer(name, input_mode, "latent", lambda x, t, prompts: model.score_noisy(x, t, prompts), provenance)


def encode_mean(bundle: Any, images: Any) -> Any:
    """Images [b,3,H,W] in [0,1] -> scaled VAE posterior-mean latents (deterministic)."""
    import torch

    with torch.no_grad():
        x = images.to(device=bundle.device, dtype=bundle.vae.dtype) * 2 - 1
        return bundle.vae.encode(x).latent_dist.mean * bundle.scaling_factor


def predict_x0(bundle: Any, x_t: Any, t: int, prompts: Sequence[str], guidance_scale: float = X0_GUIDANCE_SCALE) -> Any:
    """x̂0 = (x_t - sqrt(1-ᾱ_t) ε̂) / sqrt(ᾱ_t) (``ddim.predict_x0``) with ε̂ the CFG-guided base-UNet
    prediction at the single timestep ``t`` for every row."""
    import torch

    from lpo_bench.diffusion import ddim

    with torch.no_grad():
        eps = bundle.guided_eps(x_t, int(t), bundle.encode_prompts(prompts), bundle.encode_negative(len(prompts)),
                                guidance_scale)
        return ddim.predict_x0(bundle.scheduler, x_t, eps, int(t))


def pair_noise(pair_ids: Sequence[int], t: int, shape: Sequence[int]) -> Any:
    """ε [b, *shape], row i drawn from the generator of (pair_ids[i], t): shared by winner and loser."""
    import torch

    from lpo_bench.diffusion.seeding import purpose_generator

    return torch.stack([torch.randn(tuple(shape), generator=purpose_generator(NOISE_SEED, "step-accuracy", int(i), int(t)))
                        for i in pair_ids])


def score_pairs(
    bundle: Any,
    prompts: Sequence[str],
    images_w: Any,
    images_l: Any,
    scorers: Sequence[StepScorer],
    timesteps: Sequence[int],
    *,
    pair_ids: Sequence[int] | None = None,
    batch_size: int = 32,
    guidance_scale: float = X0_GUIDANCE_SCALE,
) -> list[dict[str, Any]]:
    """Per-pair scores: rows {pair_id, prompt, timestep, reward_model, input_mode, s_w, s_l, acc}.

    images_w / images_l: [n,3,H,W] in [0,1]; pair_ids (default 0..n-1) seed the shared noise.
    """
    import torch

    n = len(prompts)
    pair_ids = list(range(n)) if pair_ids is None else [int(i) for i in pair_ids]
    bad = [t for t in timesteps if not 0 <= int(t) < bundle.num_train_timesteps]
    if bad:
        raise HarnessError(f"timesteps {bad} are outside [0, {bundle.num_train_timesteps}); pick t on the training "
                           f"schedule, e.g. 1,251,501,751,951")
    rows: list[dict[str, Any]] = []
    for s in range(0, n, batch_size):
        sl = slice(s, min(n, s + batch_size))
        ps, ids = list(prompts[sl]), pair_ids[sl]
        z = {"w": encode_mean(bundle, images_w[sl]), "l": encode_mean(bundle, images_l[sl])}
        for t in timesteps:
            t_vec = torch.full((len(ps),), int(t), dtype=torch.long, device=bundle.device)
            eps = pair_noise(ids, int(t), z["w"].shape[1:]).to(z["w"])
            views: dict[str, dict[str, Any]] = {}
            for side in ("w", "l"):
                x_t = bundle.scheduler.add_noise(z[side], eps, t_vec)
                views[side] = {"latent": x_t}
                if any(sc.needs == "xt_image" for sc in scorers):
                    views[side]["xt_image"] = _decode(bundle, x_t)
                if any(sc.needs == "x0_image" for sc in scorers):
                    views[side]["x0_image"] = _decode(bundle, predict_x0(bundle, x_t, int(t), ps, guidance_scale))
            for sc in scorers:
                out = {}
                for side in ("w", "l"):
                    v = views[side][sc.needs]
                    with torch.no_grad():
                        out[side] = (sc.fn(v, t_vec, ps) if sc.needs == "latent" else sc.fn(v, ps))
                    out[side] = torch.as_tensor(out[side]).detach().float().cpu().reshape(-1).tolist()
                acc = stats.pairwise_accuracy(out["w"], out["l"])
                for j in range(len(ps)):
                    rows.append({"pair_id": ids[j], "prompt": ps[j], "timestep": int(t), "reward_model": sc.name,
                                 "input_mode": sc.input_mode, "s_w": out["w"][j], "s_l": out["l"][j],
                                 "acc": float(acc[j])})
    return rows


def _decode(bundle: Any, latents: Any) -> Any:
    import torch

    with torch.no_grad():
        return bundle.decode(latents).float().cpu()


def accuracy_rows(per_pair: list[dict[str, Any]], provenance: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Measurement rows (kind "step_reward_acc"): accuracy, bootstrap CI over pairs and n per
    (reward model, timestep, input mode), in first-seen order of reward model and mode."""
    import pandas as pd

    if not per_pair:
        return []
    df = pd.DataFrame(per_pair)
    rows = []
    for (name, mode, t), g in df.groupby(["reward_model", "input_mode", "timestep"], sort=False):
        value, lo, hi = stats.mean_ci(g["acc"].to_numpy())
        prov = provenance.get(name, {})
        rows.append({"kind": "step_reward_acc", "metric": name, "input_mode": mode, "timestep": int(t),
                     "value": value, "ci_low": lo, "ci_high": hi, "n": int(len(g)), "higher_is_better": True,
                     "metric_version": str(prov.get("metric_version", "")),
                     "scorer_checkpoint": str(prov.get("checkpoint", "")), "scorer_sha256": str(prov.get("sha256", ""))})
    return rows


def step_accuracy_table(measurements: Any, *, with_ci: bool = False) -> Any:
    """Wide table for reports: one row per timestep, one column per "<reward model> (<input mode>)"
    (prefixed by the run id when several runs are present); cells are accuracies, or
    "0.812 [0.770, 0.851]" strings with ``with_ci``."""
    import pandas as pd

    df = measurements[measurements["kind"] == "step_reward_acc"].copy()
    if df.empty:
        return pd.DataFrame()
    many = df["run_id"].nunique() > 1 if "run_id" in df.columns else False
    df["column"] = df["metric"].astype(str) + " (" + df["input_mode"].astype(str) + ")"
    if many:
        df["column"] = df["run_id"].astype(str) + ": " + df["column"]
    if df.duplicated(["column", "timestep"]).any():
        raise ValueError("several measurements share a (reward model, input mode, timestep); filter to one run each")
    if with_ci:
        cis = zip(df["value"], df["ci_low"], df["ci_high"], strict=True)
        df["cell"] = [f"{v:.3f} [{lo:.3f}, {hi:.3f}]" for v, lo, hi in cis]
    else:
        df["cell"] = df["value"].astype(float)
    order = list(dict.fromkeys(df["column"]))
    table = df.pivot(index="timestep", columns="column", values="cell")[order].sort_index()
    table.index = table.index.astype(int)
    table.columns.name = None
    return table


def plot_accuracy(measurements: Any, path: Path, title: str = "Step-level reward accuracy") -> Path:
    """Accuracy vs t, one line per (reward model, input mode) with its CI band and the 0.5 chance line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = measurements[measurements["kind"] == "step_reward_acc"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (name, mode), g in df.groupby(["metric", "input_mode"], sort=False):
        g = g.sort_values("timestep")
        t = g["timestep"].astype(int).to_numpy()
        (line,) = ax.plot(t, g["value"].astype(float).to_numpy(), marker="o", ms=3, label=f"{name} ({mode})")
        ax.fill_between(t, g["ci_low"].astype(float).to_numpy(), g["ci_high"].astype(float).to_numpy(),
                        color=line.get_color(), alpha=0.15, lw=0)
    ax.axhline(0.5, color="grey", ls="--", lw=1, label="chance")
    ax.set_xlabel("timestep t (training schedule)")
    ax.set_ylabel("pairwise accuracy (ties = 0.5)")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- run
def _load_bundle(backbone: str, weights_dir: str | None, device: str) -> Any:
    from lpo_bench.runner import load_backbone

    return load_backbone(backbone, weights_dir=weights_dir, device=device).eval()


def _dir_sha256(path: Path) -> str:
    """sha256 over the files of a saved model directory (names + contents)."""
    from lpo_bench.models.weights import file_sha256

    files = sorted(p for p in Path(path).rglob("*") if p.is_file())
    return records.sha256_of([[str(p.relative_to(path)), file_sha256(p)] for p in files])


def _step_model(kind: str, path: Path, bundle: Any, device: str) -> StepScorer:
    """LRM or SPM loaded from ``path`` (``cls.load(path, bundle)``)."""
    import importlib

    target = registry.STEP_REWARD_MODELS[kind]
    module, attr = target.split(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ModuleNotFoundError, AttributeError):
        raise HarnessError(f"--{kind} needs {target}, which this install does not have; drop --{kind} or install "
                           f"the full lpo-bench") from None
    if not Path(path).exists():
        raise HarnessError(f"--{kind} {path} does not exist; pass the directory the {kind.upper()} was saved to")
    model = cls.load(path, bundle, device=device) if "device" in _params(cls.load) else cls.load(path, bundle)
    model.eval()
    mode = getattr(model, "input_mode", "noisy_latent" if kind == "lrm" else "x0_pred_decoded")
    prov = {"metric_id": kind, "metric_version": str(getattr(cls, "version", "")), "checkpoint": str(path),
            "sha256": _dir_sha256(Path(path))}
    return step_model_scorer(kind, model, prov, mode)


def _params(fn: Any) -> set[str]:
    import inspect

    return set(inspect.signature(fn).parameters)


def step_accuracy_run(
    *,
    pairs_dir: str | Path,
    backbone: str = "toy",
    lrm: str | Path | None = None,
    spm: str | Path | None = None,
    metrics: Sequence[str] = (),
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    max_pairs: int | None = 256,
    batch_size: int = 32,
    out_root: str | Path | None = None,
    overwrite: bool = False,
    weights_dir: str | Path | None = None,
    device: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Measure step-level accuracy of the given reward models on held-out pairs; returns the run dir."""
    from lpo_bench.data.pairs import load_pairs
    from lpo_bench.evaluation import load_metric
    from lpo_bench.runner import pick_device

    registry.check_name("backbone", backbone)
    for m in metrics:
        registry.check_name("metric", m)
    if lrm is None and spm is None and not metrics:
        raise HarnessError("nothing to measure: pass --lrm DIR, --spm DIR and/or --metric NAME")
    grid = sorted({int(t) for t in timesteps})
    if not grid:
        raise HarnessError("--timesteps is empty; pass e.g. 1,251,501,751,951")
    pairs = load_pairs(pairs_dir, "test", drop_ties=True)
    n = len(pairs) if max_pairs is None else min(len(pairs), int(max_pairs))
    if n < 1:
        raise HarnessError(f"--max-pairs must be >= 1, got {max_pairs}")
    sel = list(range(n))
    models = {k: (str(p), _dir_sha256(Path(p)) if Path(p).is_dir() else None) for k, p in (("lrm", lrm), ("spm", spm))
              if p is not None}
    key = records.sha256_of({"pairs": pairs.sha256, "n": n, "backbone": backbone, "grid": grid, "models": models,
                             "metrics": list(metrics)})
    run_id = f"stepacc-{backbone}-{key[:8]}"
    root = records.runs_root(out_root)
    existing = root / "step_accuracy" / run_id
    if existing.exists() and not overwrite:
        state = "finished" if records.is_done(existing) else "unfinished (interrupted)"
        raise HarnessError(f"step-accuracy run {existing} already exists and is {state}; pass --overwrite to redo it")
    dev = pick_device(device)
    bundle = _load_bundle(backbone, str(weights_dir) if weights_dir else None, dev)
    if pairs.images_0.shape[1] != bundle.resolution:
        pairs = load_pairs(pairs_dir, "test", drop_ties=True, resolution=bundle.resolution)
    scorers: list[StepScorer] = []
    if lrm is not None:
        scorers.append(_step_model("lrm", Path(lrm), bundle, dev))
    if spm is not None:
        scorers.append(_step_model("spm", Path(spm), bundle, dev))
    for m in metrics:
        lm = load_metric(m, device=dev, weights_dir=weights_dir)
        scorers += pixel_scorers(m, lm.scorer, lm.provenance.as_dict())
    run_dir = records.prepare_run_dir(root, "step_accuracy", run_id, overwrite=overwrite, resume=False)
    prov = records.provenance()
    winner_is_0 = pairs.label_0[sel] == 1.0
    imgs0, imgs1 = pairs.images_tensor(0, sel), pairs.images_tensor(1, sel)
    import torch

    w_mask = torch.as_tensor(winner_is_0).view(-1, 1, 1, 1)
    images_w, images_l = torch.where(w_mask, imgs0, imgs1), torch.where(w_mask, imgs1, imgs0)
    provs = {sc.name: sc.provenance for sc in scorers}
    run_info: dict[str, Any] = {
        "run_id": run_id, "kind": "step_accuracy", "status": "running", "backbone": backbone,
        "backbone_provenance": bundle.provenance, "pairs": {"source": pairs.source, "split": "test",
                                                             "sha256": pairs.sha256, "n_pairs": n, "ties": "dropped",
                                                             "skipped_rows": pairs.skipped},
        "timesteps": grid, "num_train_timesteps": bundle.num_train_timesteps,
        "noise": f"shared eps per pair: purpose_generator({NOISE_SEED}, 'step-accuracy', pair_id, t); "
                 "x_t = scheduler.add_noise(vae posterior mean, eps, t)",
        "x0_prediction": {"guidance_scale": X0_GUIDANCE_SCALE, "negative_prompt": "", "unet": "base"},
        "reward_models": {sc.name: sc.provenance for sc in scorers},
        "input_modes": sorted({f"{sc.name}:{sc.input_mode}" for sc in scorers}),
        "provenance": prov,
    }
    records.atomic_write_json(run_dir / "run.json", run_info)
    log(f"[step-accuracy] {n} pairs x {len(grid)} timesteps x {len(scorers)} scorers")
    per_pair = score_pairs(bundle, [pairs.captions[i] for i in sel], images_w, images_l, scorers, grid,
                           pair_ids=sel, batch_size=batch_size)
    rows = accuracy_rows(per_pair, provs)
    bp = bundle.provenance or {}
    base = {"run_id": run_id, "method": "step-accuracy", "backbone_id": str(bp.get("backbone_id", backbone)),
            "backbone_revision": str(bp.get("backbone_revision", "")), "dtype": str(bp.get("dtype", "fp32")),
            "inputs_sha256": pairs.sha256, "batch_size": batch_size, **{k: prov[k] for k in records.PROVENANCE_KEYS}}
    records.write_measurements(run_dir, rows, base)
    records.write_per_sample(run_dir, per_pair)
    measurements = records.read_measurements(run_dir / "measurements.parquet")
    plot_accuracy(measurements, run_dir / "step_accuracy.png", title=f"Step-level reward accuracy ({backbone}, {n} pairs)")
    run_info["status"] = "done"
    records.atomic_write_json(run_dir / "run.json", run_info)
    records.mark_done(run_dir)
    return run_dir
