import csv
import hashlib
import io
import json
import sqlite3

import pytest

from conftest import HEADER, csv_bytes, row
from rocore.data.case_import import ImportOptions, guess_column_map, import_cases, rejected_rows_csv
from rocore.data.tables import ImportRefused, format_problems
from rocore.store.db import connect
from test_tables import CASE, FIELDS, ObservedFile, file_in, xlsx_bytes


def snapshot(conn: sqlite3.Connection) -> str:
    """A digest of everything an import writes, to prove a refused import left no trace."""
    dump = [list(map(tuple, conn.execute(f"SELECT * FROM {t} ORDER BY 1"))) for t in ("cases", "imports", "audit_log")]
    return hashlib.sha256(repr(dump).encode()).hexdigest()


def refused(conn, data: bytes, name: str = "cases.csv", **kwargs) -> list[str]:
    before = snapshot(conn)
    with pytest.raises(ImportRefused) as info:
        import_cases(conn, data, name, **kwargs)
    assert snapshot(conn) == before, "a refused import changed the database"
    return [str(p) for p in info.value.errors]


def stored(conn, case_id: str) -> dict:
    return dict(conn.execute("SELECT * FROM cases WHERE case_id = ?", (case_id,)).fetchone())


def temporary_tables(conn) -> list[str]:
    return [r[0] for r in conn.execute("SELECT name FROM sqlite_temp_master WHERE type = 'table'")]


def when_the_lock_is_asked_for(conn, then) -> None:
    """Runs `then` as `conn` asks for the write lock (SQLite calls the trace before it runs the statement)."""
    conn.set_trace_callback(lambda sql: then() if sql == "BEGIN IMMEDIATE" else None)


# ------------------------------------------------------------------------------ messy but valid files


def test_messy_csv_with_bom_crlf_quoted_newlines_and_their_own_column_names(conn):
    text = (
        "\ufeffCase ID;Diagnostic details;Treatment regimen;Treatment Modality;ICD-10-CM;Age;Gender;Side;MRN note\r\n"
        'A-1;"Left breast IDC,\r\nupper outer quadrant, s/p lumpectomy";40 Gy in 15 fractions; Photons ;c50412;54;F;L;x\r\n'
        "A-2;Prostate adenocarcinoma, Gleason 3+4;60 Gy/20;IMRT;c61;71;m;;\r\n"
        "A-3;Skull base chordoma;74 GyRBE in 37 fractions;PBS;C41.0;38;female;;\r\n"
        "A-4;Endometrial cancer s/p hysterectomy;HDR 7 Gy x 3;HDR;C54.1;66;Female;;\r\n"
        "A-5;BCC of the nose;35 Gy/5;electrons;C44.311;80;male;;\r\n"
    ).encode("utf-8")
    result = import_cases(conn, text, "export.csv")
    assert (result.n_inserted, result.n_updated, result.rejected, result.warnings) == (5, 0, [], [])
    first = stored(conn, "A-1")
    assert first["diagnosis"] == "Left breast IDC,\nupper outer quadrant, s/p lumpectomy"
    assert (first["modality"], first["icd10"], first["age"], first["sex"], first["laterality"]) == (
        "photon", "C50.412", 54, "female", "left")
    assert json.loads(first["metadata"]) == {"MRN note": "x"}
    assert (first["source_file"], first["source_row"]) == ("export.csv", 1)
    assert [stored(conn, f"A-{i}")["modality"] for i in range(2, 6)] == ["photon", "proton", "brachytherapy", "electron"]
    assert stored(conn, "A-2")["icd10"] == "C61"
    imported = conn.execute("SELECT * FROM imports").fetchone()
    assert (imported["n_rows"], imported["n_inserted"], imported["sha256"]) == (5, 5, hashlib.sha256(text).hexdigest())
    audit = conn.execute("SELECT actor, action, detail FROM audit_log").fetchone()
    assert audit["action"] == "import" and "IDC" not in audit["detail"], "case text must not reach the audit log"


def test_tsv_and_blank_lines(conn):
    data = b"case_id\tdiagnosis\tregimen\tmodality\ticd10\n\nT1\tLung, RUL\t54 Gy/3\tSBRT\tC34.11\n\n"
    assert import_cases(conn, data, "cases.tsv").n_inserted == 1
    assert stored(conn, "T1")["diagnosis"] == "Lung, RUL"


