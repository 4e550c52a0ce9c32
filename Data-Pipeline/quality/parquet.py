"""A synthetic Parquet table read on demand: the whole frame when small, else a batch or a column at a time.

A big table (more than ``BATCH_ROWS`` rows) is never held as one pandas frame: the
Great Expectations suite runs on each ``BATCH_ROWS``-row batch, statistics read one
column at a time as compact Arrow or numpy arrays, and key checks read only the key
columns. Batches are cut by ``iter_batches`` and do not depend on the file's row groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

BATCH_ROWS = 500_000  # rows per pandas batch of a big table; every table of the default run fits in one


@dataclass
class ParquetTable:
    path: Path
    _frame: pd.DataFrame | None = field(default=None, repr=False)

    @cached_property
    def _file(self) -> pq.ParquetFile:
        return pq.ParquetFile(self.path)

    @cached_property
    def num_rows(self) -> int:
        return self._file.metadata.num_rows

    @cached_property
    def columns(self) -> list[str]:
        return list(self._file.schema_arrow.names)

    def arrow_type(self, name: str) -> pa.DataType:
        return self._file.schema_arrow.field(name).type

    def __len__(self) -> int:
        return self.num_rows

    @property
    def small(self) -> bool:
        """Fits in one batch: checked and summarised as one pandas frame, as it always was."""
        return self.num_rows <= BATCH_ROWS

    def frame(self) -> pd.DataFrame:
        """The whole table (small tables only; kept, as a small table is read by several checks)."""
        if self._frame is None:
            self._frame = pd.read_parquet(self.path)
        return self._frame

    def frame_of(self, columns: list[str]) -> pd.DataFrame:
        """Only these columns, all rows."""
        return self.frame()[columns] if self.small else self._file.read(columns=columns).to_pandas()

    def batches(self, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
        """The table ``BATCH_ROWS`` rows at a time as pandas frames (the same dtypes as ``frame``)."""
        if self.small:
            frame = self.frame()
            yield frame if columns is None else frame[columns]
            return
        for batch in self._file.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            yield batch.to_pandas()

    def arrow_batches(self, columns: list[str]) -> Iterator[pa.RecordBatch]:
        yield from self._file.iter_batches(batch_size=BATCH_ROWS, columns=columns)

    def arrow_column(self, name: str) -> pa.ChunkedArray:
        return self._file.read(columns=[name]).column(0)

    def __getitem__(self, name: str) -> pd.Series:
        """One whole column as pandas (for small tables and compact id columns)."""
        if self.small:
            return self.frame()[name]
        return self.arrow_column(name).to_pandas()


def value_counts(table: ParquetTable, name: str) -> dict[str, int]:
    """Non-null values of a column as text -> rows, in order of first appearance, a batch at a time."""
    counts: dict[str, int] = {}
    for batch in table.arrow_batches([name]):
        tallies = pc.value_counts(batch.column(0).drop_null())
        for value, count in zip(tallies.field("values").to_pylist(), tallies.field("counts").to_pylist()):
            counts[str(value)] = counts.get(str(value), 0) + count
    return counts


def float_column(table: ParquetTable, name: str) -> np.ndarray:
    """A numeric column as one float64 array (nulls as NaN, as pandas holds them), filled a batch at a time."""
    values = np.empty(table.num_rows)
    start = 0
    for batch in table.arrow_batches([name]):
        part = batch.column(0).to_numpy(zero_copy_only=False)
        values[start:start + len(part)] = part
        start += len(part)
    return values


def key_arrays(batch: pa.RecordBatch | pa.Table, columns: list[str]) -> list[np.ndarray] | None:
    """The key columns as comparable numpy arrays (dates as day numbers); None when one holds a null."""
    out = []
    for name in columns:
        col = batch.column(name)
        if col.null_count:
            return None
        if pa.types.is_date(col.type) or pa.types.is_timestamp(col.type):
            col = pc.cast(col, pa.int64()) if pa.types.is_timestamp(col.type) else pc.cast(col, pa.int32())
        out.append(col.to_numpy(zero_copy_only=False))
    return out


def strictly_increasing(arrays: list[np.ndarray]) -> bool:
    """Rows (tuples across ``arrays``) in strictly increasing lexicographic order, so no two are equal."""
    if not arrays or len(arrays[0]) < 2:
        return True
    greater = np.zeros(len(arrays[0]) - 1, dtype=bool)
    equal = np.ones(len(arrays[0]) - 1, dtype=bool)
    for a in arrays:
        greater |= equal & (a[1:] > a[:-1])
        equal &= a[1:] == a[:-1]
    return bool(greater.all())
