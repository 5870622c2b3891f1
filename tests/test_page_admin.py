"""The Admin page through AppTest: studies, people and their one-time codes, the audit log, roles."""

from __future__ import annotations

import pytest
from conftest import ROOT
from streamlit.testing.v1 import AppTest
from test_review_studies import RUN_1, RUN_2, make_review_db

from rocore.review import adjudication, auth, blinding
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
    for label in ("a score", "the edit level", "the potential harm"):
        next(c for c in at.checkbox if c.label.startswith(label)).check()
    button(at, "Create study").click()
    at.run()
    assert not at.exception
    assert at.success[0].value.startswith("Created study 'Second look'")
    assert at.expander[1].label == "Second look: 0 of 5 ratings done"
    assert any("3 reviewers per case is the usual choice" in i.value for i in at.info)
    with opened(db_path) as conn:
        study = conn.execute("SELECT * FROM studies WHERE name = 'Second look'").fetchone()
        assert (study["sample_n"], study["seed"], study["overlap"]) == (5, 42, 1)
        assert study["form"] == ('{"likert": true, "preference": false, "comment": true, "edit_level": true, '
                                 '"harm": true}')
        second = study["study_id"]
        ada = info["ids"]["ada"]
        while (item := review.open_item(conn, ada, second)) is not None:
            review.submit_rating(conn, ada, item.assignment_id, review.Rating(
                edit_a=item.position % 4, edit_b=1, harm_a=item.position % 3, harm_b=0, likelihood_a=2,
                likert_a=3, likert_b=4), 0)
    at.run()
    captions = [c.value for c in at.expander[1].caption]
    for line in ("Edit level, per-case means over", "Potential harm if followed, per-case means over",
                 "Score (1-5), per-case means over", "run 1: severe harm in", "run 2: severe harm in 0%",
                 "Likelihood of that harm (ratings with some harm):"):
        assert any(line in caption for caption in captions), (line, captions)


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


def test_grow_repair_and_close_a_study_from_its_section(info, db_path):
    sid, ids = info["study_id"], info["ids"]
    with opened(db_path) as conn:
        dora = auth.add_user(conn, "dora", actor_id=info["admin_id"])[0].id
    at = open_page(info)
    assert at.button(key=f"join-button-{sid}").disabled and at.button(key=f"close-{sid}").disabled
    assert at.selectbox(key=f"join-{sid}").options == ["boss", "dora"], "active people not in the study"
    at.selectbox(key=f"join-{sid}").set_value(dora).run()
    at.button(key=f"join-button-{sid}").click().run()
    assert not at.exception and not at.error
    assert at.success[0].value == "Added 'dora' to 'Prostate pilot': 6 unrated cases taken over from ada (2), ben (2), " \
                                  "cleo (2)."
    assert list(at.dataframe[0].value["assigned"]) == [6, 6, 6, 6]

    with opened(db_path) as conn:
        auth.set_active(conn, "ben", False, actor_id=info["admin_id"])
    at.run()
    at.selectbox(key=f"from-{sid}").set_value("ben").run()
    at.button(key=f"reassign-{sid}").click().run()
    assert not at.exception and not at.error
    assert at.success[0].value.startswith("Reassigned 6 unrated cases of 'ben' to ")
    progress = at.dataframe[0].value
    assert list(progress["reviewer"]) == ["ada", "cleo", "dora"] and sum(progress["assigned"]) == 24

    at.checkbox(key=f"close-sure-{sid}").check().run()
    at.button(key=f"close-{sid}").click().run()
    assert at.success[0].value == "Closed 'Prostate pilot': 0 of 24 assignments rated."
    assert at.expander[1].label == "Prostate pilot: 0 of 24 ratings done (closed)"
    assert any(i.value.startswith("Closed on ") and i.value.endswith(" by boss: it takes no more ratings.")
               for i in at.info)
    assert not [b for b in at.button if b.key and b.key.endswith(f"-{sid}")], "a closed study has no controls"
    with opened(db_path) as conn:
        actions = [r[0] for r in conn.execute("SELECT action FROM audit_log WHERE entity = 'studies' AND actor = 'boss' "
                                              "ORDER BY audit_id")]
    assert actions == ["create-study", "add-reviewer-to-study", "reassign-unrated", "close-study"]

    review_page = AppTest.from_file(str(ROOT / "app_pages" / "review.py"), default_timeout=30)
    review_page.session_state["user"] = {"id": ids["ada"], "name": "ada", "role": "reviewer"}
    review_page.run()
    assert not review_page.exception
    assert review_page.info[0].value.startswith("This study was closed on ")
    assert [m.label for m in review_page.metric] == ["Rated", "Flagged as unratable", "Revised after a first rating",
                                                     "With a comment"]
    assert not review_page.radio and not review_page.text, "no case, no form"


