"""The Review page through AppTest against a real database file, including the blinding scan."""

from __future__ import annotations

import csv
import io

import pytest
from conftest import ROOT
from streamlit.testing.v1 import AppTest
from test_practice import PRACTICE_1, PRACTICE_2, add_practice_runs
from test_review_studies import REFUSALS, RUN_1, RUN_2, SECRETS, good_rating, make_review_db, store_refusing

from rocore.data.case_import import import_cases
from rocore.review import adjudication, practice
from rocore.review import studies as review
from rocore.store import db
from rocore.store.db import opened

PAGE = str(ROOT / "app_pages" / "review.py")


@pytest.fixture
def study(db_path, monkeypatch):
    monkeypatch.setenv("ROCORE_DB", str(db_path))
    monkeypatch.chdir(ROOT)
    return make_review_db(db_path)


def open_page(info: dict, name: str = "ada") -> AppTest:
    """A new browser session of `name`, signed in as app.py leaves it."""
    at = AppTest.from_file(PAGE, default_timeout=30)
    at.session_state["user"] = {"id": info["ids"][name], "name": name, "role": "reviewer"}
    at.run()
    assert not at.exception
    return at


def rate(at: AppTest, a: str = "Acceptable", b: str = "Not acceptable", likert=(4, 2), preference="A",
         comment: str = "") -> AppTest:
    at.radio(key=next(r.key for r in at.radio if r.key.startswith("acceptable-a"))).set_value(a)
    at.radio(key=next(r.key for r in at.radio if r.key.startswith("acceptable-b"))).set_value(b)
    for side, score in zip("ab", likert):
        at.radio(key=next(r.key for r in at.radio if r.key.startswith(f"likert-{side}"))).set_value(score)
    at.radio(key=next(r.key for r in at.radio if r.key.startswith("preference"))).set_value(preference)
    at.text_area[0].set_value(comment)
    return submit(at)


def submit(at: AppTest) -> AppTest:
    next(b for b in at.button if b.label == "Submit").click()
    at.run()
    assert not at.exception
    return at


def stored(db_path) -> list[dict]:
    with opened(db_path) as conn:
        return [dict(r) for r in conn.execute(
            "SELECT r.*, a.position, a.run_a_id FROM ratings r JOIN assignments a USING (assignment_id) "
            "ORDER BY rating_id")]


def test_shows_the_case_both_outputs_and_progress(study, db_path):
    at = open_page(study)
    assert at.title[0].value == "Review"
    assert at.subheader[0].value == "Case 1 of 8"
    assert "0 of 8 rated" in str(at.get("progress")[0].proto)
    with opened(db_path) as conn:
        case_id, run_a = conn.execute("SELECT case_id, run_a_id FROM assignments WHERE reviewer_id = ? AND "
                                      "position = 1", (study["ids"]["ada"],)).fetchone()
        diagnosis = conn.execute("SELECT diagnosis FROM cases WHERE case_id = ?", (case_id,)).fetchone()[0]
        texts = {run: conn.execute("SELECT answer FROM generations WHERE run_id = ? AND case_id = ?",
                                   (run, case_id)).fetchone()[0] for run in (RUN_1, RUN_2)}
    shown = [t.value for t in at.text]
    assert shown[1:] == [diagnosis, texts[run_a], texts[RUN_2 if run_a == RUN_1 else RUN_1]]
    assert shown[0].startswith("Site: prostate · Age: ")
    assert [r.label for r in at.radio] == [
        "Is Regimen A clinically acceptable?", "Score of Regimen A (1 poor, 5 excellent)",
        "Is Regimen B clinically acceptable?", "Score of Regimen B (1 poor, 5 excellent)",
        "Which do you prefer?"]
    assert at.radio[0].options == ["Acceptable", "Not acceptable"] and at.radio[0].value is None


def test_submit_stores_at_once_and_shows_the_next_case(study, db_path):
    at = rate(open_page(study), comment="fine")
    assert at.success[0].value == "Saved case 1."
    assert at.subheader[0].value == "Case 2 of 8"
    assert "1 of 8 rated" in str(at.get("progress")[0].proto)
    [saved] = stored(db_path)
    columns = ("position", "revision", "acceptable_a", "acceptable_b", "likert_a", "likert_b", "preference",
               "comment")
    assert tuple(saved[c] for c in columns) == (1, 1, 1, 0, 4, 2, "A", "fine")


