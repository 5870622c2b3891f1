"""Reading a user's file (CSV, TSV, Excel .xlsx, JSON lines) into named columns of text.

Every file a user hands the product (a case export, a table of paired outputs) is read here, one
way, so that a file that cannot be read is refused with every reason at once, and each reason is
located (file, row, column, value) in words the user can act on.

One set of limits (`LIMITS`) holds for every format and is checked while the file is read, so that
a file built to exhaust memory or time (a zip bomb, a sheet that claims a million rows of 16,384
columns, a 60 MB cell) is stopped early, named, and costs the server little. A file is read a row at
a time (`TableReader`), so that an import need not hold it whole; `read_table` keeps every row.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import hashlib
import io
import itertools
import json
import re
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NoReturn, TextIO, TypeVar

MAX_LISTED_PROBLEMS = 100
MB = 1024 * 1024  # a megabyte as Streamlit counts an upload's size
_DELIMITERS = ",\t;|"
_T = TypeVar("_T")


@dataclass(frozen=True)
class Limits:
    """What one file may hold, the same for every format; a file over any of them is refused."""

    file_mb: int = 50  # the file as uploaded
    unzipped_mb: int = 200  # an .xlsx workbook's parts, unzipped
    rows: int = 100_000  # rows of the file, the header and blank rows included
    columns: int = 50  # columns (JSON: different keys), or cells in any one row
    cell_chars: int = 50_000  # one cell; below the csv module's own 131,072
    case_chars: int = 200_000  # one row's cells together
    # All cells together: what a CSV at file_mb holds (an .xlsx can repeat one shared text in every row).
    text_chars: int = 50_000_000
    seconds: float = 60.0  # reading, from the first byte to the last row


LIMITS = Limits()

# The XML inside an .xlsx, counted before openpyxl parses any of it: openpyxl builds Python objects
# for every element (a style costs it about 40 us and 600 bytes), and it parses whole, on opening,
# everything but the rows of the worksheets (and those too where a sheet has no <dimension>), where
# no row limit or clock can stop it.
XLSX_PARTS = 1_000  # files in the zip; a workbook has a few dozen
XML_ELEMENTS = 5_000_000  # in all parts together: some 100,000 rows of 20 cells
XML_ELEMENTS_OPENED_WHOLE = 500_000  # shared strings, styles, workbook, the worksheets outside their rows
XML_ELEMENTS_PER_ROW = 65_536  # Excel writes at most 16,384 cells a row

# A spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: object) -> object:
    """A text cell that a spreadsheet would run as a formula, made inert with a leading quote; every
    CSV the product writes from cells it did not make itself passes them through here.

    Every such cell is changed, even one that reads as a harmless number ("-5") or regimen ("-"):
    telling harmless from harmful is what the spreadsheet gets wrong.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


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
    not be read into the columns keep their cells in `unreadable`, keyed by row, for the rejects file.
    Iterated, it gives its rows, as a TableReader does while reading, so either can be checked."""

    name: str
    columns: list[str]
    rows: list[tuple[int, dict[str, str]]]
    problems: list[Problem] = field(default_factory=list)
    unreadable: dict[int, dict[str, str]] = field(default_factory=dict)

    def __iter__(self) -> Iterator[tuple[int, dict[str, str]]]:
        return iter(self.rows)


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


def check_file_size(size: int, name: str, limits: Limits = LIMITS) -> None:
    """Refuse a file over the size limit before anyone reads it into memory."""
    if size > limits.file_mb * MB:
        raise ImportRefused([Problem(name, f"is {size:,} bytes, more than the limit of {limits.file_mb} MB "
                                           f"({limits.file_mb * MB:,} bytes) per file; split it")])


def read_table(source: bytes | BinaryIO, name: str, limits: Limits = LIMITS) -> Table:
    """The whole file as a Table (a preview, a file of paired outputs): a TableReader read to its end."""
    reader = TableReader(source, name, limits)
    rows = list(reader)
    return Table(name, reader.columns, rows, reader.problems, reader.unreadable)


@dataclass(frozen=True)
class Preview:
    """What a page shows of a file before it is checked: its columns, how many rows fit, the first rows."""

    columns: list[str]
    n_rows: int
    first_rows: list[dict[str, str]]


def preview_table(source: bytes | BinaryIO, name: str, first: int = 20, limits: Limits = LIMITS) -> Preview:
    """The file read to its end, for its columns (JSON keys and unnamed columns appear as rows are read)
    and its limits, keeping only the first rows: the Data page then checks it as a stream, so a file
    of 100,000 rows is never held as rows."""
    reader = TableReader(source, name, limits)
    n_rows, kept = 0, []
    for _, values in reader:
        n_rows += 1
        if len(kept) < first:
            kept.append(values)
    return Preview(list(reader.columns), n_rows, kept)


class TableReader:
    """A user's file (CSV/TSV, .xlsx, JSON lines or a JSON array; by extension and content) read one
    row at a time within `limits`, so that an import can check and stage each row as it comes instead
    of holding the file, its text and all its rows at once.

    `source` is the file's bytes or a seekable binary file, read from where it stands and left open.
    Iterated (once), it yields (row number, {column: cell}) for each row that fits, while `problems`
    gathers the located problems of the rows that do not (their cells, for the rejects file, in
    `unreadable`) and `columns` the columns seen so far: JSON's keys as they first appear, a column
    with no name once it has a value (a row has such a cell only where it holds text). Past the row,
    column, text or time limit the read stops with ImportRefused; cells and cases over their limits are
    all listed (their rows not yielded) and, like a file with no data rows or a column named twice,
    refused once the last row is read. `sha256` is then the digest of the bytes read.
    """

    def __init__(self, source: bytes | BinaryIO, name: str, limits: Limits = LIMITS):
        self.name, self.limits = name, limits
        self.columns: list[str] = []
        self.problems: list[Problem] = []
        self.unreadable: dict[int, dict[str, str]] = {}
        self.oversized: list[Problem] = []
        self.text = 0
        self.deadline = 0.0  # from the first byte read
        self._stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
        self._start = self._stream.tell()
        self._digest = _Digested(self._stream)

    @property
    def sha256(self) -> str:
        return self._digest.sha256.hexdigest()

    def __iter__(self) -> Iterator[tuple[int, dict[str, str]]]:
        self.deadline = time.monotonic() + self.limits.seconds
        count = 0
        for row in self._rows():
            count += 1
            paused = time.monotonic()
            yield row
            self.deadline += time.monotonic() - paused  # the limit is on reading, not on the caller's work
        if self.oversized:
            raise ImportRefused(self.oversized)
        if not count and not self.problems:
            raise ImportRefused([Problem(self.name, "has a header but no data rows")])
        duplicates = [c for i, c in enumerate(self.columns) if c in self.columns[:i]]
        if duplicates:
            raise ImportRefused([Problem(self.name, f"column '{c}' appears more than once in the header")
                                 for c in duplicates])

    def _rows(self) -> Iterator[tuple[int, dict[str, str]]]:
        name = self.name
        size = self._peek(lambda stream: stream.seek(0, io.SEEK_END)) - self._start
        check_file_size(size, name, self.limits)
        if self._peek(_blank):
            raise ImportRefused([Problem(name, "is empty; expected a header row and at least one case")])
        suffix = Path(name).suffix.lower()
        if suffix in (".xlsx", ".xlsm"):
            yield from _xlsx_rows(io.BufferedReader(self._digest).read(), self)
            return
        if suffix == ".xls":
            raise ImportRefused([Problem(name, "is an old Excel .xls workbook; save it as .xlsx or CSV")])
        encoding = _encoding(self._peek(lambda stream: stream.read(8192)), name)
        start = self._peek(lambda stream: _text_start(stream, encoding))
        if sum(ch.isprintable() or ch in "\r\n\t" for ch in start[:4096]) < 0.95 * len(start[:4096]):
            raise ImportRefused([Problem(name, "is not a text file (mostly unprintable characters)")])
        decoded = io.TextIOWrapper(io.BufferedReader(self._digest), encoding=encoding, newline="")
        first = _first_character(start)
        try:
            if suffix in (".jsonl", ".ndjson", ".json") or first in ("{", "["):
                yield from _json_rows(decoded, self, array=first == "[")
            else:
                records = _delimited_records(decoded, _delimiter(suffix, start), self)
                yield from _sheet_rows(records, self, _field_count_differs,
                                       "has only empty rows; expected a header row and at least one case")
        except UnicodeDecodeError:
            failure = self._peek(lambda stream: _decoding_failure(stream, encoding))
            if failure is None:  # it decodes now: the file changed while it was read
                raise
            raise ImportRefused([self._undecodable(encoding, *failure)]) from None

    def _peek(self, look: Callable[[BinaryIO], _T]) -> _T:
        """What `look` finds in the file from its start, which is then read again from there."""
        self._stream.seek(self._start)
        try:
            return look(self._stream)
        finally:
            self._stream.seek(self._start)

    def _undecodable(self, encoding: str, offset: int, line: int, exc: UnicodeDecodeError) -> Problem:
        if encoding == "utf-8-sig":
            return Problem(self.name, f"is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line "
                                      f"{line}); save it as UTF-8 (in Excel: 'CSV UTF-8')")
        why = "it starts with a UTF-16 byte-order mark" if encoding == "utf-16" else (
            "every other byte is zero, though it has no byte-order mark")
        return Problem(self.name, f"looks like UTF-16 text ({why}) but does not decode as UTF-16 at byte "
                                  f"{offset:,} ({exc.reason}); save it as UTF-8")

    # The limits, checked by the format readers below as they read.

    def stop(self, message: str, row: int | None = None) -> NoReturn:
        raise ImportRefused([*self.oversized, Problem(self.name, message, row)])

    def clock(self, row: int | None = None) -> None:
        if time.monotonic() > self.deadline:
            self.stop(f"took longer than the limit of {self.limits.seconds:g} seconds to read; "
                      "the rest was not read", row)

    def record(self, index: int, row: int | None = None) -> None:
        """Before the file's `index`th row (the header and blank rows included) is used."""
        if index > self.limits.rows:
            self.stop(f"is past the limit of {self.limits.rows:,} rows per file (the header and blank "
                      "rows count); split the file", row)
        self.clock(row)

    def header(self, names: Sequence[str]) -> None:
        if len(names) > self.limits.columns:
            self.stop(f"has {len(names):,} columns, more than the limit of {self.limits.columns:,}; "
                      "delete the columns the cases do not need")
        for name in names:
            self.column_name(name)

    def column_name(self, text: str, row: int | None = None) -> None:
        if len(text) > self.limits.cell_chars:
            self.oversized.append(Problem(self.name, f"has a column name {len(text):,} characters long, "
                                          f"more than the limit of {self.limits.cell_chars:,} per cell", row))

    def cells(self, row: int, names: Sequence[str], texts: Sequence[str]) -> bool:
        """Whether one data row fits the cell and case limits (each cell over its limit is listed,
        else a case over its); `names` name its columns, a cell beyond them is "column N"."""
        limits = self.limits
        if len(texts) > limits.columns:
            self.stop(f"has {len(texts):,} cells, more than the limit of {limits.columns:,} columns", row)
        fits = True
        total = 0
        for i, text in enumerate(texts):
            total += len(text)
            if len(text) > limits.cell_chars:
                column = names[i] if i < len(names) and names[i] else f"column {i + 1}"
                self.oversized.append(Problem(self.name, f"is {len(text):,} characters long, more than the "
                                              f"limit of {limits.cell_chars:,} per cell", row, column))
                fits = False
        if fits and total > limits.case_chars:
            self.oversized.append(Problem(self.name, f"holds {total:,} characters in its cells together, more "
                                          f"than the limit of {limits.case_chars:,} per case", row))
            fits = False
        self.text += total
        if self.text > limits.text_chars:
            self.stop(f"brings the file's text past the limit of {limits.text_chars:,} characters; "
                      "split the file", row)
        if len(self.oversized) >= MAX_LISTED_PROBLEMS:
            raise ImportRefused(self.oversized)
        return fits


