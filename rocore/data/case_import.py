"""Importing a department's case export (CSV, TSV, Excel, JSON lines) into the store, whole or not at all.

Exports from oncology information systems come with their own column names and messy values, so
reading, mapping, validating and writing are separate steps: the Data page previews each one, the
CLI runs them in a row. Every problem is located (file, row, column, value) and listed at once.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import re
import sqlite3
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from rocore.store.audit import audit
from rocore.store.db import NOW, transaction
from rocore.data.labels import (
    LabelError,
    icd10_billable_examples,
    icd10_status,
    normalise_icd10,
    normalise_modality,
)

REQUIRED_FIELDS = ("case_id", "diagnosis", "regimen", "modality", "icd10")
METADATA_FIELDS = ("site", "age", "sex", "laterality", "stage", "histology", "ecog")
FIELDS = REQUIRED_FIELDS + METADATA_FIELDS

# Header spellings seen in exports, compared after dropping case, spaces and punctuation.
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "case_id": ("caseid", "case", "id", "caseno", "casenumber", "recordid", "patientid", "studyid"),
    "diagnosis": ("diagnosis", "diagnosistext", "diagnosticdetails", "clinicaldetails",
                  "clinicalsummary", "dx", "dxtext", "history", "presentation"),
    "regimen": ("regimen", "treatmentregimen", "treatment", "prescription", "rx",
                "doseprescription", "dosefractionation", "radiotherapyregimen"),
    "modality": ("modality", "treatmentmodality", "radiationmodality", "radiationtype",
                 "beamtype", "particle"),
    "icd10": ("icd10", "icd10cm", "icd10code", "icd", "icdcode", "diagnosiscode", "dxcode"),
    "site": ("site", "diseasesite", "primarysite", "tumorsite", "tumoursite", "anatomicsite"),
    "age": ("age", "ageatdiagnosis", "ageyears", "patientage"),
    "sex": ("sex", "gender", "patientsex"),
    "laterality": ("laterality", "side"),
    "stage": ("stage", "tnm", "tnmstage", "clinicalstage", "ajccstage"),
    "histology": ("histology", "pathology", "histologictype"),
    "ecog": ("ecog", "ecogps", "performancestatus", "ps"),
}

MAX_LISTED_PROBLEMS = 100
_DELIMITERS = ",\t;|"
_SEX = {"f": "female", "female": "female", "woman": "female", "w": "female",
        "m": "male", "male": "male", "man": "male", "other": "other", "x": "other"}
_LATERALITY = {"l": "left", "lt": "left", "left": "left", "r": "right", "rt": "right",
               "right": "right", "b": "bilateral", "bilat": "bilateral", "bilateral": "bilateral"}


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
            text += f"'{_shorten(self.value)}' "
        return text + self.message


class ImportRefused(Exception):
    """The file was not imported; `problems` lists every reason (errors first)."""

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


@dataclass
class Validation:
    """Rows ready to store, and what is wrong with the others."""

    cases: list[dict]
    problems: list[Problem]
    rejected: list[tuple[int, dict[str, str], list[str]]]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


@dataclass(frozen=True)
class ImportResult:
    import_id: int
    n_rows: int
    n_inserted: int
    n_updated: int
    rejected: list[tuple[int, dict[str, str], list[str]]]
    warnings: list[Problem]


def _shorten(value: str, limit: int = 60) -> str:
    value = value.replace("\n", " ")
    return value if len(value) <= limit else value[: limit - 1] + "…"


def format_problems(problems: list[Problem], cap: int = MAX_LISTED_PROBLEMS) -> str:
    """Errors before warnings, one a line, at most `cap` lines and a count of the rest."""
    ordered = sorted(problems, key=lambda p: (p.severity != "error", p.row or 0))
    lines = [str(p) if p.severity == "error" else f"{p} (warning)" for p in ordered[:cap]]
    if len(ordered) > cap:
        lines.append(f"... and {len(ordered) - cap} more problems")
    return "\n".join(lines)


def _header_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


# ---------------------------------------------------------------------------------------- reading


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


def _sniff_delimiter(header_line: str) -> str:
    try:
        return csv.Sniffer().sniff(header_line, delimiters=_DELIMITERS).delimiter
    except csv.Error:
        counts = {d: header_line.count(d) for d in _DELIMITERS}
        best = max(counts, key=counts.get)
        return best if counts[best] else ","


def _read_delimited(text: str, name: str, delimiter: str | None) -> Table:
    header_line = text.lstrip("\r\n").splitlines()[0]
    delimiter = delimiter or _sniff_delimiter(header_line)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    problems: list[Problem] = []
    unreadable: dict[int, dict[str, str]] = {}
    try:
        records = list(reader)
    except csv.Error as exc:
        raise ImportRefused([Problem(name, f"is not readable as delimited text: {exc} (near line {reader.line_num})")]) from None
    while records and not any(cell.strip() for cell in records[0]):
        records.pop(0)
    if not records:
        raise ImportRefused([Problem(name, "has only empty rows; expected a header row and at least one case")])
    header = [cell.strip() for cell in records[0]]
    columns = [h or f"column {i}" for i, h in enumerate(header, start=1)]
    rows = []
    for number, record in enumerate(records[1:], start=1):
        if not any(cell.strip() for cell in record):
            continue
        if len(record) != len(header):
            problems.append(Problem(
                name, f"has {len(record)} fields, but the header has {len(header)}; "
                "check for an unquoted delimiter or a missing cell", row=number))
            unreadable[number] = {f"field {i}": cell for i, cell in enumerate(record, start=1)}
            continue
        rows.append((number, dict(zip(columns, record))))
    return Table(name, _drop_empty_unnamed(columns, header, rows), rows, problems, unreadable)


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


def _cell_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return str(value)


def _read_xlsx(data: bytes, name: str) -> Table:
    import openpyxl

    try:
        book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise ImportRefused([Problem(name, f"is not a readable .xlsx workbook ({exc})")]) from None
    sheet = book.worksheets[0]
    records = [[_cell_text(v) for v in row] for row in sheet.iter_rows(values_only=True)]
    book.close()
    while records and not any(c.strip() for c in records[0]):
        records.pop(0)
    if not records:
        raise ImportRefused([Problem(name, f"sheet '{sheet.title}' is empty; expected a header row and cases")])
    header = [c.strip() for c in records[0]]
    while header and not header[-1]:
        header.pop()
    columns = [h or f"column {i}" for i, h in enumerate(header, start=1)]
    problems = []
    if len(book.sheetnames) > 1:
        problems.append(Problem(name, f"has {len(book.sheetnames)} sheets; only the first, "
                                f"'{sheet.title}', was read", severity="warning"))
    rows = []
    unreadable: dict[int, dict[str, str]] = {}
    for number, record in enumerate(records[1:], start=1):
        if not any(c.strip() for c in record):
            continue
        extra = [i for i, c in enumerate(record[len(header):], start=len(header) + 1) if c.strip()]
        if extra:
            problems.append(Problem(name, f"has a value in column {extra[0]}, beyond the header's "
                                    f"{len(header)} columns", row=number))
            unreadable[number] = {f"field {i}": cell for i, cell in enumerate(record, start=1)}
            continue
        rows.append((number, dict(zip(columns, record + [""] * (len(header) - len(record))))))
    return Table(name, _drop_empty_unnamed(columns, header, rows), rows, problems, unreadable)


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


# ---------------------------------------------------------------------------------------- mapping


def guess_column_map(columns: list[str], explicit: dict[str, str] | None = None) -> dict[str, str]:
    """Field -> column: the explicit choices, then the first header that matches a known spelling."""
    mapping = dict(explicit or {})
    taken = set(mapping.values())
    for fld in FIELDS:
        if fld in mapping:
            continue
        for column in columns:
            if column not in taken and _header_key(column) in (_header_key(fld), *FIELD_ALIASES[fld]):
                mapping[fld] = column
                taken.add(column)
                break
    return mapping


def check_column_map(table: Table, explicit: dict[str, str]) -> list[Problem]:
    """Problems with a user's mapping: unknown fields, absent columns, required fields left unmapped."""
    problems = []
    for fld, column in explicit.items():
        if fld not in FIELDS:
            problems.append(Problem(table.name, f"cannot map unknown field '{fld}'; fields are {', '.join(FIELDS)}"))
        elif column not in table.columns:
            problems.append(Problem(table.name, f"has no column '{column}' to map to '{fld}' "
                                    f"(columns: {', '.join(table.columns)})"))
    mapping = guess_column_map(table.columns, {f: c for f, c in explicit.items() if f in FIELDS})
    for fld in REQUIRED_FIELDS:
        if fld not in mapping:
            problems.append(Problem(
                table.name,
                f"is missing the required column '{fld}' (columns found: {', '.join(table.columns)}); "
                f"rename it or map it with --map {fld}=COLUMN",
            ))
    return problems