def test_an_incomplete_form_is_refused_and_nothing_stored(study, db_path):
    at = submit(open_page(study))
    assert at.error[0].value == "Mark each output Acceptable or Not acceptable."
    assert at.subheader[0].value == "Case 1 of 8"
    assert stored(db_path) == []


def answers_on_form(at: AppTest) -> dict:
    return {r.key.rsplit("-", 2)[0]: r.value for r in at.radio} | {"comment": at.text_area[0].value}


@pytest.mark.parametrize("cause", list(REFUSALS))
def test_a_save_the_store_refuses_keeps_the_answers_for_a_retry(study, db_path, cause, monkeypatch):
    monkeypatch.setattr(db, "BUSY_TIMEOUT_S", 0.3)  # how long a write waits for a lock (30 s in use)
    at = open_page(study)
    with store_refusing(db_path, cause):
        at = rate(at, comment="dose too high for the rectum")
    assert at.error[0].value == REFUSALS[cause]
    assert at.subheader[0].value == "Case 1 of 8" and stored(db_path) == []
    answers = {"acceptable-a": "Acceptable", "likert-a": 4, "acceptable-b": "Not acceptable", "likert-b": 2,
               "preference": "A", "comment": "dose too high for the rectum"}
    assert answers_on_form(at) == answers
    at = submit(at)  # the cause is gone: the same form, not filled in again
    assert at.success[0].value == "Saved case 1." and at.subheader[0].value == "Case 2 of 8"
    [saved] = stored(db_path)
    assert (saved["acceptable_a"], saved["likert_b"], saved["comment"]) == (1, 2, "dose too high for the rectum")


def test_resume_after_a_new_session_at_the_first_unrated_case(study, db_path):
    at = open_page(study)
    for _ in range(3):
        at = rate(at)
    at = open_page(study)  # a refresh, another browser or a restarted server: a new session
    assert at.subheader[0].value == "Case 4 of 8"
    assert "3 of 8 rated" in str(at.get("progress")[0].proto)


def test_revise_an_earlier_case_keeps_the_old_rating(study, db_path):
    at = rate(rate(open_page(study)))
    next(b for b in at.button if b.label == "Previous case").click()
    at.run()
    next(b for b in at.button if b.label == "Previous case").click()
    at.run()
    assert at.subheader[0].value == "Case 1 of 8"
    assert "You rated this case before (revision 1)" in at.caption[0].value
    b_key = next(r.key for r in at.radio if r.key.startswith("acceptable-b"))
    assert at.radio(key=b_key).value == "Not acceptable"
    at = rate(at, b="Acceptable", preference="none")
    assert at.success[0].value == "Revised case 1."
    assert at.subheader[0].value == "Case 3 of 8", "after a revision the first unrated case comes next"
    first = [r for r in stored(db_path) if r["position"] == 1]
    assert [(r["revision"], r["acceptable_b"], r["preference"]) for r in first] == [(1, 0, "A"),
                                                                                    (2, 1, "none")]


def test_an_unchanged_rating_is_kept_and_a_second_submission_of_a_new_one_still_reads_saved(study, db_path):
    at = rate(open_page(study))
    assert at.success[0].value == "Saved case 1."
    next(b for b in at.button if b.label == "Previous case").click()
    at.run()
    at = submit(at)
    assert at.success[0].value == "Kept case 1." and len(stored(db_path)) == 1
    at = open_page(study)  # case 2; its answer stored by a first submission the page never finished
    with opened(db_path) as conn:
        item = review.open_item(conn, study["ids"]["ada"], study["study_id"])
    review.save_rating(db_path, study["ids"]["ada"], item.assignment_id, good_rating(), 0)
    at = rate(at)
    assert at.success[0].value == "Saved case 2." and len(stored(db_path)) == 2


def test_flag_a_case_as_unratable_with_a_reason(study, db_path):
    at = open_page(study)
    next(b for b in at.button if b.label == "Flag as unratable").click()
    at.run()
    assert at.error[0].value == "Say why this case cannot be rated."
    at.text_input[0].set_value("the outputs are cut off")
    next(b for b in at.button if b.label == "Flag as unratable").click()
    at.run()
    assert at.success[0].value == "Flagged case 1." and at.subheader[0].value == "Case 2 of 8"
    [flag] = stored(db_path)
    assert flag["unratable_reason"] == "the outputs are cut off" and flag["acceptable_a"] is None


