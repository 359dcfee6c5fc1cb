"""The vectors file a job writes: parts committed as it goes (each renamed into place whole),
then merged in order into one .parquet (or .npy + .json), with the encoder info in its metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llmkit.files import atomic_file, atomic_path

META_KEY = b"llmkit.embed"  # the Parquet metadata key holding the encoder info (model, dim, ...)


def _parquet_options(names: list[str]) -> dict:
    """No dictionary encoding or statistics for the vector column: they cost 5x the write time
    and buy nothing for floats."""
    plain = [n for n in names if n != "vector"]
    return {"use_dictionary": plain, "write_statistics": plain}


def write_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **_parquet_options(table.column_names))


def merge_parts(work: Path, output: Path, info: dict) -> int:
    """Concatenate the parts in order into the output, one part in memory at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = sorted(work.glob("part-*.parquet"))
    schemas = [pq.read_schema(p) for p in parts]
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    info = {**info, "dim": schema.field("vector").type.list_size}
    schema = schema.with_metadata({META_KEY: json.dumps(info).encode()})
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
    if output.suffix == ".npy":
        return _merge_npy(parts, output, info, rows)
    with (
        atomic_path(output) as tmp,
        pq.ParquetWriter(tmp, schema, **_parquet_options(schema.names)) as writer,
    ):
        for p in parts:
            table = pq.read_table(p)
            for name in schema.names:  # columns only some parts have
                if name not in table.column_names:
                    table = table.append_column(name, pa.nulls(len(table), schema.field(name).type))
            writer.write_table(table.select(schema.names).cast(schema))
    return rows


def _merge_npy(parts: list[Path], output: Path, info: dict, rows: int) -> int:
    import pyarrow.parquet as pq

    with atomic_path(output) as tmp:
        matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, info["dim"]))
        at = 0
        for p in parts:
            vec = pq.read_table(p, columns=["vector"]).column("vector").combine_chunks()
            block = vec.flatten().to_numpy().reshape(len(vec), info["dim"])
            matrix[at : at + len(block)] = block
            at += len(block)
        matrix.flush()
        del matrix
    with atomic_file(output.with_name(output.name + ".json")) as fh:
        json.dump({**info, "rows": rows}, fh, indent=2)
    return rows
