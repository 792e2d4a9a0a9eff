"""Spec files: parse an uploaded CSV or JSON list of fractals into valid specs and rejected rows.

Pure Python on top of the core's validation (``FractalSpec.from_fields``): no
Dagster, no boto3, so the S3 sensor, the CLI and tests share one parser.

Formats (UTF-8, a leading BOM and CRLF line ends are fine)::

    kind,depth,size,palette          # CSV: header with kind and depth, optionally size and palette
    dragon,12,,                      # empty size/palette = the defaults (1024 px, rainbow)
    koch_snowflake,4,512,ice

    [{"kind": "dragon", "depth": 12}, {"kind": "koch_snowflake", "depth": 4, "size": 512}]
    {"specs": [{"kind": "dragon", "depth": 12}]}     # JSON: a list, or an object with "specs"

Every data row gives either a spec or a :class:`RejectedRow` (line number,
value, one-line reason); a bad row never hides the good ones. A file that
cannot be read as a whole (not UTF-8, binary, over :data:`MAX_BYTES` or
:data:`MAX_ROWS`, bad header, not valid JSON...) gives no specs and an
``error`` saying what to fix.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fractal_pipeline.fractals import KINDS, MAX_SPECS, FractalSpec, InvalidSpec
from fractal_pipeline.fractals.spec import FIELDS

#: Largest spec file read (5 MiB).
MAX_BYTES = 5 * 1024 * 1024
#: Most data rows (CSV rows or JSON list items) in one file.
MAX_ROWS = MAX_SPECS
#: Longest ``value`` kept in a rejected-row report.
MAX_VALUE_CHARS = 200
FORMATS = ("csv", "json")
REQUIRED = ("kind", "depth")


@dataclass(frozen=True)
class RejectedRow:
    """A row that gave no spec: where it is, what it said, why it was refused."""

    line: int
    value: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "value": self.value, "reason": self.reason}


@dataclass
class SpecFile:
    """The outcome of parsing one spec file."""

    name: str
    format: str | None
    specs: list[FractalSpec] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)
    #: Why the whole file was refused (then ``specs`` and ``rejected`` are empty).
    error: str | None = None
    #: Data rows seen (blank lines not counted).
    rows: int = 0

    @property
    def keys(self) -> list[str]:
        """Partition keys of the valid specs, in file order, each once."""
        return [spec.key for spec in self.specs]

    @property
    def clean(self) -> bool:
        """Nothing to report: no file error and no rejected row."""
        return self.error is None and not self.rejected

    def report(self) -> dict[str, Any]:
        """JSON-ready summary: what was accepted, what was rejected and why."""
        return {
            "file": self.name,
            "format": self.format,
            "error": self.error,
            "rows": self.rows,
            "accepted": len(self.specs),
            "keys": self.keys[:100],
            "rejected": [row.as_dict() for row in self.rejected],
        }


class _FileError(Exception):
    """The whole file is unusable; the message says why and how to fix it."""


def file_format(name: str) -> str | None:
    """``csv`` or ``json`` from the file name's extension (case-insensitive), else None."""
    lowered = name.lower()
    for fmt in FORMATS:
        if lowered.endswith(f".{fmt}"):
            return fmt
    return None


