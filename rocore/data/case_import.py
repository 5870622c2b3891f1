"""Importing a department's case export (CSV, TSV, Excel, JSON lines) into the store, whole or not at all.

Exports from oncology information systems come with their own column names and messy values, so
reading (rocore.data.tables), mapping, validating and writing are separate steps: the Data page
previews each one, the CLI runs them in a row. Every problem is located (file, row, column, value) and listed at once.

An import checks each row as it is read and stages it in a temporary table, and takes the store's
write lock only for the short transaction that moves the staged rows in: reviewers' ratings wait on
that lock, and a large file takes seconds to read and check.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from rocore.data.labels import (
    LabelError,
    icd10_billable_examples,
    icd10_status,
    normalise_icd10,
    normalise_modality,
)
from rocore.data.tables import ImportRefused, Problem, Table, TableReader, neutralise, shorten
from rocore.store.audit import audit
from rocore.store.db import NOW, transaction

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

_SEX = {"f": "female", "female": "female", "woman": "female", "w": "female",
        "m": "male", "male": "male", "man": "male", "other": "other", "x": "other"}
_LATERALITY = {"l": "left", "lt": "left", "left": "left", "r": "right", "rt": "right",
               "right": "right", "b": "bilateral", "bilat": "bilateral", "bilateral": "bilateral"}


@dataclass(frozen=True)
class ImportOptions:
    """How the caller's user sets the import's options, for the messages that point to them: the same
    problem is fixed with a flag on the command line and with a control on the Data page."""

    map_column: str = "map it with --map {field}=COLUMN"  # {field}: the unmapped field
    update: str = "use --update"


CLI_OPTIONS = ImportOptions()


@dataclass
class Validation:
    """How many rows are ready to store, what is wrong with the others, and the column each field
    was taken from."""

    n_valid: int = 0
    problems: list[Problem] = field(default_factory=list)
    rejected: list[tuple[int, dict[str, str], list[str]]] = field(default_factory=list)
    column_map: dict[str, str] = field(default_factory=dict)

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


def _header_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


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


def check_column_map(table: Table | TableReader, explicit: dict[str, str],
                     how: ImportOptions = CLI_OPTIONS) -> list[Problem]:
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
                f"rename it or {how.map_column.format(field=fld)}",
            ))
    return problems


# ------------------------------------------------------------------------------------- validation


def _parse_int(text: str, low: int, high: int) -> int | None:
    match = re.fullmatch(r"\D{0,10}?(\d+)(?:\.0+)?\s*\w{0,6}", text.strip())
    if match and low <= int(match.group(1)) <= high:
        return int(match.group(1))
    return None


def _already_stored(how: ImportOptions) -> str:
    return f"is already stored; {how.update} to replace it"


def _validate_row(values: dict[str, str], mapping: dict[str, str]) -> tuple[dict, list[tuple[str, str | None, str, str]]]:
    """A case dict from one row (its other columns as JSON text in `metadata`), and its problems as
    (field, value, message, severity). A field without a column is empty."""
    problems: list[tuple[str, str | None, str, str]] = []
    cell = {fld: values.get(mapping[fld], "").strip() if fld in mapping else "" for fld in FIELDS}
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
    case["site"] = cell["site"] or None
    case["stage"] = cell["stage"] or None
    case["histology"] = cell["histology"] or None
    for fld, low, high, what in (("age", 0, 120, "an age in years (0-120)"),
                                 ("ecog", 0, 5, "an ECOG performance status (0-5)")):
        case[fld] = None
        if cell[fld]:
            case[fld] = _parse_int(cell[fld], low, high)
            if case[fld] is None:
                problems.append((fld, cell[fld], f"is not {what}", "error"))
    for fld, table, what in (("sex", _SEX, "female, male or other"),
                             ("laterality", _LATERALITY, "left, right or bilateral")):
        case[fld] = None
        if cell[fld]:
            case[fld] = table.get(cell[fld].lower().rstrip("."))
            if case[fld] is None:
                problems.append((fld, cell[fld], f"is not one of {what}", "error"))
    mapped = set(mapping.values())
    case["metadata"] = json.dumps({k: v for k, v in values.items() if k not in mapped and v.strip()},
                                  ensure_ascii=False)
    return case, problems


def validate(rows: Table | TableReader, column_map: dict[str, str] | None = None,
             stored_ids: set[str] = frozenset(), update: bool = False,
             how: ImportOptions = CLI_OPTIONS) -> Validation:
    """Check every row (of a Table, or of a TableReader as it reads); nothing is written. `stored_ids`
    are case ids already in the store. A mapping that leaves a required field without a column
    refuses the whole file."""
    validation = Validation()
    for _ in _valid_cases(rows, column_map, stored_ids, update, how, validation):
        pass
    return validation


def _valid_cases(rows: Table | TableReader, column_map: dict[str, str] | None, stored_ids: set[str],
                 update: bool, how: ImportOptions, validation: Validation) -> Iterator[dict]:
    """The case of each valid row, as the rows are read; what is wrong with the others, and the column
    map, go into `validation` once the last row is read.

    A row is checked under the columns known when it is read. JSON's keys appear as they are read, but
    a later key only maps a field that had no column, and that the rows before it lack: so every row
    is checked as under the final columns, which alone decide whether the mapping is complete."""
    explicit = {fld: column for fld, column in (column_map or {}).items() if fld in FIELDS}
    mapping: dict[str, str] = {}
    known = -1
    first_row: dict[str, int] = {}
    problems, rejected = [], []
    for number, values in rows:
        if len(rows.columns) != known:
            known = len(rows.columns)
            mapping = guess_column_map(rows.columns, explicit)
        case, row_problems = _validate_row(values, mapping)
        case_id = case["case_id"]
        if case_id and case_id in first_row:
            row_problems.append(("case_id", case_id, f"appears again (first at row {first_row[case_id]}); "
                                 "case ids must be unique", "error"))
        elif case_id and case_id in stored_ids and not update:
            row_problems.append(("case_id", case_id, _already_stored(how), "error"))
        first_row.setdefault(case_id, number)
        row_problems.sort(key=lambda problem: FIELDS.index(problem[0]))
        for fld, value, message, severity in row_problems:
            problems.append(Problem(rows.name, message, number, fld, value, severity))
        errors = [f"column '{f}': " + (f"'{shorten(v)}' " if v is not None else "") + message
                  for f, v, message, s in row_problems if s == "error"]
        if errors:
            rejected.append((number, values, errors))
        else:
            validation.n_valid += 1
            case["source_row"] = number
            yield case
    mapping_problems = check_column_map(rows, column_map or {}, how)
    if mapping_problems:
        raise ImportRefused(mapping_problems + rows.problems)
    validation.problems = rows.problems + problems
    rejected.extend(
        (p.row, rows.unreadable.get(p.row, {}), [p.message])
        for p in rows.problems if p.severity == "error" and p.row is not None
    )
    validation.rejected = sorted(rejected, key=lambda r: r[0])
    validation.column_map = guess_column_map(rows.columns, column_map)


# ----------------------------------------------------------------------------------------- writing


def stored_case_ids(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT case_id FROM cases")}


# Valid rows wait here, in SQLite's temporary database (a file of this connection's own, which takes
# no lock on the store), until the write lock is taken to move them into `cases`.
_STAGING = "temp.import_staging"
_STAGED = ("case_id", "diagnosis", "regimen", "modality", "icd10", "site", "age", "sex", "laterality",
           "stage", "histology", "ecog", "metadata", "source_row")
_STAGE_BATCH = 1_000
_STORED_ALREADY = (f"SELECT staged.source_row, case_id FROM {_STAGING} AS staged JOIN main.cases USING (case_id)"
                   " ORDER BY 1")
# `WHERE true`: without it, SQLite would read ON CONFLICT as a join's ON.
_UPSERT = f"""
INSERT INTO cases ({", ".join(_STAGED)}, source_file, import_id)
SELECT {", ".join(_STAGED)}, :source_file, :import_id FROM {_STAGING} WHERE true
ON CONFLICT (case_id) DO UPDATE SET
    {", ".join(f"{column} = excluded.{column}" for column in (*_STAGED[1:], "source_file", "import_id"))},
    updated_at = {NOW}
