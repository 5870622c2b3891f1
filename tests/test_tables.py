"""Reading a user's file into a table: each format's quirks, and every refusal located in one clear line."""

import csv
import html
import io
import json
import re
import struct
import time
import tracemalloc
import zipfile
from collections.abc import Callable

import openpyxl
import pytest

from conftest import HEADER, csv_bytes, row
from rocore.data.tables import (LIMITS, MB, ImportRefused, Limits, TableReader, neutralise, preview_table,
                                read_table)

FIELDS = HEADER.split(",")
CASE = ["P1", "d", "r", "photon", "C61"]
SHEET = "xl/worksheets/sheet1.xml"
FORMATS = ["csv", "tsv", "xlsx", "jsonl", "json"]


def xlsx_bytes(rows, extra_sheet: bool = False) -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    for r in rows:
        sheet.append(r)
    if extra_sheet:
        book.create_sheet("notes").append(["ignore me"])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def problems(data: bytes, name: str) -> list[str]:
    return [str(p) for p in read_table(data, name).problems]


class ObservedFile(io.FileIO):
    """A file on disk, opened as the command line opens it, that reports each read made of it."""

    def __init__(self, path, on_read=lambda data: None):
        super().__init__(path, "rb")
        self.on_read = on_read

    def read(self, size=-1):
        data = super().read(size)
        self.on_read(data)
        return data


def test_read_table_keeps_data_row_numbers_with_quoted_newlines():
    table = read_table(csv_bytes(row("P1", diagnosis="two\nlines"), row("P2")), "f.csv")
    assert [n for n, _ in table.rows] == [1, 2]


def test_a_sheet_and_its_csv_export_read_alike():
    cells = [[None] * 6, HEADER.split(",") + [None], ["P1", "d", "r", "photon", "C61", None], [None] * 6,
             ["P2", "d", "r", "proton", "C71.1", None]]
    csv_text = "\n".join(",".join("" if c is None else c for c in r) for r in cells) + "\n"
    sheet, text = read_table(xlsx_bytes(cells), "cases.xlsx"), read_table(csv_text.encode(), "cases.csv")
    assert (sheet.columns, sheet.rows, sheet.problems) == (text.columns, text.rows, text.problems)
    assert sheet.columns == HEADER.split(",") and [n for n, _ in sheet.rows] == [1, 3]


def test_ragged_rows():
    assert problems(csv_bytes(row("P1"), "P2,only,three", row("P3") + ",extra"), "cases.csv") == [
        "cases.csv: row 2: has 3 fields, but the header has 5; check for an unquoted delimiter or a missing cell",
        "cases.csv: row 3: has 6 fields, but the header has 5; check for an unquoted delimiter or a missing cell"]


@pytest.mark.parametrize("data, name, message", [
    (b"", "cases.csv", "cases.csv: is empty; expected a header row and at least one case"),
    (b"  \r\n\n", "cases.csv", "cases.csv: is empty; expected a header row and at least one case"),
    (b",,,\r\n,,,\r\n", "cases.csv", "cases.csv: has only empty rows; expected a header row and at least one case"),
    (b"case_id,diagnosis,regimen,modality,icd10\r\n", "cases.csv", "cases.csv: has a header but no data rows"),
    (bytes(range(256)) * 4, "cases.csv", "cases.csv: is not a text file (it holds binary data); expected CSV, "
     "TSV, JSON lines or .xlsx"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "scan.png", "scan.png: is not a text file"),
    ("case_id,diagnosis\nP1,caf\xe9".encode("latin-1"), "cases.csv", "cases.csv: is not UTF-8 text (byte 0xe9 on "
     "line 2); save it as UTF-8"),
    (b"PK\x03\x04garbage", "cases.xlsx", "cases.xlsx: is not a readable .xlsx workbook"),
    (b"\xd0\xcf\x11\xe0 old", "cases.xls", "cases.xls: is an old Excel .xls workbook; save it as .xlsx or CSV"),
    (b'case_id,diagnosis\n"P1,unterminated', "cases.csv", "cases.csv: is not readable as delimited text"),
    (b"[1, 2", "cases.json", "cases.json: is not valid JSON"),
])
def test_unreadable_files_are_refused_with_one_clear_line(data, name, message):
    with pytest.raises(ImportRefused) as info:
        read_table(data, name)
    errors = [str(p) for p in info.value.errors]
    assert errors[0].startswith(message), errors


