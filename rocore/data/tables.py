"""Reading a user's file (CSV, TSV, Excel .xlsx, JSON lines) into named columns of text.

Every file a user hands the product (a case export, a table of paired outputs) is read here, one
way, so that a file that cannot be read is refused with every reason at once, and each reason is
located (file, row, column, value) in words the user can act on.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MAX_LISTED_PROBLEMS = 100
_DELIMITERS = ",\t;|"


@dataclass(frozen=True)
class Problem:
    """One located problem; str() gives the line a user reads."""

    file: str
    message: str
    row: int | None = None
    column: str | None = None
    value: str | None = None
    severity: str = "error"

    def __str__(self) -> str:
        parts = [self.file]
        if self.row is not None:
            parts.append(f"row {self.row}")
        if self.column is not None:
            parts.append(f"column '{self.column}'")
        text = ": ".join(parts) + ": "
        if self.value is not None:
            text += f"'{shorten(self.value)}' "
        return text + self.message


class ImportRefused(Exception):
    """The file was refused as a whole; `problems` lists every reason."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__(format_problems(problems))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


@dataclass
class Table:
    """A file read into named columns; rows keep their 1-based data row number. Rows that could
    not be read into the columns keep their cells in `unreadable`, keyed by row, for the rejects file."""

    name: str
    columns: list[str]
    rows: list[tuple[int, dict[str, str]]]
    problems: list[Problem] = field(default_factory=list)
    unreadable: dict[int, dict[str, str]] = field(default_factory=dict)


def shorten(value: str, limit: int = 60) -> str:
    """A cell value cut to fit on one line of a problem list."""
    value = value.replace("\n", " ")
    return value if len(value) <= limit else value[: limit - 1] + "…"


def format_problems(problems: list[Problem], cap: int = MAX_LISTED_PROBLEMS) -> str:
    """Errors before warnings, one a line, at most `cap` lines and a count of the rest."""
    ordered = sorted(problems, key=lambda p: (p.severity != "error", p.row or 0))
    lines = [str(p) if p.severity == "error" else f"{p} (warning)" for p in ordered[:cap]]
    if len(ordered) > cap:
        lines.append(f"... and {len(ordered) - cap} more problems")
    return "\n".join(lines)


def read_table(data: bytes, name: str) -> Table:
    """Read CSV/TSV, .xlsx or JSON lines by extension (and content); raise ImportRefused if unreadable."""
    suffix = Path(name).suffix.lower()
    if not data.strip():
        raise ImportRefused([Problem(name, "is empty; expected a header row and at least one case")])
    if suffix in (".xlsx", ".xlsm"):
        table = _read_xlsx(data, name)
    elif suffix == ".xls":
        raise ImportRefused([Problem(name, "is an old Excel .xls workbook; save it as .xlsx or CSV")])
    else:
        text = _decode_text(data, name)
        if suffix in (".jsonl", ".ndjson", ".json") or text.lstrip().startswith(("{", "[")):
            table = _read_json(text, name)
        else:
            table = _read_delimited(text, name, "\t" if suffix in (".tsv", ".tab") else None)
    if not table.rows and not table.problems:
        raise ImportRefused([Problem(name, "has a header but no data rows")])
    duplicate_columns = [c for i, c in enumerate(table.columns) if c in table.columns[:i]]
    if duplicate_columns:
        raise ImportRefused(
            [Problem(name, f"column '{c}' appears more than once in the header") for c in duplicate_columns]
        )
    return table


def _decode_text(data: bytes, name: str) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    if b"\x00" in data[:8192] or data.startswith(b"PK\x03\x04"):
        raise ImportRefused([Problem(
            name, "is not a text file (it holds binary data); expected CSV, TSV, JSON lines or .xlsx"
        )])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ImportRefused([Problem(
            name,
            f"is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
            "save it as UTF-8 (in Excel: 'CSV UTF-8')",
        )]) from None
    if sum(ch.isprintable() or ch in "\r\n\t" for ch in text[:4096]) < 0.95 * len(text[:4096]):
        raise ImportRefused([Problem(name, "is not a text file (mostly unprintable characters)")])
    return text


# ------------------------------------------------------------------- rows of cells: delimited text, sheets


def _cell_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return str(value)


