"""Practice cases on a real database file: drawn from the validation or train part through practice runs of the
study's own models, given to every reviewer first, answered once with the reference revealed, and never counted."""

from __future__ import annotations

import json

import pytest
from test_review_studies import RUN_1, RUN_2, good_rating, make_review_db

from rocore.evaluation.dashboard import ScoreCache, compute
from rocore.evaluation.outputs import run_pairs
from rocore.review import practice
from rocore.review import studies as review
from rocore.review.auth import AccessDenied, add_user
from rocore.review.studies import Rating, ReviewError
from rocore.store.db import opened

PRACTICE_1, PRACTICE_2 = 63917, 71548  # ids no page text would contain by chance, as RUN_1 and RUN_2
PRACTICE_TEXTS = {PRACTICE_1: "60 Gy in 30 fractions", PRACTICE_2: "70 Gy in 35 fractions"}


def add_practice_runs(conn, part: str = "train", adapters=(None, 2)) -> list[str]:
    """Runs of the study's two models over `part` of its split, with an output for each of its cases."""
    split_id = conn.execute("SELECT split_id FROM generation_runs WHERE run_id = ?", (RUN_1,)).fetchone()[0]
    cases = [r[0] for r in conn.execute("SELECT case_id FROM split_cases WHERE split_id = ? AND part = ? "
                                        "ORDER BY case_id", (split_id, part))]
    for run_id, adapter in zip((PRACTICE_1, PRACTICE_2), adapters):
        conn.execute("INSERT INTO generation_runs (run_id, base_model_id, adapter_model_id, split_id, part, tasks, "
                     "quantization, status) VALUES (?, 1, ?, ?, ?, '[\"regimen\"]', 'nf4', 'finished')",
                     (run_id, adapter, split_id, part))
        conn.executemany("INSERT INTO generations (run_id, case_id, task, template_id, raw_text, answer, prompt_tokens, "
                         "output_tokens, seconds) VALUES (?, ?, 'regimen', 'regimen-v1', ?, ?, 10, 10, 0.1)",
                         [(run_id, case, PRACTICE_TEXTS[run_id], PRACTICE_TEXTS[run_id]) for case in cases])
    return cases


@pytest.fixture
def info(db_path):
    info = make_review_db(db_path, n_cases=30)
    with opened(db_path) as conn:
        info["train"] = add_practice_runs(conn)
    return info


def test_every_reviewer_gets_the_same_train_cases_first_with_their_own_sides(info, db_path):
    with opened(db_path) as conn:
        cases = practice.add_practice_cases(conn, actor_id=info["admin_id"], study_id=info["study_id"],
                                            practice_runs=(PRACTICE_1, PRACTICE_2), practice_n=3)
        assert len(cases) == 3 and set(cases) <= set(info["train"])
        rows = conn.execute("SELECT reviewer_id, case_id, position, run_a_id FROM practice_assignments").fetchall()
        per_reviewer = {}
        for r in rows:
            per_reviewer.setdefault(r["reviewer_id"], []).append(r["case_id"])
        assert len(per_reviewer) == 3 and all(sorted(c) == sorted(cases) for c in per_reviewer.values())
        assert {r["run_a_id"] for r in rows} == {PRACTICE_1, PRACTICE_2}
        assert conn.execute("SELECT action FROM audit_log ORDER BY audit_id DESC LIMIT 1").fetchone()[0] == \
            "add-practice-cases"
        with pytest.raises(ReviewError, match="already has its practice cases"):
            practice.add_practice_cases(conn, actor_id=info["admin_id"], study_id=info["study_id"],
                                        practice_runs=(PRACTICE_1, PRACTICE_2), practice_n=2)


def test_practice_runs_must_be_the_study_models_over_another_part_than_the_study(db_path):
    info = make_review_db(db_path, n_cases=30)
    with opened(db_path) as conn:
        add_practice_runs(conn, part="test")
        with pytest.raises(ReviewError, match="must answer the validation or train part .* never come from the "
                                              "cases under study"):
            practice.add_practice_cases(conn, actor_id=info["admin_id"], study_id=info["study_id"],
                                        practice_runs=(PRACTICE_1, PRACTICE_2), practice_n=2)
        conn.execute("UPDATE generation_runs SET part = 'train' WHERE run_id IN (?, ?)", (PRACTICE_1, PRACTICE_2))
        with pytest.raises(ReviewError, match="same model as study run 1"):
            practice.add_practice_cases(conn, actor_id=info["admin_id"], study_id=info["study_id"],
                                        practice_runs=(PRACTICE_2, PRACTICE_1), practice_n=2)
        with pytest.raises(ReviewError, match="Cannot draw 99 practice cases"):
            practice.add_practice_cases(conn, actor_id=info["admin_id"], study_id=info["study_id"],
                                        practice_runs=(PRACTICE_1, PRACTICE_2), practice_n=99)
        with pytest.raises(AccessDenied):
            practice.add_practice_cases(conn, actor_id=info["ids"]["ada"], study_id=info["study_id"],
                                        practice_runs=(PRACTICE_1, PRACTICE_2), practice_n=2)
        conn.execute("UPDATE generation_runs SET part = 'validation' WHERE run_id = ?", (PRACTICE_1,))
        with pytest.raises(ReviewError, match="must answer the same part"):
            practice.add_practice_cases(conn, actor_id=info["admin_id"], study_id=info["study_id"],
                                        practice_runs=(PRACTICE_1, PRACTICE_2), practice_n=2)
        item = review.open_item(conn, info["ids"]["ada"], info["study_id"])
        review.submit_rating(conn, info["ids"]["ada"], item.assignment_id, good_rating(), 0)
        conn.execute("UPDATE generation_runs SET part = 'train' WHERE run_id = ?", (PRACTICE_1,))
        with pytest.raises(ReviewError, match="has ratings already: practice cases come before"):
            practice.add_practice_cases(conn, actor_id=info["admin_id"], study_id=info["study_id"],
                                        practice_runs=(PRACTICE_1, PRACTICE_2), practice_n=2)
        assert conn.execute("SELECT count(*) FROM practice_assignments").fetchone()[0] == 0


