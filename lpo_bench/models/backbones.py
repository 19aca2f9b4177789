"""Real Stable-Diffusion-family backbones: pinned specs and offline-first loaders.

Each loader resolves the weights first (``lpo_bench.models.weights.resolve_snapshot``: ``--weights-dir``,
then the local Hugging Face cache, then an opt-in download) and imports torch/diffusers only
afterwards, so a machine without the weights gets a one-line HarnessError within a second or two.
Components are then loaded with ``from_pretrained(local_path, local_files_only=True)``.

Every spec is pinned to a commit SHA. Where they come from (public code pinning the same SHA):

* sd15 ``451f4fe1...``: the revision used in diffusers-era SD1.5 reproducibility scripts and HF
  cache paths (``models--runwayml--stable-diffusion-v1-5/snapshots/451f4fe...``); the
  ``stable-diffusion-v1-5`` org repo is the mirror of the deprecated RunwayML repo at that commit.
* sd21 ``5ede9e4b...``: the most frequently pinned snapshot of ``stabilityai/stable-diffusion-2-1-base``.
* sdxl ``46216598...``: pinned by several projects for ``stabilityai/stable-diffusion-xl-base-1.0``.
* sdxl VAE ``207b116d...``: pinned for ``madebyollin/sdxl-vae-fp16-fix`` next to the SDXL pin above.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lpo_bench.errors import HarnessError
from lpo_bench.models.weights import download_allowed, file_sha256, resolve_snapshot

if TYPE_CHECKING:
    from lpo_bench.models.bundle import ModelBundle


@dataclass(frozen=True)
class BackboneSpec:
    """A released backbone: hub repo pinned to a commit, plus what the bundle needs to know.

    vae_id / vae_revision: a separate VAE repo replacing the pipeline's ``vae/`` (SDXL fp16-fix).
    Calling a spec loads it (the registry's backbone entries point at these objects).
    """

    name: str
    family: str
    model_id: str
    revision: str
    resolution: int
    text_kind: str
    vae_id: str | None = None
    vae_revision: str | None = None

    def __call__(self, *, weights_dir: str | Path | None = None, device: str = "cpu", dtype: str = "fp32",
                 allow_download: bool | None = None, revision: str | None = None) -> ModelBundle:
        return load_backbone(self.name, weights_dir=weights_dir, device=device, dtype=dtype,
                             allow_download=allow_download, revision=revision)


# Stable Diffusion 1.5 (512 px, one CLIP ViT-L/14 text encoder)
SD15 = BackboneSpec(
    name="sd15",
    family="sd15",
    model_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
    revision="451f4fe16113bff5a5d2269ed5ad43b0592e9a14",
    resolution=512,
    text_kind="sd",
)
# Stable Diffusion 2.1-base (512 px, epsilon prediction, OpenCLIP ViT-H text encoder)
SD21 = BackboneSpec(
    name="sd21",
    family="sd21",
    model_id="stabilityai/stable-diffusion-2-1-base",
    revision="5ede9e4bf3e3fd1cb0ef2f7a3fff13ee514fdf06",
    resolution=512,
    text_kind="sd",
)
# SDXL base 1.0 (1024 px, two text encoders, fp16-fix VAE)
SDXL = BackboneSpec(
    name="sdxl",
    family="sdxl",
    model_id="stabilityai/stable-diffusion-xl-base-1.0",
    revision="462165984030d82259a11f4367a4eed129e94a7b",
    resolution=1024,
    text_kind="sdxl",
    # The original SDXL VAE overflows in fp16; the fp16-fix VAE decodes to the same images.
    vae_id="madebyollin/sdxl-vae-fp16-fix",
    vae_revision="207b116dae70ace3637169f1ddd2434b91b3a8cd",
)
BACKBONE_SPECS: dict[str, BackboneSpec] = {s.name: s for s in (SD15, SD21, SDXL)}

FAMILIES = ("sd15", "sd21", "sdxl")
DTYPES: dict[str, str] = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


# ---------------------------------------------------------------------------- file layout
def _variant_suffix(variant: str | None) -> str:
    return f".{variant}" if variant else ""


def pipeline_files(family: str, variant: str | None = None, *, include_vae: bool = True) -> tuple[str, ...]:
    """Files a diffusers pipeline directory of ``family`` must hold (``variant``: None or "fp16").

    The UNet weights come first so a missing-weights error names the file that matters most.
    """
    v = _variant_suffix(variant)
    files = [f"unet/diffusion_pytorch_model{v}.safetensors", "unet/config.json", "model_index.json"]
    files += [
        "scheduler/scheduler_config.json",
        f"text_encoder/model{v}.safetensors",
        "text_encoder/config.json",
    ]
    files += ["tokenizer/tokenizer_config.json"]
    if family == "sdxl":
        files += [
            f"text_encoder_2/model{v}.safetensors",
            "text_encoder_2/config.json",
            "tokenizer_2/tokenizer_config.json",
        ]
    if include_vae:
        files += [f"vae/diffusion_pytorch_model{v}.safetensors", "vae/config.json"]
    return tuple(files)


def _vae_files(variant: str | None) -> tuple[str, ...]:
    return (f"diffusion_pytorch_model{_variant_suffix(variant)}.safetensors", "config.json")


def _variants(dtype: str) -> tuple[str | None, ...]:
    """Weight files to look for, preferred first: half-precision runs prefer the fp16 variant."""
    return (None, "fp16") if dtype == "fp32" else ("fp16", None)


def _resolve(
    repo_id: str,
    revision: str,
    files: Callable[[str | None], tuple[str, ...]],
    variants: tuple[str | None, ...],
    weights_dir: str | Path | None,
    allow_download: bool | None,
) -> tuple[Path, str | None]:
    """(directory, variant) of the first variant present locally; else the opt-in download; else
    the HarnessError of the preferred variant."""
    how_to = f"To fetch it: `hf download {repo_id} --revision {revision}` (then copy the cache or the folder here)."
    first_error: HarnessError | None = None
    for variant in variants:
        try:
            path = resolve_snapshot(
                repo_id,
                revision,
                required=files(variant),
                weights_dir=weights_dir,
                allow_download=False,
                how_to=how_to,
            )
            return path, variant
        except HarnessError as exc:
            first_error = first_error or exc
    if download_allowed(allow_download):
        required = files(variants[0])
        path = resolve_snapshot(
            repo_id,
            revision,
            required=required,
            weights_dir=weights_dir,
            allow_download=True,
            how_to=how_to,
            # Exactly the needed weights (hub repos also hold .bin, fp16 and EMA copies: many GB).
            download_patterns=[*required, "*.json", "*.txt"],
        )
        return path, variants[0]
    assert first_error is not None
    raise first_error


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise HarnessError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")


# ---------------------------------------------------------------------------- loaders
def load_backbone(
    name: str,
    *,
    weights_dir: str | Path | None = None,
    device: str = "cpu",
    dtype: str = "fp32",
    allow_download: bool | None = None,
    revision: str | None = None,
) -> ModelBundle:
    """Load the registered backbone ``name`` (a key of BACKBONE_SPECS) at its pinned revision.

    ``revision`` overrides the pinned commit of the main repo (recorded in provenance).
    """
    if name not in BACKBONE_SPECS:
        raise HarnessError(f"unknown backbone {name!r}; known: {', '.join(BACKBONE_SPECS)}")
    _check_dtype(dtype)
    spec = BACKBONE_SPECS[name]
    rev = revision or spec.revision
    separate_vae = spec.vae_id is not None
    path, variant = _resolve(
        spec.model_id,
        rev,
        lambda v: pipeline_files(spec.family, v, include_vae=not separate_vae),
        _variants(dtype),
        weights_dir,
        allow_download,
    )
    provenance: dict[str, Any] = {"backbone_id": spec.model_id, "backbone_revision": rev}
    vae_path = None
    if separate_vae:
        assert spec.vae_id is not None and spec.vae_revision is not None
        vae_path, _ = _resolve(
            spec.vae_id, spec.vae_revision, _vae_files, (None,), weights_dir, allow_download
        )
        provenance.update(vae_id=spec.vae_id, vae_revision=spec.vae_revision)
    return _build(
        name, spec.family, path, variant, dtype, device, spec.resolution, provenance, vae_path=vae_path
    )


def load_dir(path: str | Path, family: str, *, device: str = "cpu", dtype: str = "fp32") -> ModelBundle:
    """A local diffusers pipeline directory (e.g. the user's own fine-tuned checkpoint) of ``family``.

    The directory must use the hub layout (``pipeline_files``; the UNet may be sharded).
    """
    if family not in FAMILIES:
        raise HarnessError(f"unknown backbone family {family!r}; use one of {', '.join(FAMILIES)}")
    _check_dtype(dtype)
    root = Path(path).expanduser()
    variant = None
    for v in _variants(dtype):
        if all((root / f).exists() or _is_sharded(root / f) for f in pipeline_files(family, v)):
            variant = v
            break
    else:
        want = pipeline_files(family, _variants(dtype)[0])
        missing = next(f for f in want if not ((root / f).exists() or _is_sharded(root / f)))
        raise HarnessError(
            f"{root} is not a complete diffusers {family} pipeline directory: {missing} is missing. "
            f"Save one with pipeline.save_pretrained(DIR)."
        )
    provenance = {"backbone_id": str(root.resolve()), "backbone_revision": "local"}
    resolution = BACKBONE_SPECS[family].resolution
    return _build(f"{family}-local", family, root, variant, dtype, device, resolution, provenance)


def load_from_components(
    name: str,
    unet: Any,
    vae: Any,
    text_encoders: tuple[Any, ...],
    tokenizers: tuple[Any, ...],
    scheduler: Any,
    *,
    text_kind: str,
    resolution: int,
    provenance: dict[str, Any],
) -> ModelBundle:
    """A bundle over already-built components (frozen, eval mode). The scheduler's config is
    used to build a DDPMScheduler training schedule."""
    from diffusers import DDPMScheduler

    from lpo_bench.models.bundle import ModelBundle

    if text_kind not in ("sd", "sdxl"):
        raise HarnessError(f"unknown text_kind {text_kind!r}; use 'sd' or 'sdxl'")
    for m in (unet, vae, *text_encoders):
        m.requires_grad_(False)
        m.eval()
    return ModelBundle(
        name=name,
        unet=unet,
        vae=vae,
        text_encoders=tuple(text_encoders),
        tokenizers=tuple(tokenizers),
        scheduler=DDPMScheduler.from_config(scheduler.config),
        text_kind=text_kind,
        resolution=resolution,
        provenance=dict(provenance),
        force_zeros_for_empty_prompt=text_kind == "sdxl",
    )


# ---------------------------------------------------------------------------- internals
def _is_sharded(file: Path) -> bool:
    return file.suffix == ".safetensors" and file.with_name(file.name + ".index.json").exists()


def _weights_sha256(file: Path) -> str:
    """sha256 of a weights file; for a sharded file, sha256 over the shards' sha256s in order."""
    if file.exists():
        return file_sha256(file)
    index = json.loads(file.with_name(file.name + ".index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    return hashlib.sha256("".join(file_sha256(file.parent / s) for s in shards).encode()).hexdigest()


def _build(
    name: str,
    family: str,
    path: Path,
    variant: str | None,
    dtype: str,
    device: str,
    resolution: int,
    provenance: dict[str, Any],
    *,
    vae_path: Path | None = None,
) -> ModelBundle:
    """Load the components from resolved local directories (heavy imports happen here)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch_dtype = getattr(torch, DTYPES[dtype])
    common = {"local_files_only": True, "variant": variant, "use_safetensors": True}

    def load(what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # corrupt/incompatible files: say which component and where
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            raise HarnessError(
                f"could not load {what} of {name} from {path}: {msg}. Re-download that folder."
            ) from None

    scheduler = load(
        "scheduler", lambda: DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
    )
    if scheduler.config.prediction_type != "epsilon":
        raise HarnessError(
            f"{name} predicts {scheduler.config.prediction_type!r}; lpo-bench methods need an epsilon-prediction backbone"
        )
    unet = load(
        "unet",
        lambda: UNet2DConditionModel.from_pretrained(
            path, subfolder="unet", torch_dtype=torch_dtype, **common
        ),
    )
    if vae_path is not None:
        vae = load(
            "vae",
            lambda: AutoencoderKL.from_pretrained(vae_path, torch_dtype=torch_dtype, local_files_only=True),
        )
    else:
        vae = load(
            "vae",
            lambda: AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch_dtype, **common),
        )
    te_kwargs = {"dtype": torch_dtype, "local_files_only": True, "variant": variant, "use_safetensors": True}
    encoders = [
        load(
            "text_encoder", lambda: CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **te_kwargs)
        )
    ]
    tokenizers = [
        load(
            "tokenizer",
            lambda: CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True),
        )
    ]
    if family == "sdxl":
        encoders.append(
            load(
                "text_encoder_2",
                lambda: CLIPTextModelWithProjection.from_pretrained(
                    path, subfolder="text_encoder_2", **te_kwargs
                ),
            )
        )
        tokenizers.append(
            load(
                "tokenizer_2",
                lambda: CLIPTokenizer.from_pretrained(path, subfolder="tokenizer_2", local_files_only=True),
            )
        )
    unet_file = path / "unet" / f"diffusion_pytorch_model{_variant_suffix(variant)}.safetensors"
    provenance = {
        **provenance,
        "weights_sha256": _weights_sha256(unet_file),
        "weights_variant": variant or "fp32",
        "dtype": dtype,
        "weights_path": str(path),
    }
    bundle = load_from_components(
        name,
        unet,
        vae,
        tuple(encoders),
        tuple(tokenizers),
        scheduler,
        text_kind="sdxl" if family == "sdxl" else "sd",
        resolution=resolution,
        provenance=provenance,
    )
    return bundle.to(device)
