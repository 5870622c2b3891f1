"""Adjudication: a named adjudicator settles the cases whose raters disagree on acceptability.

A case disagrees when the current ratings that give a verdict (not unratable) differ on the
acceptability of either run's output. The study's adjudicator (`set_adjudicator`, staff only; an
active person who rates none of the study's cases, so that no verdict of theirs is settled by
themselves) works through the disagreeing cases without a verdict of theirs (`adjudication_queue`)
in an order keyed by the study's seed.

The adjudicator is blinded as reviewers are: `open_adjudication` returns the case, the two outputs as
"A" and "B" with sides of the adjudicator's own (a keyed hash of the study's seed, as
`rocore.review.studies` draws a reviewer's), and the raters' verdicts only as counts per side ("2 of 3
raters found A acceptable"): never a rater's name, a run or a model. The sides are stored with each
verdict in `adjudications`, which is append-only like `ratings`: a changed verdict is a new revision.
Only the named adjudicator may open or submit; anyone else is refused and the refusal audited.
Adjudication is allowed after a study closed: closing stops ratings, and disagreements among the
ratings given are usually settled afterwards.

`adjudicated_verdicts` (staff) gives the current verdicts back in run terms, for the
post-adjudication figures (rocore.evaluation.acceptability.post_adjudication_figures).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from rocore.evaluation.dashboard import adjudication_verdicts
from rocore.review.auth import AccessDenied, active_user, require_role
from rocore.review.studies import (
    MAX_COMMENT,
    TASK_LABELS,
    ReviewError,
    StaleRating,
    bounded_text,
    keyed_draw,
    shown_case,
)
from rocore.store.audit import audit
from rocore.store.db import transaction

NOT_ADJUDICATOR = "You are not the adjudicator of this study."


@dataclass(frozen=True)
class RaterCounts:
    """How many of the raters with a verdict found a side acceptable: no names, no runs."""

    acceptable: int
    raters: int

    def __str__(self) -> str:
        return f"{self.acceptable} of {self.raters} raters"


@dataclass(frozen=True)
class AdjudicationItem:
    """Everything the adjudicator's screen shows for one case: nothing in it names a run, a model or a rater.
    `case_id` stays on the server (the page keeps it to submit, never shows it)."""

    study_id: int
    case_id: str
    task: str
    waiting: int  # disagreeing cases without a verdict of the adjudicator, this one included if so
    disagreeing: int
    patient: dict
    text_a: str
    text_b: str
    raters_a: RaterCounts
    raters_b: RaterCounts
    acceptable_a: bool | None  # the adjudicator's current verdict, None before one
    acceptable_b: bool | None
    comment: str | None
    revision: int  # the revision the form is based on (0: not adjudicated yet)

    @property
    def label(self) -> str:
        return TASK_LABELS[self.task]


class _NotAdjudicator(Exception):
    """Raised inside a transaction so it rolls back before the refusal is logged."""


def _study(conn: sqlite3.Connection, study_id: int) -> sqlite3.Row:
    study = conn.execute("SELECT * FROM studies WHERE study_id = ?", (study_id,)).fetchone()
    if study is None:
        raise ReviewError(f"There is no study {study_id}.")
    return study


def verdict_counts(conn: sqlite3.Connection, study_id: int) -> dict[str, tuple[int, int, int]]:
    """Per case with a verdict: (raters with a verdict, of them acceptable for run 1, for run 2), from the
    current ratings, sides mapped back to runs through each assignment."""
    rows = conn.execute(
        "SELECT a.case_id, count(*), "
        "sum(CASE WHEN a.run_a_id = s.run_1_id THEN r.acceptable_a ELSE r.acceptable_b END), "
        "sum(CASE WHEN a.run_a_id = s.run_1_id THEN r.acceptable_b ELSE r.acceptable_a END) "
        "FROM assignments a JOIN studies s USING (study_id) JOIN current_ratings r USING (assignment_id) "
        "WHERE a.study_id = ? AND r.unratable_reason IS NULL GROUP BY a.case_id", (study_id,))
    return {case_id: (n, yes_1, yes_2) for case_id, n, yes_1, yes_2 in rows}


def disagreeing_cases(conn: sqlite3.Connection, study_id: int) -> list[str]:
    """Case ids whose raters differ on either output's acceptability, sorted."""
    return sorted(case_id for case_id, (n, *yes) in verdict_counts(conn, study_id).items()
                  if any(0 < count < n for count in yes))


def _adjudicated(conn: sqlite3.Connection, study_id: int) -> set[str]:
    return {r[0] for r in conn.execute("SELECT DISTINCT case_id FROM adjudications WHERE study_id = ?", (study_id,))}