def test_bad_json_lines_are_located_by_line():
    good = json.dumps({"case_id": "J1", "diagnosis": "d", "regimen": "r", "modality": "photon", "icd10": "C61"})
    assert problems(f"{good}\n\n{{not json\n[1, 2]\n".encode(), "cases.jsonl") == [
        "cases.jsonl: row 3: is not valid JSON: Expecting property name enclosed in double quotes (character 2)",
        "cases.jsonl: row 4: is a JSON list, expected an object with one key per column"]


def test_xlsx_cells_beyond_the_header():
    data = xlsx_bytes([["case_id", "diagnosis", "regimen", "modality", "icd10"],
                       ["X1", "d", "r", "photon", "C61", "stray"]])
    assert problems(data, "cases.xlsx") == [
        "cases.xlsx: row 1: has a value in column 6, beyond the header's 5 columns"]


# ------------------------------------------------------------------------- one set of limits, every format


def file_in(fmt: str, header: list[str], *rows: list[str]) -> tuple[bytes, str]:
    """The same header and rows as a file of one format (JSON: one object a row), named cases.FORMAT."""
    name = f"cases.{fmt}"
    if fmt == "xlsx":
        return xlsx_as_written([header, *rows]), name
    if fmt in ("jsonl", "json"):
        objects = [json.dumps(dict(zip(header, r))) for r in rows]
        return ("\n".join(objects) if fmt == "jsonl" else "[" + ",\n".join(objects) + "]").encode(), name
    out = io.StringIO()
    csv.writer(out, delimiter="," if fmt == "csv" else "\t", lineterminator="\n").writerows([header, *rows])
    return out.getvalue().encode(), name


def xlsx_as_written(rows: list[list[str]]) -> bytes:
    """A workbook of these text cells, written as they are (openpyxl would cut a cell at Excel's 32,767
    characters; a file made some other way need not)."""
    cells = "".join("<row>" + "".join(f'<c t="inlineStr"><is><t>{html.escape(v)}</t></is></c>' for v in r)
                    + "</row>" for r in rows).encode()
    return patched(xlsx_bytes([["x"]]), SHEET, lambda xml: re.sub(
        rb"<dimension[^>]*>|<sheetData>.*</sheetData>",
        lambda m: b"<sheetData>" + cells + b"</sheetData>" if m.group().startswith(b"<sheetData") else b"", xml))


def measured(read: Callable[[], object]) -> tuple[object, float, float]:
    """What `read` returns or raises, the seconds it took, and the peak memory (MB) it used in a
    second run under tracemalloc (which slows it)."""
    def outcome():
        try:
            return read()
        except ImportRefused as exc:
            return exc

    start = time.perf_counter()
    result = outcome()
    seconds = time.perf_counter() - start
    tracemalloc.start()
    try:
        outcome()
        peak = tracemalloc.get_traced_memory()[1] / MB
    finally:
        tracemalloc.stop()
    return result, seconds, peak


def refusal(data: bytes, name: str, limits: Limits = LIMITS) -> tuple[list[str], float, float]:
    """The errors a file is refused with, the seconds the refusal took and the peak memory (MB) it used."""
    result, seconds, peak = measured(lambda: read_table(data, name, limits))
    assert isinstance(result, ImportRefused), f"{name} was not refused"
    return [str(p) for p in result.errors], seconds, peak


