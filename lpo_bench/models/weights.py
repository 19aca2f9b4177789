"""Offline-first resolution of model weights, with one clear error when they are absent.

Nothing here ever waits on network retries: a hub lookup is attempted only when the user
opted in (``allow_download=True``, CLI ``--download``, or ``LPO_BENCH_DOWNLOAD=1``) and
``HF_HUB_OFFLINE`` is not set. Otherwise only ``--weights-dir`` and the local Hugging Face
cache are consulted.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from lpo_bench.errors import HarnessError


def download_allowed(allow_download: bool | None = None) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return False
    if allow_download is not None:
        return allow_download
    return os.environ.get("LPO_BENCH_DOWNLOAD", "0") not in ("", "0", "false", "False")


def hf_cache_dir() -> Path:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return Path(HF_HUB_CACHE)
    except Exception:  # pragma: no cover - huggingface_hub is a core dependency
        return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def _candidates(weights_dir: Path, repo_id: str) -> list[Path]:
    org_name = repo_id.replace("/", "--")
    name = repo_id.split("/")[-1]
    return [weights_dir / repo_id, weights_dir / org_name, weights_dir / name, weights_dir]


def resolve_snapshot(
    repo_id: str,
    revision: str,
    *,
    required: tuple[str, ...],
    weights_dir: str | Path | None = None,
    allow_download: bool | None = None,
    how_to: str = "",
    download_patterns: list[str] | None = None,
) -> Path:
    """Directory holding ``required`` files of ``repo_id@revision``.

    Looks in ``weights_dir`` (``DIR/<org>/<name>``, ``DIR/<org>--<name>``, ``DIR/<name>`` or
    ``DIR`` itself), then in the local HF cache at that revision, then (opt-in) downloads.
    Raises HarnessError naming the repo, revision, first missing file and paths checked.
    ``download_patterns`` narrows the opt-in download (default: the required files' folders).
    """
    checked: list[str] = []
    # Most complete partial copy seen (fewest missing files), so the error names a file that is really absent.
    partial: list[str] = []

    def _lacking(path: Path) -> list[str]:
        lacking = [f for f in required if not (path / f).exists()]
        if lacking and len(lacking) < len(required) and (not partial or len(lacking) < len(partial)):
            partial[:] = lacking
        return lacking

    if weights_dir is not None:
        for cand in _candidates(Path(weights_dir), repo_id):
            checked.append(str(cand))
            if not _lacking(cand):
                return cand
    cache = hf_cache_dir()
    checked.append(str(cache / f"models--{repo_id.replace('/', '--')}"))
    try:
        from huggingface_hub import snapshot_download

        path = Path(
            snapshot_download(
                repo_id, revision=revision, local_files_only=True, allow_patterns=_patterns(required)
            )
        )
        if not _lacking(path):
            return path
    except Exception:  # absent from the cache: fall through to the opt-in download
        pass
    if download_allowed(allow_download):
        _check_hub_reachable(repo_id, revision)
        try:
            from huggingface_hub import snapshot_download

            patterns = download_patterns or _patterns(required)
            path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
            if all((path / f).exists() for f in required):
                return path
        except Exception as exc:
            raise HarnessError(
                f"could not download {repo_id}@{revision}: {type(exc).__name__}: {exc}".splitlines()[0]
            ) from None
    missing = partial[0] if partial else required[0] if required else "(any file)"
    raise HarnessError(
        f"weights not found: {repo_id}@{revision} file {missing}; checked {', '.join(checked)}. "
        f"Provide them with --weights-dir DIR (a local copy of the repo) or put them in the "
        f"Hugging Face cache (HF_HOME), or allow a download with --download (LPO_BENCH_DOWNLOAD=1) "
        f"on a machine with network access. {how_to}"
    )


def _check_hub_reachable(repo_id: str, revision: str, timeout_s: float = 3.0) -> None:
    """Fail in seconds when the hub cannot be reached, instead of waiting through client retries."""
    import socket
    from urllib.parse import urlparse

    try:
        from huggingface_hub.constants import ENDPOINT
    except Exception:  # pragma: no cover
        ENDPOINT = "https://huggingface.co"
    url = urlparse(ENDPOINT)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise HarnessError(
            f"cannot download {repo_id}@{revision}: the hub at {host} is unreachable ({exc.strerror or exc}); "
            f"copy the weights here and pass --weights-dir DIR or set HF_HOME to a cache that has them"
        ) from None


def _patterns(required: tuple[str, ...]) -> list[str]:
    dirs = {f.split("/")[0] + "/*" for f in required if "/" in f}
    return sorted(dirs | {f for f in required if "/" not in f} | {"*.json", "*.txt"})


def resolve_file(
    repo_id: str,
    revision: str,
    filename: str,
    *,
    weights_dir: str | Path | None = None,
    allow_download: bool | None = None,
) -> Path:
    """One file of ``repo_id@revision`` (same search order and error as resolve_snapshot)."""
    return resolve_snapshot(
        repo_id, revision, required=(filename,), weights_dir=weights_dir, allow_download=allow_download
    ) / filename


def file_sha256(path: str | Path, chunk_mb: int = 16) -> str:
    """sha256 of a file, cached in the user's cache by (path, size, mtime in ns)."""
    path = Path(path)
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"  # ns: a rewrite within the same second still misses
    cache_file = Path(os.environ.get("LPO_BENCH_CACHE", Path.home() / ".cache" / "lpo_bench")) / "sha256.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_mb << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    cache[key] = digest
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(cache_file)
    except OSError:
        pass
    return digest
