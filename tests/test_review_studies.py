"""Review studies: balanced, randomized, blinded assignments; append-only ratings under concurrency.

`make_review_db` builds the database the page and browser tests use too: two generation runs with
distinctive ids and model paths, so a blinding test can search for them in whatever a reviewer gets.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import queue
import os
import sqlite3
import subprocess
import sys
import threading
import types
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import HEADER, ROOT, csv_bytes, row
from scipy.stats import binomtest
from statsmodels.stats.proportion import proportion_confint

from rocore.model.answers import extract_answer
from rocore.review import auth
from rocore.review import studies as review
from rocore.data.case_import import import_cases
from rocore.store import audit as audit_log
from rocore.store import db
from rocore.store.db import connect, opened
from rocore.review.studies import Form, Rating, ReviewError, StaleRating
from rocore.data.splits import create_split

RUN_1, RUN_2 = 48731, 59212  # base, fine-tuned: ids no page text would contain by chance
BASE_PATH = "/srv/models/zephyrine-7b-base"
ADAPTER_PATH = "/srv/adapters/zephyrine-qlora-r16"
SECRETS = [str(RUN_1), str(RUN_2), BASE_PATH, ADAPTER_PATH, "zephyrine", "qlora", "adapter", "fine-tuned",
           "finetuned", "run_a", "run_b", "run_1", "run_2", "run_id"]


def base_answer(i: int) -> str:
    return f"{40 + i} Gy in {20 + i} fractions"


def finetuned_answer(i: int) -> str:
    return f"{60 + i} Gy in {30 + i} fractions to the prostate"


def make_review_db(db_path: Path, n_cases: int = 12, reviewers: tuple[str, ...] = ("ada", "ben", "cleo"),
                   form: Form = Form(likert=True, preference=True, comment=True), overlap: int = 2,
                   study_name: str = "Prostate pilot",
                   raw_outputs: Callable[[int], tuple[str, str]] | None = None) -> dict:
    """Cases, two runs with outputs for every case, an admin and reviewers, and one study (if any reviewers).

    raw_outputs(i) gives case i's raw texts of run 1 and run 2, stored with the answer generation would
    read from them; without it the outputs are "Answer: " and base_answer(i) or finetuned_answer(i).
    Returns codes (name -> access code), ids (name -> reviewer id), the study id and the admin id.
    """
    rows = [row(f"P{i:03d}", diagnosis=f"{60 + i}-year-old man, prostate adenocarcinoma, Gleason {6 + i % 4}")
            + f",prostate,{60 + i % 40}" for i in range(n_cases)]
    with opened(db_path) as conn:
        import_cases(conn, csv_bytes(*rows, header=HEADER + ",site,age"), "cases.csv")
        split_id = create_split(conn, "main", seed=0)
        conn.execute("INSERT INTO models (model_id, name, kind, path) VALUES (1, ?, 'base', ?)",
                     (BASE_PATH, BASE_PATH))
        conn.execute("INSERT INTO models (model_id, name, kind, path, base_model_id) "
                     "VALUES (2, ?, 'adapter', ?, 1)", (ADAPTER_PATH, ADAPTER_PATH))
        for run_id, adapter in ((RUN_1, None), (RUN_2, 2)):
            conn.execute("INSERT INTO generation_runs (run_id, base_model_id, adapter_model_id, split_id, "
                         "part, tasks, quantization, status) VALUES (?, 1, ?, ?, 'test', '[\"regimen\"]', "
                         "'nf4', 'finished')", (run_id, adapter, split_id))
        for i in range(n_cases):
            raws = raw_outputs(i) if raw_outputs else (f"Answer: {base_answer(i)}", f"Answer: {finetuned_answer(i)}")
            for run_id, raw in zip((RUN_1, RUN_2), raws):
                conn.execute("INSERT INTO generations (run_id, case_id, task, template_id, raw_text, answer, "
                             "prompt_tokens, output_tokens, seconds) "
                             "VALUES (?, ?, 'regimen', 'regimen-v1', ?, ?, 10, 10, 0.1)",
                             (run_id, f"P{i:03d}", raw, extract_answer("regimen", raw)))
        admin = auth.create_first_admin(conn, "boss", "correct horse battery")
        codes, ids = {"boss": "correct horse battery"}, {"boss": admin.id}
        for name in reviewers:
            user, codes[name] = auth.add_user(conn, name, actor_id=admin.id)
            ids[name] = user.id
        study_id = review.create_study(conn, actor_id=admin.id, name=study_name, run_1_id=RUN_1,
                                       run_2_id=RUN_2, reviewer_ids=[ids[n] for n in reviewers], seed=7,
                                       overlap=overlap, form=form) if reviewers else None
    return {"codes": codes, "ids": ids, "study_id": study_id, "admin_id": admin.id}


@pytest.fixture
def study(db_path):
    return make_review_db(db_path)


def good_rating(form: Form = Form(likert=True, preference=True, comment=True), **changes) -> Rating:
    values = {"acceptable_a": True, "acceptable_b": False,
              "likert_a": 4 if form.likert else None, "likert_b": 2 if form.likert else None,
              "preference": "A" if form.preference else None}
    return Rating(**{**values, **changes})


# --- Assignment -----------------------------------------------------------------------------------

@pytest.mark.parametrize("n_cases, n_reviewers, overlap", [(50, 4, 2), (7, 3, 1), (30, 5, 3), (11, 2, 2)])
def test_assignments_are_balanced(n_cases, n_reviewers, overlap):
    cases = [f"C{i}" for i in range(n_cases)]
    planned = review.plan_assignments(cases, list(range(1, n_reviewers + 1)), overlap, seed=3)
    per_case = Counter(p.case_id for p in planned)
    assert set(per_case) == set(cases) and set(per_case.values()) == {overlap}
    assert len({(p.reviewer_id, p.case_id) for p in planned}) == len(planned)
    load = Counter(p.reviewer_id for p in planned)
    assert max(load.values()) - min(load.values()) <= 1
    for reviewer, n in load.items():
        mine = [p for p in planned if p.reviewer_id == reviewer]
        assert sorted(p.position for p in mine) == list(range(1, n + 1))
        run_1_as_a = sum(p.run_1_is_a for p in mine)
        assert abs(run_1_as_a - (n - run_1_as_a)) <= 1, "each reviewer sees each run as A half the time"


def test_assignments_are_random_but_reproducible():
    cases, reviewers = [f"C{i:02d}" for i in range(40)], [1, 2, 3]
    first = review.plan_assignments(cases, reviewers, 1, seed=1)
    assert review.plan_assignments(cases, reviewers, 1, seed=1) == first
    other = review.plan_assignments(cases, reviewers, 1, seed=2)
    assert [(p.reviewer_id, p.case_id) for p in other] != [(p.reviewer_id, p.case_id) for p in first]
    for reviewer in reviewers:
        order = [p.case_id for p in sorted(first, key=lambda p: p.position) if p.reviewer_id == reviewer]
        assert order != sorted(order), "case order is shuffled per reviewer"
    sides = [p.run_1_is_a for p in sorted(first, key=lambda p: (p.reviewer_id, p.position))]
    assert 0 < sum(sides) < len(sides) and sides != sorted(sides)


def test_sides_are_independent_of_the_case_across_seeds():
    """Over many seeds, every (reviewer, case) sees run 1 as A about half the time."""
    cases, shown = [f"C{i}" for i in range(10)], Counter()
    for seed in range(400):
        for p in review.plan_assignments(cases, [1, 2], 2, seed):
            shown[(p.reviewer_id, p.case_id)] += p.run_1_is_a
    assert all(120 < n < 280 for n in shown.values())


def test_sample_is_drawn_with_the_stored_seed():
    cases = [f"C{i:03d}" for i in range(100)]
    assert review.sample_cases(cases, None, 0) == cases
    assert review.sample_cases(cases, 10, 5) == review.sample_cases(list(reversed(cases)), 10, 5)
    assert review.sample_cases(cases, 10, 5) != review.sample_cases(cases, 10, 6)
    with pytest.raises(ReviewError, match="Cannot sample 101 cases: 100 have outputs"):
        review.sample_cases(cases, 101, 0)
    with pytest.raises(ReviewError, match="Overlap must be between 1 and the number of reviewers"):
        review.plan_assignments(cases, [1, 2], 3, 0)


def stored_sides(conn, study_id: int) -> dict[tuple[int, int], bool]:
    """(reviewer id, position) -> whether run 1 is "A", as stored."""
    return {(r["reviewer_id"], r["position"]): r["run_a_id"] == RUN_1 for r in conn.execute(
        "SELECT reviewer_id, position, run_a_id FROM assignments WHERE study_id = ?", (study_id,))}


def test_sides_cannot_be_predicted_from_the_seed_without_the_case_ids(db_path):
    """Knowing a study's seed, name, reviewers, overlap and number of cases, but not its case ids, one
    predicts the side at each reviewer's position no better than a coin (the demo's 60 assignments each)."""
    info = make_review_db(db_path, n_cases=30, overlap=2)
    reviewers = [info["ids"][name] for name in ("ada", "ben", "cleo")]
    right = total = 0
    with opened(db_path) as conn:
        for seed in range(20):
            name = f"Seed {seed}"
            study_id = review.create_study(conn, actor_id=info["admin_id"], name=name, run_1_id=RUN_1,
                                           run_2_id=RUN_2, reviewer_ids=reviewers, seed=seed, overlap=2)
            sides = stored_sides(conn, study_id)
            guessed = review.plan_assignments([f"X{i:03d}" for i in range(30)], reviewers, 2, seed, study=name)
            right += sum(sides[(p.reviewer_id, p.position)] == p.run_1_is_a for p in guessed)
            total += len(guessed)
    assert total == 20 * 60
    assert binomtest(right, total, 0.5).pvalue > 0.01 and abs(right / total - 0.5) < 0.05, (right, total)


def test_the_stored_seed_and_case_ids_reproduce_every_assignment(db_path, study):
    with opened(db_path) as conn:
        seed, name = conn.execute("SELECT seed, name FROM studies WHERE study_id = ?",
                                  (study["study_id"],)).fetchone()
        rows = conn.execute("SELECT reviewer_id, case_id, position, run_a_id FROM assignments "
                            "WHERE study_id = ? ORDER BY assignment_id", (study["study_id"],)).fetchall()
    cases = sorted({r["case_id"] for r in rows})
    planned = review.plan_assignments(cases, [study["ids"][n] for n in ("ada", "ben", "cleo")], 2, seed, study=name)
    assert sorted(planned, key=lambda p: (p.reviewer_id, p.position)) == sorted(
        (review.Planned(r["reviewer_id"], r["case_id"], r["position"], r["run_a_id"] == RUN_1) for r in rows),
        key=lambda p: (p.reviewer_id, p.position))
    other_study = review.plan_assignments(cases, [study["ids"][n] for n in ("ada", "ben", "cleo")], 2, seed,
                                          study="Another study")
    assert [p.run_1_is_a for p in other_study] != [p.run_1_is_a for p in planned], "the study is in the key"


def test_create_study_stores_assignments_and_audits(db_path, study):
    with opened(db_path) as conn:
        stored = conn.execute("SELECT * FROM studies").fetchone()
        settings = (stored["run_1_id"], stored["run_2_id"], stored["seed"], stored["overlap"])
        assert settings == (RUN_1, RUN_2, 7, 2)
        rows = conn.execute("SELECT * FROM assignments").fetchall()
        assert len(rows) == 24 and Counter(r["case_id"] for r in rows) == {f"P{i:03d}": 2 for i in range(12)}
        assert {r["run_a_id"] for r in rows} == {RUN_1, RUN_2}
        entry = conn.execute("SELECT * FROM audit_log WHERE action = 'create-study'").fetchone()
        assert entry["actor"] == "boss" and '"n_assignments": 24' in entry["detail"]
        listed = review.list_studies(conn, actor_id=study["admin_id"])
        assert listed[0]["n_cases"] == 12 and listed[0]["n_done"] == 0


def test_create_study_with_a_sample_and_refusals(db_path, study):
    ids, admin = study["ids"], study["admin_id"]
    with opened(db_path) as conn:
        def create(**changes):
            args = dict(actor_id=admin, name="Second", run_1_id=RUN_1, run_2_id=RUN_2,
                        reviewer_ids=[ids["ada"], ids["ben"]], sample_n=5, seed=11)
            return review.create_study(conn, **{**args, **changes})

        for changes, message in [
            ({"actor_id": ids["ada"]}, "not allowed"),
            ({"name": "Prostate pilot"}, "already a study named"),
            ({"name": "Zephyrine-7B-base vs tuned"}, "leave the model names out"),
            ({"run_2_id": RUN_1}, "two different generation runs"),
            ({"run_2_id": 1}, "no generation run 1"),
            ({"task": "icd10"}, "has no 'icd10' outputs"),
            ({"sample_n": 13}, "Cannot sample 13 cases: 12 have outputs"),
            ({"overlap": 3}, "Overlap must be between 1 and the number of reviewers"),
            ({"reviewer_ids": []}, "at least one reviewer"),
        ]:
            with pytest.raises(auth.AuthError if "allowed" in message else ReviewError, match=message):
                create(**changes)
        study_id = create()
        cases = {r[0] for r in conn.execute("SELECT case_id FROM assignments WHERE study_id = ?",
                                            (study_id,))}
        assert cases == set(review.sample_cases([f"P{i:03d}" for i in range(12)], 5, 11))
        assert conn.execute("SELECT count(*) FROM studies").fetchone()[0] == 2


# --- Rating ---------------------------------------------------------------------------------------

def test_rate_resume_revise_and_flag(db_path, study):
    ada = study["ids"]["ada"]
    with opened(db_path) as conn:
        first = review.open_item(conn, ada, study["study_id"])
        assert (first.position, first.total, first.done, first.revision) == (1, 8, 0, 0)
        assert "prostate adenocarcinoma" in first.patient["diagnosis"] and first.patient["site"] == "prostate"
        saved = review.submit_rating(conn, ada, first.assignment_id, good_rating(comment="  dose is high "),
                                     0, client="test")
        assert (saved.revision, saved.duplicate) == (1, False)
        second = review.open_item(conn, ada, study["study_id"])
        assert (second.position, second.done) == (2, 1)

        again = review.open_item(conn, ada, study["study_id"], position=1)
        assert again.current == good_rating(comment="dose is high") and again.revision == 1
        revised = good_rating(acceptable_b=True, preference="none")
        review.submit_rating(conn, ada, again.assignment_id, revised, 1)
        review.submit_rating(conn, ada, second.assignment_id, Rating(unratable_reason="outputs cut off"), 0)
        assert review.open_item(conn, ada, study["study_id"]).position == 3
        history = review.rating_history(conn, ada, again.assignment_id)
        assert [(rev, r.acceptable_b) for rev, _, r in history] == [(1, False), (2, True)]
        ratings = conn.execute("SELECT assignment_id, revision FROM ratings ORDER BY rating_id").fetchall()
        assert [tuple(r) for r in ratings] == [(first.assignment_id, 1), (first.assignment_id, 2),
                                                (second.assignment_id, 1)]
        current = conn.execute("SELECT count(*) FROM current_ratings").fetchone()[0]
        assert current == 2
        log = conn.execute("SELECT actor, action, entity, detail, client FROM audit_log "
                           "WHERE entity = 'ratings' ORDER BY audit_id").fetchall()
        assert [r["action"] for r in log] == ["rate", "revise", "flag-unratable"]
        assert log[0]["actor"] == "ada" and log[0]["client"] == "test"
        assert '"acceptable_a": true' in log[0]["detail"] and '"has_comment": true' in log[0]["detail"]
        assert "dose is high" not in log[0]["detail"] and "cut off" not in log[2]["detail"]
        assert "prostate" not in "".join(r["detail"] for r in conn.execute("SELECT detail FROM audit_log"))


def test_every_case_done_returns_none(db_path):
    info = make_review_db(db_path, n_cases=3, reviewers=("ada",), overlap=1)
    ada = info["ids"]["ada"]
    with opened(db_path) as conn:
        while (item := review.open_item(conn, ada, info["study_id"])) is not None:
            review.submit_rating(conn, ada, item.assignment_id, good_rating(), item.revision)
        assert review.my_studies(conn, ada) == [{"study_id": info["study_id"], "name": "Prostate pilot",
                                                 "task": "regimen", "closed_at": None, "total": 3, "done": 3}]
        assert review.open_item(conn, ada, info["study_id"], position=99).position == 3


def test_the_form_decides_what_a_rating_needs(db_path):
    info = make_review_db(db_path, reviewers=("ada",), overlap=1, form=Form(likert=False, preference=False,
                                                                             comment=False))
    ada = info["ids"]["ada"]
    with opened(db_path) as conn:
        item = review.open_item(conn, ada, info["study_id"])
        for rating, message in [
            (Rating(acceptable_a=True), "Mark each output Acceptable or Not acceptable"),
            (Rating(True, False, likert_a=3, likert_b=3), "does not ask for score"),
            (Rating(True, False, edit_a=0, edit_b=3), "does not ask for edit level"),
            (Rating(True, False, harm_a=0, harm_b=0), "does not ask for potential harm"),
            (Rating(True, False, preference="A"), "does not ask for a preference"),
            (Rating(True, False, comment="x"), "does not ask for comments"),
            (Rating(unratable_reason="   "), "Say why"),
            (Rating(True, False, comment="x" * 2001), "at most 2000 characters"),
        ]:
            with pytest.raises(ReviewError, match=message):
                review.submit_rating(conn, ada, item.assignment_id, rating, 0)
        review.submit_rating(conn, ada, item.assignment_id, Rating(True, False), 0)
    full = Form(likert=True, preference=True)
    with pytest.raises(ReviewError, match=r"score \(1-5\) of output A: 1, 2, 3, 4, 5"):
        review.check_rating(Rating(True, True, likert_a=6, likert_b=1, preference="A"), full)
    with pytest.raises(ReviewError, match="the output you prefer"):
        review.check_rating(Rating(True, True, likert_a=5, likert_b=1), full)
    flagged = review.check_rating(Rating(True, None, unratable_reason=" no diagnosis "), full)
    assert flagged == Rating(unratable_reason="no diagnosis")


def test_the_edit_level_decides_acceptability_and_likelihood_is_asked_only_with_some_harm(db_path):
    scales = Form(edit_level=True, harm=True, comment=False)
    info = make_review_db(db_path, reviewers=("ada",), overlap=1, form=scales)
    ada = info["ids"]["ada"]
    with opened(db_path) as conn:
        item = review.open_item(conn, ada, info["study_id"])
        assert item.form == scales and [s.key for s in item.form.scales] == ["edit", "harm", "likelihood"]
        for rating, message in [
            (Rating(edit_a=0, harm_a=0, harm_b=0), "edit level of output B"),
            (Rating(edit_a=4, edit_b=0, harm_a=0, harm_b=0), "edit level of output A: Acceptable as is, Minor edits"),
            (Rating(edit_a=0, edit_b=1, harm_a=0), "potential harm if followed of output B"),
            (Rating(edit_a=0, edit_b=1, harm_a=2, harm_b=0), "likelihood of that harm of output A: Low, Medium, High"),
            (Rating(False, None, edit_a=1, edit_b=2, harm_a=0, harm_b=0), "edit level of output A says it is acceptable"),
        ]:
            with pytest.raises(ReviewError, match=message):
                review.submit_rating(conn, ada, item.assignment_id, rating, 0)
        saved = review.submit_rating(conn, ada, item.assignment_id, Rating(
            edit_a=1, edit_b=2, harm_a=0, harm_b=2, likelihood_a=2, likelihood_b=1), 0)
        stored = conn.execute("SELECT acceptable_a, acceptable_b, edit_a, edit_b, harm_a, harm_b, likelihood_a, "
                              "likelihood_b FROM ratings WHERE rating_id = ?", (saved.rating_id,)).fetchone()
        assert tuple(stored) == (1, 0, 1, 2, 0, 2, None, 1), "acceptability derived; no likelihood without harm"
        assert review.open_item(conn, ada, info["study_id"], position=item.position).current == Rating(
            True, False, edit_a=1, edit_b=2, harm_a=0, harm_b=2, likelihood_b=1)
        for columns, values in (("acceptable_a, acceptable_b, edit_a, edit_b", "1, 1, 1, 2"),
                                ("unratable_reason, edit_a", "'x', 1"),  # a level needs its verdict
                                ("unratable_reason, likelihood_a", "'x', 1")):  # a likelihood needs some harm
            with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
                conn.execute(f"INSERT INTO ratings (assignment_id, revision, reviewer_id, {columns}) "
                             f"VALUES (?, 2, ?, {values})", (item.assignment_id, ada))


def test_stale_form_is_refused_and_a_repeat_is_not_duplicated(db_path, study):
    ada = study["ids"]["ada"]
    with opened(db_path) as conn:
        item = review.open_item(conn, ada, study["study_id"])
        assert not review.submit_rating(conn, ada, item.assignment_id, good_rating(), 0).duplicate
        repeat = review.submit_rating(conn, ada, item.assignment_id, good_rating(), 0)
        assert (repeat.revision, repeat.duplicate) == (1, True), "a double click stores one rating"
        with pytest.raises(StaleRating) as refused:
            review.submit_rating(conn, ada, item.assignment_id, good_rating(acceptable_b=True), 0)
        assert refused.value.current_revision == 1
        assert "was not saved" in str(refused.value)
        review.submit_rating(conn, ada, item.assignment_id, good_rating(acceptable_b=True), 1)
        unchanged = review.submit_rating(conn, ada, item.assignment_id, good_rating(acceptable_b=True), 2)
        assert (unchanged.revision, unchanged.duplicate) == (2, True), "an unchanged form adds no revision"
        assert conn.execute("SELECT max(revision), count(*) FROM ratings").fetchone()[:] == (2, 2)


@contextlib.contextmanager
def store_refusing(db_path: Path, cause: str):
    """The store really refusing writes: "locked" (another connection holds BEGIN EXCLUSIVE) or
    "read-only" (the file is; root, whom file modes do not stop, makes it immutable)."""
    if cause == "locked":
        holder = sqlite3.connect(db_path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    os.chmod(db_path, 0o444)
    immutable = os.access(db_path, os.W_OK)
    if immutable and subprocess.run(["chattr", "+i", str(db_path)], capture_output=True, check=False).returncode:
        os.chmod(db_path, 0o644)
        pytest.skip("cannot make the database file read-only here")
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(db_path)], check=True)
        os.chmod(db_path, 0o644)


REFUSALS = {"locked": "Your rating was not saved: the database is locked: another program is writing to it. "
                      "Your answers are still on the form: submit again in a moment.",
            "read-only": "Your rating was not saved: the database is read-only for the app (its file, folder "
                         "or disk does not allow writing). Your answers are still on the form: submit again "
                         "once a study administrator has fixed this."}


@pytest.mark.parametrize("cause", list(REFUSALS))
def test_a_rating_the_store_refuses_says_why_and_a_retry_stores_it(db_path, study, cause, monkeypatch):
    monkeypatch.setattr(db, "BUSY_TIMEOUT_S", 0.3)  # how long a write waits for a lock (30 s in use)
    ada = study["ids"]["ada"]
    with opened(db_path) as conn:
        item = review.open_item(conn, ada, study["study_id"])
    with store_refusing(db_path, cause), pytest.raises(review.NotSaved) as refused:
        review.save_rating(db_path, ada, item.assignment_id, good_rating(), 0)
    assert str(refused.value) == REFUSALS[cause]
    saved = review.save_rating(db_path, ada, item.assignment_id, good_rating(), 0)
    assert (saved.revision, saved.duplicate) == (1, False)
    with opened(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM ratings").fetchone()[0] == 1


def test_reviewers_see_the_answer_without_its_run_on():
    assert review.reviewer_text("50 Gy in 25 fractions", " 50 Gy in 25 fractions. Modality: photon. "
                                                          "ICD-10-CM C61.") == "50 Gy in 25 fractions"
    # Nothing readable: the raw text up to where it runs on into the other tasks, written as answers are.
    assert review.reviewer_text(None, " 50. Modality: photon. ICD-10-CM C61.") == "50"
    assert review.reviewer_text(None, "20 fractions with a\nmicroscphoton therapy). Diagnosis code C67.0.") == (
        "20 fractions with a microscphoton therapy)")
    assert review.reviewer_text(None, "Modality: photon. ICD-10-CM C61.") == review.NO_ANSWER
    assert review.reviewer_text(None, "") == review.NO_ANSWER


def test_ratings_cannot_be_changed_in_place(db_path, study):
    ada = study["ids"]["ada"]
    with opened(db_path) as conn:
        item = review.open_item(conn, ada, study["study_id"])
        review.submit_rating(conn, ada, item.assignment_id, good_rating(), 0)
        for statement in ("UPDATE ratings SET acceptable_b = 1", "DELETE FROM ratings",
                          "UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log"):
            with pytest.raises(Exception, match="append-only"):
                conn.execute(statement)


def test_a_reviewer_cannot_read_or_write_another_reviewers_cases(db_path, study):
    ada, ben = study["ids"]["ada"], study["ids"]["ben"]
    with opened(db_path) as conn:
        bens = review.open_item(conn, ben, study["study_id"])
        with pytest.raises(auth.AccessDenied, match="not assigned to you"):
            review.submit_rating(conn, ada, bens.assignment_id, good_rating(), 0, client="10.0.0.9")
        with pytest.raises(auth.AccessDenied, match="not assigned to you"):
            review.submit_rating(conn, ada, 999999, good_rating(), 0)
        with pytest.raises(auth.AccessDenied, match="not assigned to you"):
            review.rating_history(conn, ada, bens.assignment_id)
        with pytest.raises(auth.AccessDenied):
            review.list_studies(conn, actor_id=ada)
        for staff_view in (review.study_progress, review.unblinded_ratings, review.study_summary):
            with pytest.raises(auth.AccessDenied):
                staff_view(conn, study["study_id"], actor_id=ada)
        other = review.create_study(conn, actor_id=study["admin_id"], name="Only ben", run_1_id=RUN_1,
                                    run_2_id=RUN_2, reviewer_ids=[ben])
        with pytest.raises(auth.AccessDenied, match="no cases in this study"):
            review.open_item(conn, ada, other)
        assert conn.execute("SELECT count(*) FROM ratings").fetchone()[0] == 0
        denied = conn.execute("SELECT actor, entity_id, client FROM audit_log "
                              "WHERE action = 'access-denied'").fetchall()
        assert [tuple(r) for r in denied] == [("ada", str(bens.assignment_id), "10.0.0.9"),
                                              ("ada", "999999", None), ("ada", str(bens.assignment_id), None)]
        auth.set_active(conn, "ada", False, actor_id=study["admin_id"])
        with pytest.raises(auth.AccessDenied, match="not active"):
            review.open_item(conn, ada, study["study_id"])


def test_unblinded_views_translate_sides_back_to_runs(db_path, study):
    ada, admin = study["ids"]["ada"], study["admin_id"]
    with opened(db_path) as conn:
        for _ in range(4):
            item = review.open_item(conn, ada, study["study_id"])
            fine_tuned_is_a = item.text_a.endswith("to the prostate")
            rating = good_rating(acceptable_a=fine_tuned_is_a, acceptable_b=not fine_tuned_is_a,
                                 preference="A" if fine_tuned_is_a else "B")
            review.submit_rating(conn, ada, item.assignment_id, rating, 0)
        rows = review.unblinded_ratings(conn, study["study_id"], actor_id=admin)
        assert len(rows) == 4 and all(r["acceptable_2"] == 1 and r["acceptable_1"] == 0 for r in rows)
        assert all(r["preferred_run"] == 2 for r in rows)
        summary = review.study_summary(conn, study["study_id"], actor_id=admin)
        assert summary["runs"][2]["share_acceptable"] == 1.0 and summary["runs"][1]["acceptable"] == 0
        assert summary["runs"][2]["ci95_wilson"] == list(proportion_confint(4, 4, method="wilson"))
        assert summary["runs"][2]["share_of_verdicts"] == 1.0 and summary["runs"][1]["share_of_verdicts"] == 0.0
        assert summary["acceptability"]["primary"] == "per_case_majority"
        assert summary["preferences"] == {1: 0, 2: 4, "none": 0} and summary["flagged"] == 0
        progress = {p["reviewer"]: p for p in review.study_progress(conn, study["study_id"], actor_id=admin)}
        assert progress["ada"]["done"] == 4 and progress["ben"]["done"] == 0


def test_review_item_carries_no_run_or_model_identity(db_path, study):
    with opened(db_path) as conn:
        item = review.open_item(conn, study["ids"]["ada"], study["study_id"])
    text = repr(item).casefold()
    assert not [s for s in SECRETS if s.casefold() in text]


def test_a_study_without_a_seed_gets_a_random_one_stored(db_path, study):
    """The demo and the Admin page give no seed: each study then gets its own from `secrets`."""
    with opened(db_path) as conn:
        conn.execute("DELETE FROM assignments")
        conn.execute("DELETE FROM studies")
        for name in ("First", "Second"):
            review.create_study(conn, actor_id=study["admin_id"], name=name, run_1_id=RUN_1, run_2_id=RUN_2,
                                reviewer_ids=[study["admin_id"]])
        seeds = [r[0] for r in conn.execute("SELECT seed FROM studies ORDER BY study_id")]
    assert len(set(seeds)) == 2 and all(seed.bit_length() > 32 for seed in seeds), seeds


# --- Growing, repairing and closing a study ------------------------------------------------------

def rate_first(conn, reviewer_id: int, study_id: int, n: int, flag_last: bool = False) -> None:
    """The reviewer rates their first `n` open cases (the last flagged unratable, if asked)."""
    for number in range(n):
        item = review.open_item(conn, reviewer_id, study_id)
        rating = Rating(unratable_reason="no stage") if flag_last and number == n - 1 else good_rating(item.form)
        review.submit_rating(conn, reviewer_id, item.assignment_id, rating, 0)


def running_study(db_path, reviewers=("ada", "ben", "cleo"), n_cases=30, overlap=2) -> dict:
    """A study under way: some reviewers have rated a few cases (one flagged), and dora is waiting to join."""
    info = make_review_db(db_path, n_cases=n_cases, reviewers=reviewers, overlap=overlap)
    with opened(db_path) as conn:
        for name, n in zip(reviewers, (3, 2, 1)):
            rate_first(conn, info["ids"][name], info["study_id"], n, flag_last=name == "ben")
        info["ids"]["dora"] = auth.add_user(conn, "dora", actor_id=info["admin_id"])[0].id
    return info


def assignments_of(conn, study_id: int) -> list[dict]:
    return [dict(r) for r in conn.execute(
        "SELECT a.*, EXISTS (SELECT 1 FROM ratings r WHERE r.assignment_id = a.assignment_id) AS rated "
        "FROM assignments a WHERE study_id = ? ORDER BY assignment_id", (study_id,))]


def check_study_holds(rows: list[dict], n_cases: int, overlap: int, recipients: Sequence[int] = ()) -> None:
    """Every case with `overlap` reviewers, none twice, each reviewer's positions distinct; the sides of those
    who received cases (who started even) are still even within one."""
    assert Counter(r["case_id"] for r in rows) == Counter({case: overlap for case in {r["case_id"] for r in rows}})
    assert len({r["case_id"] for r in rows}) == n_cases
    assert len({(r["reviewer_id"], r["case_id"]) for r in rows}) == len(rows)
    for reviewer in {r["reviewer_id"] for r in rows}:
        mine = [r for r in rows if r["reviewer_id"] == reviewer]
        assert len({r["position"] for r in mine}) == len(mine)
        if reviewer in recipients:
            assert abs(2 * sum(r["run_a_id"] == RUN_1 for r in mine) - len(mine)) <= 1, "sides stay even"


def unrated_load(rows: list[dict]) -> Counter:
    return Counter(r["reviewer_id"] for r in rows if not r["rated"])


def test_a_reviewer_added_to_a_running_study_takes_unrated_cases_and_the_counts_match(db_path, tmp_path):
    info = running_study(db_path)
    sid, dora, admin = info["study_id"], info["ids"]["dora"], info["admin_id"]
    with opened(db_path) as conn:
        before = assignments_of(conn, sid)
        ratings = [tuple(r) for r in conn.execute("SELECT * FROM ratings ORDER BY rating_id")]
        added = review.add_reviewer_to_study(conn, actor_id=admin, study_id=sid, reviewer_id=dora, client="test")
        after = assignments_of(conn, sid)
        assert [tuple(r) for r in conn.execute("SELECT * FROM ratings ORDER BY rating_id")] == ratings
        progress = {p["reviewer"]: p for p in review.study_progress(conn, sid, actor_id=admin)}
        listed = review.list_studies(conn, actor_id=admin)[0]
        entry = conn.execute("SELECT * FROM audit_log WHERE action = 'add-reviewer-to-study'").fetchone()
        items = [review.open_item(conn, dora, sid, position) for position in range(1, added["n_assignments"] + 1)]
        ada_items = [review.open_item(conn, info["ids"]["ada"], sid, position)
                     for position in range(1, progress["ada"]["assigned"] + 1)]

    # 30 cases, 2 reviewers each: 20 assignments apiece, 6 rated; 54 unrated shared by four: 13 or 14 each.
    assert len(after) == len(before) == 60 and listed["n_assignments"] == 60 and listed["n_done"] == 6
    check_study_holds(after, n_cases=30, overlap=2, recipients=[dora])
    assert sorted(unrated_load(after).values()) == [13, 13, 14, 14]
    n = added["n_assignments"]
    assert n == progress["dora"]["assigned"] == unrated_load(after)[dora] and progress["dora"]["done"] == 0
    assert added["from"] == {name: 20 - progress[name]["assigned"] for name in ("ada", "ben", "cleo")}
    assert sum(added["from"].values()) == n and added["reviewer"] == "dora"
    assert sum(p["assigned"] for p in progress.values()) == 60 and sum(p["done"] for p in progress.values()) == 6
    rated_before = {r["assignment_id"]: r for r in before if r["rated"]}
    assert {r["assignment_id"]: r for r in after if r["rated"]} == rated_before, "rated assignments untouched"
    mine = sorted((r for r in after if r["reviewer_id"] == dora), key=lambda r: r["position"])
    assert [r["position"] for r in mine] == list(range(1, n + 1))
    assert abs(2 * sum(r["run_a_id"] == RUN_1 for r in mine) - n) <= 1

    assert [item.position for item in items] == list(range(1, n + 1)) and items[0].total == n
    assert [item.assignment_id for item in items] == [r["assignment_id"] for r in mine]
    assert not [s for s in SECRETS if s.casefold() in repr(items).casefold()], "the new reviewer sees no run"
    assert len({item.assignment_id for item in ada_items}) == len(ada_items) == progress["ada"]["assigned"]
    assert ada_items[-1].position == len(ada_items), "a queue with gaps still counts 1..N"

    assert (entry["actor"], entry["entity"], entry["entity_id"], entry["client"]) == ("boss", "studies", str(sid),
                                                                                      "test")
    detail = json.loads(entry["detail"])
    assert detail["reviewer_id"] == dora and detail["n_assignments"] == n
    assert sorted(i for ids in detail["from"].values() for i in ids) == sorted(r["assignment_id"] for r in mine)
    assert "P0" not in entry["detail"] and "Gy" not in entry["detail"]

    # The same study, the same ratings and the same step give the same assignments: the draw is keyed.
    again = running_study(tmp_path / "again.db")
    with opened(tmp_path / "again.db") as conn:
        review.add_reviewer_to_study(conn, actor_id=again["admin_id"], study_id=again["study_id"],
                                     reviewer_id=again["ids"]["dora"])
        assert assignments_of(conn, again["study_id"]) == after


def test_adding_a_reviewer_is_refused_where_it_cannot_help(db_path):
    info = running_study(db_path)
    sid, ids, admin = info["study_id"], info["ids"], info["admin_id"]
    with opened(db_path) as conn:
        def add(reviewer_id, actor_id=admin, study_id=sid):
            return review.add_reviewer_to_study(conn, actor_id=actor_id, study_id=study_id, reviewer_id=reviewer_id)

        with pytest.raises(auth.AccessDenied):
            add(ids["dora"], actor_id=ids["ada"])
        with pytest.raises(ReviewError, match="ben is already a reviewer of study 'Prostate pilot'"):
            add(ids["ben"])
        with pytest.raises(ReviewError, match="There is no study 99"):
            add(ids["dora"], study_id=99)
        auth.set_active(conn, "dora", False, actor_id=admin)
        with pytest.raises(ReviewError, match="does not exist or is deactivated"):
            add(ids["dora"])
        before = assignments_of(conn, sid)

        small = review.create_study(conn, actor_id=admin, name="Small", run_1_id=RUN_1, run_2_id=RUN_2,
                                    reviewer_ids=[ids["ada"], ids["ben"]], sample_n=2, seed=1)
        with pytest.raises(ReviewError, match="No reviewer of study 'Small' has more than one unrated case left"):
            add(ids["cleo"], study_id=small)
        for name in ("ada", "ben"):
            rate_first(conn, ids[name], small, 1)
        with pytest.raises(ReviewError, match="Every case of study 'Small' is rated: there is nothing to hand over"):
            add(ids["cleo"], study_id=small)
        assert assignments_of(conn, sid) == before
        assert conn.execute("SELECT count(*) FROM audit_log WHERE action = 'add-reviewer-to-study'").fetchone()[0] == 0
        rated = conn.execute("SELECT assignment_id FROM ratings LIMIT 1").fetchone()[0]
        with pytest.raises(sqlite3.IntegrityError, match="a rated assignment cannot change"):
            conn.execute("UPDATE assignments SET reviewer_id = ? WHERE assignment_id = ?", (ids["cleo"], rated))


def test_a_departed_reviewers_unrated_cases_go_to_the_others(db_path):
    info = running_study(db_path, reviewers=("ada", "ben", "cleo", "eve"))
    sid, ids, admin = info["study_id"], info["ids"], info["admin_id"]
    ben = ids["ben"]
    with opened(db_path) as conn:
        before = assignments_of(conn, sid)
        auth.set_active(conn, "ben", False, actor_id=admin)
        moved = review.reassign_unrated(conn, actor_id=admin, study_id=sid, from_reviewer_id=ben, client="test")
        after = assignments_of(conn, sid)
        entry = conn.execute("SELECT detail FROM audit_log WHERE action = 'reassign-unrated'").fetchone()[0]
        auth.set_active(conn, "ben", True, actor_id=admin)
        bens = [r["assignment_id"] for r in after if r["reviewer_id"] == ben]
        with pytest.raises(auth.AccessDenied, match="not assigned to you"):
            review.submit_rating(conn, ben, next(r["assignment_id"] for r in before if r["reviewer_id"] == ben
                                                 and not r["rated"]), good_rating(), 0)
        assert review.my_summary(conn, ben, sid)["cases"] == 2 and review.open_item(conn, ben, sid) is None

    # 4 reviewers, 15 cases each; ben had rated 2 and the other 13 go to ada, cleo and eve (not dora, who
    # is not in the study), each case to one who lacks it and has the least unrated work.
    assert moved == {"from": "ben", "to": moved["to"], "moved": 13, "left": 0}
    assert set(moved["to"]) == {"ada", "cleo", "eve"} and sum(moved["to"].values()) == 13
    check_study_holds(after, n_cases=30, overlap=2, recipients=[ids[n] for n in moved["to"]])
    assert sorted(r["assignment_id"] for r in after if r["reviewer_id"] == ben) == sorted(
        r["assignment_id"] for r in before if r["reviewer_id"] == ben and r["rated"]) == sorted(bens)
    load = unrated_load(after)
    assert ben not in load and max(load.values()) - min(load.values()) <= 1, load
    assert {r["assignment_id"]: r for r in after if r["rated"]} == {r["assignment_id"]: r for r in before
                                                                     if r["rated"]}
    detail = json.loads(entry)
    assert detail["from_reviewer_id"] == ben and detail["left"] == []
    assert sorted(i for ids_ in detail["to"].values() for i in ids_) == sorted(
        r["assignment_id"] for r in before if r["reviewer_id"] == ben and not r["rated"])


def test_reassigning_to_chosen_reviewers_leaves_the_cases_they_already_have(db_path):
    info = running_study(db_path)
    sid, ids, admin = info["study_id"], info["ids"], info["admin_id"]
    with opened(db_path) as conn:
        def reassign(from_name, to_names=None):
            return review.reassign_unrated(conn, actor_id=admin, study_id=sid, from_reviewer_id=ids[from_name],
                                           to_reviewer_ids=None if to_names is None else [ids[n] for n in to_names])

        before = assignments_of(conn, sid)
        cleos = {r["case_id"] for r in before if r["reviewer_id"] == ids["cleo"]}
        bens_open = [r for r in before if r["reviewer_id"] == ids["ben"] and not r["rated"]]
        moved = reassign("ben", ["cleo"])
        after = assignments_of(conn, sid)
        shared = [r for r in bens_open if r["case_id"] in cleos]
        for from_name, to_names, message in (
                ("ben", ["ben"], "Choose reviewers other than ben to take their cases"),
                ("boss", None, "boss has no cases in study 'Prostate pilot'"),
                ("ben", ["cleo"], f"Each of ben's {len(shared)} unrated case\\(s\\) is already with every other "
                                  "chosen reviewer: none can be reassigned")):
            with pytest.raises(ReviewError, match=message):
                reassign(from_name, to_names)
        assert assignments_of(conn, sid) == after
        rest = reassign("ben", ["dora"])
        with pytest.raises(ReviewError, match="ben has rated every case of study 'Prostate pilot': nothing to reassign"):
            reassign("ben")
        final = assignments_of(conn, sid)
    # ben's open cases that cleo already has cannot go to her: they stay with ben, and are counted.
    assert 0 < len(shared) < len(bens_open)
    assert moved == {"from": "ben", "to": {"cleo": len(bens_open) - len(shared)}, "moved": len(bens_open) - len(shared),
                     "left": len(shared)}
    assert {r["assignment_id"] for r in after if r["reviewer_id"] == ids["ben"] and not r["rated"]} == {
        r["assignment_id"] for r in shared}
    assert rest == {"from": "ben", "to": {"dora": len(shared)}, "moved": len(shared), "left": 0}
    check_study_holds(after, n_cases=30, overlap=2, recipients=[ids["cleo"]])
    check_study_holds(final, n_cases=30, overlap=2, recipients=[ids["cleo"], ids["dora"]])


def test_a_closed_study_takes_no_more_ratings_and_says_when_it_closed(db_path, monkeypatch):
    info = running_study(db_path)
    sid, ids, admin = info["study_id"], info["ids"], info["admin_id"]
    monkeypatch.setattr(audit_log, "now", lambda: 1767225600.0)  # 2026-01-01 00:00 UTC
    with opened(db_path) as conn:
        item = review.open_item(conn, ids["ada"], sid)
        closed = review.close_study(conn, actor_id=admin, study_id=sid, client="test")
        assert closed == {"closed_at": "2026-01-01T00:00:00.000Z", "n_rated": 6, "n_assignments": 60}
        n_ratings = conn.execute("SELECT count(*) FROM ratings").fetchone()[0]
        with pytest.raises(ReviewError, match=r"^This study was closed on 2026-01-01 00:00 UTC, so your rating "
                                              r"was not stored\.$"):
            review.submit_rating(conn, ids["ada"], item.assignment_id, good_rating(), 0)
        with pytest.raises(sqlite3.IntegrityError, match="the study is closed"):
            conn.execute("INSERT INTO ratings (assignment_id, revision, acceptable_a, acceptable_b, reviewer_id) "
                         "VALUES (?, 1, 1, 1, ?)", (item.assignment_id, ids["ada"]))
        assert conn.execute("SELECT count(*) FROM ratings").fetchone()[0] == n_ratings
        assert review.open_item(conn, ids["ada"], sid).assignment_id == item.assignment_id, "still readable"
        assert review.my_studies(conn, ids["ada"])[0]["closed_at"] == "2026-01-01T00:00:00.000Z"
        listed = review.list_studies(conn, actor_id=admin)[0]
        assert (listed["closed_at"], listed["closed_by"], listed["closed_by_name"]) == (
            "2026-01-01T00:00:00.000Z", admin, "boss")
        for change in (lambda: review.close_study(conn, actor_id=admin, study_id=sid),
                       lambda: review.add_reviewer_to_study(conn, actor_id=admin, study_id=sid,
                                                            reviewer_id=ids["dora"]),
                       lambda: review.reassign_unrated(conn, actor_id=admin, study_id=sid,
                                                       from_reviewer_id=ids["ben"])):
            with pytest.raises(ReviewError, match="'Prostate pilot' was closed on 2026-01-01 00:00 UTC: it takes "
                                                  "no more changes"):
                change()
        with pytest.raises(auth.AccessDenied):
            review.close_study(conn, actor_id=ids["ada"], study_id=sid)
        entries = conn.execute("SELECT actor, detail, client FROM audit_log WHERE action = 'close-study'").fetchall()
        assert [tuple(e) for e in entries] == [("boss", '{"n_rated": 6, "n_assignments": 60}', "test")]


def test_save_rating_in_a_closed_study_stores_nothing(db_path):
    info = running_study(db_path)
    with opened(db_path) as conn:
        item = review.open_item(conn, info["ids"]["cleo"], info["study_id"])
        review.close_study(conn, actor_id=None, study_id=info["study_id"])
        assert conn.execute("SELECT closed_by FROM studies").fetchone()[0] is None, "closed from the command line"
        n_ratings = conn.execute("SELECT count(*) FROM ratings").fetchone()[0]
    with pytest.raises(ReviewError, match="so your rating was not stored"):
        review.save_rating(db_path, info["ids"]["cleo"], item.assignment_id, good_rating(), 0)
    with opened(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM ratings").fetchone()[0] == n_ratings


def test_the_dashboard_and_report_say_when_a_study_closed(db_path):
    from rocore.evaluation.dashboard import ScoreCache, compute
    from rocore.evaluation.outputs import run_pairs
    from rocore.evaluation.report import html_report, json_figures

    info = running_study(db_path)
    cache = ScoreCache()
    with opened(db_path) as conn:
        runs = run_pairs(conn, [(RUN_1, RUN_2)])
        open_view = compute(conn, cache, runs)
        assert open_view.reviews.closed is None and "closed" not in open_view.methods_text
        closed_at = review.close_study(conn, actor_id=info["admin_id"], study_id=info["study_id"])["closed_at"]
        view = compute(conn, cache, runs)
    note = f"The study was closed on {closed_at[:10]} by the administrator; 6 of 60 assignments were rated."
    assert view.reviews.closed == note and view.methods_text.endswith(note)
    assert note in html_report(view)
    assert json_figures(view)["review"]["study"]["closed_at"] == closed_at


# --- Concurrency ----------------------------------------------------------------------------------

def rate_all(db_path: str, reviewer_id: int, study_id: int, barrier=None) -> int:
    """Rate every case of one reviewer, each submission in its own connection as a page would; count."""
    if barrier is not None:
        barrier.wait(timeout=120)  # a process that died before it would otherwise hang the rest
    done = 0
    while True:
        with opened(db_path) as conn:
            item = review.open_item(conn, reviewer_id, study_id)
            if item is None:
                return done
            rating = good_rating(comment=f"n{done}")
            review.submit_rating(conn, reviewer_id, item.assignment_id, rating, item.revision)
            # The same submission again, as a double click or a second tab would send it.
            again = review.submit_rating(conn, reviewer_id, item.assignment_id, rating, item.revision)
            assert again.duplicate
        done += 1


N_REVIEWERS = 20


@pytest.fixture
def crowd(db_path):
    return make_review_db(db_path, n_cases=40, reviewers=tuple(f"r{i:02d}" for i in range(N_REVIEWERS)),
                          overlap=5)


def check_everything_stored(db_path, crowd):
    with opened(db_path) as conn:
        n, distinct, max_revision = conn.execute(
            "SELECT count(*), count(DISTINCT assignment_id), max(revision) FROM ratings").fetchone()
        assert (n, distinct, max_revision) == (200, 200, 1)
        assert conn.execute("SELECT count(*) FROM audit_log WHERE action = 'rate'").fetchone()[0] == 200
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.slow
def test_twenty_reviewers_at_once_in_threads(db_path, crowd):
    barrier = threading.Barrier(N_REVIEWERS)
    errors, counts = [], []

    def work(reviewer_id):
        try:
            counts.append(rate_all(str(db_path), reviewer_id, crowd["study_id"], barrier))
        except Exception as exc:  # collected and asserted on below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(crowd["ids"][f"r{i:02d}"],)) for i in range(N_REVIEWERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == [] and sorted(counts) == [10] * N_REVIEWERS
    check_everything_stored(db_path, crowd)


def rate_all_and_report(db_path: str, reviewer_id: int, study_id: int, barrier, results) -> None:
    """`rate_all` in a process of its own: the count, or the error, goes back through a queue."""
    try:
        results.put(rate_all(db_path, reviewer_id, study_id, barrier))
    except Exception as exc:  # reported to the test, which fails on it
        results.put(repr(exc))


@pytest.mark.slow
def test_twenty_reviewers_at_once_in_processes(db_path, crowd, monkeypatch):
    # A spawned process first runs the parent's __main__ file, which after an AppTest test in this pytest
    # process is a page script: every child then died on Streamlit calls outside a session.
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(N_REVIEWERS), context.Queue()
    processes = [context.Process(target=rate_all_and_report, args=(str(db_path), crowd["ids"][f"r{i:02d}"],
                                                                   crowd["study_id"], barrier, results))
                 for i in range(N_REVIEWERS)]
    for process in processes:
        process.start()
    outcomes = []
    with contextlib.suppress(queue.Empty):
        while len(outcomes) < N_REVIEWERS:
            outcomes.append(results.get(timeout=300))
    for process in processes:
        process.join(timeout=60)
    exits = [process.exitcode for process in processes]
    assert outcomes == [10] * N_REVIEWERS, (outcomes, exits)
    check_everything_stored(db_path, crowd)


def test_two_tabs_racing_for_one_revision_store_one(db_path, study):
    """Threads submit different answers based on the same revision: exactly one lands."""
    ada = study["ids"]["ada"]
    with opened(db_path) as conn:
        item = review.open_item(conn, ada, study["study_id"])
    barrier, outcomes = threading.Barrier(8), []

    def tab(number):
        with opened(db_path) as conn:
            barrier.wait()
            try:
                review.submit_rating(conn, ada, item.assignment_id, good_rating(comment=f"tab {number}"), 0)
                outcomes.append("saved")
            except StaleRating:
                outcomes.append("stale")

    threads = [threading.Thread(target=tab, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["saved"] + ["stale"] * 7
    with opened(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM ratings").fetchone()[0] == 1


# --- Command line ---------------------------------------------------------------------------------

def rocore(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rocore", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_cli_reviewers_and_studies(db_path):
    make_review_db(db_path, reviewers=())
    added = rocore("reviewer", "add", "dora", "--db", db_path)
    assert added.returncode == 0, added.stderr
    code = added.stdout.split("access code: ")[1].split()[0]
    with opened(db_path) as conn:
        assert auth.sign_in(conn, "dora", code).role == "reviewer"
        actor = conn.execute("SELECT actor FROM audit_log WHERE action = 'add-user'").fetchone()[0]
        assert actor.startswith("cli")
    assert rocore("reviewer", "add", "eve", "--role", "researcher", "--db", db_path).returncode == 0
    assert rocore("reviewer", "add", "dora", "--db", db_path).returncode == 1
    listed = rocore("reviewer", "list", "--db", db_path).stdout
    assert "dora" in listed and "researcher" in listed and "code" not in listed

    created = rocore("study", "create", "--db", db_path, "--name", "CLI study", "--runs", RUN_1, RUN_2,
                     "--reviewers", "dora,eve", "--sample", 6, "--seed", 3, "--overlap", 2, "--likert",
                     "--preference", "--no-comment", "--edit-level", "--harm")
    assert created.returncode == 0, created.stderr
    assert "6 cases, 12 assignments" in created.stdout
    refused = rocore("study", "create", "--db", db_path, "--name", "x", "--runs", RUN_1, RUN_2,
                     "--reviewers", "nobody")
    assert refused.returncode == 1 and "No one is named 'nobody'" in refused.stderr
    assert "Traceback" not in refused.stderr
    shown = rocore("study", "show", "--db", db_path, "--name", "CLI study")
    assert shown.returncode == 0 and "dora" in shown.stdout and "0 of 6" in shown.stdout
    assert "CLI study" in rocore("study", "list", "--db", db_path).stdout
    with opened(db_path) as conn:
        stored = conn.execute("SELECT sample_n, seed, overlap, form FROM studies "
                              "WHERE name = 'CLI study'").fetchone()
        assert json.loads(stored["form"]) == {"likert": True, "preference": True, "comment": False,
                                              "edit_level": True, "harm": True}
        assert tuple(stored)[:3] == (6, 3, 2)
        study_id = review.study_id_by_name(conn, "CLI study")
        for name in ("dora", "eve"):
            reviewer = auth.user_by_name(conn, name).id
            while (item := review.open_item(conn, reviewer, study_id)) is not None:
                review.submit_rating(conn, reviewer, item.assignment_id, Rating(
                    edit_a=item.position % 4, edit_b=0, harm_a=2, harm_b=0, likelihood_a=1, likert_a=2, likert_b=4,
                    preference="B"), 0)
    shown = rocore("study", "show", "--db", db_path, "--name", "CLI study").stdout
    for line in ("Edit level, per-case means over 6 cases (lower is better)", "Score (1-5), per-case means",
                 "Potential harm if followed, per-case means", "severe harm in", "Likelihood of that harm"):
        assert line in shown, shown

    reset = rocore("reviewer", "reset-code", "dora", "--db", db_path)
    new_code = reset.stdout.split("access code: ")[1].split()[0]
    assert rocore("reviewer", "deactivate", "eve", "--db", db_path).returncode == 0
    with opened(db_path) as conn:
        with pytest.raises(auth.SignInFailed):
            auth.sign_in(conn, "dora", code)
        assert auth.sign_in(conn, "dora", new_code).name == "dora"
        with pytest.raises(auth.SignInFailed):
            auth.sign_in(conn, "eve", "whatever")


def test_connections_from_a_real_file_see_each_others_ratings(db_path, study):
    """A second connection (another server thread or process) sees a rating at once: resume works."""
    ada = study["ids"]["ada"]
    first, second = connect(db_path), connect(db_path)
    try:
        item = review.open_item(first, ada, study["study_id"])
        review.submit_rating(first, ada, item.assignment_id, good_rating(), 0)
        assert review.open_item(second, ada, study["study_id"]).position == 2
        seen = review.open_item(second, ada, study["study_id"], 1).current
        assert seen == replace(good_rating(), comment=None)
    finally:
        first.close()
        second.close()


def test_a_study_without_verdicts_has_no_share(db_path, study):
    with opened(db_path) as conn:
        summary = review.study_summary(conn, study["study_id"], actor_id=study["admin_id"])
    assert summary["runs"][1]["share_acceptable"] is None and summary["acceptability"] is None


def test_creation_advice_recommends_an_odd_number_of_reviewers_per_case():
    assert "odd number (3" in review.creation_advice(3, 2)[0]
    assert "no agreement to measure" in review.creation_advice(3, 1)[0]
    assert review.creation_advice(3, 3) == []
    assert "Only 2 reviewer(s)" in review.creation_advice(2, 3)[0]


def test_plan_study_is_the_exact_plan_with_the_advice():
    plan = review.plan_study(0.6, 0.8, overlap=2)
    assert plan["cases"] == review.plan_paired_study(0.6, 0.8)["cases"]
    assert plan["ratings"] == 2 * plan["cases"] and len(plan["notes"]) == 1 and "odd" in plan["notes"][0]
    with pytest.raises(ReviewError, match="Cannot plan"):
        review.plan_study(0.6, 0.6)


def test_a_reviewers_summary_counts_only_what_they_did_and_nothing_unblinded(db_path, study):
    ada, ben = study["ids"]["ada"], study["ids"]["ben"]
    with opened(db_path) as conn:
        items = [review.open_item(conn, ada, study["study_id"], position) for position in (1, 2, 3)]
        review.submit_rating(conn, ada, items[0].assignment_id, good_rating(comment="fine"), 0)
        review.submit_rating(conn, ada, items[0].assignment_id, good_rating(acceptable_b=True), 1)
        review.submit_rating(conn, ada, items[1].assignment_id, Rating(unratable_reason="no stage given"), 0)
        review.submit_rating(conn, ada, items[2].assignment_id, good_rating(), 0)
        other = review.open_item(conn, ben, study["study_id"], 1)
        review.submit_rating(conn, ben, other.assignment_id, good_rating(comment="his"), 0)
        summary = review.my_summary(conn, ada, study["study_id"])
        total = review.my_studies(conn, ada)[0]["total"]
    # The revision dropped the comment: only the current rating counts.
    assert summary == {"cases": total, "rated": 2, "flagged": 1, "revised": 1, "commented": 0}