"""


def import_cases(conn: sqlite3.Connection, source: bytes | BinaryIO, name: str,
                 column_map: dict[str, str] | None = None, update: bool = False,
                 skip_invalid: bool = False, actor: str = "cli", client: str | None = None,
                 how: ImportOptions = CLI_OPTIONS) -> ImportResult:
    """Validate and store a file's cases (its bytes, or a seekable binary file) all at once; raise
    ImportRefused and store nothing if any row is invalid (with `skip_invalid`: store the valid rows,
    return the rejected ones).

    The rows are read, checked and staged without the write lock; the one transaction that takes it
    checks again what may have changed meanwhile: a case id stored since is refused as one already
    stored (with `skip_invalid` too: the whole file, for it was checked against a store that is gone),
    unless `update`; the counts of new and updated cases are taken under the lock."""
    rows = TableReader(source, name)
    conn.execute(f"CREATE TEMP TABLE {_STAGING} ({', '.join(_STAGED)})")
    try:
        validation = Validation()
        _stage(conn, _valid_cases(rows, column_map, stored_case_ids(conn), update, how, validation))
        if validation.errors and not skip_invalid:
            raise ImportRefused(validation.problems)
        if not validation.n_valid:
            raise ImportRefused(validation.problems + [Problem(name, "has no valid rows to import")])
        with transaction(conn):
            stored = conn.execute(_STORED_ALREADY).fetchall()
            if stored and not update:
                stored_since = [Problem(name, _already_stored(how), number, "case_id", case_id)
                                for number, case_id in stored]
                raise ImportRefused(validation.problems + stored_since)
            n_updated = len(stored)
            n_inserted = validation.n_valid - n_updated
            n_rejected = len(validation.rejected)
            import_id = conn.execute(
                "INSERT INTO imports (source_file, sha256, column_map, n_rows, n_inserted, n_updated,"
                " n_rejected) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, rows.sha256, json.dumps(validation.column_map), validation.n_valid + n_rejected,
                 n_inserted, n_updated, n_rejected),
            ).lastrowid
            conn.execute(_UPSERT, {"source_file": name, "import_id": import_id})
            audit(conn, actor, "import", "imports", import_id, {"file": name, "inserted": n_inserted,
                                                               "updated": n_updated, "rejected": n_rejected},
                  client)
    finally:
        conn.execute(f"DROP TABLE {_STAGING}")
    return ImportResult(import_id, validation.n_valid + n_rejected, n_inserted, n_updated,
                        validation.rejected, validation.warnings)


def _stage(conn: sqlite3.Connection, cases: Iterator[dict]) -> None:
    """The cases into the staging table as they come, a batch at a time."""
    insert = f"INSERT INTO {_STAGING} VALUES ({', '.join('?' * len(_STAGED))})"
    while batch := list(itertools.islice(cases, _STAGE_BATCH)):
        conn.executemany(insert, [tuple(case[column] for column in _STAGED) for case in batch])


def rejected_rows_csv(rejected: list[tuple[int, dict[str, str], list[str]]]) -> str:
    """The rejected rows with their reasons, as CSV text for a file beside the input; the cells and
    column names came from the user's file, so any a spreadsheet would run as a formula are neutralised."""
    columns: list[str] = []
    for _, values, _ in rejected:
        columns.extend(c for c in values if c not in columns)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["row", "reasons", *map(neutralise, columns)])
    for number, values, reasons in rejected:
        writer.writerow([number, "; ".join(reasons), *(neutralise(values.get(c, "")) for c in columns)])
    return out.getvalue()
