"""Blinded review studies: assignments with randomized sides, and append-only ratings.

A study pairs two generation runs over the same split part for one task. Each sampled case goes to
`overlap` reviewers, balanced so reviewers' loads differ by at most one; for every reviewer and
case, which run is shown as "A" is randomized (each reviewer sees each run as "A" half the time)
and stored in `assignments`, and each reviewer gets the cases in their own random order. The
randomness is a keyed hash (HMAC-SHA256) of the study's seed, its name, the reviewer and the case id,
and the seed comes from `secrets` unless given: a side cannot be worked out without both the stored
seed and the case ids, which reviewers never see.

Reviewers see each run's extracted answer (`reviewer_text`), never the raw output: a base model's
text runs on into the other tasks ("Modality: photon. ICD-10-CM C61."), which would give its side
away. `rocore.review.blinding` measures what such tell-tales still reveal.

The side mapping stays on the server: what a reviewer's page receives (`ReviewItem`) holds the
case, the two texts as "A" and "B" and the reviewer's own earlier answers, never run or model
identities. Every reviewer-facing function takes the signed-in reviewer's id and refuses
assignments that are not theirs; the unblinded views take a staff id.

Ratings are append-only: a revision is a new row. The next revision is computed inside a
BEGIN IMMEDIATE transaction, and a form must say which revision it was based on. A submission based
on an older revision than the stored one is refused (`StaleRating`). A submission that repeats the
stored values exactly (a double click, a resubmitted tab, an unchanged form) returns the stored
rating instead of adding a row. So two tabs never silently overwrite each other.

A running study can grow (`add_reviewer_to_study`), be repaired when a reviewer leaves
(`reassign_unrated`) and be closed (`close_study`, after which the store refuses its ratings). Only
unrated assignments ever change hands, each keeping its case's number of reviewers, with order and
sides drawn for the new reviewer as `plan_assignments` draws them; a rated assignment is fixed by the
schema.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import re
import secrets
import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from rocore.evaluation.acceptability import RULE, acceptability_figures, post_adjudication_figures
from rocore.evaluation.dashboard import adjudicated_by_model
from rocore.evaluation.scales import (EDIT, LIKELIHOOD, NO_HARM, SCALES, Scale, acceptable_from_edit, asked_scales,
                                     scale_figures)
from rocore.evaluation.statistics import plan_paired_study
from rocore.review.auth import AccessDenied, active_user, require_role
from rocore.store import audit as audit_log
from rocore.store.audit import audit
from rocore.store.db import SchemaError, opened, transaction
from rocore.model.prompts import TASKS

TASK_LABELS = {"regimen": "Regimen", "modality": "Modality", "icd10": "ICD-10 code"}
PREFERENCES = ("A", "B", "none")
MAX_COMMENT, MAX_REASON = 2000, 500
PATIENT_FIELDS = ("site", "age", "sex", "laterality", "stage", "histology", "ecog")
NOT_YOURS = "This case is not assigned to you."
# Seeds drawn by default: 63 bits fit SQLite's INTEGER and are far too many to try one by one.
SEED_BITS = 63
# Shown for an output in which nothing could be read and nothing precedes its run-on.
NO_ANSWER = "(no answer given)"
# Where a raw output runs on past its answer: into another task's answer, the next prompt section or
# a chat turn marker. Used only for outputs whose answer could not be read.
_RUN_ON = re.compile(
    r"(?:^|(?<=[.!?;,])\s+|\n)\W*(?:modality|icd[\s-]*10|(?:diagnosis\s+)?code|###)\b"
    r"|<\||\[/?INST\]|<start_of_turn>|<end_of_turn>|</s>|<eos>",
    re.IGNORECASE,
)


class ReviewError(ValueError):
    """A refused request; the message is safe to show to the person who made it."""


class StaleRating(ReviewError):
    def __init__(self, current_revision: int) -> None:
        self.current_revision = current_revision
        super().__init__("This case was rated again in another tab or window after this form was opened, "
                         "so your answer was not saved. The form now shows the stored rating: check it "
                         "and submit again to revise it.")


class NotSaved(ReviewError):
    """The store refused a rating (locked, read-only, full, unreadable); the reviewer's form is intact."""


class _NotYours(Exception):
    """Raised inside a transaction so it rolls back before the refusal is logged."""


