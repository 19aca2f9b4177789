"""Step-level reward accuracy across timesteps: does a reward model still prefer the winner of a held-out
preference pair once both images are noised to step t?

For held-out pairs ``(prompt, x_w, x_l)`` (split "test", ties dropped) and each t on a grid: both images
are encoded with the VAE (posterior mean, so the latents are deterministic) and noised with the SAME ε,
drawn from a generator seeded by ``(pair_id, t)``: ``x_t = scheduler.add_noise(z, ε, t)`` on the
backbone's training schedule. Each view scores winner and loser (in separate, equally shaped batches, so
equal inputs give bitwise equal scores); a pair is correct when ``s_w > s_l``, a tie counts one half
(``stats.pairwise_accuracy``).

Views and their input modes:

* a step reward model (``--reward-model DIR``; its kind is the registered step reward model whose
  ``marker_file`` the directory holds) is fed x_t through ``score_noisy(x_t, t, prompts)``; its
  ``input_mode`` attribute names what it scores: ``noisy_latent`` (x_t itself) or ``x0_pred_decoded``
  (the model predicts and decodes x̂0 itself). A model without the attribute reads x_t: ``noisy_latent``.
* a pixel metric (``--metric``): the base UNet's one-step prediction
  ``x̂0 = (x_t - sqrt(1 - ᾱ_t) ε̂) / sqrt(ᾱ_t)`` with CFG-guided ε̂ (guidance 5), decoded
  (``x0_pred_decoded``), and the decoded noisy latent itself (``noisy_decoded``).

Controls and subsets (:mod:`lpo_bench.evaluation.step_subsets`): each step reward model also scores the same
x_t with another pair's prompt, as the view ``<name>+shuffled-prompt`` (``shuffled_prompt_control``); on pairs
carrying the toy oracle's parts, accuracy is also reported on the alignment-decided and aesthetic-decided pairs.

Outputs ``runs/step_accuracy/<run_id>/``: run.json (grid, num_train_timesteps, pairs sha256, models, subsets and
their sizes, the shuffle rule), measurements.parquet (kind "step_reward_acc": one row per (category, reward model,
t, input mode) with accuracy, bootstrap CI over pairs and n; category "all" and each subset), per_sample.parquet
(per pair: s_w, s_l, acc, category, view_role, scored_prompt), step_accuracy.png (category "all").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lpo_bench import progress, records, registry
from lpo_bench.analysis import stats
from lpo_bench.analysis.step_accuracy import (
    ALL,
    ROLE_PIXEL_METRIC,
    ROLE_REWARD_MODEL,
    ROLE_SHUFFLED,
    SHUFFLED_SUFFIX,
)
from lpo_bench.errors import HarnessError
from lpo_bench.evaluation import step_subsets
from lpo_bench.evaluation.step_subsets import accuracy_rows

DEFAULT_TIMESTEPS = (1, 101, 201, 301, 401, 501, 601, 701, 801, 901, 951)
X0_GUIDANCE_SCALE = 5.0
NOISE_SEED = 0  # the ε of pair i at step t comes from purpose_generator(NOISE_SEED, "step-accuracy", i, t)
REWARD_MODEL_INPUT_MODES = ("noisy_latent", "x0_pred_decoded")
INPUT_MODES = (*REWARD_MODEL_INPUT_MODES, "noisy_decoded")


@dataclass
class AccuracyView:
    """One scored view of a pair: ``fn`` under a name (the rows' ``metric``) and an input mode.

    ``needs`` says what ``fn`` receives: "latent" (``fn(x_t [b,c,h,w], t [b], prompts)``), "x0_image"
    (decoded x̂0) or "xt_image" (decoded x_t), the images as ``fn(images [b,3,H,W], prompts)``. ``role``: the
    rows' ``view_role``; ``prompts``: "own" (the pair's prompt) or "shuffled" (another pair's, the control).
    """

    name: str
    input_mode: str
    needs: str
    fn: Callable[..., Any]
    provenance: dict[str, Any]
    role: str = ROLE_PIXEL_METRIC
    prompts: str = "own"


def pixel_views(name: str, adapter: Any, provenance: dict[str, Any]) -> list[AccuracyView]:
    """A pixel metric scored on the decoded x̂0 prediction and on the decoded noisy latent."""
    fn = lambda images, prompts: adapter.score(images, prompts)  # noqa: E731
    return [AccuracyView(name, "x0_pred_decoded", "x0_image", fn, provenance),
            AccuracyView(name, "noisy_decoded", "xt_image", fn, provenance)]


def reward_model_view(name: str, model: Any, provenance: dict[str, Any]) -> AccuracyView:
    """A step reward model (``score_noisy(x_t, t, prompts)``) fed x_t, labelled by its ``input_mode``."""
    mode = getattr(model, "input_mode", None)
    if mode not in REWARD_MODEL_INPUT_MODES:
        raise HarnessError(f"step reward model {name} declares input_mode {mode!r}; the harness knows "
                           f"{', '.join(REWARD_MODEL_INPUT_MODES)}; fix the model class's input_mode")
    return AccuracyView(name, mode, "latent", lambda x, t, prompts: model.score_noisy(x, t, prompts), provenance,
                        role=ROLE_REWARD_MODEL)


def shuffled_prompt_view(view: AccuracyView) -> AccuracyView:
    """The prompt-shuffled control of a step reward model's view: the same model, fed another pair's prompt."""
    return replace(view, name=view.name + SHUFFLED_SUFFIX, role=ROLE_SHUFFLED, prompts="shuffled",
                   provenance={**view.provenance, "control": "shuffled prompt", "control_of": view.name})


def encode_mean(bundle: Any, images: Any) -> Any:
    """Images [b,3,H,W] in [0,1] -> scaled VAE posterior-mean latents (deterministic)."""
    import torch

    with torch.no_grad():
        x = images.to(device=bundle.device, dtype=bundle.vae.dtype) * 2 - 1
        return bundle.vae.encode(x).latent_dist.mean * bundle.scaling_factor


def x0_from_prompts(bundle: Any, x_t: Any, t: int, prompts: Sequence[str],
                    guidance_scale: float = X0_GUIDANCE_SCALE) -> Any:
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
    views: Sequence[AccuracyView],
    timesteps: Sequence[int],
    *,
    pair_ids: Sequence[int] | None = None,
    shuffled_prompts: Sequence[str] | None = None,
    batch_size: int = 32,
    guidance_scale: float = X0_GUIDANCE_SCALE,
) -> list[dict[str, Any]]:
    """Per-pair scores: rows {pair_id, prompt, timestep, reward_model, input_mode, view_role, scored_prompt, s_w,
    s_l, acc}.

    images_w / images_l: [n,3,H,W] in [0,1]; pair_ids (default 0..n-1) seed the shared noise; shuffled_prompts
    (row-aligned with prompts): what views with ``prompts="shuffled"`` are given instead of the pair's prompt.
    """
    import torch

    n = len(prompts)
    pair_ids = list(range(n)) if pair_ids is None else [int(i) for i in pair_ids]
    bad = [t for t in timesteps if not 0 <= int(t) < bundle.num_train_timesteps]
    if bad:
        raise HarnessError(f"timesteps {bad} are outside [0, {bundle.num_train_timesteps}); pick t on the training "
                           f"schedule, e.g. 1,251,501,751,951")
    if shuffled_prompts is None and any(v.prompts == "shuffled" for v in views):
        raise HarnessError("a prompt-shuffled view needs shuffled_prompts; pass one prompt per pair")
    rows: list[dict[str, Any]] = []
    n_batches = -(-n // batch_size)
    with progress.task("step accuracy", total=n_batches * len(timesteps) * len(views), unit="t x view") as bar:
        for s in range(0, n, batch_size):
            sl = slice(s, min(n, s + batch_size))
            ps, ids = list(prompts[sl]), pair_ids[sl]
            other = list(shuffled_prompts[sl]) if shuffled_prompts is not None else ps
            z = {"w": encode_mean(bundle, images_w[sl]), "l": encode_mean(bundle, images_l[sl])}
            for t in timesteps:
                t_vec = torch.full((len(ps),), int(t), dtype=torch.long, device=bundle.device)
                eps = pair_noise(ids, int(t), z["w"].shape[1:]).to(z["w"])
                inputs: dict[str, dict[str, Any]] = {}
                for side in ("w", "l"):
                    x_t = bundle.scheduler.add_noise(z[side], eps, t_vec)
                    inputs[side] = {"latent": x_t}
                    if any(v.needs == "xt_image" for v in views):
                        inputs[side]["xt_image"] = _decode(bundle, x_t)
                    if any(v.needs == "x0_image" for v in views):
                        x0 = x0_from_prompts(bundle, x_t, int(t), ps, guidance_scale)
                        inputs[side]["x0_image"] = _decode(bundle, x0)
                for view in views:
                    out, vp = {}, other if view.prompts == "shuffled" else ps
                    for side in ("w", "l"):
                        x = inputs[side][view.needs]
                        with torch.no_grad():
                            out[side] = view.fn(x, t_vec, vp) if view.needs == "latent" else view.fn(x, vp)
                        out[side] = torch.as_tensor(out[side]).detach().float().cpu().reshape(-1).tolist()
                    acc = stats.pairwise_accuracy(out["w"], out["l"])
                    for j in range(len(ps)):
                        rows.append({"pair_id": ids[j], "prompt": ps[j], "timestep": int(t), "reward_model": view.name,
                                     "input_mode": view.input_mode, "view_role": view.role, "scored_prompt": vp[j],
                                     "s_w": out["w"][j], "s_l": out["l"][j], "acc": float(acc[j])})
                    bar.advance(1, t=int(t))
    return rows


def _decode(bundle: Any, latents: Any) -> Any:
    import torch

    with torch.no_grad():
        return bundle.decode(latents).float().cpu()


def plot_accuracy(measurements: Any, path: Path, title: str = "Step-level reward accuracy") -> Path:
    """Accuracy vs t on all pairs, one line per (reward model, input mode) with its CI band and the chance line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = measurements[measurements["kind"] == "step_reward_acc"]
    df = df[df["category"].astype(object).fillna(ALL) == ALL]
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


# ---------------------------------------------------------------------------- reward model directories
@dataclass(frozen=True)
class RewardModelDir:
    """A saved step reward model: its directory, registered spec, content hash and name in the rows; or a
    ``released:<name>`` model (``released``: its resolved files, imported from the official layout)."""

    path: Path
    spec: Any  # lpo_bench.harness.spec.StepRewardModelSpec
    sha256: str
    name: str
    released: Any = None  # lpo_bench.models.released.ResolvedRelease


def reward_model_spec_of(path: Path) -> Any:
    """The registered step reward model spec whose ``marker_file`` the directory ``path`` holds."""
    specs = [registry.reward_model_spec(n) for n in registry.STEP_REWARD_MODELS]
    kinds = ", ".join(s.name for s in specs)
    if not path.is_dir():
        raise HarnessError(f"--reward-model {path} is not a directory; pass the directory a step reward model "
                           f"({kinds}) was saved to")
    found = [s for s in specs if (path / s.marker_file).is_file()]
    if len(found) > 1:
        raise HarnessError(f"--reward-model {path} holds the marker files of several kinds "
                           f"({', '.join(s.marker_file for s in found)}); pass a directory holding one saved model")
    if not found:
        nested = path / "model"
        hint = f" (did you mean {nested}?)" if any((nested / s.marker_file).is_file() for s in specs) else ""
        markers = ", ".join(f"{s.marker_file} for {s.name}" for s in specs)
        raise HarnessError(f"--reward-model {path} is no saved step reward model of a known kind (no {markers})"
                           f"{hint}; pass a directory written by `lpo-bench train-reward` or a train run's "
                           f"reward-model folder")
    return found[0]


def reward_model_dirs(paths: Sequence[str | Path], *, backbone: str | None = None,
                      weights_dir: str | Path | None = None) -> list[RewardModelDir]:
    """Kind and content hash of each directory (or ``released:<name>``, located in ``weights_dir`` and checked
    against ``backbone``); a kind passed more than once is named ``<kind>@<sha[:8]>``."""
    from lpo_bench.harness.identity import dir_sha256
    from lpo_bench.models import released

    rel = {str(p): released.resolve_released(str(p), kind=released.STEP_REWARD_MODEL, backbone=backbone,
                                             weights_dir=weights_dir) for p in paths if released.is_released(p)}
    found = [(Path(p), registry.reward_model_spec(str(rel[str(p)].entry.reward_model)) if str(p) in rel
              else reward_model_spec_of(Path(p))) for p in paths]
    shas = [rel[str(p)].sha256 if str(p) in rel else dir_sha256(p) for p, _ in found]
    if len(set(shas)) < len(shas):
        raise HarnessError("the same reward model was passed twice with --reward-model; pass each model once")
    kinds = [spec.name for _, spec in found]
    names = [str(p) if str(p) in rel else spec.name if kinds.count(spec.name) == 1 else f"{spec.name}@{sha[:8]}"
             for (p, spec), sha in zip(found, shas, strict=True)]
    return [RewardModelDir(p, spec, sha, name, rel.get(str(p)))
            for (p, spec), sha, name in zip(found, shas, names, strict=True)]


def load_reward_model_view(rm: RewardModelDir, bundle: Any, device: str) -> AccuracyView:
    """Load ``rm`` through its spec's ``model`` target (``cls.load(path, bundle, device=...)``)."""
    try:
        cls = registry.load_target(rm.spec.model)
    except (ModuleNotFoundError, AttributeError):
        raise HarnessError(f"--reward-model {rm.path} needs {rm.spec.model}, which this install does not have; "
                           f"install the full lpo-bench or drop that --reward-model") from None
    if rm.released is not None:
        from lpo_bench.models import released

        model = released.load_reward_model(rm.released, bundle, device=device)
    else:
        model = cls.load(rm.path, bundle, device=device)
    model.eval()
    prov = {"metric_id": rm.spec.name, "metric_version": str(getattr(cls, "version", "")),
            "checkpoint": str(rm.path), "sha256": rm.sha256}
    if rm.released is not None:
        e = rm.released.entry
        prov.update(checkpoint=f"{e.ref}={e.repo_id}@{e.revision or 'unpinned'}", released=rm.released.provenance())
    return reward_model_view(rm.name, model, prov)


# ---------------------------------------------------------------------------- run
def step_accuracy_run(
    *,
    pairs_dir: str | Path,
    backbone: str = "toy",
    reward_models: Sequence[str | Path] = (),
    metrics: Sequence[str] = (),
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    max_pairs: int | None = 256,
    batch_size: int = 32,
    out_root: str | Path | None = None,
    overwrite: bool = False,
    weights_dir: str | Path | None = None,
    device: str | None = None,
    bundle: Any = None,
    shuffled_prompt_control: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Measure step-level accuracy of saved step reward models and pixel metrics on held-out pairs; returns
    the run dir. ``bundle``: the backbone's ModelBundle to use instead of loading the registered one;
    ``shuffled_prompt_control``: also score each step reward model with another pair's prompt."""
    import torch

    from lpo_bench.data.pairs import load_pairs
    from lpo_bench.evaluation.loading import load_metric
    from lpo_bench.harness.dist import pick_device
    from lpo_bench.harness.run import RunRecorder

    registry.check_name("backbone", backbone)
    for m in metrics:
        registry.check_name("metric", m)
    if not reward_models and not metrics:
        raise HarnessError("nothing to measure: pass --reward-model DIR and/or --metric NAME")
    grid = sorted({int(t) for t in timesteps})
    if not grid:
        raise HarnessError("--timesteps is empty; pass e.g. 1,251,501,751,951")
    rms = reward_model_dirs(reward_models, backbone=backbone, weights_dir=weights_dir)
    pairs = load_pairs(pairs_dir, "test", drop_ties=True)
    n = len(pairs) if max_pairs is None else min(len(pairs), int(max_pairs))
    if n < 1:
        raise HarnessError(f"--max-pairs must be >= 1, got {max_pairs}")
    sel = list(range(n))
    identity = {"kind": "step_accuracy", "pairs_sha256": pairs.sha256, "n_pairs": n, "backbone": backbone,
                "timesteps": grid, "reward_models": [{"kind": rm.spec.name, "sha256": rm.sha256} for rm in rms],
                "metrics": list(metrics), "shuffled_prompt_control": bool(shuffled_prompt_control)}
    dev = pick_device(device)
    with RunRecorder("step_accuracy", f"stepacc-{backbone}", identity, out_root=out_root,
                     overwrite=overwrite, resumable=False) as run:
        if bundle is None:
            from lpo_bench.models.load import load_bundle

            bundle = load_bundle(backbone, weights_dir=weights_dir, device=dev)
        bundle = bundle.eval()
        if pairs.images_0.shape[1] != bundle.resolution:
            pairs = load_pairs(pairs_dir, "test", drop_ties=True, resolution=bundle.resolution)
        views = [load_reward_model_view(rm, bundle, dev) for rm in rms]
        if shuffled_prompt_control:
            views += [shuffled_prompt_view(v) for v in views]
        for m in metrics:
            lm = load_metric(m, device=dev, weights_dir=weights_dir)
            views += pixel_views(m, lm.scorer, lm.provenance.as_dict())
        w_mask = torch.as_tensor(pairs.label_0[sel] == 1.0).view(-1, 1, 1, 1)
        imgs0, imgs1 = pairs.images_tensor(0, sel), pairs.images_tensor(1, sel)
        images_w, images_l = torch.where(w_mask, imgs0, imgs1), torch.where(w_mask, imgs1, imgs0)
        provs = {v.name: v.provenance for v in views}
        prompts = [pairs.captions[i] for i in sel]
        subsets = step_subsets.pair_subsets(pairs.extra.iloc[sel])
        shuffle = step_subsets.shuffled_prompt_index(prompts)
        shuffled = [prompts[j] for j in shuffle]
        run.start({
            "backbone": backbone,
            "pairs": {"source": pairs.source, "split": "test", "sha256": pairs.sha256, "n_pairs": n,
                      "ties": "dropped", "skipped_rows": pairs.skipped},
            "timesteps": grid, "num_train_timesteps": bundle.num_train_timesteps,
            "noise": f"shared eps per pair: purpose_generator({NOISE_SEED}, 'step-accuracy', pair_id, t); "
                     "x_t = scheduler.add_noise(vae posterior mean, eps, t)",
            "x0_prediction": {"guidance_scale": X0_GUIDANCE_SCALE, "negative_prompt": "", "unet": "base"},
            "reward_models": provs, "input_modes": sorted({f"{v.name}:{v.input_mode}" for v in views}),
            "subsets": step_subsets.subset_summary(subsets, n),
            "shuffled_prompt_control": {
                "enabled": bool(shuffled_prompt_control), "suffix": SHUFFLED_SUFFIX, "rule": step_subsets.SHUFFLE_RULE,
                "views": [v.name for v in views if v.role == ROLE_SHUFFLED],
                "same_prompt_fraction": step_subsets.same_prompt_fraction(prompts, shuffle)},
        }, bundle_provenance=bundle.provenance, backbone=backbone,
            base_extra={"method": "step-accuracy", "inputs_sha256": pairs.sha256, "batch_size": batch_size})
        log(f"[step-accuracy] {n} pairs x {len(grid)} timesteps x {len(views)} views")
        per_pair = score_pairs(bundle, prompts, images_w, images_l, views, grid, pair_ids=sel,
                               shuffled_prompts=shuffled, batch_size=batch_size)
        for r in per_pair:  # sel is 0..n-1: pair_id indexes the subsets
            r["category"] = subsets[r["pair_id"]] if subsets is not None else None
        run.write_measurements(accuracy_rows(per_pair, provs))
        run.write_per_sample(per_pair)
        plot_accuracy(records.read_measurements(run.dir / "measurements.parquet"), run.dir / "step_accuracy.png",
                      title=f"Step-level reward accuracy ({backbone}, {n} pairs)")
        run.finish()
    return run.dir
