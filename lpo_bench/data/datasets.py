"""Pinned prompt files: T2I-CompBench++ val prompts and LPO's 4k training prompts.

Every file is pinned to a repository commit and a sha256, and is never vendored. It is looked up
in this order: ``data_dir`` (``--data-dir``: the file itself, by name or at its repository path),
then the local cache (``$LPO_BENCH_CACHE/files/<owner>/<repo>/<commit>/<path>``), then, only when
downloads are allowed (``allow_download=True``, ``--download`` or ``LPO_BENCH_DOWNLOAD=1``, and
``HF_HUB_OFFLINE`` unset), from :data:`RAW_URL_PATTERN` with a short timeout. The sha256 is
checked every time; a mismatch is an error that names the pinned version.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from lpo_bench.errors import HarnessError
from lpo_bench.models.weights import download_allowed

RAW_URL_PATTERN = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"
DOWNLOAD_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class PinnedFile:
    """A file of a public git repository at a fixed commit, with its sha256 and size in bytes."""

    repo: str
    commit: str
    path: str
    sha256: str
    size_bytes: int

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def url(self) -> str:
        return RAW_URL_PATTERN.format(repo=self.repo, commit=self.commit, path=urllib.parse.quote(self.path))

    def describe(self) -> str:
        return f"{self.repo}@{self.commit[:7]} {self.path}"


T2I_COMPBENCH_REPO = "Karine-Huang/T2I-CompBench"
T2I_COMPBENCH_COMMIT = "1b7094991a57f3c22abdd4f6e8ba6c1a15517073"
COMPBENCH_CATEGORIES = ("color", "shape", "texture", "spatial", "3d_spatial", "numeracy", "non_spatial", "complex")


def _compbench(name: str, sha256: str, size_bytes: int) -> PinnedFile:
    return PinnedFile(T2I_COMPBENCH_REPO, T2I_COMPBENCH_COMMIT, f"examples/dataset/{name}", sha256, size_bytes)


# The val split is the benchmark's test set: 300 prompts x 10 images per category.
PROMPT_FILES: dict[str, PinnedFile] = {
    "color": _compbench("color_val.txt", "1634259756dbc77d13093d907d414480080ec9790a8c97ad09efaea7b2534f2d", 11871),
    "shape": _compbench("shape_val.txt", "37e1a276906c7ea9516cbd7ac8501be896006c0c17ca7344f260562834455bae", 15935),
    "texture": _compbench("texture_val.txt", "fbb5363515b4a28009e360afaaaf389d2dd2289e50dbb0c6ef4ea0c7fe4f3d4f", 14211),
    "spatial": _compbench("spatial_val.txt", "8707a1d7e42ce3002d95363cf55f74bd043c843ae27108f5125aaaa7840ca988", 9213),
    "3d_spatial": _compbench(
        "3d_spatial_val.txt", "c9953597315f36a5fcb41291bb19bdc6ab5f64a0fa760d691b4854a73f5d1fe9", 7851
    ),
    "numeracy": _compbench("numeracy_val.txt", "dad8df141604b70ba7554bec724e3db0a80023680769b5c514854ea2d2527bbe", 10863),
    "non_spatial": _compbench(
        "non_spatial_val.txt", "04c56cc9ac441dc9ea6c5157652058bd1635b5308526dd31bb29a1caab9a758d", 17750
    ),
    "complex": _compbench("complex_val.txt", "1b808018b8d9916db3d47d5aa2ef18377a3549a56901a474156f799824cdf3b4", 22724),
}

# Side files the official scorers read: numeracy's object list and 3-in-1's partition of complex_val.
COMPBENCH_AUX_FILES: dict[str, PinnedFile] = {
    "new_objects": _compbench("new_objects.txt", "f39a3d2ff6067d7738673cbf465dc659ccc750776162989a5d9916f1d5f3e231", 1568),
    "complex_spatial": _compbench(
        "complex_val_spatial.txt", "6c7ac0ab75c7c9080cfc7b421fb059b9b0febb98471707aeedf58771088abc02", 2898
    ),
    "complex_action": _compbench(
        "complex_val_action.txt", "d49ee4c7f99e3f3379fb8704a54ff5288b83bb412971edf616a4721c2473308e", 17698
    ),
    "complex_spatialaction": _compbench(
        "complex_val_spatialaction.txt", "e02ddc7fed812e6577e7386ec2137ce0a994a5ce19771661f68df7ac349a6ca9", 2128
    ),
}

# 4000 Pick-a-Pic v1 train captions used to train LPO and SPO (some are NSFW).
TRAIN_PROMPTS_4K = PinnedFile(
    "Kwai-Kolors/LPO",
    "9c2e8b81418cb86cc0a78aa1dc10a5503ce59f4e",
    "lpo/prompts/4k_training_prompts.json",
    "804018fcb30bc9bed28a2a0518855bffd386675a3c5138f96b925071cbae6fc4",
    604288,
)


# GenEval's prompts with their metadata (tag, include/exclude clauses) and its 80 detector class names (MIT).
GENEVAL_REPO = "djghosh13/geneval"
GENEVAL_COMMIT = "af4902f24d3ca90ebbb446dd9891a59e0f82725f"
GENEVAL_METADATA = PinnedFile(GENEVAL_REPO, GENEVAL_COMMIT, "prompts/evaluation_metadata.jsonl",
                              "5c48e0813e812e3c373fa5c8ed07a8f0a483be30272b4427b0559c8048e67c13", 85209)
GENEVAL_OBJECT_NAMES = PinnedFile(GENEVAL_REPO, GENEVAL_COMMIT, "prompts/object_names.txt",
                                  "608f6a0e5c8ca1c7a92b818430141fe268c85b7930b50f4160f1d65893b5bacd", 642)


def _cache_path(pf: PinnedFile) -> Path:
    root = Path(os.environ.get("LPO_BENCH_CACHE", Path.home() / ".cache" / "lpo_bench"))
    return root / "files" / pf.repo / pf.commit / pf.path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _mismatch(pf: PinnedFile, path: Path, got: str) -> HarnessError:
    return HarnessError(
        f"{path} has sha256 {got[:12]}..., not the pinned {pf.describe()} ({pf.sha256[:12]}...); "
        f"replace it with the pinned version from {pf.url}"
    )


def _download(pf: PinnedFile, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.part")
    try:
        with urllib.request.urlopen(pf.url, timeout=DOWNLOAD_TIMEOUT_S) as response:  # noqa: S310 (pinned https URL)
            tmp.write_bytes(response.read(pf.size_bytes + 1))
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise HarnessError(f"could not download {pf.describe()} from {pf.url}: {exc}".splitlines()[0]) from None
    got = _sha256(tmp)
    if got != pf.sha256:
        tmp.unlink(missing_ok=True)
        raise _mismatch(pf, Path(pf.url), got)
    tmp.replace(dest)


def resolve_pinned_file(
    pf: PinnedFile,
    *,
    data_dir: str | Path | None = None,
    allow_download: bool | None = None,
    how_to: str = "pass --data-dir DIR containing it",
) -> Path:
    """Local path of ``pf`` after sha256 verification (``data_dir``, then cache, then opt-in download).

    ``how_to`` completes the "not available" error (callers for weights point to --weights-dir).
    """
    if data_dir is not None:
        for cand in (Path(data_dir) / pf.name, Path(data_dir) / pf.path):
            if cand.is_file():
                got = _sha256(cand)
                if got != pf.sha256:
                    raise _mismatch(pf, cand, got)
                return cand
        raise HarnessError(f"{pf.name} ({pf.describe()}) not found in data dir {data_dir}; copy the pinned file there")
    cached = _cache_path(pf)
    if cached.is_file() and _sha256(cached) == pf.sha256:
        return cached
    if download_allowed(allow_download):
        _download(pf, cached)
        return cached
    raise HarnessError(
        f"{pf.name} ({pf.describe()}) is not available locally; {how_to}, "
        f"or allow the download from {pf.url} with --download (LPO_BENCH_DOWNLOAD=1)"
    )


def read_text_lines(path: str | Path) -> list[str]:
    """Non-blank lines of a UTF-8 text file (BOM allowed; LF, CRLF and CR line ends).

    Lines are kept verbatim otherwise: a prompt is also the image file name in T2I-CompBench.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HarnessError(f"{path} is not valid UTF-8 (byte {exc.start}); save it as UTF-8") from None
    lines = [line for line in re.split(r"\r\n|\n|\r", text) if line.strip()]
    if not lines:
        raise HarnessError(f"{path} contains no prompts; use a file with one prompt per line")
    return lines


