"""Shards of a preference-pair split: where they are, and row access to their image bytes.

:func:`split_files` finds a split's shards (layouts in ``lpo_bench.data.stream``); :class:`Shard` reads one shard's
metadata row group by row group and, later, the image bytes of given rows: parquet row groups are streamed in
batches of 16 rows from a forward-moving cursor (one open cursor per process), ``datasets`` arrow files are
memory-mapped. A shard opens its file lazily in the process that reads it, so DataLoader workers open their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_COLUMNS = ("jpg_0", "jpg_1")
SPLIT_ALIASES = {"val": ("validation",), "validation": ("val",)}


def _layouts(source: Path, split: str) -> list[Path]:
    cands = [source / f"{split}.parquet", *sorted(source.glob(f"{split}-*.parquet"))]
    if (source / split).is_dir():
        cands += sorted((source / split).glob("*.parquet")) or sorted((source / split).glob("*.arrow"))
    if (source / "data").is_dir():  # the layout of a Hugging Face dataset snapshot
        cands += sorted((source / "data").glob(f"{split}-*.parquet"))
    return [p for p in cands if p.exists()]


def split_files(source: str | Path, split: str) -> list[Path]:
    """The shards of ``split`` under ``source`` (see module docstring); ``[]`` when there are none."""
    source = Path(source)
    if source.is_file():
        return [source]
    for name in (split, *SPLIT_ALIASES.get(split, ())):
        if files := _layouts(source, name):
            return files
    return []


def _open_arrow(path: Path) -> Any:
    """A ``datasets`` arrow shard (IPC stream or file format) as a memory-mapped Table (no copy)."""
    import pyarrow as pa

    src = pa.memory_map(str(path), "r")
    try:
        return pa.ipc.open_stream(src).read_all()
    except pa.ArrowInvalid:
        return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


_ACTIVE: list[Shard] = []  # the shard whose row cursor is open in this process


class Shard:
    """Row access to one shard; opened lazily in the process that reads it (main or a DataLoader worker)."""

    def __init__(self, path: Path) -> None:
        self.path, self.arrow = path, path.suffix == ".arrow"
        self.reset()

    def _open(self) -> Any:
        if self._src is None:
            import pyarrow.parquet as pq

            self._src = _open_arrow(self.path) if self.arrow else pq.ParquetFile(self.path, buffer_size=1 << 20, pre_buffer=False)
        return self._src

    def schema_names(self) -> list[str]:
        src = self._open()
        return list(src.schema.names if self.arrow else src.schema_arrow.names)

    def metadata_tables(self, columns: list[str]) -> Iterator[tuple[Any, Any]]:
        """(metadata table, image-ok mask or None) per row group; the image bytes are read only for a row group
        whose statistics report nulls (or have none), one row group at a time."""
        import pyarrow.compute as pc

        src = self._open()
        if self.arrow:
            yield src.select(columns), _images_ok(src.select(list(IMAGE_COLUMNS)), pc)
            return
        md = src.metadata
        for rg in range(md.num_row_groups):
            table = src.read_row_group(rg, columns=columns)
            ok = None
            if _may_hold_nulls(md.row_group(rg)):
                parts = [_images_ok(b, pc) for b in src.iter_batches(batch_size=64, row_groups=[rg],
                                                                     columns=list(IMAGE_COLUMNS), use_threads=False)]
                ok = np.concatenate(parts) if parts else np.ones(0, dtype=bool)
            yield table, ok

    def image_bytes(self, rows: np.ndarray) -> Iterator[tuple[Any, Any]]:
        """(jpg_0, jpg_1) of the given ascending shard rows, one pair at a time (so a caller decoding as it goes
        holds one pair's bytes). Parquet row groups are streamed in batches of 16 rows from a cursor that moves
        forward, so reading a split in order reads each row group once; random access re-reads a row group's
        start (up to one row group of I/O per pair)."""
        src = self._open()
        if self.arrow:
            c0, c1 = src.column(IMAGE_COLUMNS[0]), src.column(IMAGE_COLUMNS[1])
            for r in rows.tolist():
                yield c0[r].as_py(), c1[r].as_py()
            return
        if self._starts is None:
            md = src.metadata
            self._starts = np.cumsum([0] + [md.row_group(i).num_rows for i in range(md.num_row_groups)])
        starts = self._starts
        for r in rows.tolist():
            rg = int(np.searchsorted(starts, r, side="right") - 1)
            yield self._row(src, rg, r - int(starts[rg]))

    def _row(self, src: Any, rg: int, r: int) -> tuple[Any, Any]:
        cur = self._cursor
        if cur is None or cur[0] != rg or r < cur[1] - len(cur[3]):
            if _ACTIVE and _ACTIVE[0] is not self:  # one open cursor per process: its read buffers are ~30 MB
                _ACTIVE[0]._cursor = None
            _ACTIVE[:] = [self]
            it = src.iter_batches(batch_size=16, row_groups=[rg], columns=list(IMAGE_COLUMNS), use_threads=False)
            cur = (rg, 0, it, [])
        rg_, nxt, it, rows = cur
        while r >= nxt:  # advance to the batch holding row r; rows holds the current batch
            b = next(it)
            rows = list(zip(b.column(0).to_pylist(), b.column(1).to_pylist(), strict=True))
            nxt += len(rows)
        self._cursor = (rg_, nxt, it, rows)
        return rows[r - (nxt - len(rows))]

    def reset(self) -> None:
        """Close the file and forget the cursor (a new process opens the shard itself; reads reopen it)."""
        src = getattr(self, "_src", None)
        self._cursor: tuple[int, int, Any, list[Any]] | None = None  # (row group, next row, batch iterator, rows)
        if src is not None and hasattr(src, "close"):
            src.close()
        self._src: Any = None
        self._starts: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:  # workers reopen the file themselves
        return {"path": self.path, "arrow": self.arrow}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])


def _may_hold_nulls(rg_md: Any) -> bool:
    """Whether a row group's statistics leave room for a null image (or it has none for an image column)."""
    stats = {c.path_in_schema: c.statistics for c in map(rg_md.column, range(rg_md.num_columns))}
    for name in IMAGE_COLUMNS:
        s = stats.get(name, stats.get(f"{name}.bytes"))
        if s is None or not s.has_null_count or s.null_count > 0:
            return True
    return False


def _images_ok(batch: Any, pc: Any) -> np.ndarray:
    """True where both image cells are present and non-empty (bytes or a datasets Image {bytes, path})."""
    ok = np.ones(batch.num_rows, dtype=bool)
    for name in IMAGE_COLUMNS:
        col = batch.column(name)  # a ChunkedArray of a memory-mapped table is never copied here
        if str(col.type).startswith("struct"):
            col = pc.struct_field(col, "bytes")
        n = pc.binary_length(col).fill_null(0).to_numpy(zero_copy_only=False)
        ok &= n > 0
    return ok
