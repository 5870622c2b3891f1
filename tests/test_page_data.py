"""The Data page through Streamlit's AppTest, against a real database file."""

import tomllib

import pytest

from conftest import HEADER, ROOT, csv_bytes, row, signed_in_staff
from rocore.data.case_import import import_cases
from rocore.data.tables import LIMITS
from rocore.store.db import opened


@pytest.fixture
def page(db_path, open_page):
    return open_page("app_pages/data.py", db_path, timeout=30)


def case_count(db_path) -> int:
    with opened(db_path) as conn:
        return conn.execute("SELECT count(*) FROM cases").fetchone()[0]


def test_app_opens_a_signed_in_researcher_on_the_data_page(db_path, open_page):
    assert open_page("app.py", db_path).title[0].value == "Cases"


def test_the_page_refuses_anyone_not_signed_in(db_path, open_page):
    at = open_page("app_pages/data.py", db_path, signed_in=False)
    assert at.error[0].value.startswith("This page is for researchers and administrators")
    assert not at.title and not at.file_uploader


def test_empty_store(page):
    assert page.metric[0].value == "0"
    assert "No cases yet" in page.info[0].value


def test_upload_map_validate_and_import(page, db_path):
    data = b"Patient ID,Dx,Rx,Beam,ICD-10\nP1,Prostate cancer,60 Gy/20,Photons,c61\nP2,GBM,60 Gy/30,IMRT,C71.1\n"
    page.file_uploader[0].set_value(("export.csv", data, "text/csv"))
    page.run()
    assert not page.exception
    mapping = {box.label.split(" ")[0]: box.value for box in page.selectbox}
    assert mapping["case_id"] == "Patient ID" and mapping["modality"] == "(none)"
    assert "Map every required column" in page.error[0].value
    assert "is missing the required column 'modality'" in page.code[0].value

    next(box for box in page.selectbox if box.label.startswith("modality")).select("Beam")
    page.run()
    assert not page.error
    assert [m.value for m in page.metric[1:4]] == ["2", "0", "0"]
    page.button(key="import-run").click()
    page.run()
    assert not page.exception
    assert "export.csv: imported 2 new and 0 updated cases" in page.success[0].value
    assert page.metric[0].value == "2"
    assert case_count(db_path) == 2
    with opened(db_path) as conn:
        audit = conn.execute("SELECT actor, client FROM audit_log WHERE action = 'import'").fetchone()
    assert audit["actor"] == signed_in_staff(db_path)["name"] and audit["client"].startswith("web ")


def test_invalid_file_shows_located_errors_and_cannot_be_imported(page, db_path):
    page.file_uploader[0].set_value(("bad.csv", csv_bytes(row("P1"), row("P2", icd10="C99.9")), "text/csv"))
    page.run()
    assert "bad.csv: row 2: column 'icd10': 'C99.9' is not a valid ICD-10-CM code" in page.code[0].value
    assert page.button(key="import-run").disabled
    page.checkbox(key="import-skip").check()
    page.run()
    assert not page.button(key="import-run").disabled
    page.button(key="import-run").click()
    page.run()
    assert "imported 1 new" in page.success[0].value
    assert case_count(db_path) == 1


def test_unreadable_file(page):
    page.file_uploader[0].set_value(("empty.csv", b"", "text/csv"))
    page.run()
    assert page.error[0].value == "This file cannot be read."
    assert page.code[0].value == "empty.csv: is empty; expected a header row and at least one case"


def test_a_file_over_a_limit_is_refused_with_the_limit_named(page, db_path):
    assert page.file_uploader[0].proto.max_upload_size_mb == LIMITS.file_mb
    header = HEADER + "".join(f",extra {i}" for i in range(46))
    page.file_uploader[0].set_value(("wide.csv", csv_bytes(row("P1") + ",x" * 46, header=header), "text/csv"))
    page.run()
    assert page.error[0].value == "This file cannot be read."
    assert page.code[0].value == ("wide.csv: has 51 columns, more than the limit of 50; "
                                  "delete the columns the cases do not need")
    assert not page.selectbox and case_count(db_path) == 0