@pytest.mark.parametrize("fmt", FORMATS)
def test_one_limit_per_cell_and_per_case_in_every_format(fmt):
    header = [*FIELDS, "notes"]
    data, name = file_in(fmt, header, ["P1", "x" * (LIMITS.cell_chars + 1), "r", "photon", "C61", ""],
                         ["P2", *["y" * 45_000] * 5], [*CASE, ""])
    assert refusal(data, name)[0] == [
        f"{name}: row 1: column 'diagnosis': is 50,001 characters long, more than the limit of 50,000 per cell",
        f"{name}: row 2: holds 225,002 characters in its cells together, more than the limit of 200,000 per case"]
    fits, name = file_in(fmt, header, ["P1", "x" * LIMITS.cell_chars, *["y" * 45_000] * 3, "z" * 14_998])
    assert len(read_table(fits, name).rows) == 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_one_limit_on_columns_in_every_format(fmt):
    header = FIELDS + [f"extra {i}" for i in range(LIMITS.columns - len(FIELDS) + 1)]
    data, name = file_in(fmt, header, CASE + ["x"] * (len(header) - len(CASE)))
    expected = (f"{name}: row 1: brings the file's different keys (its columns) to 51, more than the limit of 50"
                if fmt.startswith("json") else f"{name}: has 51 columns, more than the limit of 50")
    assert refusal(data, name)[0] == [expected + "; delete the columns the cases do not need"]
    fits, name = file_in(fmt, header[:-1], CASE + ["x"] * (len(header) - 1 - len(CASE)))
    assert len(read_table(fits, name).columns) == LIMITS.columns