def _short(text: str) -> str:
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def _decode(data: bytes) -> str:
    if not data.strip():
        raise _FileError("file: is empty; put a header line kind,depth[,size,palette] (CSV) or a JSON list in it")
    nul = data.find(b"\0")
    if nul >= 0:
        raise _FileError(
            f"file: contains NUL bytes (first at offset {nul:,}); this is binary, not a CSV or JSON text file"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _FileError(
            f"file: is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start:,}); save it as UTF-8"
        ) from None
    if not text.strip():
        raise _FileError("file: is empty; put a header line kind,depth[,size,palette] (CSV) or a JSON list in it")
    return text


class _Collector:
    """Turns rows into specs or rejected rows; drops repeated specs (first one wins)."""

    def __init__(self, result: SpecFile) -> None:
        self.result = result
        self.first_line: dict[str, int] = {}

    def count(self) -> None:
        self.result.rows += 1
        if self.result.rows > MAX_ROWS:
            raise _FileError(f"file: has more than {MAX_ROWS:,} rows; split it into files of at most {MAX_ROWS:,}")

    def reject(self, line: int, value: str, reason: str) -> None:
        self.result.rejected.append(RejectedRow(line, _short(value), reason))

    def row(self, line: int, fields: object, value: str) -> None:
        self.count()
        try:
            spec = FractalSpec.from_fields(fields)  # type: ignore[arg-type]
        except InvalidSpec as exc:
            self.reject(line, value, str(exc))
            return
        except (TypeError, ValueError) as exc:  # defensive: the core raises InvalidSpec for bad fields
            self.reject(line, value, f"spec: {exc}")
            return
        if spec.key in self.first_line:
            self.reject(line, value, f"spec: duplicate of line {self.first_line[spec.key]} ({spec.key}); rendered once")
            return
        self.first_line[spec.key] = line
        self.result.specs.append(spec)


def _parse_csv(text: str, collect: _Collector) -> None:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header: list[str] | None = None
        header_line = 0
        previous_end = 0
        for row in reader:
            line = previous_end + 1
            previous_end = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue  # blank line
            if header is None:
                header, header_line = _check_header(row, line), line
                continue
            value = ",".join(row)
            if len(row) > len(header):
                collect.count()
                reason = f"row: {len(row)} values but the header (line {header_line}) has {len(header)} columns"
                collect.reject(line, value, reason)
                continue
            collect.row(line, dict(zip(header, (cell.strip() for cell in row), strict=False)), value)
        if header is None:
            raise _FileError("file: is empty; put a header line kind,depth[,size,palette] (CSV) or a JSON list in it")
    except csv.Error as exc:
        message = str(exc)
        if "field limit" in message:
            message = f"a value is longer than {csv.field_size_limit():,} characters"
        elif "quot" in message or "end of data" in message:
            message += '; check the quoting (a value starting with " must end with ")'
        raise _FileError(f"file: not valid CSV at line {reader.line_num}: {message}") from None


def _check_header(row: list[str], line: int) -> list[str]:
    names = [cell.strip().lower() for cell in row]
    shown = _short(",".join(row))
    if any(name in KINDS or name.lstrip("+-").isdigit() for name in names):
        raise _FileError(
            f"header: line {line} {shown!r} is data, not a header; start the file with kind,depth[,size,palette]"
        )
    for name in names:
        if name not in FIELDS:
            hint = "; separate columns with commas" if any(sep in name for sep in ";\t|") else ""
            raise _FileError(
                f"header: unknown column {name!r} in {shown!r}; allowed columns are {', '.join(FIELDS)}{hint}"
            )
    for name in names:
        if names.count(name) > 1:
            raise _FileError(f"header: column {name!r} appears twice in {shown!r}; keep one")
    for name in REQUIRED:
        if name not in names:
            raise _FileError(f"header: column {name!r} is missing in {shown!r}; the header needs kind,depth")
    return names


def _line_at(text: str, index: int, cache: list[int]) -> int:
    """1-based line of ``text[index]``; ``cache`` is [last index, its line] for monotone calls."""
    start, line = cache
    line += text.count("\n", start, index)
    cache[0], cache[1] = index, line
    return line


def _skip_ws(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\r\n":
        index += 1
    return index


def _specs_array_start(text: str, decoder: json.JSONDecoder, document: object) -> int:
    """Index of the ``[`` of the specs list: the document itself, or its (last) ``"specs"`` member."""
    index = _skip_ws(text, 0)
    if isinstance(document, list):
        return index
    # {"specs": [...]}: walk the top-level members; like json.loads, the last "specs" wins
    found = -1
    index = _skip_ws(text, index + 1)
    while index < len(text) and text[index] == '"':
        key, index = decoder.raw_decode(text, index)
        index = _skip_ws(text, _skip_ws(text, index) + 1)  # past ':'
        if key == "specs":
            found = index
        _, index = decoder.raw_decode(text, index)
        index = _skip_ws(text, _skip_ws(text, index) + 1)  # past ',' or '}'
    return found


def _parse_json(text: str, collect: _Collector) -> None:
    decoder = json.JSONDecoder()
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _FileError(f"file: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise _FileError("file: JSON is nested too deeply; expected a flat list of spec objects") from None
    except ValueError as exc:  # e.g. an integer with thousands of digits
        raise _FileError(f"file: not valid JSON: {exc}") from None
    if isinstance(document, Mapping):
        unknown = sorted(str(k) for k in document if k != "specs")
        if "specs" not in document or unknown:
            shown = ", ".join(repr(k) for k in list(document)[:5]) or "no keys"
            raise _FileError(f'file: expected a JSON list of specs or {{"specs": [...]}}, got an object with {shown}')
        if not isinstance(document["specs"], list):
            raise _FileError(f"specs: expected a list of spec objects, got {type(document['specs']).__name__}")
        items = document["specs"]
    elif isinstance(document, list):
        items = document
    else:
        raise _FileError(f'file: expected a JSON list of specs or {{"specs": [...]}}, got {type(document).__name__}')
    if len(items) > MAX_ROWS:
        raise _FileError(f"file: has {len(items):,} specs, more than {MAX_ROWS:,}; split it into smaller files")
    index = _skip_ws(text, _specs_array_start(text, decoder, document) + 1)
    cache = [0, 1]
    for item in items:
        line = _line_at(text, index, cache)
        _, end = decoder.raw_decode(text, index)
        value = text[index:end]
        collect.row(line, item, value)
        index = _skip_ws(text, end) + 1  # past ','
        index = _skip_ws(text, index)


def oversize_error(size: int) -> str | None:
    """The whole-file error for a file of ``size`` bytes, if it is over :data:`MAX_BYTES`."""
    if size <= MAX_BYTES:
        return None
    return (
        f"file: {size:,} bytes is over the {MAX_BYTES // (1024 * 1024)} MB limit ({MAX_BYTES:,} bytes); "
        "split it into smaller files"
    )


def parse_spec_file(name: str, data: bytes) -> SpecFile:
    """Parse ``data`` (the bytes of the file called ``name``) into specs and rejected rows.

    The format comes from the extension (``.csv`` or ``.json``). Never raises
    for bad content: whole-file problems are in ``error``, bad rows in
    ``rejected``.
    """
    fmt = file_format(name)
    result = SpecFile(name=name, format=fmt)
    try:
        if fmt is None:
            raise _FileError(f"file: {name!r} is not a .csv or .json file; spec files must end in .csv or .json")
        too_big = oversize_error(len(data))
        if too_big:
            raise _FileError(too_big)
        text = _decode(data)
        collect = _Collector(result)
        if fmt == "csv":
            _parse_csv(text, collect)
        else:
            _parse_json(text, collect)
    except _FileError as exc:
        return SpecFile(name=name, format=fmt, error=str(exc), rows=result.rows)
    return result