@dataclass(frozen=True)
class Form:
    """What the rating form asks besides acceptability of each output (rocore.evaluation.scales): the
    edit level (from which acceptability is then derived), potential harm and its likelihood, a 1-5
    score, a preference and a comment."""

    likert: bool = False
    preference: bool = False
    comment: bool = True
    edit_level: bool = False
    harm: bool = False

    @property
    def scales(self) -> list[Scale]:
        return asked_scales(self.edit_level, self.harm, self.likert)

    @classmethod
    def from_json(cls, text: str) -> Form:
        return cls(**{k: bool(v) for k, v in json.loads(text).items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Rating:
    """One answer of a reviewer, in the terms they saw: sides "A" and "B"."""

    acceptable_a: bool | None = None
    acceptable_b: bool | None = None
    likert_a: int | None = None
    likert_b: int | None = None
    preference: str | None = None
    comment: str | None = None
    unratable_reason: str | None = None
    edit_a: int | None = None
    edit_b: int | None = None
    harm_a: int | None = None
    harm_b: int | None = None
    likelihood_a: int | None = None
    likelihood_b: int | None = None

    @property
    def unratable(self) -> bool:
        return self.unratable_reason is not None


RATING_FIELDS = tuple(Rating.__dataclass_fields__)


@dataclass(frozen=True)
class ReviewItem:
    """Everything the Review page shows for one case: nothing in it names a run or a model."""

    assignment_id: int
    study_id: int
    task: str
    position: int  # 1..total, in this reviewer's own random order
    total: int
    done: int  # cases of the study this reviewer has rated or flagged
    patient: dict  # diagnosis and the structured fields in PATIENT_FIELDS
    text_a: str
    text_b: str
    form: Form
    current: Rating | None  # the reviewer's rating as of `revision`
    revision: int  # the revision the form is based on (0: not rated yet)

    @property
    def label(self) -> str:
        return TASK_LABELS[self.task]


@dataclass(frozen=True)
class Saved:
    """The stored rating a submission ended in; `duplicate` when it added no row."""

    rating_id: int
    revision: int
    duplicate: bool


@dataclass(frozen=True)
class Planned:
    """One assignment before it is stored."""

    reviewer_id: int
    case_id: str
    position: int
    run_1_is_a: bool


# --- Creating studies ---------------------------------------------------------------------------

def eligible_cases(conn: sqlite3.Connection, run_1_id: int, run_2_id: int, task: str) -> list[str]:
    """Case ids with an output of `task` in both runs, sorted."""
    rows = conn.execute(
        "SELECT g1.case_id FROM generations g1 JOIN generations g2 ON g2.case_id = g1.case_id "
        "AND g2.task = g1.task AND g2.run_id = ? WHERE g1.run_id = ? AND g1.task = ? ORDER BY g1.case_id",
        (run_2_id, run_1_id, task))
    return [r[0] for r in rows]


def sample_cases(case_ids: Sequence[str], sample_n: int | None, seed: int) -> list[str]:
    """All cases, or `sample_n` of them drawn with `seed` (the same seed draws the same cases)."""
    ordered = sorted(case_ids)
    if sample_n is None:
        return ordered
    if not 1 <= sample_n <= len(ordered):
        raise ReviewError(f"Cannot sample {sample_n} cases: {len(ordered)} have outputs in both runs.")
    return sorted(random.Random(seed).sample(ordered, sample_n))


def keyed_draw(seed: int, *parts: object) -> bytes:
    """HMAC-SHA256 of `parts` under the seed: what decides sides and orders, so that they depend on the
    case ids and cannot be predicted from the seed, the counts or the positions alone."""
    message = "\x1f".join(str(part) for part in parts).encode()
    return hmac.new(str(int(seed)).encode(), message, hashlib.sha256).digest()


def plan_assignments(case_ids: Sequence[str], reviewer_ids: Sequence[int], overlap: int,
                     seed: int, study: str = "") -> list[Planned]:
    """Who rates which case, in which order, with which run as "A"; deterministic for a seed and study.

    Each case goes to the `overlap` least-loaded reviewers (ties broken at random), which keeps
    every reviewer's load within one of every other's. Each reviewer's sides are half run 1 as "A"
    and half run 2 (the odd one at random), and their case order is random. Every draw is a keyed
    hash of the seed, the study, the reviewer and the case id (`keyed_draw`), never a shared random
    stream, so the same seed with other case ids gives unrelated sides.
    """
    reviewers = list(dict.fromkeys(reviewer_ids))
    if not 1 <= overlap <= len(reviewers):
        raise ReviewError(f"Overlap must be between 1 and the number of reviewers ({len(reviewers)}).")
    cases = sorted(case_ids, key=lambda case_id: keyed_draw(seed, study, "case", case_id))
    load = dict.fromkeys(reviewers, 0)
    given: dict[int, list[str]] = {r: [] for r in reviewers}
    for case_id in cases:
        for reviewer in sorted(reviewers, key=lambda r: (load[r], keyed_draw(seed, study, "tie", case_id, r)))[:overlap]:
            load[reviewer] += 1
            given[reviewer].append(case_id)
    return [Planned(reviewer, case_id, position, run_1_is_a)
            for reviewer in reviewers
            for position, (case_id, run_1_is_a) in enumerate(_queue(seed, study, reviewer, given[reviewer]), 1)]


def _queue(seed: int, study: str, reviewer: int, case_ids: Sequence[str], lean: int = 0) -> list[tuple[str, bool]]:
    """The reviewer's cases in their random order, each with whether run 1 is "A": half of them each way,
    the odd one at random, or, with a `lean` (how many more of the reviewer's other cases show run 1 as
    "A" than run 2), the way that evens their sides out."""
    mine = sorted(case_ids, key=lambda case_id: keyed_draw(seed, study, "position", reviewer, case_id))
    ranked = sorted(mine, key=lambda case_id: keyed_draw(seed, study, "side", reviewer, case_id))
    first = lean < 0 if lean else keyed_draw(seed, study, "first", reviewer, *sorted(mine))[0] % 2 == 0
    run_1_is_a = {case_id: (rank % 2 == 0) == first for rank, case_id in enumerate(ranked)}
    return [(case_id, run_1_is_a[case_id]) for case_id in mine]


def reviewer_text(answer: str | None, raw_text: str | None) -> str:
    """What reviewers see of an output: its extracted answer. Where none could be read, the raw text up
    to where it runs on into other tasks or turns, on one line and without a closing stop, as answers
    are written; NO_ANSWER when nothing precedes that."""
    if answer:
        return answer
    head = _RUN_ON.split(raw_text or "", maxsplit=1)[0]
    return " ".join(head.split()).rstrip(" .,;:") or NO_ANSWER


def _run(conn: sqlite3.Connection, run_id: int) -> sqlite3.Row:
    row = conn.execute(
        "SELECT r.*, b.name AS base_name, b.path AS base_path, a.name AS adapter_name, "
        "a.path AS adapter_path FROM generation_runs r JOIN models b ON b.model_id = r.base_model_id "
        "LEFT JOIN models a ON a.model_id = r.adapter_model_id WHERE r.run_id = ?", (run_id,)).fetchone()
    if row is None:
        raise ReviewError(f"There is no generation run {run_id}.")
    return row


def _model_words(run: sqlite3.Row) -> set[str]:
    """Names by which a run's models could be recognised, to keep them out of what reviewers see."""
    words = set()
    for value in (run["base_name"], run["base_path"], run["adapter_name"], run["adapter_path"], run["served_model"]):
        if value:
            words |= {value.casefold(), Path(value).name.casefold()}
    return {w for w in words if len(w) >= 3}


def check_form(form: Form | dict | None) -> Form:
    """A Form from what callers pass: None for the default, or its fields as a dict."""
    if form is None:
        return Form()
    return form if isinstance(form, Form) else Form(**form)


def create_study(conn: sqlite3.Connection, *, actor_id: int | None, name: str, run_1_id: int, run_2_id: int,
                 reviewer_ids: Sequence[int], task: str = "regimen", sample_n: int | None = None,
                 seed: int | None = None, overlap: int = 1, form: Form | dict | None = None,
                 client: str | None = None) -> int:
    """Store a study and all its assignments at once; the study id. Staff only.

    The name is shown to reviewers, so a name that contains a model's name or path is refused.
    Without a seed one is drawn from `secrets`; either way it is stored, and with the case ids it
    reproduces the sample and every assignment.
    """
    name = " ".join(name.split())
    form = check_form(form)
    seed = secrets.randbits(SEED_BITS) if seed is None else int(seed)
    if not name:
        raise ReviewError("Give the study a name.")
    if task not in TASKS:
        raise ReviewError(f"Unknown task {task!r}: choose one of {', '.join(TASKS)}.")
    if run_1_id == run_2_id:
        raise ReviewError("Choose two different generation runs.")
    with transaction(conn):
        actor = require_role(conn, actor_id)
        runs = [_run(conn, run_1_id), _run(conn, run_2_id)]
        if (runs[0]["split_id"], runs[0]["part"]) != (runs[1]["split_id"], runs[1]["part"]):
            raise ReviewError("The two runs must answer the same split part.")
        for run in runs:
            if task not in json.loads(run["tasks"]):
                raise ReviewError(f"Run {run['run_id']} has no '{task}' outputs.")
        if any(word in name.casefold() for run in runs for word in _model_words(run)):
            raise ReviewError("Reviewers see the study name: leave the model names out of it.")
        if conn.execute("SELECT 1 FROM studies WHERE name = ?", (name,)).fetchone():
            raise ReviewError(f"There is already a study named {name!r}.")
        reviewers = list(dict.fromkeys(int(r) for r in reviewer_ids))
        if not reviewers:
            raise ReviewError("Choose at least one reviewer.")
        for reviewer in reviewers:
            if active_user(conn, reviewer) is None:
                raise ReviewError(f"Reviewer {reviewer} does not exist or is deactivated.")
        cases = eligible_cases(conn, run_1_id, run_2_id, task)
        if not cases:
            raise ReviewError(f"No case has a '{task}' output in both runs.")
        cases = sample_cases(cases, sample_n, seed)
        planned = plan_assignments(cases, reviewers, overlap, seed, study=name)
        study_id = conn.execute(
            "INSERT INTO studies (name, task, run_1_id, run_2_id, sample_n, seed, overlap, form, created_by) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (name, task, run_1_id, run_2_id, sample_n, seed, overlap, json.dumps(asdict(form)),
             actor_id)).lastrowid
        sides = {True: (run_1_id, run_2_id), False: (run_2_id, run_1_id)}
        conn.executemany(
            "INSERT INTO assignments (study_id, reviewer_id, case_id, position, run_a_id, run_b_id) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(study_id, p.reviewer_id, p.case_id, p.position, *sides[p.run_1_is_a]) for p in planned])
        audit(conn, actor, "create-study", "studies", study_id,
              {"name": name, "task": task, "run_1_id": run_1_id, "run_2_id": run_2_id, "sample_n": sample_n,
               "seed": seed, "overlap": overlap, "form": asdict(form), "reviewer_ids": reviewers,
               "n_cases": len(cases), "n_assignments": len(planned)}, client)
    return study_id


def study_id_by_name(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute("SELECT study_id FROM studies WHERE name = ?", (" ".join(name.split()),)).fetchone()
    if row is None:
        raise ReviewError(f"There is no study named {name!r}.")
    return row[0]


def assign_practice(conn: sqlite3.Connection, study: sqlite3.Row, reviewer_ids: Sequence[int],
                    case_ids: Sequence[str] | None = None) -> int:
    """Give each reviewer who has none yet the study's practice cases (those of `case_ids`, else the ones
    already given), in an order and with sides drawn for them from the study's seed; the number of rows
    added. Inside the caller's transaction."""
    runs = study["practice_run_1_id"], study["practice_run_2_id"]
    if None in runs:
        return 0
    if case_ids is None:
        case_ids = [r[0] for r in conn.execute("SELECT DISTINCT case_id FROM practice_assignments WHERE study_id = ? "
                                               "ORDER BY case_id", (study["study_id"],))]
    given = {r[0] for r in conn.execute("SELECT DISTINCT reviewer_id FROM practice_assignments WHERE study_id = ?",
                                        (study["study_id"],))}
    rows = []
    for reviewer in (r for r in reviewer_ids if r not in given):
        ordered = sorted(case_ids, key=lambda c: keyed_draw(study["seed"], study["name"], "practice", reviewer, c))
        for position, case_id in enumerate(ordered, start=1):
            run_1_is_a = keyed_draw(study["seed"], study["name"], "practice-side", reviewer, case_id)[0] % 2 == 0
            rows.append((study["study_id"], reviewer, case_id, position, *(runs if run_1_is_a else runs[::-1])))
    conn.executemany("INSERT INTO practice_assignments (study_id, reviewer_id, case_id, position, run_a_id, "
                     "run_b_id) VALUES (?, ?, ?, ?, ?, ?)", rows)
    return len(rows)


# --- Growing, repairing and closing a study ----------------------------------------------------

def closed_on(closed_at: str) -> str:
    """A stored closing time as people read it: 2025-01-31 14:05 UTC."""
    return f"{closed_at[:10]} {closed_at[11:16]} UTC"


def open_study(conn: sqlite3.Connection, study_id: int) -> sqlite3.Row:
    """The study, refused when it does not exist or is closed: what every change to a study checks first."""
    study = conn.execute("SELECT * FROM studies WHERE study_id = ?", (study_id,)).fetchone()
    if study is None:
        raise ReviewError(f"There is no study {study_id}.")
    if study["closed_at"]:
        raise ReviewError(f"Study {study['name']!r} was closed on {closed_on(study['closed_at'])}: it takes no "
                          "more changes.")
    return study


def _active_reviewer(conn: sqlite3.Connection, reviewer_id: int) -> str:
    user = active_user(conn, reviewer_id)
    if user is None:
        raise ReviewError(f"Reviewer {reviewer_id} does not exist or is deactivated.")
    return user.name


def _name_of(conn: sqlite3.Connection, reviewer_id: int) -> str:
    row = conn.execute("SELECT name FROM reviewers WHERE reviewer_id = ?", (reviewer_id,)).fetchone()
    if row is None:
        raise ReviewError(f"There is no reviewer {reviewer_id}.")
    return row[0]


def _holdings(conn: sqlite3.Connection, study_id: int) -> tuple[dict[int, set[str]], dict[int, list[sqlite3.Row]]]:
    """Per reviewer of the study: their case ids, and their unrated assignments in queue order."""
    cases: dict[int, set[str]] = {}
    unrated: dict[int, list[sqlite3.Row]] = {}
    for row in conn.execute(
            "SELECT a.assignment_id, a.reviewer_id, a.case_id, "
            "EXISTS (SELECT 1 FROM ratings r WHERE r.assignment_id = a.assignment_id) AS rated "
            "FROM assignments a WHERE a.study_id = ? ORDER BY a.reviewer_id, a.position", (study_id,)):
        cases.setdefault(row["reviewer_id"], set()).add(row["case_id"])
        mine = unrated.setdefault(row["reviewer_id"], [])
        if not row["rated"]:
            mine.append(row)
    return cases, unrated


def _not_the_adjudicator(study: sqlite3.Row, reviewer_id: int, name: str) -> None:
    """The adjudicator settles the raters' disagreements, so never rates a case of the study."""
    if study["adjudicator_id"] == reviewer_id:
        raise ReviewError(f"{name} adjudicates study {study['name']!r}, so cannot rate its cases.")


def _hand_over(conn: sqlite3.Connection, study: sqlite3.Row, reviewer_id: int, rows: Sequence[sqlite3.Row]) -> None:
    """Give unrated assignments to `reviewer_id`, after their own cases in a random order of their own and
    with sides drawn for them (keyed by the study's seed, as `plan_assignments` draws them), so that
    their sides stay even. The schema refuses to move a rated assignment (`assignments_rated_fixed`)."""
    if not rows:
        return
    run_1, run_2 = study["run_1_id"], study["run_2_id"]
    last, lean = conn.execute(
        "SELECT coalesce(max(position), 0), coalesce(sum(CASE WHEN run_a_id = ? THEN 1 ELSE -1 END), 0) "
        "FROM assignments WHERE study_id = ? AND reviewer_id = ?", (run_1, study["study_id"], reviewer_id)).fetchone()
    ids = {row["case_id"]: row["assignment_id"] for row in rows}
    queue = _queue(study["seed"], study["name"], reviewer_id, list(ids), lean)
    sides = {True: (run_1, run_2), False: (run_2, run_1)}
    conn.executemany(
        "UPDATE assignments SET reviewer_id = ?, position = ?, run_a_id = ?, run_b_id = ? WHERE assignment_id = ?",
        [(reviewer_id, last + number, *sides[run_1_is_a], ids[case_id])
         for number, (case_id, run_1_is_a) in enumerate(queue, start=1)])


def add_reviewer_to_study(conn: sqlite3.Connection, *, actor_id: int | None, study_id: int, reviewer_id: int,
                          client: str | None = None) -> dict:
    """Bring a reviewer into a running study: they take over unrated assignments from the reviewers with
    the most unrated work, until no one who could still hand them a case has more than one unrated case
    more than they do. Each case keeps its number of reviewers, no one gets a case twice, and ratings
    already given stay where they are. Staff only.

    Returns the reviewer's name, n_assignments taken over, and from: {name: how many}.
    """
    with transaction(conn):
        actor = require_role(conn, actor_id)
        study = open_study(conn, study_id)
        name = _active_reviewer(conn, reviewer_id)
        cases, unrated = _holdings(conn, study_id)
        if reviewer_id in cases:
            raise ReviewError(f"{name} is already a reviewer of study {study['name']!r}.")
        _not_the_adjudicator(study, reviewer_id, name)
        if not any(unrated.values()):
            raise ReviewError(f"Every case of study {study['name']!r} is rated: there is nothing to hand over.")
        taken: dict[str, tuple[int, sqlite3.Row]] = {}
        while True:
            donors = [r for r, rows in unrated.items() if any(row["case_id"] not in taken for row in rows)]
            if not donors:
                break
            donor = max(donors, key=lambda r: (len(unrated[r]), keyed_draw(study["seed"], study["name"], "donor",
                                                                        reviewer_id, r)))
            if len(unrated[donor]) - len(taken) < 2:
                break
            # From the end of the donor's queue: the cases they were about to see stay theirs.
            index = max(i for i, row in enumerate(unrated[donor]) if row["case_id"] not in taken)
            row = unrated[donor].pop(index)
            taken[row["case_id"]] = (donor, row)
        if not taken:
            raise ReviewError(f"No reviewer of study {study['name']!r} has more than one unrated case left: "
                              "there is nothing to hand over.")
        _hand_over(conn, study, reviewer_id, [row for _, row in taken.values()])
        assign_practice(conn, study, [reviewer_id])
        given = Counter(donor for donor, _ in taken.values())
        audit(conn, actor, "add-reviewer-to-study", "studies", study_id,
              {"reviewer_id": reviewer_id, "n_assignments": len(taken),
               "from": {str(donor): [row["assignment_id"] for d, row in taken.values() if d == donor]
                        for donor in sorted(given)}}, client)
        return {"reviewer": name, "n_assignments": len(taken),
                "from": {_name_of(conn, donor): n for donor, n in sorted(given.items())}}


def reassign_unrated(conn: sqlite3.Connection, *, actor_id: int | None, study_id: int, from_reviewer_id: int,
                     to_reviewer_ids: Sequence[int] | None = None, client: str | None = None) -> dict:
    """Hand a departed reviewer's unrated assignments to others: `to_reviewer_ids`, or every other active
    reviewer of the study. Each case goes to the one with the least unrated work who does not already
    have it; a case everyone has stays where it is, and is counted. Their ratings stay. Staff only.

    Returns from (the name), to: {name: how many}, moved and left (numbers of assignments).
    """
    with transaction(conn):
        actor = require_role(conn, actor_id)
        study = open_study(conn, study_id)
        departing = _name_of(conn, from_reviewer_id)
        cases, unrated = _holdings(conn, study_id)
        if from_reviewer_id not in cases:
            raise ReviewError(f"{departing} has no cases in study {study['name']!r}.")
        pending = unrated[from_reviewer_id]
        if not pending:
            raise ReviewError(f"{departing} has rated every case of study {study['name']!r}: nothing to reassign.")
        if to_reviewer_ids is None:
            recipients = [r for r in cases if r != from_reviewer_id and active_user(conn, r) is not None]
        else:
            recipients = list(dict.fromkeys(int(r) for r in to_reviewer_ids))
            if from_reviewer_id in recipients:
                raise ReviewError(f"Choose reviewers other than {departing} to take their cases.")
            for recipient in recipients:
                _not_the_adjudicator(study, recipient, _active_reviewer(conn, recipient))
        if not recipients:
            raise ReviewError(f"No other active reviewer of study {study['name']!r} can take {departing}'s cases: "
                              "add a reviewer to the study instead.")
        load = {r: len(unrated.get(r, [])) for r in recipients}
        moves: dict[int, list[sqlite3.Row]] = {r: [] for r in recipients}
        left = []
        for row in pending:
            eligible = [r for r in recipients if row["case_id"] not in cases.get(r, ())]
            if not eligible:
                left.append(row)
                continue
            to = min(eligible, key=lambda r: (load[r], keyed_draw(study["seed"], study["name"], "reassign",
                                                                row["case_id"], r)))
            load[to] += 1
            cases.setdefault(to, set()).add(row["case_id"])
            moves[to].append(row)
        if len(left) == len(pending):
            raise ReviewError(f"Each of {departing}'s {len(pending)} unrated case(s) is already with every other "
                              "chosen reviewer: none can be reassigned.")
        for recipient, rows in moves.items():
            _hand_over(conn, study, recipient, rows)
        assign_practice(conn, study, [r for r, rows in moves.items() if rows])
        audit(conn, actor, "reassign-unrated", "studies", study_id,
              {"from_reviewer_id": from_reviewer_id,
               "to": {str(r): [row["assignment_id"] for row in rows] for r, rows in moves.items() if rows},
               "left": [row["assignment_id"] for row in left]}, client)
        return {"from": departing, "to": {_name_of(conn, r): len(rows) for r, rows in moves.items() if rows},
                "moved": len(pending) - len(left), "left": len(left)}


def close_study(conn: sqlite3.Connection, *, actor_id: int | None, study_id: int, client: str | None = None) -> dict:
    """Close a study for good: from now on the store refuses its ratings, and reports say when it closed
    and how much was rated. Staff only. Returns closed_at, n_rated and n_assignments."""
    with transaction(conn):
        actor = require_role(conn, actor_id)
        open_study(conn, study_id)
        closed_at = audit_log.timestamp(audit_log.now())
        conn.execute("UPDATE studies SET closed_at = ?, closed_by = ? WHERE study_id = ?",
                     (closed_at, actor_id, study_id))
        n_assignments, n_rated = conn.execute(
            "SELECT count(*), coalesce(sum(EXISTS (SELECT 1 FROM ratings r WHERE r.assignment_id = a.assignment_id)), 0) "
            "FROM assignments a WHERE a.study_id = ?", (study_id,)).fetchone()
        audit(conn, actor, "close-study", "studies", study_id, {"n_rated": n_rated, "n_assignments": n_assignments},
              client)
    return {"closed_at": closed_at, "n_rated": n_rated, "n_assignments": n_assignments}


# --- Staff views (unblinded) --------------------------------------------------------------------

def list_studies(conn: sqlite3.Connection, *, actor_id: int | None) -> list[dict]:
    """Every study with its settings and overall progress, newest first; a closed one with closed_at and
    closed_by_name (None when closed from the command line). Staff only."""
    require_role(conn, actor_id)
    rows = conn.execute(
        "SELECT s.*, (SELECT name FROM reviewers WHERE reviewer_id = s.closed_by) AS closed_by_name, "
        "(SELECT count(DISTINCT case_id) FROM assignments a WHERE a.study_id = s.study_id) AS n_cases, "
        "(SELECT count(*) FROM assignments a WHERE a.study_id = s.study_id) AS n_assignments, "
        "(SELECT count(*) FROM assignments a WHERE a.study_id = s.study_id AND EXISTS "
        " (SELECT 1 FROM ratings r WHERE r.assignment_id = a.assignment_id)) AS n_done "
        "FROM studies s ORDER BY s.study_id DESC")
    return [{**dict(r), "form": json.loads(r["form"])} for r in rows]


def study_progress(conn: sqlite3.Connection, study_id: int, *, actor_id: int | None) -> list[dict]:
    """Per reviewer: assigned, done (rated or flagged) and flagged cases. Staff only."""
    require_role(conn, actor_id)
    rows = conn.execute(
        "SELECT p.name AS reviewer, count(*) AS assigned, count(c.rating_id) AS done, "
        "count(c.unratable_reason) AS flagged FROM assignments a JOIN reviewers p USING (reviewer_id) "
        "LEFT JOIN current_ratings c ON c.assignment_id = a.assignment_id WHERE a.study_id = ? "
        "GROUP BY a.reviewer_id ORDER BY p.name", (study_id,))
    return [dict(r) for r in rows]


def unblinded_ratings(conn: sqlite3.Connection, study_id: int, *, actor_id: int | None) -> list[dict]:
    """Current ratings translated back from sides to runs: one row per rated assignment. Staff only."""
    require_role(conn, actor_id)
    rows = conn.execute(
        "SELECT a.assignment_id, a.case_id, p.name AS reviewer, a.reviewer_id, s.run_1_id, s.run_2_id, "
        "a.run_a_id, c.* FROM current_ratings c JOIN assignments a USING (assignment_id) "
        "JOIN studies s USING (study_id) JOIN reviewers p ON p.reviewer_id = a.reviewer_id "
        "WHERE a.study_id = ? ORDER BY a.case_id, p.name", (study_id,))
    result = []
    for r in rows:
        run_of = {"a": 1, "b": 2} if r["run_a_id"] == r["run_1_id"] else {"a": 2, "b": 1}
        side_of = {number: side for side, number in run_of.items()}
        preference = r["preference"]
        result.append({
            "assignment_id": r["assignment_id"], "case_id": r["case_id"], "reviewer": r["reviewer"],
            "reviewer_id": r["reviewer_id"], "revision": r["revision"], "run_1_shown_as": side_of[1].upper(),
            "acceptable_1": r[f"acceptable_{side_of[1]}"], "acceptable_2": r[f"acceptable_{side_of[2]}"],
            **{f"{scale}_{number}": r[f"{scale}_{side_of[number]}"]
               for scale in SCALES for number in (1, 2)},
            "preferred_run": run_of[preference.lower()] if preference in ("A", "B") else preference,
            "unratable": r["unratable_reason"] is not None, "unratable_reason": r["unratable_reason"],
            "comment": r["comment"], "rated_at": r["created_at"]})
    return result


def study_summary(conn: sqlite3.Connection, study_id: int, *, actor_id: int | None) -> dict:
    """Acceptability per run (the paper's measure: rocore.evaluation.acceptability's figures, the same
    as the Dashboard's), mean scores, preferences and flags over current ratings. Staff only.

    runs[1|2]: per-case acceptability (the primary figure) with its Wilson interval, and the share
    of all verdicts with its case-clustered interval; "acceptability" and "agreement" hold the
    full figures, run 1 as "base" and run 2 as "finetuned", or None before any verdict; so does
    "post_adjudication" (the Dashboard's acceptability after adjudication), None until a case is adjudicated.
    "scales": per scale the study asks, rocore.evaluation.scales.scale_figures with models 1 and 2 (empty
    before any).
    """
    ratings = unblinded_ratings(conn, study_id, actor_id=actor_id)
    rated = [r for r in ratings if not r["unratable"]]
    overlap, form, run_1, run_2 = conn.execute("SELECT overlap, form, run_1_id, run_2_id FROM studies "
                                               "WHERE study_id = ?", (study_id,)).fetchone()
    scales = Form.from_json(form).scales
    verdicts = pd.DataFrame([{"case_id": r["case_id"], "reviewer": r["reviewer"], "model": number,
                              "verdict": int(bool(r[f"acceptable_{number}"]))}
                             for r in rated for number in (1, 2)], columns=["case_id", "reviewer", "model", "verdict"])
    figures, agreement = (acceptability_figures(verdicts, 1, 2, ratings_per_case=overlap) if rated
                          else (None, None))
    adjudicated = adjudicated_by_model(conn, study_id, {1: run_1, 2: run_2})
    post = post_adjudication_figures(verdicts, adjudicated, 1, 2) if rated and adjudicated else None
    runs = {}
    for number, model in ((1, "base"), (2, "finetuned")):
        shares = figures[model] if figures else {"n": 0, "acceptable": 0, "share": None, "ci95": {}}
        level = figures["rating_level"][model] if figures else {}
        runs[number] = {"rated": shares["n"], "acceptable": shares["acceptable"],
                        "share_acceptable": shares["share"], "ci95_wilson": shares["ci95"].get("wilson"),
                        "share_of_verdicts": level.get("share"),
                        "share_of_verdicts_ci95": level.get("ci95_cluster_bootstrap")}
    preferences = {key: sum(r["preferred_run"] == key for r in rated) for key in (1, 2, "none")}
    # In run terms: run 1 stands as side "a" of every rating.
    levels = pd.DataFrame([{"case_id": r["case_id"], "reviewer": r["reviewer"], "run_a_id": 1,
                            **{f"{scale.key}_{side}": r[f"{scale.key}_{number}"]
                               for scale in scales for side, number in (("a", 1), ("b", 2))}} for r in rated],
                          columns=["case_id", "reviewer", "run_a_id",
                                   *(f"{scale.key}_{side}" for scale in scales for side in "ab")])
    return {"runs": runs, "preferences": preferences, "flagged": len(ratings) - len(rated),
            "acceptability_rule": RULE, "acceptability": figures, "agreement": agreement, "post_adjudication": post,
            "scales": scale_figures(levels, {1: 1, 2: 2}, scales, overlap) if rated else {}}


def creation_advice(n_reviewers: int, overlap: int) -> list[str]:
    """What to reconsider before creating a study with this many reviewers per case."""
    advice = []
    if overlap < 2:
        advice.append("With one reviewer per case there is no agreement to measure and each verdict stands "
                      "alone: 3 reviewers per case is the usual choice.")
    elif overlap % 2 == 0:
        advice.append(f"{overlap} reviewers per case can split evenly, and a tie counts as not acceptable: "
                      f"an odd number ({overlap + 1} if there are enough reviewers) avoids ties.")
    if overlap > n_reviewers:
        advice.append(f"Only {n_reviewers} reviewer(s) chosen for {overlap} per case.")
    return advice


def plan_study(p_base: float, p_finetuned: float, *, discordant: float | None = None, alpha: float = 0.05,
               power: float = 0.8, overlap: int = 3) -> dict:
    """Cases and ratings a paired study needs (rocore.evaluation.statistics.plan_paired_study), with
    the advice on reviewers per case."""
    try:
        plan = plan_paired_study(p_base, p_finetuned, discordant=discordant, alpha=alpha, power=power,
                                 ratings_per_case=overlap)
    except ValueError as exc:
        raise ReviewError(f"Cannot plan: {exc}.") from None
    plan["notes"] = [n for n in plan["notes"] if "tie" not in n] + creation_advice(overlap, overlap)
    return plan


# --- The reviewer's side ------------------------------------------------------------------------

def reviewer_name(conn: sqlite3.Connection, reviewer_id: int) -> str:
    """The signed-in reviewer's name, refused when the account is no longer active."""
    user = active_user(conn, reviewer_id)
    if user is None:
        raise AccessDenied("Your account is not active: ask a study administrator.")
    return user.name


def my_studies(conn: sqlite3.Connection, reviewer_id: int) -> list[dict]:
    """The reviewer's own studies with their progress: name, task, total and done (rated or flagged), and
    closed_at (None while the study takes ratings)."""
    reviewer_name(conn, reviewer_id)
    rows = conn.execute(
        "SELECT s.study_id, s.name, s.task, s.closed_at, count(*) AS total, "
        "sum(EXISTS (SELECT 1 FROM ratings r WHERE r.assignment_id = a.assignment_id)) AS done "
        "FROM assignments a JOIN studies s USING (study_id) WHERE a.reviewer_id = ? "
        "GROUP BY s.study_id ORDER BY s.study_id", (reviewer_id,))
    return [dict(r) for r in rows]


def my_summary(conn: sqlite3.Connection, reviewer_id: int, study_id: int) -> dict:
    """What the reviewer did in a study, from their own assignments only: `cases` assigned, `rated`,
    `flagged` unratable (their current rating), `revised` (rated more than once) and `commented`.
    Nothing about which run wrote what, and no share acceptable: a reviewer who saw how often they
    accepted each side could start to tell the sides apart."""
    reviewer_name(conn, reviewer_id)
    row = conn.execute(
        "SELECT count(*) AS cases, "
        "coalesce(sum(r.rating_id IS NOT NULL AND r.unratable_reason IS NULL), 0) AS rated, "
        "coalesce(sum(r.unratable_reason IS NOT NULL), 0) AS flagged, "
        "coalesce(sum(r.revision > 1), 0) AS revised, "
        "coalesce(sum(r.comment IS NOT NULL), 0) AS commented "
        "FROM assignments a LEFT JOIN ratings r ON r.assignment_id = a.assignment_id AND r.revision = "
        "  (SELECT max(revision) FROM ratings WHERE assignment_id = a.assignment_id) "
        "WHERE a.reviewer_id = ? AND a.study_id = ?", (reviewer_id, study_id)).fetchone()
    return dict(row)


def _rating_of(row: sqlite3.Row) -> Rating:
    values = {name: row[name] for name in RATING_FIELDS}
    for side in "ab":
        if values[f"acceptable_{side}"] is not None:
            values[f"acceptable_{side}"] = bool(values[f"acceptable_{side}"])
    return Rating(**values)


def _current(conn: sqlite3.Connection, assignment_id: int) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM ratings WHERE assignment_id = ? ORDER BY revision DESC LIMIT 1",
                        (assignment_id,)).fetchone()


def open_item(conn: sqlite3.Connection, reviewer_id: int, study_id: int, position: int | None = None,
              shown: tuple[int, int] | None = None) -> ReviewItem | None:
    """The reviewer's case at `position` (clamped to their range), or with None their first case without
    a rating; None when every case is done. Only the reviewer's own assignments are ever read.

    Positions count the reviewer's cases in the order of their stored positions, which can have gaps
    once unrated cases have been handed to another reviewer (`add_reviewer_to_study`,
    `reassign_unrated`): the k-th case stays "Case k of N".

    `shown` is (assignment id, revision) of the form already on the reviewer's screen: if it is this
    case, the item stays as of that revision, so the page keeps the form the reviewer is filling in
    and its submission meets the stale check instead of vanishing.
    """
    reviewer_name(conn, reviewer_id)
    counts = conn.execute(
        "SELECT count(*) AS total, sum(rated) AS done, min(CASE WHEN NOT rated THEN rank END) AS first_open "
        "FROM (SELECT row_number() OVER (ORDER BY position) AS rank, "
        "      EXISTS (SELECT 1 FROM ratings r WHERE r.assignment_id = a.assignment_id) AS rated "
        "      FROM assignments a WHERE a.reviewer_id = ? AND a.study_id = ?)",
        (reviewer_id, study_id)).fetchone()
    if not counts["total"]:
        raise AccessDenied("You have no cases in this study.")
    if position is None:
        if counts["first_open"] is None:
            return None
        position = counts["first_open"]
    position = min(max(int(position), 1), counts["total"])
    row = conn.execute(
        "SELECT a.assignment_id, a.case_id, a.run_a_id, a.run_b_id, s.task, s.form "
        "FROM assignments a JOIN studies s USING (study_id) "
        "WHERE a.reviewer_id = ? AND a.study_id = ? ORDER BY a.position LIMIT 1 OFFSET ?",
        (reviewer_id, study_id, position - 1)).fetchone()
    patient, text_a, text_b = shown_case(conn, row["case_id"], row["task"], row["run_a_id"], row["run_b_id"])
    current = _current(conn, row["assignment_id"])
    revision = current["revision"] if current else 0
    if shown and shown[0] == row["assignment_id"] and 0 <= shown[1] < revision:
        revision = shown[1]
        current = conn.execute("SELECT * FROM ratings WHERE assignment_id = ? AND revision = ?",
                               (row["assignment_id"], revision)).fetchone()
    return ReviewItem(
        assignment_id=row["assignment_id"], study_id=study_id, task=row["task"],
        position=position, total=counts["total"], done=counts["done"], patient=patient,
        text_a=text_a, text_b=text_b, form=Form.from_json(row["form"]),
        current=_rating_of(current) if current else None, revision=revision)


def shown_case(conn: sqlite3.Connection, case_id: str, task: str, run_a_id: int,
               run_b_id: int) -> tuple[dict, str, str]:
    """What a reviewer sees of a case: the patient (diagnosis and PATIENT_FIELDS) and the outputs shown as
    A and B (`reviewer_text`), the same for a study case, a practice case and an adjudication."""
    case = conn.execute(f"SELECT diagnosis, {', '.join(PATIENT_FIELDS)} FROM cases WHERE case_id = ?",
                        (case_id,)).fetchone()
    text_a, text_b = (reviewer_text(*conn.execute("SELECT answer, raw_text FROM generations "
                                                  "WHERE run_id = ? AND case_id = ? AND task = ?",
                                                  (run_id, case_id, task)).fetchone())
                      for run_id in (run_a_id, run_b_id))
    return dict(case), text_a, text_b


def bounded_text(value: str | None, limit: int, what: str) -> str | None:
    """Free text as stored: trimmed, None when empty, refused past `limit` characters."""
    value = (value or "").strip()
    if len(value) > limit:
        raise ReviewError(f"The {what} has at most {limit} characters.")
    return value or None


def check_rating(rating: Rating, form: Form) -> Rating:
    """The rating as stored: complete for the study's form, or a flag with a reason and nothing else."""
    reason = bounded_text(rating.unratable_reason, MAX_REASON, "reason")
    if rating.unratable_reason is not None:
        if reason is None:
            raise ReviewError("Say why this case cannot be rated.")
        return Rating(unratable_reason=reason)
    if not form.edit_level and not (isinstance(rating.acceptable_a, bool) and isinstance(rating.acceptable_b, bool)):
        raise ReviewError("Mark each output Acceptable or Not acceptable.")
    values = {side: _check_levels(rating, form, side) for side in "ab"}
    if form.preference:
        if rating.preference not in PREFERENCES:
            raise ReviewError("Choose the output you prefer, or no preference.")
    elif rating.preference is not None:
        raise ReviewError("This study does not ask for a preference.")
    comment = bounded_text(rating.comment, MAX_COMMENT, "comment")
    if comment and not form.comment:
        raise ReviewError("This study does not ask for comments.")
    return Rating(preference=rating.preference, comment=comment,
                  **{f"{name}_{side}": value for side, levels in values.items() for name, value in levels.items()})


def _check_levels(rating: Rating, form: Form, side: str) -> dict:
    """One side's acceptability and scale levels as stored: each asked scale answered with one of its
    levels, nothing on a scale the study does not ask; acceptability derived from the edit level where
    the study asks it; a likelihood only with some harm (one given with no harm is dropped, since the
    form cannot hide it once harm is set to none)."""
    output = f"output {side.upper()}"
    levels = {key: getattr(rating, f"{key}_{side}") for key in SCALES}
    asked = form.scales
    if levels["harm"] == NO_HARM:
        levels["likelihood"] = None
    for scale in SCALES.values():
        value = levels[scale.key]
        if scale not in asked:
            if value is not None:
                raise ReviewError(f"This study does not ask for {scale.name.lower()}.")
        elif scale is LIKELIHOOD and levels["harm"] in (None, NO_HARM):
            continue
        elif value not in scale.values:
            raise ReviewError(f"Choose the {scale.name.lower()} of {output}: "
                              f"{', '.join(scale.levels)}.")
    acceptable = getattr(rating, f"acceptable_{side}")
    if EDIT in asked:
        derived = acceptable_from_edit(levels["edit"])
        if acceptable is not None and acceptable != derived:
            raise ReviewError(f"The edit level of {output} says it is {'' if derived else 'not '}acceptable: "
                              "acceptable means as is or with minor edits.")
        acceptable = derived
    return {"acceptable": acceptable, **levels}


def _deny(conn: sqlite3.Connection, reviewer_id: int, assignment_id: object, client: str | None) -> None:
    user = active_user(conn, reviewer_id)
    with transaction(conn):
        audit(conn, user.name if user else f"reviewer#{reviewer_id}", "access-denied", "assignments",
              assignment_id, {"reviewer_id": reviewer_id}, client)


def submit_rating(conn: sqlite3.Connection, reviewer_id: int, assignment_id: int, rating: Rating,
                  base_revision: int, client: str | None = None) -> Saved:
    """Store a rating as the next revision of the reviewer's own assignment, with its audit row.

    `base_revision` is the revision the form showed (0 for none). Values equal to the stored rating add
    nothing (`Saved.duplicate`: a double click, a resubmitted tab, an unchanged form); other values
    are refused if the stored rating has moved past `base_revision`.
    """
    try:
        with transaction(conn):
            name = reviewer_name(conn, reviewer_id)
            owner = conn.execute("SELECT a.reviewer_id, a.study_id, s.form, s.closed_at FROM assignments a "
                                 "JOIN studies s USING (study_id) WHERE a.assignment_id = ?",
                                 (assignment_id,)).fetchone()
            if owner is None or owner["reviewer_id"] != reviewer_id:
                raise _NotYours
            if owner["closed_at"]:
                raise ReviewError(f"This study was closed on {closed_on(owner['closed_at'])}, so your rating was "
                                  "not stored.")
            rating = check_rating(rating, Form.from_json(owner["form"]))
            current = _current(conn, assignment_id)
            revision = current["revision"] if current else 0
            if current is not None and _rating_of(current) == rating:
                return Saved(current["rating_id"], revision, duplicate=True)
            if revision != base_revision:
                raise StaleRating(revision)
            values = asdict(rating)
            rating_id = conn.execute(
                f"INSERT INTO ratings (assignment_id, revision, reviewer_id, {', '.join(RATING_FIELDS)}) "
                f"VALUES (?, ?, ?, {', '.join('?' * len(RATING_FIELDS))})",
                (assignment_id, revision + 1, reviewer_id, *values.values())).lastrowid
            action = "flag-unratable" if rating.unratable else ("rate" if revision == 0 else "revise")
            detail = {name: value for name, value in values.items() if name not in ("comment", "unratable_reason")}
            audit(conn, name, action, "ratings", rating_id,
                  {"study_id": owner["study_id"], "assignment_id": assignment_id, "revision": revision + 1,
                   **detail, "has_comment": rating.comment is not None, "unratable": rating.unratable}, client)
    except _NotYours:
        _deny(conn, reviewer_id, assignment_id, client)
        raise AccessDenied(NOT_YOURS) from None
    return Saved(rating_id, revision + 1, duplicate=False)


# What a reviewer is told when the store refuses a rating, by SQLite's primary result code.
_LOCKED = ("the database is locked: another program is writing to it", "in a moment")
_READ_ONLY = ("the database is read-only for the app (its file, folder or disk does not allow writing)",
              "once a study administrator has fixed this")
_DAMAGED = ("the database file is damaged", "once a study administrator has fixed this")
_STORE_PROBLEMS = {
    sqlite3.SQLITE_BUSY: _LOCKED,
    sqlite3.SQLITE_LOCKED: _LOCKED,
    sqlite3.SQLITE_READONLY: _READ_ONLY,
    sqlite3.SQLITE_PERM: _READ_ONLY,
    sqlite3.SQLITE_FULL: ("the disk that holds the database is full", "once a study administrator has made room"),
    sqlite3.SQLITE_IOERR: ("the disk that holds the database could not be written",
                           "once a study administrator has fixed this"),
    sqlite3.SQLITE_CANTOPEN: ("the database file could not be opened", "once a study administrator has fixed this"),
    sqlite3.SQLITE_CORRUPT: _DAMAGED,
    sqlite3.SQLITE_NOTADB: _DAMAGED,
}


def store_problem(exc: BaseException) -> str:
    """Why the store refused a write, in words a reviewer can pass on, and when to try again."""
    cause = exc.__cause__ if isinstance(exc, SchemaError) and exc.__cause__ is not None else exc
    code = getattr(exc, "sqlite_errorcode", None) or getattr(cause, "sqlite_errorcode", None)
    what, when = _STORE_PROBLEMS.get(code & 0xFF if code is not None else None,
                                     (f"the database reported '{cause}'", "once this is fixed"))
    return f"Your rating was not saved: {what}. Your answers are still on the form: submit again {when}."


def save_rating(path: str | Path, reviewer_id: int, assignment_id: int, rating: Rating, base_revision: int,
                client: str | None = None) -> Saved:
    """`submit_rating` in a connection of its own, as the Review page saves. A store that cannot take
    the rating (locked, read-only, full, unreadable) raises NotSaved saying why, so that the page keeps
    the reviewer's answers instead of failing with a generic error. A missing file is refused, never
    created: a rating cannot land in a new, empty store."""
    try:
        with opened(path, create=False) as conn:
            return submit_rating(conn, reviewer_id, assignment_id, rating, base_revision, client)
    except (sqlite3.Error, SchemaError) as exc:
        raise NotSaved(store_problem(exc)) from exc


def rating_history(conn: sqlite3.Connection, reviewer_id: int,
                   assignment_id: int) -> list[tuple[int, str, Rating]]:
    """(revision, time, rating) of the reviewer's own assignment, oldest first."""
    reviewer_name(conn, reviewer_id)
    owner = conn.execute("SELECT reviewer_id FROM assignments WHERE assignment_id = ?",
                         (assignment_id,)).fetchone()
    if owner is None or owner[0] != reviewer_id:
        _deny(conn, reviewer_id, assignment_id, None)
        raise AccessDenied(NOT_YOURS)
    rows = conn.execute("SELECT * FROM ratings WHERE assignment_id = ? ORDER BY revision", (assignment_id,))
    return [(r["revision"], r["created_at"], _rating_of(r)) for r in rows]
