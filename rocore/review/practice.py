"""Practice cases: a reviewer calibrates on a few cases before rating the study's own.

A study may have N practice cases drawn from the validation or train part of its split, never from the
part its runs answer, with outputs from its practice runs: the study's two models over that part
(`check_practice_runs`). The validation part is the better choice where it has cases: the fine-tuned
model has learned the train part's answers and can echo the reference there. Every reviewer gets the
same practice cases, first, with sides and order drawn for them as for study cases; after submitting
one they see the reference answer (the case's own regimen, modality or code) beside what they rated.
Practice assignments and their ratings live in tables of their own (`practice_assignments`,
`practice_ratings`), which no statistic reads, and nothing in what a reviewer sees names a run or a model.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from rocore.review.auth import AccessDenied, require_role
from rocore.review.studies import (TASK_LABELS, Form, Rating, ReviewError, assign_practice, check_rating, closed_on,
                                   eligible_cases, keyed_draw, open_study, reviewer_name, sample_cases, shown_case)
from rocore.store.audit import audit
from rocore.store.db import transaction

# The parts practice cases may come from: never the test part, whose cases are under study. The fine-tuned
# model learned the train part's answers, so on those cases its outputs can echo the reference that the
# reviewer then reads; the validation part, which no adapter was fitted on, does not teach that tell.
PRACTICE_PARTS = ("validation", "train")
NOT_YOURS = "This practice case is not assigned to you."


@dataclass(frozen=True)
class PracticeItem:
    """A practice case as the Review page shows it; `reference` only once the reviewer has rated it."""

    practice_id: int
    study_id: int
    task: str
    position: int
    total: int
    patient: dict
    text_a: str
    text_b: str
    form: Form
    rating: Rating | None  # the reviewer's answer, once given
    reference: str | None  # the case's own answer, revealed after the rating

    @property
    def label(self) -> str:
        return TASK_LABELS[self.task]


def check_practice_runs(conn: sqlite3.Connection, run_1: sqlite3.Row, run_2: sqlite3.Row,
                        practice_runs: Sequence[int], task: str) -> list[str]:
    """The practice case ids the two practice runs offer, refusing runs that could mislead: each must be
    the matching study run's model (base and adapter) over the same practice part of the study's split
    (PRACTICE_PARTS, never the part under study), with outputs of the task."""
    if len(practice_runs) != 2 or practice_runs[0] == practice_runs[1]:
        raise ReviewError("Practice cases need two different practice runs, one per study run.")
    parts = set()
    for number, study_run, run_id in ((1, run_1, practice_runs[0]), (2, run_2, practice_runs[1])):
        run = conn.execute("SELECT * FROM generation_runs WHERE run_id = ?", (run_id,)).fetchone()
        if run is None:
            raise ReviewError(f"There is no generation run {run_id}.")
        if (run["split_id"] != study_run["split_id"] or run["part"] not in PRACTICE_PARTS
                or run["part"] == study_run["part"]):
            raise ReviewError(f"Practice run {run_id} must answer the validation or train part of the study's "
                              f"split (split {study_run['split_id']}); it answers the {run['part']} part of split "
                              f"{run['split_id']}. Practice cases never come from the cases under study.")
        models = ("base_model_id", "adapter_model_id")
        if [run[m] for m in models] != [study_run[m] for m in models]:
            raise ReviewError(f"Practice run {run_id} must come from the same model as study run {number} "
                              f"(run {study_run['run_id']}), so that reviewers practise on outputs like the ones "
                              "they will rate.")
        if task not in json.loads(run["tasks"]):
            raise ReviewError(f"Practice run {run_id} has no '{task}' outputs.")
        parts.add(run["part"])
    if len(parts) > 1:
        raise ReviewError("The two practice runs must answer the same part of the split.")
    offered = {r[0] for r in conn.execute("SELECT case_id FROM split_cases WHERE split_id = ? AND part = ?",
                                          (run_1["split_id"], parts.pop()))}
    return [case_id for case_id in eligible_cases(conn, practice_runs[0], practice_runs[1], task) if case_id in offered]


def add_practice_cases(conn: sqlite3.Connection, *, actor_id: int | None, study_id: int,
                       practice_runs: Sequence[int], practice_n: int, client: str | None = None) -> list[str]:
    """Give a study `practice_n` practice cases, drawn with its seed from what its practice runs answer,
    and every reviewer of it those cases; the case ids. Once per study, before it closes. Staff only."""
    with transaction(conn):
        actor = require_role(conn, actor_id)
        study = open_study(conn, study_id)
        if study["practice_run_1_id"] is not None:
            raise ReviewError(f"Study {study['name']!r} already has its practice cases.")
        if conn.execute("SELECT 1 FROM assignments a JOIN ratings r USING (assignment_id) WHERE a.study_id = ? "
                        "LIMIT 1", (study_id,)).fetchone():
            raise ReviewError(f"Study {study['name']!r} has ratings already: practice cases come before a "
                              "reviewer's first rating, so they can only be added to a study no one has rated yet.")
        run_1, run_2 = (conn.execute("SELECT * FROM generation_runs WHERE run_id = ?", (study[f"run_{n}_id"],))
                        .fetchone() for n in (1, 2))
        offered = check_practice_runs(conn, run_1, run_2, practice_runs, study["task"])
        if not 1 <= practice_n <= len(offered):
            raise ReviewError(f"Cannot draw {practice_n} practice cases: the practice runs have {len(offered)} "
                              "cases of their part with outputs of both.")
        seed = int.from_bytes(keyed_draw(study["seed"], study["name"], "practice")[:7], "big")
        cases = sample_cases(offered, practice_n, seed)
        conn.execute("UPDATE studies SET practice_run_1_id = ?, practice_run_2_id = ? WHERE study_id = ?",
                     (*practice_runs, study_id))
        reviewers = [r[0] for r in conn.execute("SELECT DISTINCT reviewer_id FROM assignments WHERE study_id = ? "
                                                "ORDER BY reviewer_id", (study_id,))]
        study = conn.execute("SELECT * FROM studies WHERE study_id = ?", (study_id,)).fetchone()
        n_rows = assign_practice(conn, study, reviewers, cases)
        audit(conn, actor, "add-practice-cases", "studies", study_id,
              {"practice_runs": list(practice_runs), "practice_n": practice_n, "n_assignments": n_rows}, client)
    return cases


def _reference(conn: sqlite3.Connection, case_id: str, task: str) -> str:
    column = {"regimen": "regimen", "modality": "modality", "icd10": "icd10"}[task]
    return conn.execute(f"SELECT {column} FROM cases WHERE case_id = ?", (case_id,)).fetchone()[0]


def _item(conn: sqlite3.Connection, row: sqlite3.Row, total: int) -> PracticeItem:
    patient, text_a, text_b = shown_case(conn, row["case_id"], row["task"], row["run_a_id"], row["run_b_id"])
    answers = conn.execute("SELECT answers FROM practice_ratings WHERE practice_id = ?",
                           (row["practice_id"],)).fetchone()
    rating = Rating(**json.loads(answers[0])) if answers else None
    return PracticeItem(practice_id=row["practice_id"], study_id=row["study_id"], task=row["task"],
                        position=row["position"], total=total, patient=patient, text_a=text_a, text_b=text_b,
                        form=Form.from_json(row["form"]), rating=rating,
                        reference=_reference(conn, row["case_id"], row["task"]) if rating else None)


_MINE = ("SELECT p.*, s.task, s.form FROM practice_assignments p JOIN studies s USING (study_id) "
         "WHERE p.reviewer_id = ? AND p.study_id = ?")


def open_practice(conn: sqlite3.Connection, reviewer_id: int, study_id: int,
                  practice_id: int | None = None) -> PracticeItem | None:
    """The reviewer's practice case `practice_id` (rated: with the reference answer), or with None their
    first practice case not yet rated; None when there is none left (or the study has none)."""
    reviewer_name(conn, reviewer_id)
    rows = conn.execute(_MINE + " ORDER BY p.position", (reviewer_id, study_id)).fetchall()
    if practice_id is not None:
        row = next((r for r in rows if r["practice_id"] == practice_id), None)
        if row is None:
            raise AccessDenied(NOT_YOURS)
        return _item(conn, row, len(rows))
    rated = {r[0] for r in conn.execute("SELECT practice_id FROM practice_ratings WHERE reviewer_id = ?",
                                        (reviewer_id,))}
    row = next((r for r in rows if r["practice_id"] not in rated), None)
    return _item(conn, row, len(rows)) if row else None


def submit_practice(conn: sqlite3.Connection, reviewer_id: int, practice_id: int, rating: Rating,
                    client: str | None = None) -> PracticeItem:
    """Store the reviewer's answer to their practice case, checked as a study rating is; the item with the
    reference answer now revealed. A practice case takes one answer: a second submission keeps the first."""
    with transaction(conn):
        name = reviewer_name(conn, reviewer_id)
        row = conn.execute("SELECT p.*, s.task, s.form, s.closed_at FROM practice_assignments p "
                           "JOIN studies s USING (study_id) WHERE p.practice_id = ?", (practice_id,)).fetchone()
        if row is None or row["reviewer_id"] != reviewer_id:
            raise AccessDenied(NOT_YOURS)
        if row["closed_at"]:
            raise ReviewError(f"This study was closed on {closed_on(row['closed_at'])}: it takes no more answers.")
        rating = check_rating(rating, Form.from_json(row["form"]))
        if not conn.execute("SELECT 1 FROM practice_ratings WHERE practice_id = ?", (practice_id,)).fetchone():
            conn.execute("INSERT INTO practice_ratings (practice_id, answers, reviewer_id) VALUES (?, ?, ?)",
                         (practice_id, json.dumps(asdict(rating)), reviewer_id))
            audit(conn, name, "rate-practice", "practice_assignments", practice_id,
                  {"study_id": row["study_id"], "position": row["position"]}, client)
    return open_practice(conn, reviewer_id, row["study_id"], practice_id)


def practice_progress(conn: sqlite3.Connection, study_id: int) -> dict[int, tuple[int, int]]:
    """Per reviewer id: (practice cases answered, practice cases given)."""
    rows = conn.execute("SELECT p.reviewer_id, count(r.practice_id), count(*) FROM practice_assignments p "
                        "LEFT JOIN practice_ratings r USING (practice_id) WHERE p.study_id = ? "
                        "GROUP BY p.reviewer_id", (study_id,))
    return {r[0]: (r[1], r[2]) for r in rows}