class _CellTooLong(Exception):
    """A parser refused a cell before the row loop saw it; the loop locates it."""


class _Digested(io.RawIOBase):
    """A binary file as it is read, digested on the way: an import records the digest of what it read."""

    def __init__(self, stream: BinaryIO):
        self._stream, self.sha256 = stream, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._stream.read(len(buffer))
        buffer[:len(data)] = data
        self.sha256.update(data)
        return len(data)


def _blank(stream: BinaryIO) -> bool:
    """Whether a file holds nothing but white space, read only as far as its first other byte."""
    while block := stream.read(MB):
        if block.strip():
            return False
    return True


# ------------------------------------------------------------------------------------------ text

_SPACE = re.compile(r"\s*")
_SNIFF_CHARS = 65_536  # enough of the header to tell its delimiter
_FIRST_LINE = re.compile(rf"[\r\n]*([^\r\n]{{0,{_SNIFF_CHARS}}})")


def _encoding(head: bytes, name: str) -> str:
    """UTF-8 (with or without a byte-order mark) or UTF-16, from the file's first bytes. UTF-16 without
    a byte-order mark (SQL Server's `bcp -w`, some 'Unicode text' exports) is read too, not refused: its
    zero bytes on every other byte tell it from binary data, it must decode strictly, and the text must
    be printable, so a file misread as UTF-16 is refused, never stored."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    utf16 = _utf16_without_bom(head)
    if utf16:
        return utf16
    if b"\x00" in head or head.startswith(b"PK\x03\x04"):
        raise ImportRefused([Problem(
            name, "is not a text file (it holds binary data); expected CSV, TSV, JSON lines or .xlsx"
        )])
    return "utf-8-sig"


def _text_start(stream: BinaryIO, encoding: str) -> str:
    """The start of a text, decoded, to _SNIFF_CHARS characters past its leading white space (or all of
    it): what tells JSON from delimited text, the delimiter, and text from binary data. Bytes that do not
    decode are replaced here; reading the rows refuses them, located."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    text, space = "", 0
    while len(text) - space < _SNIFF_CHARS and (block := stream.read(64 * 1024)):
        text += decoder.decode(block)
        space = _SPACE.match(text, space).end()
    return text


