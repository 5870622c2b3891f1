"""Importing a department's case export (CSV, TSV, Excel, JSON lines) into the store, whole or not at all.

Exports from oncology information systems come with their own column names and messy values, so
reading (rocore.data.tables), mapping, validating and writing are separate steps: the Data page
previews each one, the CLI runs them in a row. Every problem is located (file, row, column, value) and listed at once.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import sqlite3
from dataclasses import dataclass

from rocore.data.labels import (
    LabelError,
    icd10_billable_examples,
    icd10_status,
    normalise_icd10,
    normalise_modality,
)
from rocore.data.tables import ImportRefused, Problem, Table, neutralise, read_table, shorten
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


def check_column_map(table: Table, explicit: dict[str, str], how: ImportOptions = CLI_OPTIONS) -> list[Problem]:
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
             stored_ids: set[str] = frozenset(), update: bool = False,
             how: ImportOptions = CLI_OPTIONS) -> Validation:
    """Check every row; nothing is written. `stored_ids` are case ids already in the store.
    A mapping that leaves a required field without a column refuses the whole file."""
    explicit = column_map or {}
    mapping_problems = check_column_map(table, explicit, how)
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
            row_problems.append(("case_id", case_id, f"is already stored; {how.update} to replace it", "error"))
        first_row.setdefault(case_id, number)
        row_problems.sort(key=lambda problem: FIELDS.index(problem[0]))
        for fld, value, message, severity in row_problems:
            problems.append(Problem(table.name, message, number, fld, value, severity))
        errors = [f"column '{f}': " + (f"'{shorten(v)}' " if v is not None else "") + message
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
                 skip_invalid: bool = False, actor: str = "cli", client: str | None = None,
                 how: ImportOptions = CLI_OPTIONS) -> ImportResult:
    """Validate and store a file's cases in one transaction; raise ImportRefused and store nothing
    if any row is invalid (with `skip_invalid`: store the valid rows, return the rejected ones)."""
    table = read_table(data, name)
    with transaction(conn):
        validation = validate(table, column_map, stored_case_ids(conn), update, how)
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