# ------------------------------------------------------------------------------------- validation


def _parse_int(text: str, low: int, high: int) -> int | None:
    match = re.fullmatch(r"\D{0,10}?(\d+)(?:\.0+)?\s*\w{0,6}", text.strip())
    if match and low <= int(match.group(1)) <= high:
        return int(match.group(1))
    return None


def _validate_row(values: dict[str, str], mapping: dict[str, str]) -> tuple[dict, list[tuple[str, str | None, str, str]]]:
    """A case dict from one row, and its problems as (field, value, message, severity)."""
    problems: list[tuple[str, str | None, str, str]] = []
    cell = {fld: values.get(column, "").strip() for fld, column in mapping.items()}
    case: dict = {}
    for fld in REQUIRED_FIELDS:
        if not cell[fld]:
            problems.append((fld, None, "is empty; every case needs a value here", "error"))
    case["case_id"] = cell["case_id"]
    case["diagnosis"] = cell["diagnosis"].replace("\r\n", "\n")
    case["regimen"] = cell["regimen"].replace("\r\n", "\n")
    if cell["modality"]:
        try:
            case["modality"] = normalise_modality(cell["modality"])
        except LabelError as exc:
            problems.append(("modality", cell["modality"], str(exc), "error"))
    if cell["icd10"]:
        try:
            code = normalise_icd10(cell["icd10"])
        except LabelError as exc:
            problems.append(("icd10", cell["icd10"], str(exc), "error"))
        else:
            status = icd10_status(code)
            if status == "invalid":
                problems.append(("icd10", cell["icd10"], "is not a valid ICD-10-CM code", "error"))
            elif status == "category":
                problems.append(("icd10", cell["icd10"], "is a valid ICD-10-CM category but not a "
                                 f"billable code; give the full code (e.g. {', '.join(icd10_billable_examples(code))})",
                                 "warning"))
            case["icd10"] = code
    case["site"] = cell.get("site") or None
    case["stage"] = cell.get("stage") or None
    case["histology"] = cell.get("histology") or None
    for fld, low, high, what in (("age", 0, 120, "an age in years (0-120)"),
                                 ("ecog", 0, 5, "an ECOG performance status (0-5)")):
        case[fld] = None
        if cell.get(fld):
            case[fld] = _parse_int(cell[fld], low, high)
            if case[fld] is None:
                problems.append((fld, cell[fld], f"is not {what}", "error"))
    for fld, table, what in (("sex", _SEX, "female, male or other"),
                             ("laterality", _LATERALITY, "left, right or bilateral")):
        case[fld] = None
        if cell.get(fld):
            case[fld] = table.get(cell[fld].lower().rstrip("."))
            if case[fld] is None:
                problems.append((fld, cell[fld], f"is not one of {what}", "error"))
    mapped = set(mapping.values())
    case["metadata"] = {k: v for k, v in values.items() if k not in mapped and v.strip()}
    return case, problems