def test_two_tabs_the_stale_one_is_told_and_shown_the_stored_rating(study, db_path):
    first, second = open_page(study), open_page(study)
    rate(first, b="Acceptable")
    second = rate(second, b="Not acceptable")
    assert "was not saved" in second.warning[0].value
    assert second.subheader[0].value == "Case 1 of 8"
    b_key = next(r.key for r in second.radio if r.key.startswith("acceptable-b"))
    assert second.radio(key=b_key).value == "Acceptable", "the form now shows what the other tab stored"
    assert [r["acceptable_b"] for r in stored(db_path)] == [1]


def test_double_submit_stores_one_rating(study, db_path):
    at = open_page(study)
    item_key = next(b.key for b in at.button if b.label == "Submit")
    rate(at)
    with opened(db_path) as conn:
        item = review.open_item(conn, study["ids"]["ada"], study["study_id"], 1)
        again = review.submit_rating(conn, study["ids"]["ada"], item.assignment_id, good_rating(), 0)
        assert again.duplicate
    assert item_key == f"submit-{item.assignment_id}-0"
    assert len(stored(db_path)) == 1


def test_all_done_and_look_through_again(db_path, monkeypatch):
    monkeypatch.setenv("ROCORE_DB", str(db_path))
    monkeypatch.chdir(ROOT)
    info = make_review_db(db_path, n_cases=2, reviewers=("ada",), overlap=1)
    at = rate(rate(open_page(info), comment="dose too low for the stage"))
    assert at.success[-1].value == "You have rated all 2 cases of this study. Thank you!"
    assert {m.label: m.value for m in at.metric} == {"Rated": "2", "Flagged as unratable": "0",
                                                     "Revised after a first rating": "0", "With a comment": "1"}
    next(b for b in at.button if b.label == "Look through my ratings").click()
    at.run()
    assert at.subheader[0].value == "Case 1 of 2"


def test_without_assignments_or_sign_in(study, db_path):
    at = AppTest.from_file(PAGE, default_timeout=30).run()
    assert at.error[0].value == "Sign in first."
    assert "No cases are assigned to you yet" in open_page(study, "boss").info[0].value


def test_crafted_session_values_cannot_open_another_reviewers_study(study, db_path):
    with opened(db_path) as conn:
        bens_only = review.create_study(conn, actor_id=study["admin_id"], name="Ben only", run_1_id=RUN_1,
                                        run_2_id=RUN_2, reviewer_ids=[study["ids"]["ben"]], seed=1)
    at = AppTest.from_file(PAGE, default_timeout=30)
    at.session_state["user"] = {"id": study["ids"]["ada"], "name": "ada", "role": "reviewer"}
    at.session_state["review-study"] = bens_only
    at.session_state["review-position"] = 999
    at.run()
    assert not at.exception
    assert at.session_state["review-study"] == study["study_id"]
    assert at.subheader[0].value == "Case 8 of 8"