def _decoding_failure(stream: BinaryIO, encoding: str) -> tuple[int, int, UnicodeDecodeError] | None:
    """Where a text that failed to decode first fails: the byte's offset, its line, and the error;
    decoded again a block at a time (UTF-8's byte-order mark decodes as a character, so offsets count it)."""
    decoder = codecs.getincrementaldecoder("utf-8" if encoding == "utf-8-sig" else encoding)()
    offset = lines = 0
    # The last block, b"", ends the text: a character cut short by the end fails there.
    for block in itertools.chain(iter(lambda: stream.read(MB), b""), [b""]):
        held = len(decoder.getstate()[0])  # the bytes of a character the block before ended inside
        try:
            decoder.decode(block, final=not block)
        except UnicodeDecodeError as exc:
            at = exc.start - held  # within the block; below 0 in the bytes held over
            return offset + at, lines + block[:max(at, 0)].count(b"\n") + 1, exc
        offset += len(block)
        lines += block.count(b"\n")
    return None


def _first_character(text: str) -> str:
    """The first character that is not white space, without copying the text as str.lstrip would."""
    at = _SPACE.match(text).end()
    return text[at:at + 1]


def _utf16_without_bom(sample: bytes) -> str | None:
    """The UTF-16 byte order of text whose zero bytes fall on every other byte (the high bytes of
    Latin letters, digits and delimiters); None for anything else."""
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    if odd >= max(1, len(sample) // 32) and odd > 16 * even:
        return "utf-16-le"
    if even >= max(1, len(sample) // 32) and even > 16 * odd:
        return "utf-16-be"
    return None


# ------------------------------------------------------------------- rows of cells: delimited text, sheets


def _cell_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return str(value)


def _sheet_rows(records: Iterator[Sequence[object]], reading: TableReader,
                misfit: Callable[[list[str], int], str | None], empty: str,
                trim_header: bool = False) -> Iterator[tuple[int, dict[str, str]]]:
    """The rows below the first row with any text, its header, numbered from 1, as text under the
    header's names, each checked against the limits as it is read; refused with `empty` when no row has
    text. Unnamed columns are called "column N"; blank rows are skipped; a row `misfit` finds not to fit
    the header's width is a located problem, its cells kept aside for the rejects file; shorter rows are
    padded. With `trim_header`, the header's trailing empty cells are no columns."""
    header: list[str] | None = None
    names: list[str] = []
    unnamed: list[str] = []
    index = number = 0
    while True:
        index += 1
        row = None if header is None else number + 1
        try:
            record = next(records)
        except StopIteration:
            break
        except _CellTooLong as exc:
            reading.stop(str(exc), row)
        reading.record(index, row)
        cells = [_cell_text(value) for value in record]
        if header is None:
            if any(cell.strip() for cell in cells):
                header = [cell.strip() for cell in cells]
                reading.header(header)
                while trim_header and header and not header[-1]:
                    header.pop()
                names = [title or f"column {i}" for i, title in enumerate(header, start=1)]
                unnamed = [name for name, title in zip(names, header) if not title]
                reading.columns = [name for name, title in zip(names, header) if title]
            continue
        number += 1
        if not reading.cells(number, header, cells) or not any(cell.strip() for cell in cells):
            continue
        reason = misfit(cells, len(header))
        if reason:
            reading.problems.append(Problem(reading.name, reason, row=number))
            reading.unreadable[number] = {f"field {i}": cell for i, cell in enumerate(cells, start=1)}
            continue
        values = dict(zip(names, cells + [""] * (len(header) - len(cells))))
        for name in unnamed:
            if not values[name].strip():  # trailing delimiters of spreadsheet exports make no column
                del values[name]
            elif name not in reading.columns:
                reading.columns = [n for n in names if n in reading.columns or n == name]
        yield number, values
    if header is None:
        raise ImportRefused([Problem(reading.name, empty)])


def _delimiter(suffix: str, start: str) -> str:
    """A tab in a .tsv or .tab file, else the delimiter the header line suggests."""
    if suffix in (".tsv", ".tab"):
        return "\t"
    header_line = _FIRST_LINE.match(start).group(1)
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


def _delimited_records(text: TextIO, delimiter: str, reading: TableReader) -> Iterator[list[str]]:
    reader = csv.reader(text, delimiter=delimiter, strict=True)
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if str(exc).startswith("field larger than field limit"):
                # Past the csv module's own limit nothing after it can be trusted (a quote may be open).
                raise _CellTooLong(f"has a cell longer than {csv.field_size_limit():,} characters, more than "
                                   f"the limit of {reading.limits.cell_chars:,} per cell") from None
            raise ImportRefused([Problem(
                reading.name, f"is not readable as delimited text: {exc} (near line {reader.line_num})"
            )]) from None
        yield record


def _value_beyond_header(record: list[str], width: int) -> str | None:
    """A sheet: rows run to the sheet's widest row, so only a value beyond the header is out of place."""
    extra = [i for i, cell in enumerate(record[width:], start=width + 1) if cell.strip()]
    if extra:
        return f"has a value in column {extra[0]}, beyond the header's {width} columns"
    return None


# ------------------------------------------------------------------------------------------ .xlsx

# What openpyxl and zipfile raise on a damaged workbook (SyntaxError: XML that does not parse;
# NotImplementedError: a zip member compressed with a method zipfile does not support).
_XLSX_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError, IndexError, TypeError,
                ValueError, SyntaxError, RuntimeError, NotImplementedError)
_ROOT_TAG = re.compile(rb"<(?![?!])([\w.-]+:)?([\w.-]+)")


def _xlsx_rows(data: bytes, reading: TableReader) -> Iterator[tuple[int, dict[str, str]]]:
    """The first sheet's rows. The workbook's bytes are held whole (a zip is read from its end; they are
    compressed), its sheet streamed by openpyxl's read-only mode."""
    import openpyxl

    _check_workbook(data, reading)
    try:
        book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True, keep_links=False)
    except _XLSX_ERRORS as exc:
        _unreadable_workbook(reading, exc)
    if not book.worksheets:
        raise ImportRefused([Problem(reading.name, "has no worksheet; expected a sheet of cases")])
    sheet = book.worksheets[0]
    if len(book.sheetnames) > 1:
        reading.problems.append(Problem(reading.name, f"has {len(book.sheetnames)} sheets; only the first, "
                                        f"'{sheet.title}', was read", severity="warning"))
    # Rows as the file has them: read-only mode otherwise pads every row, and the sheet, to the size
    # the file's <dimension> claims (A1:XFD1048576 is 17 billion cells).
    sheet.reset_dimensions()
    try:
        yield from _sheet_rows(_sheet_records(sheet, reading), reading, _value_beyond_header,
                               f"sheet '{sheet.title}' is empty; expected a header row and cases",
                               trim_header=True)
    finally:
        book.close()


