"""Released checkpoints of the methods' authors, named ``released:<name>``: where each was published, how its
files are found offline and pinned, and the strict, generic parts of importing them.

An entry (:class:`ReleasedModel`) lives in its method's folder and is reached only through ``registry.RELEASED``.
It names the hub repository (and the revision, where known), the files in the layout their authors published
(:class:`ReleasedFile`), each file's sha256 where known, the paper's evaluation protocol and the published rows
it sits beside in ``compare``, and the importer (``"module:fn"``) that reads the official layout into
lpo-bench's own classes. Two kinds:

* ``unet``: a fine-tuned denoiser in the diffusers ``UNet2DConditionModel`` layout (``config.json`` + weights),
  evaluated with ``eval --model released:<name>``; imported by :func:`import_diffusers_unet`.
* ``step_reward_model``: a step reward model (the ``StepRewardModelSpec`` named by ``reward_model``), used with
  ``train --reward-model released:<name>`` and ``step-accuracy --reward-model released:<name>``.

Files are looked up offline first: ``--weights-dir DIR`` (``DIR/<org>/<name>``, ``DIR/<org>--<name>``,
``DIR/<name>`` or ``DIR`` itself), then ``$LPO_BENCH_RELEASED_DIR`` (same layout), then the Hugging Face
cache; a download happens only when allowed (``--download`` / ``LPO_BENCH_DOWNLOAD=1``).

Pinning: a file with a pinned sha256 must match it. A file without one (its authors published none and it
cannot be read offline; the entry's ``pin_note`` says why) is refused unless ``LPO_BENCH_ALLOW_UNPINNED=1``;
the sha256 of every file used is then computed and recorded in the run identity.

Loading is strict: :func:`lpo_bench.models.state_dicts.check_state_dict` refuses a missing key, an unexpected
key or a shape mismatch in one line naming the first offending keys and the layout that was expected.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from lpo_bench import registry
from lpo_bench.errors import HarnessError
from lpo_bench.models.state_dicts import check_state_dict, read_state_dict, shapes_of
from lpo_bench.models.weights import _check_hub_reachable, download_allowed, file_sha256

PREFIX = "released:"
UNET = "unet"
STEP_REWARD_MODEL = "step_reward_model"
ALLOW_UNPINNED_ENV = "LPO_BENCH_ALLOW_UNPINNED"
RELEASED_DIR_ENV = "LPO_BENCH_RELEASED_DIR"
CONVERTED_VERSION = "v1"  # bump when an importer changes what it writes into the materialised cache


@dataclass(frozen=True)
class ReleasedFile:
    """One file of a release, by its path in the repository. ``alternatives``: other names the same weights
    may carry (e.g. ``pytorch_model.bin`` where newer tools write ``model.safetensors``)."""

    path: str
    sha256: str | None = None
    alternatives: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return (self.path, *self.alternatives)


@dataclass(frozen=True)
class PaperProtocol:
    """How the paper whose numbers sit beside this model sampled it (the harness's suites fix their own)."""

    guidance_scale: float
    num_inference_steps: int = 20
    note: str = ""


@dataclass(frozen=True)
class ReleasedModel:
    """A released checkpoint (see the module docstring). ``published_rows``: ``"<table id>:<row label>"`` of
    ``data/published.toml`` that report this model; ``source``: the code (repo@commit) that wrote the layout."""

    name: str
    kind: Literal["unet", "step_reward_model"]
    backbone: str
    repo_id: str
    revision: str | None
    files: tuple[ReleasedFile, ...]
    importer: str
    summary: str
    source: str
    layout: str
    pin_note: str = ""
    reward_model: str | None = None
    method: str = ""
    paper: str = ""
    protocol: PaperProtocol | None = None
    published_rows: tuple[str, ...] = field(default=())

    @property
    def ref(self) -> str:
        return PREFIX + self.name

    def describe(self) -> dict[str, Any]:
        return {"name": self.ref, "kind": self.kind, "backbone": self.backbone, "repo_id": self.repo_id,
                "revision": self.revision, "method": self.method, "reward_model": self.reward_model,
                "paper": self.paper, "source": self.source, "pin_note": self.pin_note,
                "protocol": asdict(self.protocol) if self.protocol else None,
                "published_rows": list(self.published_rows)}


@dataclass(frozen=True)
class ResolvedRelease:
    """An entry whose files were found locally: ``paths`` and ``digests`` are keyed by ``ReleasedFile.path``."""

    entry: ReleasedModel
    paths: dict[str, Path]
    digests: dict[str, str]
    weights_dir: str | None = None

    @property
    def sha256(self) -> str:
        """Identity of the release as used: every file's repository path and content hash, in entry order."""
        h = hashlib.sha256()
        for f in self.entry.files:
            h.update(f"{f.path}|{self.digests[f.path]}\n".encode())
        return h.hexdigest()

    def file(self, suffix: str) -> Path:
        """The local file of the entry's file whose repository path ends with ``suffix``."""
        for f in self.entry.files:
            if f.path == suffix or f.path.endswith("/" + suffix):
                return self.paths[f.path]
        raise KeyError(f"{self.entry.ref} lists no file ending with {suffix}")

    def provenance(self) -> dict[str, Any]:
        files = {f.path: {"local": str(self.paths[f.path]), "sha256": self.digests[f.path],
                          "pinned": f.sha256 is not None} for f in self.entry.files}
        return {**self.entry.describe(), "files": files, "sha256": self.sha256}


# ---------------------------------------------------------------------------- names
def is_released(name: str | os.PathLike[str] | None) -> bool:
    return name is not None and str(name).startswith(PREFIX)


def released_entry(name: str) -> ReleasedModel:
    """The entry registered as ``released:<name>`` (or ``<name>``); unknown names list the known ones."""
    short = str(name)[len(PREFIX):] if is_released(name) else str(name)
    if short not in registry.RELEASED:
        err = registry.unknown_name_error("released model", short, list(registry.RELEASED))
        raise HarnessError(f"{err} Pass released:<name>.")
    entry = registry.load_target(registry.RELEASED[short])
    if not isinstance(entry, ReleasedModel) or entry.name != short:
        raise HarnessError(f"registry entry released '{short}' -> {registry.RELEASED[short]} is not a ReleasedModel "
                           f"named '{short}'; fix the registry line")
    return entry


def released_entries(kind: str | None = None) -> list[ReleasedModel]:
    return [e for e in map(released_entry, registry.RELEASED) if kind is None or e.kind == kind]


def resolve_released(name: str, *, kind: str, backbone: str | None = None, reward_model: str | None = None,
                     weights_dir: str | Path | None = None, allow_download: bool | None = None) -> ResolvedRelease:
    """``released:<name>`` checked against what the caller needs (kind, backbone, reward-model kind), its files
    located and their pins checked; no model is loaded."""
    entry = released_entry(name)
    want = "UNet (for eval --model)" if kind == UNET else f"{reward_model or 'step reward model'} (for --reward-model)"
    if entry.kind != kind or (reward_model is not None and entry.reward_model != reward_model):
        fits = [e.ref for e in released_entries(kind) if reward_model is None or e.reward_model == reward_model]
        what = entry.reward_model if entry.kind == STEP_REWARD_MODEL else "UNet"
        raise HarnessError(f"{entry.ref} is a {what}, not a {want}; pass one of: {', '.join(fits) or '(none)'}")
    if backbone is not None and entry.backbone != backbone:
        raise HarnessError(f"{entry.ref} was trained for backbone {entry.backbone}, not {backbone}; pass "
                           f"--backbone {entry.backbone} or a released model of {backbone}")
    return locate(entry, weights_dir=weights_dir, allow_download=allow_download)


# ---------------------------------------------------------------------------- files and pins
def allow_unpinned() -> bool:
    return os.environ.get(ALLOW_UNPINNED_ENV, "0") not in ("", "0", "false", "False")


def _roots(repo_id: str, weights_dir: str | Path | None) -> list[Path]:
    out: list[Path] = []
    for base in (weights_dir, os.environ.get(RELEASED_DIR_ENV) or None):
        if base:
            b = Path(base).expanduser()
            out += [b / repo_id, b / repo_id.replace("/", "--"), b / repo_id.split("/")[-1], b]
    return out


def _find(root: Path, f: ReleasedFile) -> Path | None:
    return next((root / n for n in f.names if (root / n).is_file()), None)


def _hub_snapshot(entry: ReleasedModel, allow_download: bool | None) -> Path | None:
    """The HF cache's snapshot of the entry's repo (or, opt-in, a download of its files); None if absent."""
    from huggingface_hub import snapshot_download

    patterns = sorted({n for f in entry.files for n in f.names} | {"*.json"})
    rev = entry.revision or "main"
    try:
        return Path(snapshot_download(entry.repo_id, revision=rev, local_files_only=True, allow_patterns=patterns))
    except Exception:  # not in the cache
        pass
    if not download_allowed(allow_download):
        return None
    if any(f.sha256 is None for f in entry.files) and not allow_unpinned():
        raise HarnessError(f"{entry.ref} has files without a pinned sha256 ({entry.pin_note}); set "
                           f"{ALLOW_UNPINNED_ENV}=1 to download {entry.repo_id}@{rev} and use them anyway")
    _check_hub_reachable(entry.repo_id, rev)
    try:
        return Path(snapshot_download(entry.repo_id, revision=rev, allow_patterns=patterns))
    except Exception as exc:
        raise HarnessError(f"could not download {entry.repo_id}@{rev}: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}") from None


def _digest(path: Path) -> str:
    """sha256 of a file; of a sharded ``*.index.json``, over the index and its shards in order."""
    if not path.name.endswith(".index.json"):
        return file_sha256(path)
    shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
    parts = [file_sha256(path)] + [file_sha256(path.parent / s) for s in shards]
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def check_pins(entry: ReleasedModel, paths: Mapping[str, Path], digests: Mapping[str, str], *,
               unpinned_ok: bool) -> None:
    """Refuse a pinned file whose sha256 differs (or that was found under another name), and, unless
    ``unpinned_ok``, any file without a pinned sha256 (naming its computed sha256, so it can be pinned)."""
    for f in entry.files:
        if f.sha256 is None:
            continue
        if paths[f.path].name != Path(f.path).name:
            raise HarnessError(f"{entry.ref}: found {paths[f.path]} instead of the pinned {f.path}; provide the "
                               f"pinned file")
        if digests[f.path] != f.sha256:
            raise HarnessError(f"{entry.ref}: {paths[f.path]} has sha256 {digests[f.path][:12]}..., not the pinned "
                               f"{f.sha256[:12]}...; replace it with the file published at {entry.repo_id}")
    unpinned = [f for f in entry.files if f.sha256 is None]
    if unpinned and not unpinned_ok:
        f = unpinned[0]
        raise HarnessError(f"{entry.ref}: {len(unpinned)} of its files have no pinned sha256 ({entry.pin_note}), "
                           f"e.g. {f.path} (here sha256 {digests[f.path]}); set {ALLOW_UNPINNED_ENV}=1 to use them "
                           f"(their sha256s are then recorded in the run), or pin them in the entry")


def locate(entry: ReleasedModel, *, weights_dir: str | Path | None = None,
           allow_download: bool | None = None) -> ResolvedRelease:
    """Find every file of ``entry`` in one folder (see the module docstring), hash them and check the pins."""
    checked: list[str] = []
    missing: list[str] = []
    roots: list[Path] = _roots(entry.repo_id, weights_dir)
    for root in [*roots, None]:
        if root is None:
            hub = _hub_snapshot(entry, allow_download)
            checked.append("the Hugging Face cache" + (" and hub" if hub is not None else ""))
            if hub is None:
                break
            root = hub
        else:
            checked.append(str(root))
        found = {f.path: _find(root, f) for f in entry.files}
        lacking = [p for p, v in found.items() if v is None]
        if not lacking:
            paths = {k: v for k, v in found.items() if v is not None}
            digests = {k: _digest(v) for k, v in paths.items()}
            check_pins(entry, paths, digests, unpinned_ok=allow_unpinned())
            return ResolvedRelease(entry, paths, digests, None if weights_dir is None else str(weights_dir))
        if len(lacking) < len(entry.files) and (not missing or len(lacking) < len(missing)):
            missing = lacking
    rev = entry.revision or "(no pinned revision)"
    raise HarnessError(
        f"weights not found: {entry.ref} ({entry.repo_id}@{rev}) file {(missing or [entry.files[0].path])[0]}; "
        f"checked {', '.join(checked)}. Copy the repository's files (layout: {entry.layout}) to --weights-dir DIR "
        f"as DIR/{entry.repo_id}/ or point {RELEASED_DIR_ENV} at such a folder, or allow a download with "
        f"--download on a machine with network access")


# ---------------------------------------------------------------------------- UNets
def diffusers_unet_files(folder: str) -> tuple[ReleasedFile, ...]:
    """``<folder>/config.json`` and the weights ``UNet2DConditionModel.save_pretrained`` writes (safetensors;
    accepted too: the fp16 variant, a sharded index, the older ``.bin``)."""
    w = f"{folder}/diffusion_pytorch_model"
    return (ReleasedFile(f"{folder}/config.json"),
            ReleasedFile(f"{w}.safetensors", alternatives=(f"{w}.fp16.safetensors", f"{w}.safetensors.index.json",
                                                           f"{w}.bin")))


def check_config(config_path: Path, config: Mapping[str, Any], source: str, backbone: str,
                 keys: tuple[str, ...] | None = None) -> None:
    """Refuse a released ``config.json`` whose architecture differs from the backbone component's ``config``:
    every key both share (``keys``: only these), leaving out private ``_*`` keys."""
    norm = (lambda v: list(v) if isinstance(v, (list, tuple)) else v)  # noqa: E731
    theirs = json.loads(config_path.read_text())
    shared = [k for k in (keys or theirs) if k in theirs and not k.startswith("_") and k in config]
    diff = [k for k in shared if norm(theirs[k]) != norm(config[k])]
    if diff:
        k = diff[0]
        raise HarnessError(f"{source} describes another architecture than backbone {backbone}'s ({len(diff)} key(s) "
                           f"differ, first {k}: {theirs[k]!r} vs {config[k]!r}); pass the backbone it was trained from")


def import_diffusers_unet(resolved: ResolvedRelease, bundle: Any, *, device: Any, **_: Any) -> Any:
    """A released diffusers UNet, checked against and loaded (strictly) into the bundle's UNet architecture."""
    import torch
    from diffusers import UNet2DConditionModel

    entry = resolved.entry
    cfg_path = next(resolved.paths[f.path] for f in entry.files if f.path.endswith("config.json"))
    w_path = next(resolved.paths[f.path] for f in entry.files if not f.path.endswith("config.json"))
    check_config(cfg_path, bundle.unet.config, f"{entry.ref} {cfg_path}", bundle.name)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(bundle.unet.config)
    state = read_state_dict(w_path)
    check_state_dict(shapes_of(unet.state_dict()), shapes_of(state), source=f"{entry.ref} {w_path}",
                     layout=f"the diffusers UNet2DConditionModel state dict of {bundle.name} ({entry.layout})")
    dtype = bundle.dtype
    unet.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    if any(t.is_meta for t in (*unet.parameters(), *unet.buffers())):  # a tensor no checkpoint holds
        raise HarnessError(f"{entry.ref}: this diffusers version's UNet has tensors outside its state dict; "
                           f"report it (lpo-bench builds the released UNet from its state dict alone)")
    return unet.to(device=device).requires_grad_(False).eval()


def load_unet(resolved: ResolvedRelease, bundle: Any, *, device: Any) -> Any:
    """The released UNet of ``resolved`` (kind ``unet``) through its entry's importer."""
    return registry.load_target(resolved.entry.importer)(resolved, bundle, device=device)


# ---------------------------------------------------------------------------- step reward models
def load_reward_model(resolved: ResolvedRelease, bundle: Any, *, device: Any) -> Any:
    """The released step reward model of ``resolved`` as the registered model class, through its importer."""
    model = registry.load_target(resolved.entry.importer)(resolved, bundle, device=device)
    return model.eval()


def materialised_dir(resolved: ResolvedRelease, cache_dir: str | Path | None = None) -> Path:
    """Where :func:`materialise` writes the model in lpo-bench's own layout, keyed by the release's content."""
    root = Path(cache_dir or os.environ.get("LPO_BENCH_CACHE", Path.home() / ".cache" / "lpo_bench"))
    return root / "released" / f"{resolved.entry.name}-{resolved.sha256[:16]}-{CONVERTED_VERSION}"


def materialise(resolved: ResolvedRelease, bundle: Any, out: Path) -> Path:
    """Import the released step reward model and save it with its class's own ``save`` (the layout its method
    loads from ``ctx.reward_model_dir``) at ``out``, atomically; an existing complete copy is reused."""
    spec = registry.reward_model_spec(str(resolved.entry.reward_model))
    if (out / spec.marker_file).is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)  # an incomplete copy (no marker file)
    model = load_reward_model(resolved, bundle, device="cpu")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(out)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return out
