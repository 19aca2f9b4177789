"""What ``lpo-bench eval --model`` names, resolved into a bundle: ``base:<backbone>``, a finished train run
(its ``export/``), a LoRA directory, a fully fine-tuned UNet directory, or ``released:<name>`` (a released UNet
of ``registry.RELEASED``, imported strictly from its official layout).

``best-of-<N>:<metric>:<model>`` is a sampling control, not a model: each image is the best of N candidates of
``<model>`` under ``<metric>`` (candidate 0 is the image ``<model>`` itself gives, so the control never scores
below it on that metric). With the toy oracle it is the positive control of the toy world: what a method that
learned the preference perfectly could at least reach at N times the sampling cost."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lpo_bench import records, registry
from lpo_bench.errors import HarnessError

TRAIN_RUN_FIELDS = ("run_id", "method", "method_role", "method_version", "config_hash", "seed", "status",
                    "backbone_provenance")


@dataclass(frozen=True)
class ModelSpec:
    """A resolved ``--model``: the backbone, and the LoRA or UNet weights put into it (none for a base model)."""

    kind: str  # "base" | "train-run" | "lora" | "unet" | "released"
    backbone: str
    tag: str  # readable prefix of the eval run id
    lora_path: str | None = None
    unet_path: str | None = None  # a fully fine-tuned UNet (diffusers layout) instead of a LoRA
    weights_sha256: str | None = None  # of the LoRA or UNet weights
    train_run: dict[str, Any] | None = None  # run.json of the train run
    released: dict[str, Any] | None = None  # provenance of a released UNet (lpo_bench.models.released)
    best_of_n: int = 1  # > 1: each image is the best of this many candidates under best_of_metric
    best_of_metric: str | None = None

    def identity(self) -> dict[str, Any]:
        """What decides the model's outputs (hashed into the eval run id); paths are left out."""
        ident = {"kind": self.kind, "backbone": self.backbone, "weights_sha256": self.weights_sha256}
        if self.best_of_n > 1:
            ident["best_of"] = {"n": self.best_of_n, "metric": self.best_of_metric}
        return ident

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "backbone": self.backbone, "lora_path": self.lora_path,
                             "unet_path": self.unet_path}
        if self.weights_sha256 is not None:
            d["unet_sha256" if self.unet_path else "lora_sha256"] = self.weights_sha256
        if self.train_run is not None:
            d["train_run"] = {k: self.train_run.get(k) for k in TRAIN_RUN_FIELDS}
        if self.released is not None:
            d["released"] = self.released
        if self.best_of_n > 1:
            d["best_of"] = {"n": self.best_of_n, "metric": self.best_of_metric}
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


def _lora_sha256(path: Path) -> str:
    from lpo_bench.models.lora import LORA_WEIGHT_NAME
    from lpo_bench.models.weights import file_sha256

    f = path if path.is_file() else path / LORA_WEIGHT_NAME
    if not f.is_file():
        raise HarnessError(f"no LoRA weights at {f}; pass a directory written by export_lora (a train run's export/)")
    return file_sha256(f)


def _weights(kind: str, backbone: str, tag: str, path: Path, train_run: dict[str, Any] | None = None) -> ModelSpec:
    """The spec of the UNet or LoRA weights at ``path``."""
    unet_dir = _unet_dir(path)
    if unet_dir is not None:
        return ModelSpec(kind, backbone, tag, unet_path=str(unet_dir), weights_sha256=_unet_sha256(unet_dir),
                         train_run=train_run)
    return ModelSpec(kind, backbone, tag, lora_path=str(path), weights_sha256=_lora_sha256(path), train_run=train_run)


BEST_OF = "best-of-"


def _best_of(model: str, backbone: str | None, weights_dir: str | Path | None) -> ModelSpec:
    """``best-of-<N>:<metric>:<model>`` (see the module docstring)."""
    n_text, _, rest = model[len(BEST_OF):].partition(":")
    metric, _, inner = rest.partition(":")
    if not n_text.isdigit() or int(n_text) < 2 or not metric or not inner:
        raise HarnessError(f"--model {model!r}: write best-of-<N>:<metric>:<model> with N >= 2, "
                           f"e.g. best-of-4:toy-oracle:base:toy")
    registry.check_name("metric", metric)
    spec = resolve_model(inner, backbone, weights_dir=weights_dir)
    if spec.best_of_n > 1:
        raise HarnessError(f"--model {model!r} nests best-of; use one best-of-<N> prefix")
    return replace(spec, tag=f"best-of-{n_text}-{metric}-{spec.tag}", best_of_n=int(n_text), best_of_metric=metric)


def resolve_model(model: str, backbone: str | None = None, *, weights_dir: str | Path | None = None) -> ModelSpec:
    """Parse ``--model``: ``base:<backbone>``, ``released:<name>`` (its files located in ``weights_dir`` and
    hashed), a train run directory, a LoRA / UNet path (needs ``backbone``), or ``best-of-<N>:<metric>:<model>``."""
    from lpo_bench.models import released

    if model.startswith(BEST_OF):
        return _best_of(model, backbone, weights_dir)

    if released.is_released(model):
        r = released.resolve_released(model, kind=released.UNET, backbone=backbone, weights_dir=weights_dir)
        return ModelSpec("released", r.entry.backbone, f"released-{r.entry.name}", weights_sha256=r.sha256,
                         released=r.provenance())
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
        return _weights("train-run", bb, str(info["run_id"]), export, info)
    if backbone is None:
        raise HarnessError(f"--model {path} is a LoRA or UNet path; say which backbone it belongs to with --backbone")
    bb = registry.check_name("backbone", backbone)
    if _unet_dir(path) is not None:
        return _weights("unet", bb, f"unet-{path.name or 'unet'}", path)
    name = (path.name if path.is_dir() else path.parent.name) or "lora"
    return _weights("lora", bb, f"lora-{name}", path)


def load_model(spec: ModelSpec, *, weights_dir: str | Path | None, device: str, bundle: Any = None) -> Any:
    """The backbone bundle with the spec's UNet or LoRA (if any) put into it, in eval mode.

    ``bundle``: the backbone's ModelBundle to use instead of loading the registered one (its UNet is
    replaced or gets the LoRA).
    """
    if bundle is None:
        from lpo_bench.models.load import load_bundle

        bundle = load_bundle(spec.backbone, weights_dir=weights_dir, device=device)
    if spec.released is not None:
        from lpo_bench.models import released

        r = released.resolve_released(spec.released["name"], kind=released.UNET, weights_dir=weights_dir)
        if r.sha256 != spec.weights_sha256:
            raise HarnessError(f"the files of {spec.released['name']} changed since they were resolved; run again")
        bundle.unet = released.load_unet(r, bundle, device=device)
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