def _unreadable_workbook(reading: TableReader, exc: Exception) -> NoReturn:
    cause = exc.__cause__ or exc
    raise ImportRefused([Problem(reading.name, f"is not a readable .xlsx workbook ({cause})")]) from None


def _sheet_records(sheet, reading: TableReader) -> Iterator[tuple]:
    """The sheet's rows of values, less their trailing empty cells."""
    rows = sheet.iter_rows(values_only=True)
    while True:
        try:
            record = next(rows)
        except StopIteration:
            return
        except _XLSX_ERRORS as exc:
            _unreadable_workbook(reading, exc)
        end = len(record)
        while end and record[end - 1] is None:
            end -= 1
        yield record[:end]


def _check_workbook(data: bytes, reading: TableReader) -> None:
    """Refuse, before openpyxl parses any of it, a workbook that would cost it memory or time without
    bound: too many parts, too large unzipped, or more XML elements than XML_* allow."""
    if data.count(b"PK\x01\x02") > XLSX_PARTS:  # zip directory entries, before ZipFile reads each
        reading.stop(f"holds more than {XLSX_PARTS:,} files; a spreadsheet program writes a few dozen")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except _XLSX_ERRORS as exc:
        _unreadable_workbook(reading, exc)
    parts = archive.infolist()
    unzipped = sum(part.file_size for part in parts)
    if unzipped > reading.limits.unzipped_mb * MB:
        reading.stop(f"unzips to {unzipped / MB:,.1f} MB, more than the limit of {reading.limits.unzipped_mb} MB "
                     "per workbook; save it as CSV, or split it")
    elements = opened_whole = 0
    for part in parts:
        try:  # zipfile unzips no part past its declared size, so `unzipped` bounds this loop too
            with archive.open(part) as stream:
                in_part, outside_rows = _xml_elements(stream, part.filename, reading)
        except _XLSX_ERRORS as exc:
            _unreadable_workbook(reading, exc)
        elements += in_part
        opened_whole += outside_rows
        if elements > XML_ELEMENTS:
            reading.stop(f"holds more than {XML_ELEMENTS:,} XML elements; save it as CSV, or split it")
        if opened_whole > XML_ELEMENTS_OPENED_WHOLE:
            reading.stop(f"holds more than {XML_ELEMENTS_OPENED_WHOLE:,} XML elements outside its worksheet "
                         f"rows ('{part.filename}' alone {outside_rows:,}): it is damaged or made to exhaust "
                         "the reader; save it again from Excel, or as CSV")


