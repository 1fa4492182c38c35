"""Reading user tables (CSV/TSV/Parquet/JSONL) with one-line errors that point at the problem."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from data_prep.errors import DataPrepError

_INT_RE = r"^(0|-?[1-9][0-9]*)$"


def require_file(path: str | Path, flag: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DataPrepError(f"{p}: file not found; check {flag}")
    return p


def check_utf8(data: bytes, name: str) -> None:
    """Raise with the line and column of the first byte that is not UTF-8."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        col = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataPrepError(
            f"{name}, line {line}, column {col}: byte 0x{data[err.start]:02x} is not UTF-8; "
            "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def _line_of(kind: str, row: int) -> str:
    """Human position of data row `row` (0-based): CSV has a header line, JSONL does not."""
    if kind == "csv":
        return f"line {row + 2}"
    if kind == "jsonl":
        return f"line {row + 1}"
    return f"row {row + 1}"


def read_table(path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> tuple[pd.DataFrame, str]:
    """Read `path` by extension; text columns stay strings. Returns (table, kind)."""
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            table, kind = pq.read_table(path), "parquet"
        elif suffix in (".jsonl", ".json", ".ndjson"):
            check_utf8(path.read_bytes(), str(path))
            table, kind = pajson.read_json(path), "jsonl"
        elif suffix in (".csv", ".tsv", ".txt", ".dat"):
            check_utf8(path.read_bytes(), str(path))
            delim = "," if suffix == ".csv" else "\t"
            table = pacsv.read_csv(
                path,
                # TSV files are not quoted by convention (titles may contain '"').
                parse_options=pacsv.ParseOptions(delimiter=delim, quote_char='"' if delim == "," else False),
                convert_options=pacsv.ConvertOptions(
                    column_types=None, strings_can_be_null=False, quoted_strings_can_be_null=False,
                    null_values=[], auto_dict_encode=False,
                ),
                read_options=pacsv.ReadOptions(block_size=1 << 24),
            )
            kind = "csv"
        else:
            raise DataPrepError(
                f"{path}: unknown file type '{path.suffix}'; use .csv, .tsv, .parquet or .jsonl"
            )
    except (pa.ArrowInvalid, OSError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "empty" in msg.lower() and path.stat().st_size == 0:
            raise DataPrepError(f"{path}: the file is empty; it needs a header ({', '.join(required)}) "
                                "and at least one row") from None
        raise DataPrepError(f"{path}: cannot parse ({msg}); check the file format") from None
    names = table.column_names
    for col in required:
        if col not in names:
            raise DataPrepError(
                f"{path}: missing column '{col}' (found: {', '.join(names) or 'none'}); "
                f"the file needs columns {', '.join(required)}"
            )
    if table.num_rows == 0:
        raise DataPrepError(f"{path}: no rows (only a header); the file needs at least one row")
    keep = [c for c in (*required, *optional) if c in names]
    table = table.select(keep)
    df = pd.DataFrame({c: _column(table[c]) for c in keep})
    return df, kind


def _column(col: pa.ChunkedArray):
    """Arrow column -> numpy values (strings as Python str objects)."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col.to_numpy(zero_copy_only=False).astype(object)
    return col.to_pandas().to_numpy()


def check_ids(df: pd.DataFrame, col: str, path: Path, kind: str, codes: np.ndarray | None = None) -> None:
    """No null or empty ids; integral floats become int64 (3.0 -> 3).

    With `codes`, `df` holds a column's distinct values and `codes[row]` says which one each
    row of the file has; messages still name the first offending row of the file.
    """
    def first(bad: np.ndarray) -> tuple[int, int]:
        """(first offending file row, offending rows) for a mask over df's rows."""
        rows = bad if codes is None else bad[codes]
        return int(np.flatnonzero(rows)[0]), int(rows.sum())

    s = df[col]
    bad = s.isna().to_numpy().copy()
    if not pd.api.types.is_numeric_dtype(s.dtype):
        bad = bad | (s.astype(str).str.strip() == "").to_numpy()
    if bad.any():
        row, count = first(bad)
        raise DataPrepError(
            f"{path}, {_line_of(kind, row)}, column {col}: empty id ({count} rows); "
            "fill in or drop those rows"
        )
    if pd.api.types.is_float_dtype(s.dtype):  # a column of numbers that are not all integers
        values = s.to_numpy()
        fraction = values != np.floor(values)
        if fraction.any():
            row, _ = first(fraction)
            value = values[fraction][0] if codes is None else values[codes[row]]
            raise DataPrepError(
                f"{path}, {_line_of(kind, row)}, column {col}: id {float(value)!r} is not an integer; "
                "ids must be integers or text"
            )
        df[col] = values.astype(np.int64)  # 3.0 -> 3: integral numbers written with a decimal point


def normalize_ids(*cols: pd.Series) -> list[pd.Series]:
    """Give id columns one type: int64 when every value is a plain integer, else str.

    Text ids lose surrounding whitespace first (' u1 ' and 'u1' are one user)."""
    cols = tuple(s.astype(str).str.strip() if pd.api.types.is_string_dtype(s.dtype) else s for s in cols)
    def is_int_like(s: pd.Series) -> bool:
        if pd.api.types.is_integer_dtype(s.dtype):
            return True
        if pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_datetime64_any_dtype(s.dtype):
            return False
        arr = pa.array(s.astype(str).to_numpy(dtype=object), type=pa.string())
        return bool(pc.all(pc.match_substring_regex(arr, _INT_RE)).as_py() or len(arr) == 0)

    if all(is_int_like(s) for s in cols):
        return [s.astype(np.int64) for s in cols]
    return [s.astype(str) for s in cols]


def parse_timestamps(s: pd.Series, path: Path, kind: str, row0: int = 0,
                     state: dict | None = None) -> np.ndarray:
    """Unix seconds (int/float) or date strings (ISO 8601) -> int64 seconds.

    For a file read in chunks, `row0` is the chunk's first row and `state` (one dict for the whole
    file) remembers what the first text value was (a number or a date), which decides the column.
    """
    state = {} if state is None else state
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        values = s.to_numpy()
        bad = ~np.isfinite(values.astype(np.float64))
        if bad.any():
            _bad_timestamp(path, kind, row0 + int(np.flatnonzero(bad)[0]), values[bad][0])
        return np.floor(values).astype(np.int64)
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        return ((s - pd.Timestamp(0, tz=getattr(s.dt, "tz", None))) // pd.Timedelta(seconds=1)).to_numpy(np.int64)
    text = s.astype(str).str.strip()
    num = pd.to_numeric(text, errors="coerce")
    # The first value decides: a column of numbers, or a column of dates.
    if "number" not in state and len(num):
        state.update(number=not np.isnan(num.iloc[0]), row=row0)
    if len(num) == 0 or state["number"]:
        bad = num.isna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            _mixed_formats(path, kind, state["row"], row0 + row, text.iloc[row])
            _bad_timestamp(path, kind, row0 + row, text.iloc[row])
        return np.floor(num.to_numpy(dtype=np.float64)).astype(np.int64)
    dt = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
    bad = dt.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        if not np.isnan(num.iloc[row]):  # a number among dates
            raise DataPrepError(
                f"{path}, {_line_of(kind, row0 + row)}, column timestamp: '{text.iloc[row]}' is a number but "
                f"{_line_of(kind, state['row'])} is a date; use one time format in the whole column"
            )
        _bad_timestamp(path, kind, row0 + row, text.iloc[row])
    return ((dt - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)


def timestamps_chunk(col: pa.Array, path: Path, kind: str, row0: int, state: dict) -> np.ndarray:
    """`parse_timestamps` for one chunk of an Arrow column; CSV text that is all plain integers
    takes a fast cast with the same result."""
    if (kind == "csv" and state.get("number", True) and len(col)
            and (pa.types.is_string(col.type) or pa.types.is_large_string(col.type))):
        try:
            ints = pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        else:
            state.setdefault("number", True)
            state.setdefault("row", row0)
            return np.floor(ints.astype(np.float64)).astype(np.int64)  # as the text path does
    return parse_timestamps(pd.Series(_column(col)), path, kind, row0, state)


def _mixed_formats(path: Path, kind: str, first: int, row: int, value) -> None:
    """A date among numbers: one clear line instead of 'cannot parse'."""
    if not pd.isna(pd.to_datetime(pd.Series([value]), errors="coerce", utc=True, format="ISO8601").iloc[0]):
        raise DataPrepError(
            f"{path}, {_line_of(kind, row)}, column timestamp: '{value}' is a date but {_line_of(kind, first)} "
            "is a number (Unix seconds); use one time format in the whole column"
        )


def _bad_timestamp(path: Path, kind: str, row: int, value) -> None:
    raise DataPrepError(
        f"{path}, {_line_of(kind, row)}, column timestamp: cannot parse '{value}' as a time; "
        "use Unix seconds or ISO 8601 dates (2024-01-31T12:00:00)"
    )


def line_of(kind: str, row: int) -> str:
    return _line_of(kind, row)


# --- Reading a large table in chunks --------------------------------------------------------------
# `--dataset interactions` reads its log in chunks and keeps only integer arrays, so a log larger
# than memory can be prepared. Whole-file semantics are kept: id columns are coded per chunk
# (Arrow dictionary encoding) and their distinct values are typed together at the end as a
# whole-file read would type them; timestamps carry the first value's format across chunks.

READ_CHUNK_BYTES = 32 << 20  # CSV/TSV/JSONL bytes per chunk
READ_CHUNK_ROWS = 1 << 20  # Parquet rows per chunk
_CSV_CONVERT = dict(strings_can_be_null=False, quoted_strings_can_be_null=False, null_values=[],
                    auto_dict_encode=False)


def table_kind(path: Path) -> tuple[str, str]:
    """(kind, delimiter) from the file name: parquet, jsonl, or csv with ',' or tab."""
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet", ""
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl", ""
    if suffix in (".csv", ".tsv", ".txt", ".dat"):
        return "csv", "," if suffix == ".csv" else "\t"
    raise DataPrepError(f"{path}: unknown file type '{path.suffix}'; use .csv, .tsv, .parquet or .jsonl")


def _line_blocks(path: Path, size: int) -> Iterator[bytes]:
    """The file in blocks of about `size` bytes that end at a line end (the last may not)."""
    rest = b""
    with open(path, "rb") as f:
        while True:
            data = f.read(size)
            if not data:
                break
            data = rest + data
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                rest = data
                continue
            rest = data[cut:]
            yield data[:cut]
    if rest:
        yield rest


def check_utf8_file(path: Path) -> None:
    """`check_utf8` over a file of any size, block by block (lines keep their numbers)."""
    lines = 0
    for block in _line_blocks(path, READ_CHUNK_BYTES):
        lines = _check_utf8_block(path, block, lines)


def _check_utf8_block(path: Path, block: bytes, lines: int) -> int:
    """Raise at the first non-UTF-8 byte of `block` (whole lines, `lines` lines before it);
    returns the line count after it."""
    try:  # Arrow validates fast; Python's decode then finds the place
        pa.array([block], pa.large_binary()).cast(pa.large_string())
    except pa.ArrowInvalid:
        try:
            block.decode("utf-8")
        except UnicodeDecodeError as err:
            line = lines + block.count(b"\n", 0, err.start) + 1
            col = err.start - (block.rfind(b"\n", 0, err.start) + 1) + 1
            raise DataPrepError(
                f"{path}, line {line}, column {col}: byte 0x{block[err.start]:02x} is not UTF-8; "
                "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
            ) from None
    return lines + block.count(b"\n")


def _parse_error(path: Path, err: Exception, required: tuple[str, ...]) -> DataPrepError:
    msg = str(err).splitlines()[0] if str(err) else type(err).__name__
    if "empty" in msg.lower() and path.stat().st_size == 0:
        return DataPrepError(f"{path}: the file is empty; it needs a header ({', '.join(required)}) "
                             "and at least one row")
    return DataPrepError(f"{path}: cannot parse ({msg}); check the file format")


def _check_columns(path: Path, names: list[str], required: tuple[str, ...]) -> None:
    for col in required:
        if col not in names:
            raise DataPrepError(
                f"{path}: missing column '{col}' (found: {', '.join(names) or 'none'}); "
                f"the file needs columns {', '.join(required)}"
            )


class TypedReadFailed(Exception):
    """A CSV column read as int64 (its first block held integers) has a value that is not."""


def read_chunks(path: Path, required: tuple[str, ...], optional: tuple[str, ...] = (),
                int_columns: tuple[str, ...] = (), check_utf8: bool = True
                ) -> tuple[str, list[str], Iterator[pa.Table]]:
    """Open a table for reading in chunks: (kind, kept columns, iterator of Arrow tables).

    The file is checked (type, UTF-8, header, required columns) before this returns; parse errors
    later on are raised as one line too, and a file without rows raises at the end. CSV columns
    stay text (`csv_typed` types a column's distinct values as a whole-file read would), except
    `int_columns` whose first block Arrow reads as int64: they are parsed as int64 (what a
    whole-file read gives them when every value converts), and the iterator raises
    `TypedReadFailed` at the first value that does not (read again without them).
    """
    kind, delim = table_kind(path)
    try:
        if kind == "parquet":
            pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
        else:
            if path.stat().st_size == 0:
                raise pa.ArrowInvalid("empty file")
            if check_utf8 and kind == "csv":  # (JSONL: each block as it is parsed)
                check_utf8_file(path)
            if kind == "csv":
                parse = pacsv.ParseOptions(delimiter=delim, quote_char='"' if delim == "," else False)
                with pacsv.open_csv(path, parse_options=parse,
                                    read_options=pacsv.ReadOptions(block_size=min(READ_CHUNK_BYTES, 1 << 20)),
                                    convert_options=pacsv.ConvertOptions(**_CSV_CONVERT)) as probe:
                    names = probe.schema.names
                    as_int = [c for c in int_columns if c in names and probe.schema.field(c).type == pa.int64()]
            else:
                # the column names from the first lines (each chunk is checked again when read)
                first = next(_line_blocks(path, min(READ_CHUNK_BYTES, 1 << 20)))
                _check_utf8_block(path, first, 0)
                names = pajson.read_json(io.BytesIO(first)).column_names
    except (pa.ArrowInvalid, OSError) as err:
        raise _parse_error(path, err, required) from None
    _check_columns(path, names, required)
    keep = [c for c in (*required, *optional) if c in names]

    def tables() -> Iterator[pa.Table]:
        rows = 0
        try:
            if kind == "parquet":
                for batch in pf.iter_batches(batch_size=READ_CHUNK_ROWS, columns=keep):
                    rows += batch.num_rows
                    yield pa.Table.from_batches([batch])
            elif kind == "csv":
                types = {c: pa.int64() if c in as_int else pa.string() for c in keep}
                convert = pacsv.ConvertOptions(include_columns=keep, column_types=types, **_CSV_CONVERT)
                with pacsv.open_csv(path, parse_options=parse, convert_options=convert,
                                    read_options=pacsv.ReadOptions(block_size=READ_CHUNK_BYTES)) as reader:
                    while True:
                        try:
                            batch = reader.read_next_batch()
                        except StopIteration:
                            break
                        except pa.ArrowInvalid as err:
                            if as_int and "conversion error to int64" in str(err):
                                raise TypedReadFailed(str(err)) from None
                            raise
                        rows += batch.num_rows
                        if batch.num_rows:
                            yield pa.Table.from_batches([batch])
            else:
                lines = 0
                for block in _line_blocks(path, READ_CHUNK_BYTES):
                    lines = _check_utf8_block(path, block, lines)
                    table = pajson.read_json(io.BytesIO(block))
                    _check_columns(path, table.column_names, required)
                    rows += table.num_rows
                    yield table.select(keep).combine_chunks()
        except (pa.ArrowInvalid, OSError) as err:
            raise _parse_error(path, err, required) from None
        if rows == 0:
            raise DataPrepError(f"{path}: no rows (only a header); the file needs at least one row")

    return kind, keep, tables()


def _type_family(t: pa.DataType) -> str:
    if pa.types.is_null(t):
        return "null"
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text"
    return str(t)


class ColumnCodes:
    """One column read in chunks, as int32 codes into its distinct values (in order of first
    appearance in the file). Holds per chunk the codes and the chunk's Arrow dictionary.

    `text=True` (CSV, read as text): a chunk whose values are all integers written plainly
    ("12", not "012" or " 12") is coded as integers, which hashes faster; this loses nothing,
    since such text is exactly `str(value)` (and `finish` turns it back if other chunks hold text).
    """

    def __init__(self, path: Path, name: str, text: bool = False):
        self.path, self.name, self.text = path, name, text
        self.chunk_codes: list[np.ndarray] = []
        self.dicts: list[pa.Array] = []

    def add(self, col: pa.ChunkedArray | pa.Array) -> None:
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if self.text and (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            try:
                ints = pc.cast(col, pa.int64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                ints = None
            if ints is not None and pc.all(pc.equal(pc.cast(ints, col.type), col)).as_py() is not False:
                col = ints
        enc = pc.dictionary_encode(col, null_encoding="encode")
        self.chunk_codes.append(enc.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False))
        self.dicts.append(enc.dictionary)

    def finish(self) -> tuple[np.ndarray, pa.Array]:
        """(codes [rows] int32, distinct values as one Arrow array). Chunks of a JSONL file may
        differ in type: numbers widen to float64 as a whole-file read would; numbers mixed with
        text is the same parse error a whole-file read gives."""
        families = {_type_family(d.type) for d in self.dicts} - {"null"}
        if self.text and families == {"number", "text"}:  # plain integers back to their text
            self.dicts = [d.cast(pa.string()) if _type_family(d.type) == "number" else d for d in self.dicts]
            families = {"text"}
        if len(families) > 1:
            raise DataPrepError(
                f"{self.path}: cannot parse (column {self.name} mixes {' and '.join(sorted(families))} "
                "values); check the file format"
            )
        types = {d.type for d in self.dicts if not pa.types.is_null(d.type)}
        target = types.pop() if len(types) == 1 else (pa.float64() if families == {"number"} else pa.string())
        if not types and not families:
            target = pa.null()
        values = pa.concat_arrays([d.cast(target) for d in self.dicts])
        # One code per distinct value over all chunks, in order of first appearance.
        uniq_codes, uniques = pd.factorize(_column(pa.chunked_array([values])), use_na_sentinel=False)
        offsets = np.cumsum([0] + [len(d) for d in self.dicts])
        codes = np.concatenate([uniq_codes[offsets[i] + c] for i, c in enumerate(self.chunk_codes)]
                               ).astype(np.int32) if self.chunk_codes else np.zeros(0, np.int32)
        first = np.unique(uniq_codes, return_index=True)[1]  # where each distinct value first is
        self.chunk_codes, self.dicts = [], []
        return codes, values.take(pa.array(first))


def csv_typed(values: pa.Array) -> pa.Array:
    """The type a whole-file CSV read gives a column with these distinct text values: the values
    go through the same CSV reader, quoted, in one column."""
    body = "v\n" + "".join('"' + v.replace('"', '""') + '"\n' for v in values.to_pylist())
    table = pacsv.read_csv(io.BytesIO(body.encode("utf-8")), convert_options=pacsv.ConvertOptions(**_CSV_CONVERT),
                           read_options=pacsv.ReadOptions(block_size=1 << 24))
    return table["v"].combine_chunks()


def column_values(values: pa.Array) -> pd.Series:
    """Arrow values -> pandas, as a whole-file read converts a column (`_column`)."""
    return pd.Series(_column(pa.chunked_array([values])))