def test_create_split_from_the_form(page, db_path):
    with opened(db_path) as conn:
        import_cases(conn, csv_bytes(*[row(f"P{i}", diagnosis=f"case {i}") for i in range(50)]), "f.csv")
    page.run()
    page.text_input[0].set_value("first")
    page.button[0].click()  # the form's submit button
    page.run()
    assert not page.exception
    assert "Created split 'first'" in page.success[0].value
    assert any("No diagnosis text appears in two parts" in s.value for s in page.success)
    assert page.expander[0].label.startswith("first: 50 cases")


def test_the_server_refuses_uploads_over_the_import_limit():
    """Streamlit's own cap applies before any page code runs: it must not let through more than the reader takes."""
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == LIMITS.file_mb


def test_a_successful_import_clears_the_file_so_it_is_not_checked_again(page, db_path):
    data = csv_bytes(*[row(f"P{i}", diagnosis=f"case {i}") for i in range(15)])
    page.file_uploader[0].set_value(("cases.csv", data, "text/csv"))
    page.run()
    page.button(key="import-run").click()
    page.run()
    assert not page.exception
    assert [s.value for s in page.success] == ["cases.csv: imported 15 new and 0 updated cases (import 1)."]
    assert page.file_uploader[0].value is None
    assert not page.code and not page.warning and not page.error
    assert "import-run" not in [button.key for button in page.button]
    page.run()  # the message belongs to the run right after the import
    assert not page.success and case_count(db_path) == 15


def test_messages_name_the_page_controls_not_command_line_flags(page, db_path):
    with opened(db_path) as conn:
        import_cases(conn, csv_bytes(row("P1")), "first.csv")
    page.file_uploader[0].set_value(("again.csv", csv_bytes(row("P1"), header="case_id,dx,regimen,beam,icd10"),
                                     "text/csv"))
    page.run()
    missing = page.code[0].value
    assert "choose its column in the 'modality' box under Columns" in missing and "--" not in missing
    next(box for box in page.selectbox if box.label.startswith("modality")).select("beam")
    page.run()
    stored = page.code[0].value
    assert "'P1' is already stored; tick 'Replace stored cases that have the same case id'" in stored
    assert "--" not in stored
    page.checkbox(key="import-update").check()
    page.run()
    assert not page.code and not page.button(key="import-run").disabled


def test_the_file_watcher_is_off():
    """Streamlit's inotify watcher overflowed (thousands of log lines an hour); the app is not edited live."""
    server = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]
    assert server["fileWatcherType"] == "none" and server["runOnSave"] is False


def test_checking_a_large_upload_does_not_hold_its_rows(page):
    """The page previews and checks an upload as a stream: the rows of a 20,000-case file are never all
    in memory at once (the page held each as a dict, several times the file, before)."""
    import tracemalloc

    data = csv_bytes(*[row(f"P{i:05d}", diagnosis=f"{40 + i % 50}-year-old, prostate adenocarcinoma, "
                           f"Gleason {6 + i % 4}, PSA {i % 30} ng/mL, cT{1 + i % 3}N0M0, no prior therapy")
                       for i in range(20_000)])
    page.file_uploader[0].set_value(("small.csv", csv_bytes(row("P1")), "text/csv"))
    page.run()  # what any check loads once (the ICD-10-CM code set), before memory is traced
    page.file_uploader[0].set_value(("big.csv", data, "text/csv"))
    tracemalloc.start()
    try:
        page.run()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not page.exception
    assert page.caption[0].value.startswith("20,000 rows, 5 columns.")
    assert [m.value for m in page.metric[1:4]] == ["20000", "0", "0"]
    print(f"file {len(data):,} bytes, peak traced {peak:,} bytes")
    assert peak < 3 * len(data)
