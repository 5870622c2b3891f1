"""The Admin page through AppTest: studies, people and their one-time codes, the audit log, roles."""

from __future__ import annotations

import pytest
from conftest import ROOT
from streamlit.testing.v1 import AppTest
from test_review_studies import RUN_1, RUN_2, make_review_db

from rocore.review import auth, blinding
from rocore.review import studies as review
from rocore.store.db import opened

PAGE = str(ROOT / "app_pages" / "admin.py")


@pytest.fixture
def info(db_path, monkeypatch):
    monkeypatch.setenv("ROCORE_DB", str(db_path))
    monkeypatch.chdir(ROOT)
    return make_review_db(db_path)


def open_page(info: dict, name: str = "boss", role: str = "admin") -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=30)
    at.session_state["user"] = {"id": info["ids"][name], "name": name, "role": role}
    at.run()
    assert not at.exception
    return at


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def test_reviewers_are_turned_away(info):
    at = open_page(info, "ada", "reviewer")
    assert at.error[0].value == "This page is for researchers and administrators: sign in first."
    assert not at.tabs


def test_a_forged_session_role_is_refused_by_rocore(info):
    at = open_page(info, "ada", "admin")
    assert at.error[0].value == "This page is for researchers and administrators: sign in first."
    assert not at.tabs


def test_create_a_study_from_the_form(info, db_path):
    at = open_page(info)
    assert at.expander[0].label == "Plan the study size before creating it"
    assert at.expander[1].label == "Prostate pilot: 0 of 24 ratings done"
    runs = [s for s in at.selectbox if s.label.startswith("Run")]
    assert [s.value for s in runs] == [RUN_1, RUN_2], "base run first, fine-tuned second by default"
    at.text_input(key="study-name").set_value("Second look")
    reviewers = next(m for m in at.multiselect if m.label == "Reviewers")
    reviewers.set_value([info["ids"]["ada"], info["ids"]["cleo"]])
    next(n for n in at.number_input if n.label.startswith("Cases to sample")).set_value(5)
    next(n for n in at.number_input if n.label.startswith("Seed")).set_value(42)
    next(c for c in at.checkbox if c.label.startswith("a score")).check()
    button(at, "Create study").click()
    at.run()
    assert not at.exception
    assert at.success[0].value.startswith("Created study 'Second look'")
    assert at.expander[1].label == "Second look: 0 of 5 ratings done"
    assert any("3 reviewers per case is the usual choice" in i.value for i in at.info)
    with opened(db_path) as conn:
        study = conn.execute("SELECT * FROM studies WHERE name = 'Second look'").fetchone()
        assert (study["sample_n"], study["seed"], study["overlap"]) == (5, 42, 1)
        assert study["form"] == '{"likert": true, "preference": false, "comment": true}'


def test_a_refused_study_says_why(info, db_path):
    at = open_page(info)
    at.text_input(key="study-name").set_value("No reviewers")
    button(at, "Create study").click()
    at.run()
    assert at.error[0].value == "Choose at least one reviewer."


def test_add_a_person_shows_the_code_once(info, db_path):
    at = open_page(info)
    at.text_input(key="person-name").set_value("dora")
    button(at, "Add").click()
    at.run()
    assert "Added reviewer 'dora'" in at.success[0].value
    code = at.code[0].value
    with opened(db_path) as conn:
        assert auth.sign_in(conn, "dora", code).role == "reviewer"
    at.run()
    assert not at.code, "the code is not shown again"
    assert code not in repr([at.session_state[k] for k in at.session_state])


def test_reset_a_code_and_deactivate(info, db_path):
    at = open_page(info)
    at.selectbox(key="admin-person").set_value("ben")
    at.button(key="admin-reset").click()
    at.run()
    code = at.code[0].value
    with opened(db_path) as conn:
        with pytest.raises(auth.SignInFailed):
            auth.sign_in(conn, "ben", info["codes"]["ben"])
        assert auth.sign_in(conn, "ben", code).name == "ben"
    at.selectbox(key="admin-person").set_value("ben")
    at.button(key="admin-deactivate").click()
    at.run()
    with opened(db_path) as conn:
        assert auth.active_user(conn, info["ids"]["ben"]) is None
    at.selectbox(key="admin-person").set_value("boss")
    at.button(key="admin-deactivate").click()
    at.run()
    assert at.error[0].value == "You cannot deactivate yourself."