def _xml_elements(stream, part: str, reading: TableReader) -> tuple[int, int]:
    """(elements, elements outside <row>s) of one part, counted by its tags; a part that is not XML
    counts nothing. In a worksheet (where what follows the last row counts with it), a row of more
    than XML_ELEMENTS_PER_ROW elements, or more rows than the row limit, stops the read."""
    blocks = (block for block in _xml_blocks(stream) if block)
    first = next(blocks, b"")
    root = _ROOT_TAG.search(first) if first.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<") else None
    if root is None:
        return 0, 0
    # Rows written with another prefix than the root's are not found, and so count as parsed whole.
    row_tag = re.compile(b"<" + re.escape(root.group(1) or b"") + rb"row[\s/>]") if root.group(2) == b"worksheet" else None
    total = outside = rows = in_row = 0
    for block in itertools.chain([first], blocks):
        reading.clock()
        for i, piece in enumerate(row_tag.split(block) if row_tag else [block]):
            count = piece.count(b"<") - piece.count(b"</") - piece.count(b"<?") - piece.count(b"<!")
            total += count + (i > 0)
            if i:
                rows += 1
                in_row = 1 + count
            elif rows:
                in_row += count
            else:
                outside += count
            if in_row > XML_ELEMENTS_PER_ROW:
                reading.stop(f"has a row (<row> {rows:,} of '{part}') of more than {XML_ELEMENTS_PER_ROW:,} XML "
                             "elements, where Excel writes at most 16,384 cells: it is damaged or made to exhaust "
                             "the reader; save it again from Excel, or as CSV")
        if rows > reading.limits.rows:
            reading.stop(f"has more rows in '{part}' than the limit of {reading.limits.rows:,} rows per file; "
                         "split it")
    return total, outside