def test_an_answer_reveals_the_reference_and_enters_no_statistic(info, db_path):
    ada = info["ids"]["ada"]
    with opened(db_path) as conn:
        practice.add_practice_cases(conn, actor_id=info["admin_id"], study_id=info["study_id"],
                                    practice_runs=(PRACTICE_1, PRACTICE_2), practice_n=2)
        before = compute(conn, ScoreCache(), run_pairs(conn, [(RUN_1, RUN_2)])).reviews
        first = practice.open_practice(conn, ada, info["study_id"])
        assert (first.position, first.total, first.reference, first.rating) == (1, 2, None, None)
        assert {first.text_a, first.text_b} == set(PRACTICE_TEXTS.values())
        with pytest.raises(ReviewError, match="Mark each output"):
            practice.submit_practice(conn, ada, first.practice_id, Rating(acceptable_a=True))
        with pytest.raises(AccessDenied):
            practice.submit_practice(conn, info["ids"]["ben"], first.practice_id, good_rating())
        shown = practice.submit_practice(conn, ada, first.practice_id, good_rating(comment="close call"))
        case_id = conn.execute("SELECT case_id FROM practice_assignments WHERE practice_id = ?",
                               (first.practice_id,)).fetchone()[0]
        assert shown.reference == conn.execute("SELECT regimen FROM cases WHERE case_id = ?", (case_id,)).fetchone()[0]
        assert shown.rating == good_rating(comment="close call")
        again = practice.submit_practice(conn, ada, first.practice_id, good_rating(acceptable_b=True))
        assert again.rating == shown.rating, "one answer per practice case"
        assert practice.open_practice(conn, ada, info["study_id"]).position == 2
        stored = json.loads(conn.execute("SELECT answers FROM practice_ratings").fetchone()[0])
        assert stored["comment"] == "close call"
        assert conn.execute("SELECT count(*) FROM ratings").fetchone()[0] == 0
        after = compute(conn, ScoreCache(), run_pairs(conn, [(RUN_1, RUN_2)])).reviews
        assert (after.n_rated, after.n_assigned) == (before.n_rated, before.n_assigned) == (0, before.n_assigned)
        assert review.my_summary(conn, ada, info["study_id"])["rated"] == 0
        assert practice.practice_progress(conn, info["study_id"])[ada] == (1, 2)


def test_a_reviewer_added_later_or_given_cases_gets_the_practice_cases_once(info, db_path):
    admin, study_id = info["admin_id"], info["study_id"]
    with opened(db_path) as conn:
        cases = practice.add_practice_cases(conn, actor_id=admin, study_id=study_id,
                                            practice_runs=(PRACTICE_1, PRACTICE_2), practice_n=2)
        dora, _ = add_user(conn, "dora", actor_id=admin)
        eve, _ = add_user(conn, "eve", actor_id=admin)
        review.add_reviewer_to_study(conn, actor_id=admin, study_id=study_id, reviewer_id=dora.id)
        review.reassign_unrated(conn, actor_id=admin, study_id=study_id, from_reviewer_id=info["ids"]["cleo"],
                                to_reviewer_ids=[eve.id])
        # cleo, with nothing left and nothing rated, joins again: her practice cases are not drawn twice.
        review.add_reviewer_to_study(conn, actor_id=admin, study_id=study_id, reviewer_id=info["ids"]["cleo"])
        for reviewer in (dora.id, eve.id, info["ids"]["cleo"]):
            mine = [r[0] for r in conn.execute("SELECT case_id FROM practice_assignments WHERE reviewer_id = ?",
                                               (reviewer,))]
            assert sorted(mine) == sorted(cases)
        assert practice.open_practice(conn, dora.id, study_id).total == 2


def test_the_methods_say_which_part_the_practice_cases_came_from(info, db_path):
    with opened(db_path) as conn:
        practice.add_practice_cases(conn, actor_id=info["admin_id"], study_id=info["study_id"],
                                    practice_runs=(PRACTICE_1, PRACTICE_2), practice_n=2)
        view = compute(conn, ScoreCache(), run_pairs(conn, [(RUN_1, RUN_2)]))
    assert "each reviewer rated the same 2 practice case(s) from the train part" in view.methods_text
    assert "may echo the reference" in view.methods["Practice cases"]


def test_the_command_line_gives_a_study_its_practice_cases(info, db_path):
    import subprocess
    import sys

    def rocore(*args):
        return subprocess.run([sys.executable, "-m", "rocore", "study", *map(str, args), "--db", str(db_path)],
                              capture_output=True, text=True)

    done = rocore("practice", "--name", "Prostate pilot", "--runs", PRACTICE_1, PRACTICE_2, "--practice", 3)
    assert done.returncode == 0, done.stderr
    assert f"3 practice cases from runs {PRACTICE_1} and {PRACTICE_2}" in done.stdout
    again = rocore("practice", "--name", "Prostate pilot", "--runs", PRACTICE_1, PRACTICE_2, "--practice", 3)
    assert again.returncode == 1 and "already has its practice cases" in again.stderr
    assert rocore("practice", "--name", "Prostate pilot").returncode == 2