def case_after_blank_rows(fmt: str, blank: int) -> tuple[bytes, str]:
    """A file whose one case comes after `blank` blank rows (in a JSON array: empty objects)."""
    if fmt == "xlsx":
        book = openpyxl.Workbook()
        book.active.append(FIELDS)
        for column, value in enumerate(CASE, start=1):
            book.active.cell(row=blank + 2, column=column, value=value)
        out = io.BytesIO()
        book.save(out)
        return out.getvalue(), "cases.xlsx"
    if fmt == "json":
        return ("[" + "{}," * blank + json.dumps(dict(zip(FIELDS, CASE))) + "]").encode(), "cases.json"
    if fmt == "jsonl":
        return ("\n" * blank + json.dumps(dict(zip(FIELDS, CASE))) + "\n").encode(), "cases.jsonl"
    sep = "," if fmt == "csv" else "\t"
    return (sep.join(FIELDS) + "\n" * (blank + 1) + sep.join(CASE) + "\n").encode(), f"cases.{fmt}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_one_limit_on_rows_in_every_format_the_header_and_blank_rows_included(fmt):
    above = LIMITS.rows - (1 if fmt.startswith("json") else 2)  # the case is the file's last allowed row
    table = read_table(*case_after_blank_rows(fmt, above))
    assert table.rows[-1][0] == above + 1
    data, name = case_after_blank_rows(fmt, above + 1)
    with pytest.raises(ImportRefused) as info:
        read_table(data, name)
    assert [str(p) for p in info.value.errors] == [
        f"{name}: row {above + 2}: is past the limit of 100,000 rows per file (the header and blank rows count); "
        "split the file"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_read_past_the_time_limit_stops(fmt):
    data, name = file_in(fmt, FIELDS, CASE)
    errors = refusal(data, name, Limits(seconds=0))[0]
    where = "row 1: " if fmt.startswith("json") else ""  # JSON rows are counted from the first line
    assert errors == [f"{name}: {where}took longer than the limit of 0 seconds to read; the rest was not read"]


def test_the_text_of_the_whole_file_is_limited():
    data = csv_bytes(row("P1"), row("P2"))
    assert refusal(data, "cases.csv", Limits(text_chars=100))[0] == [
        "cases.csv: row 2: brings the file's text past the limit of 100 characters; split the file"]


def test_a_file_over_the_size_limit_is_refused_unread():
    errors, seconds, peak = refusal(b"x" * (LIMITS.file_mb * MB + 1), "cases.csv")
    assert errors == ["cases.csv: is 52,428,801 bytes, more than the limit of 50 MB (52,428,800 bytes) per file; "
                      "split it"]
    assert seconds < 1 and peak < 1


def test_a_csv_cell_past_the_csv_modules_own_limit_names_ours():
    data = csv_bytes(row("P1"), row("P2", diagnosis="x" * 140_000))
    assert refusal(data, "cases.csv")[0] == [
        "cases.csv: row 2: has a cell longer than 131,072 characters, more than the limit of 50,000 per cell"]


# -------------------------------------------------------------------- workbooks made to exhaust the reader


def patched(data: bytes, part: str, change) -> bytes:
    """An .xlsx with one part rewritten (or added), as a hand-made or hostile file would differ."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            body = source.read(info.filename)
            target.writestr(info.filename, change(body) if info.filename == part else body)
        if part not in source.namelist():
            target.writestr(part, change(b""))
    return out.getvalue()


def with_rows(xml: bytes) -> Callable[[bytes], bytes]:
    return lambda sheet: sheet.replace(b"</sheetData>", xml + b"</sheetData>")


def test_a_sheet_whose_dimension_claims_every_cell_is_read_as_the_rows_are():
    claims_all = patched(xlsx_bytes([FIELDS, CASE]), SHEET,
                         lambda xml: xml.replace(b'ref="A1:E2"', b'ref="A1:XFD1048576"'))
    far_row = patched(claims_all, SHEET, with_rows(b'<row r="2000"><c r="A2000" t="inlineStr"><is><t>P2</t></is></c></row>'))
    table, seconds, peak = measured(lambda: read_table(far_row, "cases.xlsx"))
    assert [(n, v["case_id"]) for n, v in table.rows] == [(1, "P1"), (1999, "P2")]
    assert seconds < 5 and peak < 20, (seconds, peak)
    last_row = patched(claims_all, SHEET, with_rows(b'<row r="1048576"><c r="A1048576"><v>1</v></c></row>'))
    errors, seconds, peak = refusal(last_row, "cases.xlsx")
    assert errors[0].startswith("cases.xlsx: row 100000: is past the limit of 100,000 rows per file")
    assert seconds < 5 and peak < 20, (seconds, peak)


def test_rows_past_what_the_dimension_claims_are_read_too():
    data = patched(xlsx_bytes([FIELDS, CASE, ["P2", "d", "r", "photon", "C61"]]), SHEET,
                   lambda xml: xml.replace(b'ref="A1:E3"', b'ref="A1:E2"'))
    assert [values["case_id"] for _, values in read_table(data, "cases.xlsx").rows] == ["P1", "P2"]


@pytest.mark.parametrize("part, change, message", [
    (SHEET, with_rows(b"<row>" + b"<c/>" * 65_536 + b"</row>"),
     "has a row (<row> 3 of 'xl/worksheets/sheet1.xml') of more than 65,536 XML elements, where Excel writes at "
     "most 16,384 cells"),
    ("xl/styles.xml", lambda xml: xml.replace(b"</cellXfs>", b"<xf/>" * 500_000 + b"</cellXfs>"),
     "holds more than 500,000 XML elements outside its worksheet rows ('xl/styles.xml' alone 500,"),
    (SHEET, with_rows(b"<row/>" * 99_999),
     "has more rows in 'xl/worksheets/sheet1.xml' than the limit of 100,000 rows per file; split it"),
    (SHEET, with_rows((b"<row>" + b"<c/>" * 500 + b"</row>") * 10_000), "holds more than 5,000,000 XML elements"),
    ("xl/many.xml", lambda _: b"<a/>" * 500_001,
     "holds more than 500,000 XML elements outside its worksheet rows ('xl/many.xml' alone 500,001)"),
])
def test_workbooks_made_to_exhaust_the_reader_are_refused_before_it_parses_them(part, change, message):
    data = patched(xlsx_bytes([FIELDS, CASE]), part, change)
    assert len(data) < 50_000
    errors, seconds, peak = refusal(data, "cases.xlsx")
    assert errors[0].startswith(f"cases.xlsx: {message}"), errors
    assert seconds < 5 and peak < 20, (seconds, peak)


def test_a_workbook_that_unzips_past_the_limit_is_refused_before_it_is_unzipped():
    data = patched(xlsx_bytes([FIELDS, CASE]), SHEET, with_rows(b"<row><c><v>1</v></c></row>" * 80_000))
    errors, seconds, peak = refusal(data, "cases.xlsx", Limits(unzipped_mb=1))
    assert errors == ["cases.xlsx: unzips to 2.0 MB, more than the limit of 1 MB per workbook; save it as CSV, or "
                      "split it"]
    assert seconds < 1 and peak < 1, (seconds, peak)


def test_a_workbook_that_understates_its_unzipped_size_is_unzipped_no_further():
    data = bytearray(patched(xlsx_bytes([FIELDS, CASE]), SHEET, with_rows(b"<row/>" * 500_000)))
    local = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo(SHEET).header_offset
    central = data.index(SHEET.encode(), data.index(b"PK\x01\x02")) - 46
    for header, offset in ((local, 22), (central, 24)):
        struct.pack_into("<I", data, header + offset, 1_000)  # the sheet's unzipped size: 1,000 bytes
    assert zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo(SHEET).file_size == 1_000
    errors, seconds, peak = refusal(bytes(data), "cases.xlsx")
    assert errors[0].startswith("cases.xlsx: is not a readable .xlsx workbook (Bad CRC-32"), errors
    assert seconds < 1 and peak < 5, (seconds, peak)


def test_a_workbook_of_too_many_files_is_refused():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for i in range(1_001):
            archive.writestr(f"part{i}.xml", b"")
    assert refusal(out.getvalue(), "cases.xlsx")[0] == [
        "cases.xlsx: holds more than 1,000 files; a spreadsheet program writes a few dozen"]


def test_a_shared_text_repeated_in_every_row_counts_each_time():
    """An .xlsx names a shared string by number, so a small file can repeat a long text in every row."""
    strings = ('<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><si><t>'
               + "x" * 49_000 + "</t></si></sst>").encode()
    cells = b"".join(b'<c t="s"><v>0</v></c>' for _ in range(4))
    data = patched(xlsx_bytes([FIELDS, CASE]), SHEET, with_rows((b"<row><c><v>1</v></c>" + cells + b"</row>") * 260))
    data = patched(data, "xl/sharedStrings.xml", lambda _: strings)
    data = patched(data, "[Content_Types].xml", lambda xml: xml.replace(
        b"</Types>", b'<Override PartName="/xl/sharedStrings.xml" ContentType="application/vnd.openxmlformats-'
                     b'officedocument.spreadsheetml.sharedStrings+xml"/></Types>'))
    data = patched(data, "xl/_rels/workbook.xml.rels", lambda xml: xml.replace(
        b"</Relationships>", b'<Relationship Id="rIdS" Target="sharedStrings.xml" Type="http://schemas.'
                             b'openxmlformats.org/officeDocument/2006/relationships/sharedStrings"/></Relationships>'))
    assert len(data) < 20_000
    errors, seconds, peak = refusal(data, "cases.xlsx")
    assert errors == ["cases.xlsx: row 257: brings the file's text past the limit of 50,000,000 characters; "
                      "split the file"]
    assert seconds < 5 and peak < 20, (seconds, peak)


# ------------------------------------------------------------------------------- read a row at a time


def test_rows_come_as_the_file_is_read_not_once_it_is_read_whole(tmp_path):
    path = tmp_path / "cases.csv"
    path.write_bytes(csv_bytes(*[row(f"P{i}", diagnosis="x" * 200) for i in range(20_000)]))
    read: list[int] = []
    with ObservedFile(path, lambda data: read.append(len(data))) as source:
        rows = iter(TableReader(source, "cases.csv"))
        assert next(rows)[0] == 1
        assert sum(read) < path.stat().st_size / 2
        assert sum(1 for _ in rows) == 19_999


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le"])
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_file_read_in_blocks_reads_as_written(tmp_path, encoding, fmt):
    """Blocks end inside characters, quoted cells, line endings and JSON lines; none of that shows."""
    cases = [[f"P{i}", f"{'é' * (i % 5)}café,\r\n☢ \"{i}\"", "r", "photon", "C61"] for i in range(3_000)]
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out, lineterminator="\r\n").writerows([FIELDS, *cases])
        text = out.getvalue()
    else:
        text = "\r\n".join(json.dumps(dict(zip(FIELDS, case)), ensure_ascii=False) for case in cases)
    path = tmp_path / f"cases.{fmt}"
    path.write_bytes(text.encode(encoding))
    with ObservedFile(path) as source:
        table = read_table(source, path.name)
    assert (table.columns, table.problems) == (FIELDS, [])
    assert [(number, list(values.values())) for number, values in table.rows] == [
        (number, case) for number, case in enumerate(cases, start=1)]


@pytest.mark.parametrize("encoding, bad, message", [
    ("utf-8", b"\xe9", "is not UTF-8 text (byte 0xe9 on line 60002); save it as UTF-8 (in Excel: "
                       "'CSV UTF-8')"),
    ("utf-16-le", b"\x00\xdc", "looks like UTF-16 text (every other byte is zero, though it has no "
                               "byte-order mark) but does not decode as UTF-16 at byte {offset:,} (illegal "
                               "encoding); save it as UTF-8"),
])
def test_a_byte_that_does_not_decode_far_into_a_file_is_located(tmp_path, encoding, bad, message):
    good = csv_bytes(*[row(f"P{i}") for i in range(60_000)]).decode().encode(encoding)
    path = tmp_path / "cases.csv"
    path.write_bytes(good + bad + "x,y\n".encode(encoding))
    with ObservedFile(path) as source, pytest.raises(ImportRefused) as info:
        read_table(source, "cases.csv")
    assert [str(p) for p in info.value.errors] == [f"cases.csv: {message.format(offset=len(good))}"]


# ------------------------------------------------------------------------------------------ UTF-16


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_byte_order_mark_reads_as_utf8_does(encoding):
    text = "case_id\tdiagnosis\tregimen\nU1\tGlioblastoma, 58 y, café\t60 Gy/30\n"
    assert read_table(text.encode(encoding), "cases.txt").rows == read_table(text.encode(), "cases.txt").rows


@pytest.mark.parametrize("data, message", [
    ("case_id,diagnosis\nU1,GBM\n".encode("utf-16-le") + b"x",
     "looks like UTF-16 text (every other byte is zero, though it has no byte-order mark) but does not decode "
     "as UTF-16 at byte 50 (truncated data); save it as UTF-8"),
    ("case_id,diagnosis\nU1,".encode("utf-16") + b"\x00\xd8,\x00",
     "looks like UTF-16 text (it starts with a UTF-16 byte-order mark) but does not decode as UTF-16 at byte "
     "44 (illegal UTF-16 surrogate); save it as UTF-8"),
])
def test_text_that_looks_like_utf16_but_is_not_says_so(data, message):
    assert refusal(data, "cases.csv")[0] == [f"cases.csv: {message}"]


# -------------------------------------------------------------------------------- CSV that is opened


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-", "-5", "@SUM(A1)", "\t=1", "\r=1", "-45 Gy"])
def test_cells_a_spreadsheet_would_run_are_neutralised(cell):
    assert neutralise(cell) == "'" + cell


@pytest.mark.parametrize("value", ["60 Gy in 20 fractions", "photon", "", "C61", -1.0, 3, None])
def test_other_cells_are_kept(value):
    assert neutralise(value) == value


def test_a_preview_keeps_only_the_first_rows_but_learns_every_column_and_counts_the_rows():
    lines = [json.dumps({"case_id": f"P{i}", "diagnosis": f"case {i}"}) for i in range(40)]
    lines[30] = json.dumps({"case_id": "P30", "diagnosis": "case 30", "site": "prostate"})  # a key seen late
    shown = preview_table(("\n".join(lines) + "\n").encode(), "cases.jsonl", first=3)
    assert shown.n_rows == 40 and shown.columns == ["case_id", "diagnosis", "site"]
    assert shown.first_rows == [{"case_id": f"P{i}", "diagnosis": f"case {i}"} for i in range(3)]
    with pytest.raises(ImportRefused, match="is empty"):
        preview_table(b"", "empty.csv")