def _xml_blocks(stream) -> Iterator[bytes]:
    """A part's bytes, a megabyte at a time, each block cut before a '<' near its end so that no tag's
    name is split between blocks."""
    carry = b""
    while block := stream.read(MB):
        block = carry + block
        cut = block.rfind(b"<", max(0, len(block) - 64))
        cut = len(block) if cut < 0 else cut
        carry = block[cut:]
        yield block[:cut]
    yield carry


# ------------------------------------------------------------------------------------------ JSON

_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _json_rows(text: TextIO, reading: TableReader, array: bool) -> Iterator[tuple[int, dict[str, str]]]:
    """JSON lines (row N is line N), read a line at a time, or one JSON array of objects (row N is its
    Nth element), read whole: the json module parses no array in pieces."""
    name = reading.name
    known: set[str] = set()
    seen = False
    for number, item in _json_array(text.read(), reading) if array else _json_lines(text, reading):
        seen = True
        if isinstance(item, _NotJson):
            reading.problems.append(Problem(name, item.message, row=number))
            if reading.cells(number, ["line"], [item.line]):
                reading.unreadable[number] = {"line": item.line}
            continue
        if not isinstance(item, dict):
            reading.problems.append(Problem(name, f"is a JSON {type(item).__name__}, expected an object "
                                            "with one key per column", row=number))
            line = json.dumps(item, ensure_ascii=False)
            if reading.cells(number, ["line"], [line]):
                reading.unreadable[number] = {"line": line}
            continue
        for key in item:
            if key not in known:
                known.add(key)
                reading.columns.append(key)
                reading.column_name(key, number)
        if len(known) > reading.limits.columns:
            reading.stop(f"brings the file's different keys (its columns) to {len(known):,}, more than "
                         f"the limit of {reading.limits.columns:,}; delete the columns the cases do not need", number)
        values = {key: _json_cell(value) for key, value in item.items()}
        if reading.cells(number, list(values), list(values.values())):
            yield number, values
    if not seen:
        raise ImportRefused([Problem(name, "has no JSON objects; expected one case per line")])


