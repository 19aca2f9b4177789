"""Content identities of run inputs, cheap enough for terabyte datasets.

``data_manifest_sha256``: sha256 over (relative path, size, parquet footer) of every file of a data directory:
a parquet footer holds the schema, row-group statistics and offsets, so any rewritten shard changes it, while
the multi-GB row data is never read. Small non-parquet files (e.g. ``pairs.json``) are hashed whole. The path
itself is left out: a moved or copied dataset keeps its identity.
``dir_sha256``: sha256 over (relative path, content hash) of every file, for model directories.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from lpo_bench.errors import HarnessError
from lpo_bench.models.weights import file_sha256

SMALL_FILE_BYTES = 1 << 20


def parquet_footer(path: Path) -> bytes:
    """The footer (FileMetaData) of a parquet file: the bytes before the trailing length + b"PAR1"."""
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        if size < 12:
            raise HarnessError(f"{path} is too short to be a parquet file; repair or remove it")
        fh.seek(size - 8)
        tail = fh.read(8)
        if tail[4:] != b"PAR1":
            raise HarnessError(f"{path} is not a parquet file (no PAR1 magic at its end); repair or remove it")
        (length,) = struct.unpack("<I", tail[:4])
        if length + 12 > size:
            raise HarnessError(f"{path} has a corrupt parquet footer; repair or re-download it")
        fh.seek(size - 8 - length)
        return fh.read(length)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                         p.relative_to(root).parts))


def files_manifest_sha256(root: Path, files: list[Path]) -> str:
    """Identity of ``files`` (paths relative to ``root``): see the module docstring."""
    digest = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        digest.update(f"{f.relative_to(root).as_posix()}|{size}|".encode())
        if f.suffix == ".parquet":
            digest.update(parquet_footer(f))
        elif size <= SMALL_FILE_BYTES:
            digest.update(f.read_bytes())
    return digest.hexdigest()


def data_manifest_sha256(source: str | Path) -> str:
    """Identity of a data file or directory (see module docstring)."""
    source = Path(source)
    if not source.exists():
        raise HarnessError(f"data {source} does not exist; pass an existing file or directory")
    root, files = (source.parent, [source]) if source.is_file() else (source, _files(source))
    return files_manifest_sha256(root, files)


def dir_sha256(path: str | Path) -> str:
    """Identity of a saved model directory: every file's relative path and content hash."""
    path = Path(path)
    if not path.is_dir():
        raise HarnessError(f"{path} is not a directory; pass the directory a model was saved to")
    digest = hashlib.sha256()
    for f in _files(path):
        digest.update(f"{f.relative_to(path).as_posix()}|{file_sha256(f)}\n".encode())
    return digest.hexdigest()
