"""Reading user tables (CSV/TSV/Parquet/JSONL) with one-line errors that point at the problem."""

from __future__ import annotations

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


def check_ids(df: pd.DataFrame, col: str, path: Path, kind: str) -> None:
    """No null or empty ids."""
    s = df[col]
    bad = s.isna().to_numpy().copy()
    if not pd.api.types.is_numeric_dtype(s.dtype):
        bad = bad | (s.astype(str).str.strip() == "").to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataPrepError(
            f"{path}, {_line_of(kind, row)}, column {col}: empty id ({int(bad.sum())} rows); "
            "fill in or drop those rows"
        )
    if pd.api.types.is_float_dtype(s.dtype):  # a column of numbers that are not all integers
        values = s.to_numpy()
        fraction = values != np.floor(values)
        if fraction.any():
            row = int(np.flatnonzero(fraction)[0])
            raise DataPrepError(
                f"{path}, {_line_of(kind, row)}, column {col}: id {float(values[row])!r} is not an integer; "
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


def parse_timestamps(s: pd.Series, path: Path, kind: str) -> np.ndarray:
    """Unix seconds (int/float) or date strings (ISO 8601) -> int64 seconds."""
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        values = s.to_numpy()
        bad = ~np.isfinite(values.astype(np.float64))
        if bad.any():
            _bad_timestamp(path, kind, int(np.flatnonzero(bad)[0]), values[bad][0])
        return np.floor(values).astype(np.int64)
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        return ((s - pd.Timestamp(0, tz=getattr(s.dt, "tz", None))) // pd.Timedelta(seconds=1)).to_numpy(np.int64)
    text = s.astype(str).str.strip()
    num = pd.to_numeric(text, errors="coerce")
    # The first value decides: a column of numbers, or a column of dates.
    if len(num) == 0 or not np.isnan(num.iloc[0]):
        bad = num.isna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            _mixed_formats(path, kind, 0, row, text.iloc[row])
            _bad_timestamp(path, kind, row, text.iloc[row])
        return np.floor(num.to_numpy(dtype=np.float64)).astype(np.int64)
    dt = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
    bad = dt.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        if not np.isnan(num.iloc[row]):  # a number among dates
            raise DataPrepError(
                f"{path}, {_line_of(kind, row)}, column timestamp: '{text.iloc[row]}' is a number but "
                f"{_line_of(kind, 0)} is a date; use one time format in the whole column"
            )
        _bad_timestamp(path, kind, row, text.iloc[row])
    return ((dt - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)


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