def test_utf16_text_as_excel_saves_it(conn):
    data = "case_id\tdiagnosis\tregimen\tmodality\ticd10\nU1\tGBM, 58 y\t60 Gy/30\tphoton\tC71.1\n".encode("utf-16")
    assert import_cases(conn, data, "unicode.txt").n_inserted == 1


def test_xlsx_with_numbers_and_a_second_sheet(conn):
    data = xlsx_bytes([["Case", "Diagnosis", "Rx", "Modality", "ICD10", "Age", "ECOG"],
                       [101, "Glioblastoma, left temporal", "60 Gy in 30 fractions", "Photon", "C71.2", 67.0, 1],
                       [None, None, None, None, None, None, None],
                       [102, "Keloid, right ear", "16 Gy in 4 fractions", "electron", "L91.0", 30, 0]],
                      extra_sheet=True)
    result = import_cases(conn, data, "cases.xlsx")
    assert result.n_inserted == 2
    assert [w.message for w in result.warnings] == ["has 2 sheets; only the first, 'Sheet', was read"]
    case = stored(conn, "101")
    assert (case["regimen"], case["age"], case["ecog"]) == ("60 Gy in 30 fractions", 67, 1)
    assert stored(conn, "102")["source_row"] == 3


def test_json_lines_with_extra_keys_as_metadata(conn):
    lines = [
        {"case_id": "J1", "diagnosis": "Anal SCC T2N0", "regimen": "50.4 Gy in 28 fractions",
         "modality": "Photon", "icd10": "C21.1", "site": "anus", "extra": {"mrn": 1}},
        {"case_id": "J2", "diagnosis": "Medulloblastoma, age 7", "regimen": "CSI 23.4 GyRBE/13",
         "modality": "IMPT", "icd10": "c716", "trial": True},
    ]
    data = ("\n".join(json.dumps(x) for x in lines) + "\n\n").encode()
    assert import_cases(conn, data, "cases.jsonl").n_inserted == 2
    assert json.loads(stored(conn, "J1")["metadata"]) == {"extra": '{"mrn": 1}'}
    assert stored(conn, "J1")["site"] == "anus"
    assert stored(conn, "J2")["icd10"] == "C71.6"


def test_explicit_column_map_overrides_guesses(conn):
    data = b"id,text,plan,modality,icd10,other_id\n1,Rectal cancer,25 Gy/5,photon,C20,R-9\n"
    import_cases(conn, data, "f.csv", column_map={"case_id": "other_id", "diagnosis": "text", "regimen": "plan"})
    case = stored(conn, "R-9")
    assert (case["diagnosis"], case["modality"], case["icd10"]) == ("Rectal cancer", "photon", "C20")
    assert json.loads(case["metadata"]) == {"id": "1"}


def test_guess_column_map_recognises_common_spellings():
    assert guess_column_map(["Patient ID", "Dx", "Prescription", "Radiation type", "ICD-10 Code", "PS"]) == {
        "case_id": "Patient ID", "diagnosis": "Dx", "regimen": "Prescription", "modality": "Radiation type",
        "icd10": "ICD-10 Code", "ecog": "PS"}


def test_non_billable_category_is_a_warning_not_an_error(conn):
    result = import_cases(conn, csv_bytes(row(icd10="C50")), "f.csv")
    assert result.n_inserted == 1
    assert [str(w) for w in result.warnings] == [
        "f.csv: row 1: column 'icd10': 'C50' is a valid ICD-10-CM category but not a billable code; "
        "give the full code (e.g. C50.011, C50.012, C50.019)"]


def test_update_replaces_stored_cases(conn):
    import_cases(conn, csv_bytes(row("P1"), row("P2")), "first.csv")
    result = import_cases(conn, csv_bytes(row("P1", regimen="70 Gy in 28 fractions"), row("P3")), "second.csv",
                          update=True)
    assert (result.n_inserted, result.n_updated) == (1, 1)
    case = stored(conn, "P1")
    assert (case["regimen"], case["source_file"]) == ("70 Gy in 28 fractions", "second.csv")
    assert case["updated_at"] is not None


# -------------------------------------------------------------------------------------- bad files