def _header_and_rows(records: Iterable[Sequence[object]], name: str,
                     empty: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The first row with any text as the header, and the rows below it numbered from 1, all as text;
    refused with `empty` when no row has text."""
    rows = iter([_cell_text(value) for value in record] for record in records)
    for header in rows:
        if any(cell.strip() for cell in header):
            return [cell.strip() for cell in header], list(enumerate(rows, start=1))
    raise ImportRefused([Problem(name, empty)])


def _table(name: str, header: list[str], rows: list[tuple[int, list[str]]],
           misfit: Callable[[list[str], int], str | None], problems: list[Problem]) -> Table:
    """Rows of cells under a header, as a Table. Unnamed columns are called "column N"; blank rows are
    skipped; a row `misfit` finds not to fit the header's width is a located problem, its cells kept
    aside for the rejects file; shorter rows are padded."""
    columns = [h or f"column {i}" for i, h in enumerate(header, start=1)]
    problems = list(problems)
    unreadable: dict[int, dict[str, str]] = {}
    kept = []
    for number, record in rows:
        if not any(cell.strip() for cell in record):
            continue
        reason = misfit(record, len(header))
        if reason:
            problems.append(Problem(name, reason, row=number))
            unreadable[number] = {f"field {i}": cell for i, cell in enumerate(record, start=1)}
            continue
        kept.append((number, dict(zip(columns, record + [""] * (len(header) - len(record))))))
    return Table(name, _drop_empty_unnamed(columns, header, kept), kept, problems, unreadable)


def _drop_empty_unnamed(columns, header, rows) -> list[str]:
    """Columns with no header and no values (trailing delimiters of spreadsheet exports) vanish."""
    keep = []
    for column, title in zip(columns, header):
        if title or any(values.get(column, "").strip() for _, values in rows):
            keep.append(column)
        else:
            for _, values in rows:
                values.pop(column, None)
    return keep


def _sniff_delimiter(header_line: str) -> str:
    try:
        return csv.Sniffer().sniff(header_line, delimiters=_DELIMITERS).delimiter
    except csv.Error:
        counts = {d: header_line.count(d) for d in _DELIMITERS}
        best = max(counts, key=counts.get)
        return best if counts[best] else ","


def _field_count_differs(record: list[str], width: int) -> str | None:
    """Delimited text: any other number of fields means a delimiter or quote went astray."""
    if len(record) != width:
        return (f"has {len(record)} fields, but the header has {width}; "
                "check for an unquoted delimiter or a missing cell")
    return None


def _read_delimited(text: str, name: str, delimiter: str | None) -> Table:
    header_line = text.lstrip("\r\n").splitlines()[0]
    delimiter = delimiter or _sniff_delimiter(header_line)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        records = list(reader)
    except csv.Error as exc:
        raise ImportRefused([Problem(name, f"is not readable as delimited text: {exc} (near line {reader.line_num})")]) from None
    header, rows = _header_and_rows(
        records, name, "has only empty rows; expected a header row and at least one case")
    return _table(name, header, rows, _field_count_differs, [])


def _value_beyond_header(record: list[str], width: int) -> str | None:
    """A sheet: rows run to the sheet's widest row, so only a value beyond the header is out of place."""
    extra = [i for i, cell in enumerate(record[width:], start=width + 1) if cell.strip()]
    if extra:
        return f"has a value in column {extra[0]}, beyond the header's {width} columns"
    return None


def _read_xlsx(data: bytes, name: str) -> Table:
    import openpyxl

    try:
        book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise ImportRefused([Problem(name, f"is not a readable .xlsx workbook ({exc})")]) from None
    sheet = book.worksheets[0]
    records = list(sheet.iter_rows(values_only=True))
    book.close()
    header, rows = _header_and_rows(
        records, name, f"sheet '{sheet.title}' is empty; expected a header row and cases")
    while header and not header[-1]:
        header.pop()
    problems = []
    if len(book.sheetnames) > 1:
        problems.append(Problem(name, f"has {len(book.sheetnames)} sheets; only the first, "
                                f"'{sheet.title}', was read", severity="warning"))
    return _table(name, header, rows, _value_beyond_header, problems)


# ------------------------------------------------------------------------------------------ JSON


def _read_json(text: str, name: str) -> Table:
    """JSON lines (row N is line N), or one JSON array of objects (row N is its Nth element)."""
    problems: list[Problem] = []
    unreadable: dict[int, dict[str, str]] = {}
    items: list[tuple[int, object]] = []
    if text.lstrip().startswith("["):
        try:
            items = list(enumerate(json.loads(text), start=1))
        except json.JSONDecodeError as exc:
            raise ImportRefused([Problem(name, f"is not valid JSON: {exc.msg} (line {exc.lineno})")]) from None
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                problems.append(Problem(name, f"is not valid JSON: {exc.msg} (character {exc.colno})", row=number))
                unreadable[number] = {"line": line}
    columns: list[str] = []
    rows = []
    for number, item in items:
        if not isinstance(item, dict):
            problems.append(Problem(name, f"is a JSON {type(item).__name__}, expected an object "
                                    "with one key per column", row=number))
            unreadable[number] = {"line": json.dumps(item, ensure_ascii=False)}
            continue
        values = {}
        for key, value in item.items():
            if key not in columns:
                columns.append(key)
            values[key] = (json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list))
                           else _cell_text(value) if not isinstance(value, bool) else str(value).lower())
        rows.append((number, values))
    if not items and not problems:
        raise ImportRefused([Problem(name, "has no JSON objects; expected one case per line")])
    return Table(name, columns, rows, problems, unreadable)