def test_a_refused_change_to_a_study_says_why(info, db_path):
    with opened(db_path) as conn:
        pair = review.create_study(conn, actor_id=info["admin_id"], name="Pair", run_1_id=RUN_1, run_2_id=RUN_2,
                                   reviewer_ids=[info["ids"]["ada"], info["ids"]["ben"]], sample_n=4, overlap=2)
    at = open_page(info)
    at.selectbox(key=f"from-{pair}").set_value("ben").run()
    assert info["ids"]["ben"] not in at.multiselect(key=f"to-{pair}").options
    at.button(key=f"reassign-{pair}").click().run()
    assert not at.exception and not at.success
    assert at.error[0].value == ("Each of ben's 4 unrated case(s) is already with every other chosen reviewer: "
                                 "none can be reassigned.")


def test_name_the_adjudicator_and_see_the_counts(info, db_path):
    sid = info["study_id"]
    with opened(db_path) as conn:
        eve = auth.add_user(conn, "eve", actor_id=info["admin_id"])[0].id
    at = open_page(info)
    assert any(c.value == "Adjudication (no adjudicator named yet): 0 cases whose raters disagree on "
                          "acceptability, 0 adjudicated, 0 waiting." for c in at.caption)
    assert at.button(key=f"adjudicator-{sid}-set").disabled
    assert at.selectbox(key=f"adjudicator-{sid}-who").options == ["boss", "eve"], "active, and rating nothing"
    at.selectbox(key=f"adjudicator-{sid}-who").set_value(eve).run()
    at.button(key=f"adjudicator-{sid}-set").click().run()
    assert not at.exception and not at.error
    assert at.success[0].value == "'eve' adjudicates 'Prostate pilot'."
    assert any(c.value.startswith("Adjudication (by eve): 0 cases") for c in at.caption)
    assert at.selectbox(key=f"adjudicator-{sid}-who").options == ["boss"]
    with opened(db_path) as conn:
        assert adjudication.counts(conn, sid)["adjudicator"] == "eve"
        entry = conn.execute("SELECT actor, detail FROM audit_log WHERE action = 'set-adjudicator'").fetchone()
    assert entry["actor"] == "boss" and f'"adjudicator_id": {eve}' in entry["detail"]


def test_practice_cases_are_added_from_train_runs_and_their_progress_shown(info, db_path):
    from test_practice import PRACTICE_1, PRACTICE_2, add_practice_runs

    with opened(db_path) as conn:
        add_practice_runs(conn)
    at = open_page(info)
    sid = info["study_id"]
    at.selectbox(key=f"practice-{sid}-1").set_value(PRACTICE_1)
    at.selectbox(key=f"practice-{sid}-2").set_value(PRACTICE_2)
    at.number_input(key=f"practice-{sid}-n").set_value(2)
    at.run()
    at.button(key=f"practice-{sid}-add").click()
    at.run()
    assert not at.exception and at.success[0].value == "'Prostate pilot' has 2 practice cases."
    assert any(f"Practice cases from runs {PRACTICE_1} and {PRACTICE_2}" in c.value and "ada 0 of 2" in c.value
               for c in at.expander[1].caption)