def test_audit_log_and_progress(info, db_path):
    at = open_page(info)
    audit = at.dataframe[-1].value
    assert {"create-study", "add-user", "create-first-admin"} <= set(audit["action"])
    progress = at.dataframe[0].value
    assert list(progress["reviewer"]) == ["ada", "ben", "cleo"] and list(progress["assigned"]) == [8, 8, 8]


def test_the_study_size_is_planned_before_creating(info):
    at = open_page(info)
    plan = at.expander[0]
    assert plan.label == "Plan the study size before creating it"
    cases = next(m for m in at.metric if m.label == "Cases needed")
    expected = review.plan_study(0.5, 0.7, overlap=3)
    assert cases.value == f"{expected['cases']:,}"
    assert any(f"{expected['ratings']:,} ratings with 3 reviewers per case" in c.value for c in at.caption)
    next(n for n in at.number_input if n.key == "plan-overlap").set_value(2)
    at.run()
    assert any("odd number" in i.value for i in at.info)
    next(n for n in at.number_input if n.key == "plan-finetuned").set_value(0.5)
    at.run()
    assert any("must differ" in w.value for w in at.warning)


def test_a_study_created_without_a_seed_gets_a_random_one(info, db_path):
    """The seed field starts empty: a fixed default would let anyone who knows it predict the sides."""
    at = open_page(info)
    assert next(n for n in at.number_input if n.label.startswith("Seed")).value is None
    at.text_input(key="study-name").set_value("Unseeded")
    next(m for m in at.multiselect if m.label == "Reviewers").set_value([info["ids"]["ada"]])
    button(at, "Create study").click()
    at.run()
    assert at.success[0].value.startswith("Created study 'Unseeded'")
    with opened(db_path) as conn:
        seed = conn.execute("SELECT seed FROM studies WHERE name = 'Unseeded'").fetchone()[0]
    assert seed.bit_length() > 32
    assert any(f"seed {seed};" in c.value for c in at.caption)


def test_each_study_shows_its_blinding_check(info, db_path):
    """The fixture's fine-tuned regimens always end "to the prostate": length gives its side away."""
    at = open_page(info)
    with opened(db_path) as conn:
        check = blinding.study_blinding(conn, info["study_id"], actor_id=info["admin_id"])
    assert check["shown"]["best_rule"]["rule"] == "the shorter text is run 1"
    given_away, text = blinding.describe(check)
    assert given_away and [w.value for w in at.warning if w.value.startswith("Blinding check")] == [text]
    assert "the shorter text is run 1 in 12 of 12 cases" in text


def test_the_last_backup_and_slowed_sign_ins_are_shown(info, db_path, tmp_path):
    from rocore.store.backup import backup_database

    at = open_page(info)
    assert [w.value for w in at.warning if "backed up" in w.value] == [
        f"This database has never been backed up: `python -m rocore backup --db {db_path} --out FOLDER` "
        "(safe while the app runs)."]
    assert not any("slowed" in w.value for w in at.warning)

    with opened(db_path) as conn:
        for _ in range(auth.FREE_FAILURES):
            with pytest.raises(auth.SignInFailed):
                auth.sign_in(conn, "ada", "not her code", "web 10.0.0.7")
    backup_database(db_path, tmp_path / "nightly.db", actor="cli:ops")
    at = open_page(info)
    assert not any("backed up" in w.value for w in at.warning)
    assert any(c.value.startswith("Last backup: ") and "by cli:ops, to `" in c.value and "nightly.db`" in c.value
               for c in at.caption)
    assert "Sign-in is slowed for 1 name(s) or address(es) after failed attempts: see People." in [
        w.value for w in at.warning]
    slowed = next(df.value for df in at.dataframe if "Name or address" in df.value.columns)
    assert slowed[["By", "Name or address", "Failures in a row"]].values.tolist() == [["name", "ada", 3]]
