"""The features table every curation stage reads: one row per input sample, written by the analyse phase.

Columns (pyarrow):
- ``group`` (int32): the input shard group, the unit output shards are committed by;
- ``shard`` (string), ``key`` (string): where the sample came from; together they name it;
- ``caption`` (string): its first caption ("" when it has none), ``captions`` (int16): how many it has;
- ``width``, ``height`` (int32): from the image header (-1 when there is no readable image);
- ``read_reason`` (string, null when read whole): why the reader could not use the sample;
- ``image_emb`` (fixed-size list of float32, L2-normalised; zeros when not embedded);
- ``clip_score`` (float32): cosine of the image and first-caption embeddings (NaN when not embedded).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

EMBEDDING = "image_emb"


def embeddings(table: pa.Table, column: str = EMBEDDING) -> np.ndarray:
    """The (rows, dim) float32 matrix of a fixed-size-list column, without a copy per row."""
    array = table.column(column).combine_chunks()
    if len(array) == 0:
        size = array.type.list_size if pa.types.is_fixed_size_list(array.type) else 0
        return np.zeros((0, size), np.float32)
    return array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), -1).astype(np.float32, copy=False)


def embedding_array(matrix: np.ndarray) -> pa.FixedSizeListArray:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def strings(table: pa.Table, column: str) -> list[str]:
    return [v if v is not None else "" for v in table.column(column).to_pylist()]


def numbers(table: pa.Table, column: str, dtype=np.float64) -> np.ndarray:
    return table.column(column).to_numpy(zero_copy_only=False).astype(dtype, copy=False)