def validate(table: Table, column_map: dict[str, str] | None = None,
             stored_ids: set[str] = frozenset(), update: bool = False) -> Validation:
    """Check every row; nothing is written. `stored_ids` are case ids already in the store.
    A mapping that leaves a required field without a column refuses the whole file."""
    explicit = column_map or {}
    mapping_problems = check_column_map(table, explicit)
    if mapping_problems:
        raise ImportRefused(mapping_problems + table.problems)
    mapping = guess_column_map(table.columns, explicit)
    problems = list(table.problems)
    cases, rejected = [], []
    rejected.extend(
        (p.row, table.unreadable.get(p.row, {}), [p.message])
        for p in table.problems if p.severity == "error" and p.row is not None
    )
    first_row: dict[str, int] = {}
    for number, values in table.rows:
        case, row_problems = _validate_row(values, mapping)
        case_id = case["case_id"]
        if case_id and case_id in first_row:
            row_problems.append(("case_id", case_id, f"appears again (first at row {first_row[case_id]}); "
                                 "case ids must be unique", "error"))
        elif case_id and case_id in stored_ids and not update:
            row_problems.append(("case_id", case_id, "is already stored; use --update (or "
                                 "'Replace stored cases') to replace it", "error"))
        first_row.setdefault(case_id, number)
        row_problems.sort(key=lambda problem: FIELDS.index(problem[0]))
        for fld, value, message, severity in row_problems:
            problems.append(Problem(table.name, message, number, fld, value, severity))
        errors = [f"column '{f}': " + (f"'{_shorten(v)}' " if v is not None else "") + message
                  for f, v, message, s in row_problems if s == "error"]
        if errors:
            rejected.append((number, values, errors))
        else:
            case["source_row"] = number
            cases.append(case)
    return Validation(cases, problems, sorted(rejected, key=lambda r: r[0]))