def everything_sent(at: AppTest) -> str:
    """Every element's protobuf (values, labels, help, options, markdown) and the session's state."""
    parts = []

    def walk(node):
        if getattr(node, "proto", None) is not None:
            parts.append(str(node.proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    parts += [f"{key!r}={at.session_state[key]!r}" for key in at.session_state]
    return "\n".join(parts)


def test_nothing_sent_to_the_reviewer_reveals_runs_models_or_sides(study, db_path):
    at = open_page(study)
    pages = [everything_sent(at)]
    at = rate(at)
    pages.append(everything_sent(at))
    next(b for b in at.button if b.label == "Previous case").click()
    at.run()
    pages.append(everything_sent(at))
    at = submit(at)  # unchanged: kept as it is
    pages.append(everything_sent(at))
    next(b for b in at.button if b.label == "Previous case").click()
    at.run()
    at = rate(at, b="Acceptable")  # a revision
    pages.append(everything_sent(at))
    while not any(s.value.startswith("You have rated all") for s in at.success):
        at = rate(at)
    pages.append(everything_sent(at))  # the reviewer's own summary
    sent = "\n".join(pages).casefold()
    assert "regimen a" in sent and "gy in" in sent
    leaked = [secret for secret in SECRETS if secret.casefold() in sent]
    assert leaked == []
    with opened(db_path) as conn:
        mapping = conn.execute("SELECT run_a_id, run_b_id FROM assignments WHERE reviewer_id = ?",
                               (study["ids"]["ada"],)).fetchall()
    assert {tuple(m) for m in mapping} == {(RUN_1, RUN_2), (RUN_2, RUN_1)}
    for key in at.session_state:
        assert not isinstance(at.session_state[key], (tuple, list, dict)) or key in ("user", "review-notice")


MARKDOWN = "[x](http://e.vil) ![i](http://e.vil/p.png) $x^2$"


def test_imported_fields_are_shown_as_plain_text(study, db_path):
    """An import can hold Markdown (links, remote images the browser would fetch, LaTeX): shown literally."""
    with opened(db_path) as conn:
        case = conn.execute("SELECT c.* FROM assignments a JOIN cases c USING (case_id) "
                            "WHERE a.reviewer_id = ? AND a.position = 1", (study["ids"]["ada"],)).fetchone()
        table = io.StringIO()
        csv.writer(table).writerows([
            ["case_id", "diagnosis", "regimen", "modality", "icd10", "site", "stage", "histology"],
            [case["case_id"], f"{case['diagnosis']} {MARKDOWN}", case["regimen"], case["modality"], case["icd10"],
             f"prostate {MARKDOWN}", f"T2 {MARKDOWN}", f"adenocarcinoma {MARKDOWN}"]])
        import_cases(conn, table.getvalue().encode(), "cases.csv", update=True)
    at = open_page(study)
    facts, diagnosis = at.text[0].value, at.text[1].value
    assert facts == (f"Site: prostate {MARKDOWN} · Stage: T2 {MARKDOWN} · Histology: adenocarcinoma {MARKDOWN}")
    assert diagnosis.endswith(MARKDOWN)
    rendered = []

    def walk(node):
        if getattr(node, "proto", None) is not None and "e.vil" in str(node.proto):
            rendered.append(node.type)
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    assert rendered == ["text", "text"], "only plain text elements carry the imported fields"


def adjudicate_on_page(at: AppTest, a: str, b: str) -> AppTest:
    at.radio(key=next(r.key for r in at.radio if r.key.startswith("adjudicate-a"))).set_value(a)
    at.radio(key=next(r.key for r in at.radio if r.key.startswith("adjudicate-b"))).set_value(b)
    next(b for b in at.button if b.label == "Submit verdict").click()
    at.run()
    assert not at.exception
    return at


def test_the_adjudicator_settles_the_disagreeing_cases_on_the_page(db_path, monkeypatch):
    from test_adjudication import rated_study

    monkeypatch.setenv("ROCORE_DB", str(db_path))
    monkeypatch.chdir(ROOT)
    info = rated_study(db_path)
    rater = open_page(info, "ada")
    assert not [r for r in rater.radio if r.label == "Work"], "a rater who adjudicates nothing sees no choice"

    at = open_page(info, "eve")
    assert not [r for r in at.radio if r.label == "Work"], "eve rates nothing: adjudication only"
    assert at.subheader[0].value == "Adjudication: 2 of 2 cases waiting"
    assert [r.label for r in at.radio] == ["Is Regimen A clinically acceptable?", "Is Regimen B clinically acceptable?"]
    captions = [c.value for c in at.caption if c.value.endswith("acceptable")]
    assert len(captions) == 2 and all(" of 3 raters found Regimen " in c for c in captions)
    next(b for b in at.button if b.label == "Submit verdict").click()
    at.run()
    assert at.error[0].value == "Mark each output Acceptable or Not acceptable."
    at = adjudicate_on_page(at, "Acceptable", "Not acceptable")
    assert at.success[0].value == "Verdict stored." and at.subheader[0].value == "Adjudication: 1 of 2 cases waiting"
    at = adjudicate_on_page(at, "Not acceptable", "Acceptable")
    assert at.success[-1].value == ("No case waits for adjudication: 2 of 2 cases whose raters disagree are "
                                    "adjudicated.")
    with opened(db_path) as conn:
        assert conn.execute("SELECT count(DISTINCT case_id), count(*) FROM adjudications").fetchone()[:] == (2, 2)
        assert adjudication.counts(conn, info["study_id"])["waiting"] == 0


def test_someone_who_rates_and_adjudicates_chooses_which_work(db_path, monkeypatch):
    from test_adjudication import rated_study

    monkeypatch.setenv("ROCORE_DB", str(db_path))
    monkeypatch.chdir(ROOT)
    info = rated_study(db_path)
    with opened(db_path) as conn:
        review.create_study(conn, actor_id=info["admin_id"], name="Second look", run_1_id=RUN_1, run_2_id=RUN_2,
                            reviewer_ids=[info["ids"]["eve"]], form=review.Form())
    at = open_page(info, "eve")
    work = at.radio(key="review-work")
    assert work.options == ["Rate cases", "Adjudicate"] and work.value == "Rate cases"
    assert at.subheader[0].value == "Case 1 of 4"
    work.set_value("Adjudicate").run()
    assert not at.exception and at.subheader[0].value == "Adjudication: 2 of 2 cases waiting"


def test_a_study_with_edit_level_and_harm_asks_them_and_stores_acceptability_derived(db_path, monkeypatch):
    monkeypatch.setenv("ROCORE_DB", str(db_path))
    monkeypatch.chdir(ROOT)
    info = make_review_db(db_path, form=review.Form(edit_level=True, harm=True, comment=False))
    at = open_page(info)
    assert [r.label for r in at.radio] == [
        "How much would Regimen A need editing before use?", "Potential harm if Regimen A were followed",
        "How likely is that harm from Regimen A? (only with some harm)",
        "How much would Regimen B need editing before use?", "Potential harm if Regimen B were followed",
        "How likely is that harm from Regimen B? (only with some harm)"]
    assert at.radio[0].options == ["Acceptable as is", "Minor edits", "Major edits", "Unacceptable"]
    for prefix, value in (("edit-a", 1), ("edit-b", 3), ("harm-a", 0), ("likelihood-a", 2), ("harm-b", 2),
                          ("likelihood-b", 1)):
        at.radio(key=next(r.key for r in at.radio if r.key.startswith(prefix))).set_value(value)
    at = submit(at)
    assert at.success[0].value == "Saved case 1."
    [row] = stored(db_path)
    assert (row["acceptable_a"], row["acceptable_b"], row["edit_a"], row["edit_b"]) == (1, 0, 1, 3)
    assert (row["harm_a"], row["likelihood_a"], row["harm_b"], row["likelihood_b"]) == (0, None, 2, 1)
    next(b for b in at.button if b.label == "Previous case").click()
    at.run()
    assert [r.value for r in at.radio] == [1, 0, None, 3, 2, 1], "the stored answers, likelihood left empty"


def with_practice(db_path, monkeypatch, practice_n: int) -> dict:
    """The study of make_review_db with `practice_n` practice cases from the train part, served to the page."""
    monkeypatch.setenv("ROCORE_DB", str(db_path))
    monkeypatch.chdir(ROOT)
    info = make_review_db(db_path, n_cases=30)
    with opened(db_path) as conn:
        add_practice_runs(conn)
        practice.add_practice_cases(conn, actor_id=info["admin_id"], study_id=info["study_id"],
                                    practice_runs=(PRACTICE_1, PRACTICE_2), practice_n=practice_n)
    return info


def test_practice_cases_come_first_reveal_the_reference_and_then_the_study_starts(db_path, monkeypatch):
    info = with_practice(db_path, monkeypatch, 2)
    at = open_page(info)
    pages = []
    for number in (1, 2):
        assert at.subheader[0].value == f"Practice case {number} of 2"
        assert "never counted in any result" in at.info[0].value
        pages.append(everything_sent(at))
        at = rate(at)
        assert at.subheader[0].value == f"Practice case {number} of 2" and "Reference regimen" in at.markdown[-1].value
        assert "Regimen A: acceptable, score (1-5): 4" in [t.value for t in at.text][-2]
        pages.append(everything_sent(at))
        next(b for b in at.button if b.label == "Continue").click()
        at.run()
    assert at.subheader[0].value.startswith("Case 1 of ")
    sent = "\n".join(pages).casefold()
    assert "60 gy in 30 fractions" in sent and "70 gy in 35 fractions" in sent
    assert [s for s in [*SECRETS, str(PRACTICE_1), str(PRACTICE_2)] if s.casefold() in sent] == []
    assert stored(db_path) == []
    with opened(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM practice_ratings").fetchone()[0] == 2


def test_switching_study_on_a_practice_reveal_opens_the_other_study(db_path, monkeypatch):
    info = with_practice(db_path, monkeypatch, 1)
    with opened(db_path) as conn:
        other = review.create_study(conn, actor_id=info["admin_id"], name="Second look", run_1_id=RUN_1,
                                    run_2_id=RUN_2, reviewer_ids=[info["ids"]["ada"]], sample_n=3)
    at = open_page(info)
    at = rate(at)
    assert "Reference regimen" in at.markdown[-1].value
    at.selectbox(key="review-study").set_value(other)
    at.run()
    assert not at.exception and at.subheader[0].value == "Case 1 of 3"