def counts(conn: sqlite3.Connection, study_id: int) -> dict:
    """disagreeing cases, adjudicated (of those), waiting, and the adjudicator's name (None: not named)."""
    study = _study(conn, study_id)
    disagreeing = disagreeing_cases(conn, study_id)
    done = _adjudicated(conn, study_id)
    name = None
    if study["adjudicator_id"] is not None:
        name = conn.execute("SELECT name FROM reviewers WHERE reviewer_id = ?", (study["adjudicator_id"],)).fetchone()[0]
    adjudicated = sum(case_id in done for case_id in disagreeing)
    return {"disagreeing": len(disagreeing), "adjudicated": adjudicated, "waiting": len(disagreeing) - adjudicated,
            "adjudicator": name}


def set_adjudicator(conn: sqlite3.Connection, *, actor_id: int | None, study_id: int, reviewer_id: int,
                    client: str | None = None) -> str:
    """Name the study's adjudicator (or a new one: earlier verdicts stay, by whom they were given). Staff only.
    The adjudicator must be active and must rate none of the study's cases. Returns their name."""
    with transaction(conn):
        actor = require_role(conn, actor_id)
        study = _study(conn, study_id)
        user = active_user(conn, reviewer_id)
        if user is None:
            raise ReviewError(f"Reviewer {reviewer_id} does not exist or is deactivated.")
        if conn.execute("SELECT 1 FROM assignments WHERE study_id = ? AND reviewer_id = ?",
                        (study_id, reviewer_id)).fetchone():
            raise ReviewError(f"{user.name} rates cases of study {study['name']!r}: the adjudicator must be someone "
                              "who does not.")
        conn.execute("UPDATE studies SET adjudicator_id = ? WHERE study_id = ?", (reviewer_id, study_id))
        audit(conn, actor, "set-adjudicator", "studies", study_id,
              {"adjudicator_id": reviewer_id, "previous": study["adjudicator_id"]}, client)
    return user.name


def _adjudicator(conn: sqlite3.Connection, adjudicator_id: int) -> str:
    user = active_user(conn, adjudicator_id)
    if user is None:
        raise AccessDenied("Your account is not active: ask a study administrator.")
    return user.name


def _deny(conn: sqlite3.Connection, adjudicator_id: int, study_id: object, client: str | None) -> None:
    user = active_user(conn, adjudicator_id)
    with transaction(conn):
        audit(conn, user.name if user else f"reviewer#{adjudicator_id}", "access-denied", "adjudications",
              study_id, {"reviewer_id": adjudicator_id}, client)


def _check_adjudicator(conn: sqlite3.Connection, adjudicator_id: int, study_id: int) -> sqlite3.Row:
    """The study, if `adjudicator_id` is its adjudicator; else _NotAdjudicator."""
    study = conn.execute("SELECT * FROM studies WHERE study_id = ?", (study_id,)).fetchone()
    if study is None or study["adjudicator_id"] != adjudicator_id:
        raise _NotAdjudicator
    return study


def my_adjudications(conn: sqlite3.Connection, adjudicator_id: int) -> list[dict]:
    """The studies the person adjudicates: study_id, name, task and the counts of `counts` (no names)."""
    _adjudicator(conn, adjudicator_id)
    rows = conn.execute("SELECT study_id, name, task FROM studies WHERE adjudicator_id = ? ORDER BY study_id",
                        (adjudicator_id,)).fetchall()
    return [{**dict(r), **{k: v for k, v in counts(conn, r["study_id"]).items() if k != "adjudicator"}} for r in rows]


def adjudication_queue(conn: sqlite3.Connection, adjudicator_id: int, study_id: int) -> list[str]:
    """The disagreeing cases without an adjudication, in an order keyed by the study's seed (reproducible,
    and unrelated to the case ids' order). Only the study's adjudicator may ask."""
    _adjudicator(conn, adjudicator_id)
    try:
        study = _check_adjudicator(conn, adjudicator_id, study_id)
    except _NotAdjudicator:
        _deny(conn, adjudicator_id, study_id, None)
        raise AccessDenied(NOT_ADJUDICATOR) from None
    done = _adjudicated(conn, study_id)
    waiting = [case_id for case_id in disagreeing_cases(conn, study_id) if case_id not in done]
    return sorted(waiting, key=lambda case_id: keyed_draw(study["seed"], study["name"], "adjudication-order", case_id))


def _run_1_is_a(study: sqlite3.Row, case_id: str) -> bool:
    """The adjudicator's own side for the case, drawn as a reviewer's are."""
    return keyed_draw(study["seed"], study["name"], "adjudication-side", case_id)[0] % 2 == 0