# ----------------------------------------------------------------------------------------- writing


def stored_case_ids(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT case_id FROM cases")}


_UPSERT = f"""
INSERT INTO cases (case_id, diagnosis, regimen, modality, icd10, site, age, sex, laterality,
                   stage, histology, ecog, metadata, source_file, source_row, import_id)
VALUES (:case_id, :diagnosis, :regimen, :modality, :icd10, :site, :age, :sex, :laterality,
        :stage, :histology, :ecog, :metadata, :source_file, :source_row, :import_id)
ON CONFLICT (case_id) DO UPDATE SET
    diagnosis = excluded.diagnosis, regimen = excluded.regimen, modality = excluded.modality,
    icd10 = excluded.icd10, site = excluded.site, age = excluded.age, sex = excluded.sex,
    laterality = excluded.laterality, stage = excluded.stage, histology = excluded.histology,
    ecog = excluded.ecog, metadata = excluded.metadata, source_file = excluded.source_file,
    source_row = excluded.source_row, import_id = excluded.import_id,
    updated_at = {NOW}
"""


def import_cases(conn: sqlite3.Connection, data: bytes, name: str,
                 column_map: dict[str, str] | None = None, update: bool = False,
                 skip_invalid: bool = False, actor: str = "cli", client: str | None = None) -> ImportResult:
    """Validate and store a file's cases in one transaction; raise ImportRefused and store nothing
    if any row is invalid (with `skip_invalid`: store the valid rows, return the rejected ones)."""
    table = read_table(data, name)
    with transaction(conn):
        validation = validate(table, column_map, stored_case_ids(conn), update)
        if validation.errors and not skip_invalid:
            raise ImportRefused(validation.problems)
        if not validation.cases:
            raise ImportRefused(validation.problems + [Problem(name, "has no valid rows to import")])
        n_updated = len(stored_case_ids(conn) & {c["case_id"] for c in validation.cases})
        n_inserted = len(validation.cases) - n_updated
        n_rows = len(validation.cases) + len(validation.rejected)
        import_id = conn.execute(
            "INSERT INTO imports (source_file, sha256, column_map, n_rows, n_inserted, n_updated, n_rejected)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (name, hashlib.sha256(data).hexdigest(), json.dumps(guess_column_map(table.columns, column_map)),
             n_rows, n_inserted, n_updated, len(validation.rejected)),
        ).lastrowid
        conn.executemany(_UPSERT, [
            {**case, "metadata": json.dumps(case["metadata"], ensure_ascii=False),
             "source_file": name, "import_id": import_id}
            for case in validation.cases
        ])
        audit(conn, actor, "import", "imports", import_id, {"file": name, "inserted": n_inserted,
                                                           "updated": n_updated, "rejected": len(validation.rejected)},
              client)
    return ImportResult(import_id, n_rows, n_inserted, n_updated, validation.rejected, validation.warnings)


def rejected_rows_csv(rejected: list[tuple[int, dict[str, str], list[str]]]) -> str:
    """The rejected rows with their reasons, as CSV text for a file beside the input."""
    columns: list[str] = []
    for _, values, _ in rejected:
        columns.extend(c for c in values if c not in columns)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["row", "reasons", *columns])
    for number, values, reasons in rejected:
        writer.writerow([number, "; ".join(reasons), *(values.get(c, "") for c in columns)])
    return out.getvalue()