def load_prompt_file(
    category: str, *, data_dir: str | Path | None = None, allow_download: bool | None = None
) -> list[str]:
    """The 300 pinned T2I-CompBench++ val prompts of ``category`` (one of :data:`COMPBENCH_CATEGORIES`)."""
    if category not in PROMPT_FILES:
        raise HarnessError(f"unknown T2I-CompBench category '{category}'; choose one of {', '.join(PROMPT_FILES)}")
    return read_text_lines(resolve_pinned_file(PROMPT_FILES[category], data_dir=data_dir, allow_download=allow_download))


def load_compbench_aux(
    name: str, *, data_dir: str | Path | None = None, allow_download: bool | None = None
) -> list[str]:
    """Lines of a pinned T2I-CompBench side file (:data:`COMPBENCH_AUX_FILES`)."""
    if name not in COMPBENCH_AUX_FILES:
        raise HarnessError(f"unknown T2I-CompBench file '{name}'; choose one of {', '.join(COMPBENCH_AUX_FILES)}")
    return read_text_lines(
        resolve_pinned_file(COMPBENCH_AUX_FILES[name], data_dir=data_dir, allow_download=allow_download)
    )


def load_train_prompts_4k(data_dir: str | Path | None = None, allow_download: bool | None = None) -> list[str]:
    """The 4000 LPO/SPO training captions, in file order."""
    path = resolve_pinned_file(TRAIN_PROMPTS_4K, data_dir=data_dir, allow_download=allow_download)
    try:
        rows = json.loads(path.read_bytes().decode("utf-8-sig"))
        captions = [row["caption"] for row in rows]
    except (UnicodeDecodeError, ValueError, TypeError, KeyError) as exc:
        raise HarnessError(f"{path} is not a JSON list of {{'caption': ...}} objects: {exc}".splitlines()[0]) from None
    if not captions:
        raise HarnessError(f"{path} contains no prompts")
    return captions


def load_geneval_metadata(data_dir: str | Path | None = None, allow_download: bool | None = None) -> list[dict]:
    """GenEval's 553 metadata rows (``{"tag", "include", "exclude"?, "prompt"}``), in file order."""
    path = resolve_pinned_file(GENEVAL_METADATA, data_dir=data_dir, allow_download=allow_download)
    try:
        rows = [json.loads(line) for line in read_text_lines(path)]
        if not all(isinstance(r, dict) and "tag" in r and "prompt" in r for r in rows):
            raise ValueError("a row lacks 'tag' or 'prompt'")
    except ValueError as exc:
        raise HarnessError(f"{path} is not GenEval's evaluation_metadata.jsonl: {exc}".splitlines()[0]) from None
    return rows


def load_geneval_object_names(data_dir: str | Path | None = None, allow_download: bool | None = None) -> list[str]:
    """GenEval's 80 detector class names, in the detector's class order."""
    return [line.strip() for line in read_text_lines(
        resolve_pinned_file(GENEVAL_OBJECT_NAMES, data_dir=data_dir, allow_download=allow_download))]
