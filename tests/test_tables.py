"""Reading a user's file into a table: each format's quirks, and every refusal located in one clear line."""

import io
import json

import openpyxl
import pytest

from conftest import HEADER, csv_bytes, row
from rocore.data.tables import ImportRefused, read_table


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