def _json_cell(value: object) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value).lower() if isinstance(value, bool) else _cell_text(value)


@dataclass(frozen=True)
class _NotJson:
    """A line of JSON lines that does not parse: its problem, and the line for the rejects file."""

    message: str
    line: str


def _json_lines(text: TextIO, reading: TableReader) -> Iterator[tuple[int, object]]:
    """Each line's JSON value (or _NotJson), numbered by line, parsed only when reached."""
    for number, line in enumerate(text, start=1):
        reading.record(number, number)
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, _NotJson(f"is not valid JSON: {exc.msg} (character {exc.colno})", line)
        except RecursionError:
            yield number, _NotJson("is not valid JSON: nested too deeply", line)


def _json_array(text: str, reading: TableReader) -> Iterator[tuple[int, object]]:
    """The elements of one JSON array, numbered, each parsed only when reached."""
    decoder = json.JSONDecoder()
    at = _JSON_SPACE.match(text, _SPACE.match(text).end() + 1).end()
    number = 0
    try:
        if text.startswith("]", at):
            at += 1
        else:
            while True:
                number += 1
                reading.record(number, number)
                item, at = decoder.raw_decode(text, at)
                yield number, item
                at = _JSON_SPACE.match(text, at).end()
                if text.startswith(",", at):
                    at = _JSON_SPACE.match(text, at + 1).end()
                elif text.startswith("]", at):
                    at += 1
                    break
                else:
                    raise json.JSONDecodeError("Expecting ',' delimiter or ']'", text, at)
        if _JSON_SPACE.match(text, at).end() != len(text):
            raise json.JSONDecodeError("Extra data after the array", text, at)
    except json.JSONDecodeError as exc:
        raise ImportRefused([Problem(reading.name, f"is not valid JSON: {exc.msg} (line {exc.lineno})")]) from None
    except RecursionError:
        raise ImportRefused([Problem(reading.name, "is not valid JSON: nested too deeply", number)]) from None