def test_invalid_code_error_has_the_documented_form(conn):
    assert refused(conn, csv_bytes(row("P1"), row("P2", icd10="C99.9"))) == [
        "cases.csv: row 2: column 'icd10': 'C99.9' is not a valid ICD-10-CM code"]


def test_all_errors_are_listed_at_once_in_row_order(conn):
    errors = refused(conn, csv_bytes(
        row("P1", modality="laser"), row("P2"), row("P3", icd10="banana"), row("P1"), row("P5", regimen=""),
    ))
    assert [e.split(": ")[1:3] for e in errors] == [
        ["row 1", "column 'modality'"], ["row 3", "column 'icd10'"], ["row 4", "column 'case_id'"],
        ["row 5", "column 'regimen'"]]
    assert "appears again (first at row 1)" in errors[2]
    assert errors[3] == "cases.csv: row 5: column 'regimen': is empty; every case needs a value here"


def test_case_already_stored_without_update(conn):
    import_cases(conn, csv_bytes(row("P1")), "first.csv")
    assert refused(conn, csv_bytes(row("P2"), row("P1")))[0].startswith(
        "cases.csv: row 2: column 'case_id': 'P1' is already stored; use --update")
    assert conn.execute("SELECT count(*) FROM cases").fetchone()[0] == 1


def test_missing_required_column(conn):
    errors = refused(conn, b"case_id,diagnosis,regimen,modality\nP1,d,r,photon\n")
    assert errors == ["cases.csv: is missing the required column 'icd10' (columns found: case_id, diagnosis, "
                      "regimen, modality); rename it or map it with --map icd10=COLUMN"]


def test_the_caller_names_its_own_controls_in_the_messages(conn):
    """The Data page shows these messages too, where there are no flags to name."""
    import_cases(conn, csv_bytes(row("P1")), "first.csv")
    assert refused(conn, csv_bytes(row("P1")))[0].endswith("'P1' is already stored; use --update to replace it")
    page = ImportOptions(map_column="pick a column for '{field}'", update="tick 'Replace'")
    assert refused(conn, csv_bytes(row("P1")), how=page)[0].endswith("'P1' is already stored; tick 'Replace' to "
                                                                     "replace it")
    missing = refused(conn, b"case_id,diagnosis,regimen,modality\nP2,d,r,photon\n", how=page)
    assert missing[0].endswith("rename it or pick a column for 'icd10'")


def test_json_objects_without_the_required_columns(conn):
    errors = refused(conn, b"\n\n{}\n", "cases.jsonl")
    assert errors[0].startswith("cases.jsonl: is missing the required column 'case_id'"), errors


def test_bad_metadata_values(conn):
    header = "case_id,diagnosis,regimen,modality,icd10,age,sex,laterality,ecog"
    errors = refused(conn, csv_bytes(row("P1") + ",200,robot,up,7", header=header))
    assert [e.split(": ", 2)[2] for e in errors] == [
        "column 'age': '200' is not an age in years (0-120)",
        "column 'sex': 'robot' is not one of female, male or other",
        "column 'laterality': 'up' is not one of left, right or bilateral",
        "column 'ecog': '7' is not an ECOG performance status (0-5)"]


def test_bad_column_maps(conn):
    errors = refused(conn, csv_bytes(row()), column_map={"icd": "icd10", "regimen": "Plan"})
    assert errors == [
        "cases.csv: cannot map unknown field 'icd'; fields are case_id, diagnosis, regimen, modality, icd10, "
        "site, age, sex, laterality, stage, histology, ecog",
        "cases.csv: has no column 'Plan' to map to 'regimen' (columns: case_id, diagnosis, regimen, modality, icd10)"]


def test_error_list_is_capped_with_a_count_of_the_rest(conn):
    data = csv_bytes(*[row(f"P{i}", icd10="C99.9") for i in range(1, 151)])
    with pytest.raises(ImportRefused) as info:
        import_cases(conn, data, "many.csv")
    lines = format_problems(info.value.problems).splitlines()
    assert len(lines) == 101 and lines[-1] == "... and 50 more problems"
    assert len(info.value.errors) == 150