def open_adjudication(conn: sqlite3.Connection, adjudicator_id: int, study_id: int,
                      case_id: str | None = None) -> AdjudicationItem | None:
    """The case `case_id` (a disagreeing one) or, with None, the first in the queue; None when the queue is
    empty. Only the study's adjudicator may open one."""
    queue = adjudication_queue(conn, adjudicator_id, study_id)
    study = _study(conn, study_id)
    disagreeing = disagreeing_cases(conn, study_id)
    if case_id is None:
        if not queue:
            return None
        case_id = queue[0]
    elif case_id not in disagreeing:
        raise ReviewError("The raters of this case no longer disagree: it needs no adjudication.")
    verdicts = verdict_counts(conn, study_id)[case_id]
    run_1_is_a = _run_1_is_a(study, case_id)
    runs = (study["run_1_id"], study["run_2_id"]) if run_1_is_a else (study["run_2_id"], study["run_1_id"])
    counts_of = {study["run_1_id"]: verdicts[1], study["run_2_id"]: verdicts[2]}
    patient, text_a, text_b = shown_case(conn, case_id, study["task"], *runs)
    current = _current(conn, study_id, case_id)
    return AdjudicationItem(
        study_id=study_id, case_id=case_id, task=study["task"], waiting=len(queue), disagreeing=len(disagreeing),
        patient=patient, text_a=text_a, text_b=text_b,
        raters_a=RaterCounts(counts_of[runs[0]], verdicts[0]), raters_b=RaterCounts(counts_of[runs[1]], verdicts[0]),
        acceptable_a=None if current is None else bool(current["acceptable_a"]),
        acceptable_b=None if current is None else bool(current["acceptable_b"]),
        comment=None if current is None else current["comment"], revision=current["revision"] if current else 0)


def _current(conn: sqlite3.Connection, study_id: int, case_id: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM adjudications WHERE study_id = ? AND case_id = ? ORDER BY revision DESC LIMIT 1",
                        (study_id, case_id)).fetchone()


def submit_adjudication(conn: sqlite3.Connection, adjudicator_id: int, study_id: int, case_id: str,
                        acceptable_a: bool, acceptable_b: bool, comment: str | None = None, base_revision: int = 0,
                        client: str | None = None) -> int:
    """Store the adjudicator's verdict on a disagreeing case, in the terms of the sides they saw, as the next
    revision; its audit row holds ids and verdicts, no text. Returns the revision. A form based on an older
    revision than the stored one is refused (StaleRating), as for ratings."""
    if not isinstance(acceptable_a, bool) or not isinstance(acceptable_b, bool):
        raise ReviewError("Mark each output Acceptable or Not acceptable.")
    comment = bounded_text(comment, MAX_COMMENT, "comment")
    try:
        with transaction(conn):
            name = _adjudicator(conn, adjudicator_id)
            study = _check_adjudicator(conn, adjudicator_id, study_id)
            if case_id not in disagreeing_cases(conn, study_id):
                raise ReviewError("The raters of this case do not disagree: it needs no adjudication.")
            current = _current(conn, study_id, case_id)
            revision = current["revision"] if current else 0
            if revision != base_revision:
                raise StaleRating(revision)
            run_1, run_2 = study["run_1_id"], study["run_2_id"]
            run_a, run_b = (run_1, run_2) if _run_1_is_a(study, case_id) else (run_2, run_1)
            adjudication_id = conn.execute(
                "INSERT INTO adjudications (study_id, case_id, revision, run_a_id, run_b_id, acceptable_a, "
                "acceptable_b, comment, adjudicator_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (study_id, case_id, revision + 1, run_a, run_b, acceptable_a, acceptable_b, comment,
                 adjudicator_id)).lastrowid
            audit(conn, name, "adjudicate", "adjudications", adjudication_id,
                  {"study_id": study_id, "revision": revision + 1, "acceptable_a": acceptable_a,
                   "acceptable_b": acceptable_b, "has_comment": comment is not None}, client)
    except _NotAdjudicator:
        _deny(conn, adjudicator_id, study_id, client)
        raise AccessDenied(NOT_ADJUDICATOR) from None
    return revision + 1


def adjudicated_verdicts(conn: sqlite3.Connection, study_id: int, *, actor_id: int | None) -> dict[str, dict[int, int]]:
    """Each adjudicated case's current verdict in run terms: case id -> {run id: 1 acceptable / 0 not}. Staff only."""
    require_role(conn, actor_id)
    return adjudication_verdicts(conn, study_id)