def test_a_failure_while_writing_rolls_back_the_whole_file(conn, tmp_path):
    conn.execute("CREATE TRIGGER fail_midway AFTER INSERT ON cases WHEN NEW.case_id = 'P4' "
                 "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    before = snapshot(conn)
    path = tmp_path / "f.csv"
    path.write_bytes(csv_bytes(*[row(f"P{i}") for i in range(1, 8)]))
    with ObservedFile(path) as source, pytest.raises(sqlite3.IntegrityError, match="disk full"):
        import_cases(conn, source, "f.csv")
    assert snapshot(conn) == before
    assert temporary_tables(conn) == [], "the staged rows outlived their import"
    conn.execute("DROP TRIGGER fail_midway")
    assert import_cases(conn, path.read_bytes(), "f.csv").n_inserted == 7


# ------------------------------------------------------------------------------ the write lock


def test_a_file_is_read_checked_and_staged_before_the_write_lock_is_taken(conn, db_path, tmp_path):
    """Reviewers' ratings wait on the write lock: an import takes it only to store what it has read."""
    path = tmp_path / "cases.csv"
    path.write_bytes(csv_bytes(*[row(f"P{i}", diagnosis=f"case {i}") for i in range(3_000)]))
    other = connect(db_path)
    other.execute("BEGIN IMMEDIATE")  # someone else writing all along: a reviewer's rating, say
    conn.execute("PRAGMA busy_timeout = 0")  # so that any wait for the lock fails at once
    asked: list[str] = []
    reads_after_asking: list[int] = []
    when_the_lock_is_asked_for(conn, lambda: (asked.append("lock"), other.execute("COMMIT")))
    with ObservedFile(path, lambda data: asked and reads_after_asking.append(len(data))) as source:
        result = import_cases(conn, source, "cases.csv")
    other.close()
    assert (asked, reads_after_asking) == (["lock"], []), "the file was read under the write lock"
    assert (result.n_inserted, result.n_updated) == (3_000, 0)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert conn.execute("SELECT sha256 FROM imports").fetchone()[0] == digest
    assert temporary_tables(conn) == []


def test_a_file_with_invalid_rows_is_refused_without_waiting_for_the_write_lock(conn, db_path):
    other = connect(db_path)
    other.execute("BEGIN IMMEDIATE")
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        assert refused(conn, csv_bytes(row("P1"), row("P2", icd10="C99.9"))) == [
            "cases.csv: row 2: column 'icd10': 'C99.9' is not a valid ICD-10-CM code"]
    finally:
        other.close()


@pytest.mark.parametrize("update", [False, True])
def test_a_case_stored_by_someone_else_after_the_file_was_checked_is_caught_under_the_lock(conn, db_path,
                                                                                          tmp_path, update):
    """Someone else's import commits just as this one, its rows read and checked, asks for the lock."""
    path = tmp_path / "cases.csv"
    path.write_bytes(csv_bytes(*[row(f"P{i}", diagnosis=f"case {i}") for i in range(1, 101)]))
    other = connect(db_path)
    theirs = csv_bytes(row("P7"), row("P70"))
    when_the_lock_is_asked_for(conn, lambda: import_cases(other, theirs, "theirs.csv"))
    with ObservedFile(path) as source:
        if update:
            result = import_cases(conn, source, "cases.csv", update=True)
        else:
            with pytest.raises(ImportRefused) as info:
                import_cases(conn, source, "cases.csv")
    other.close()
    conn.set_trace_callback(None)
    sources = {r[0]: r[1] for r in conn.execute("SELECT case_id, source_file FROM cases")}
    if update:
        assert (result.n_inserted, result.n_updated) == (98, 2)
        assert len(sources) == 100 and set(sources.values()) == {"cases.csv"}
        assert conn.execute("SELECT n_inserted, n_updated FROM imports WHERE source_file = 'cases.csv'"
                            ).fetchone()[:] == (98, 2)
    else:
        assert [str(p) for p in info.value.errors] == [
            "cases.csv: row 7: column 'case_id': 'P7' is already stored; use --update to replace it",
            "cases.csv: row 70: column 'case_id': 'P70' is already stored; use --update to replace it"]
        assert sources == {"P7": "theirs.csv", "P70": "theirs.csv"}, "half of the refused file was stored"
        assert [r[0] for r in conn.execute("SELECT source_file FROM imports")] == ["theirs.csv"]
    assert temporary_tables(conn) == []


def test_json_keys_that_first_appear_late_are_columns_for_the_rows_before_them_too(conn):
    """JSON lines are checked as they are read, before the last line has named every column."""
    first = {"case_id": "J1", "diagnosis": "d", "regimen": "r", "modality": "photon"}
    later = {**first, "case_id": "J2", "icd10": "C61", "Age": "70"}
    data = "\n".join(json.dumps(x) for x in (first, later)).encode()
    result = import_cases(conn, data, "cases.jsonl", skip_invalid=True)
    assert [(number, reasons) for number, _, reasons in result.rejected] == [
        (1, ["column 'icd10': is empty; every case needs a value here"])]
    case = stored(conn, "J2")
    assert (case["icd10"], case["age"], case["metadata"]) == ("C61", 70, "{}")
    imported = conn.execute("SELECT column_map FROM imports").fetchone()[0]
    assert json.loads(imported) == {field: field for field in FIELDS} | {"age": "Age"}


# ---------------------------------------------------------------------------------- skip invalid


def test_skip_invalid_imports_the_valid_rows_and_returns_the_rest(conn):
    data = csv_bytes(row("P1"), row("P2", icd10="C99.9"), "P3,too,few", row("P4", modality="=cmd()"), row("P5"))
    result = import_cases(conn, data, "f.csv", skip_invalid=True)
    assert result.n_inserted == 2
    assert [r[0] for r in result.rejected] == [2, 3, 4]
    assert {r[0] for r in conn.execute("SELECT case_id FROM cases")} == {"P1", "P5"}
    assert conn.execute("SELECT n_rejected, n_rows FROM imports").fetchone()[:] == (3, 5)
    text = rejected_rows_csv(result.rejected)
    lines = text.splitlines()
    assert lines[0] == "row,reasons,case_id,diagnosis,regimen,modality,icd10,field 1,field 2,field 3"
    assert lines[1].startswith("2,column 'icd10': 'C99.9' is not a valid ICD-10-CM code,P2,")
    assert lines[2].startswith("3,\"has 3 fields") and lines[2].endswith(",P3,too,few")


def test_skip_invalid_still_refuses_a_file_without_required_columns(conn):
    refused(conn, b"case_id,diagnosis\nP1,d\n", skip_invalid=True)


def test_skip_invalid_with_no_valid_row_imports_nothing(conn):
    errors = refused(conn, csv_bytes(row("P1", icd10="C99.9")), skip_invalid=True)
    assert errors[-1] == "cases.csv: has no valid rows to import"


def test_the_rejected_rows_file_neutralises_cells_a_spreadsheet_would_run(conn):
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([
        [*FIELDS, '=HYPERLINK("http://example.org","notes")'],
        [*CASE, "fine"],
        ['=HYPERLINK("http://example.org","P2")', "d", "r", "photon", "C99.9", "+cmd|' /C calc'!A0"],
        ["P3", "-2+3", "r", "@SUM(1)", "C61", "\t=1"],
    ])
    result = import_cases(conn, out.getvalue().encode(), "f.csv", skip_invalid=True)
    lines = list(csv.reader(io.StringIO(rejected_rows_csv(result.rejected))))
    assert lines[0][-1] == '\'=HYPERLINK("http://example.org","notes")'
    assert lines[1][2] == '\'=HYPERLINK("http://example.org","P2")' and lines[1][-1] == "'+cmd|' /C calc'!A0"
    assert lines[2][3:] == ["'-2+3", "r", "'@SUM(1)", "C61", "'\t=1"]
    assert not [cell for line in lines for cell in line if cell.startswith(("=", "+", "-", "@", "\t", "\r"))]


@pytest.mark.parametrize("fmt", ["csv", "xlsx", "jsonl"])
def test_a_case_over_a_size_limit_refuses_the_whole_file_even_when_skipping_invalid_rows(conn, fmt):
    data, name = file_in(fmt, FIELDS, CASE, ["P2", "x" * 60_000, "r", "photon", "C61"])
    assert refused(conn, data, name, skip_invalid=True) == [
        f"{name}: row 2: column 'diagnosis': is 60,000 characters long, more than the limit of 50,000 per cell"]


def test_thousands_of_extra_columns_are_refused_not_stored(conn):
    header = HEADER + "".join(f",extra {i}" for i in range(5_000))
    assert refused(conn, csv_bytes(row("P1") + ",x" * 5_000, header=header)) == [
        "cases.csv: has 5,005 columns, more than the limit of 50; delete the columns the cases do not need"]
