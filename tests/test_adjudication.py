"""Adjudication: the queue of disagreeing cases, the blinded adjudicator, append-only verdicts and the
post-adjudication figures, against a real SQLite file."""

from __future__ import annotations

import json
import sqlite3

import pytest
from statsmodels.stats.proportion import proportion_confint
from test_review_studies import RUN_1, RUN_2, SECRETS, make_review_db, rocore

from rocore.review import adjudication, auth
from rocore.review import studies as review
from rocore.review.auth import AccessDenied
from rocore.review.studies import Form, Rating, ReviewError, StaleRating
from rocore.store.db import opened

RATERS = ("ada", "ben", "cleo")
# Case -> each rater's (run 1 acceptable, run 2 acceptable), in RATERS order.
VERDICTS = {
    "P000": [(True, True)] * 3,  # agree: both acceptable
    "P001": [(False, True)] * 3,  # agree: only run 2
    "P002": [(True, True), (False, True), (False, True)],  # disagree on run 1
    "P003": [(False, True), (False, True), (False, False)],  # disagree on run 2
}


def rate_case(conn, reviewer_id: int, study_id: int, case_id: str, ok_1: bool, ok_2: bool) -> None:
    """The reviewer's verdicts on the case given in run terms, submitted in the sides they saw."""
    row = conn.execute("SELECT assignment_id, run_a_id FROM assignments WHERE study_id = ? AND reviewer_id = ? "
                       "AND case_id = ?", (study_id, reviewer_id, case_id)).fetchone()
    one_is_a = row["run_a_id"] == RUN_1
    review.submit_rating(conn, reviewer_id, row["assignment_id"],
                         Rating(acceptable_a=ok_1 if one_is_a else ok_2, acceptable_b=ok_2 if one_is_a else ok_1), 0)


def rated_study(db_path) -> dict:
    """Four cases rated by all three raters as VERDICTS says, and eve named adjudicator."""
    info = make_review_db(db_path, n_cases=4, reviewers=RATERS, overlap=3, form=Form())
    with opened(db_path) as conn:
        for case_id, verdicts in VERDICTS.items():
            for name, (ok_1, ok_2) in zip(RATERS, verdicts):
                rate_case(conn, info["ids"][name], info["study_id"], case_id, ok_1, ok_2)
        info["ids"]["eve"] = auth.add_user(conn, "eve", actor_id=info["admin_id"])[0].id
        assert adjudication.set_adjudicator(conn, actor_id=info["admin_id"], study_id=info["study_id"],
                                            reviewer_id=info["ids"]["eve"], client="test") == "eve"
    return info


@pytest.fixture
def rated(db_path):
    return rated_study(db_path)


def adjudicate(conn, info: dict, case_id: str, ok_1: bool, ok_2: bool, base_revision: int = 0) -> int:
    """Eve's verdict in run terms, submitted in the sides her screen shows."""
    item = adjudication.open_adjudication(conn, info["ids"]["eve"], info["study_id"], case_id)
    one_is_a = item.text_a.startswith("4")  # base answers are "4x Gy ...", fine-tuned "6x Gy ..."
    return adjudication.submit_adjudication(conn, info["ids"]["eve"], info["study_id"], case_id,
                                            ok_1 if one_is_a else ok_2, ok_2 if one_is_a else ok_1,
                                            "checked the dose", base_revision, client="test")


def test_the_queue_holds_the_disagreeing_cases_without_a_verdict(db_path, rated):
    eve, sid = rated["ids"]["eve"], rated["study_id"]
    with opened(db_path) as conn:
        assert adjudication.disagreeing_cases(conn, sid) == ["P002", "P003"]
        queue = adjudication.adjudication_queue(conn, eve, sid)
        assert sorted(queue) == ["P002", "P003"]
        assert adjudication.open_adjudication(conn, eve, sid).case_id == queue[0]
        assert adjudication.counts(conn, sid) == {"disagreeing": 2, "adjudicated": 0, "waiting": 2,
                                                  "adjudicator": "eve"}
        adjudicate(conn, rated, "P002", True, False)
        assert adjudication.adjudication_queue(conn, eve, sid) == ["P003"]
        assert adjudication.counts(conn, sid)["adjudicated"] == 1
        assert adjudication.my_adjudications(conn, eve) == [
            {"study_id": sid, "name": "Prostate pilot", "task": "regimen", "disagreeing": 2, "adjudicated": 1,
             "waiting": 1}]
        adjudicate(conn, rated, "P003", False, True)
        assert adjudication.adjudication_queue(conn, eve, sid) == []
        assert adjudication.open_adjudication(conn, eve, sid) is None
        with pytest.raises(ReviewError, match="do not disagree"):
            adjudication.submit_adjudication(conn, eve, sid, "P000", True, True)


def test_the_adjudicator_is_blinded_to_runs_models_and_raters(db_path, rated):
    eve, sid = rated["ids"]["eve"], rated["study_id"]
    with opened(db_path) as conn:
        items = [adjudication.open_adjudication(conn, eve, sid, case_id) for case_id in ("P002", "P003")]
        adjudicate(conn, rated, "P002", True, False)
        stored = conn.execute("SELECT * FROM adjudications").fetchone()
        entry = conn.execute("SELECT * FROM audit_log WHERE action = 'adjudicate'").fetchone()
    shown = repr(items).casefold()
    assert not [secret for secret in SECRETS if secret.casefold() in shown]
    assert not [name for name in RATERS if f"'{name}'" in shown]
    for item in items:
        one_is_a = item.text_a.startswith("4")
        counts_1, counts_2 = (item.raters_a, item.raters_b) if one_is_a else (item.raters_b, item.raters_a)
        expected = {"P002": ((1, 3), (3, 3)), "P003": ((0, 3), (2, 3))}[item.case_id]
        assert ((counts_1.acceptable, counts_1.raters), (counts_2.acceptable, counts_2.raters)) == expected
        assert item.revision == 0 and item.acceptable_a is None and item.disagreeing == 2
    assert str(items[0].raters_a).endswith("of 3 raters")
    # The sides are the adjudicator's own, stored with the verdict and mapped back to runs.
    assert {stored["run_a_id"], stored["run_b_id"]} == {RUN_1, RUN_2}
    assert (stored["acceptable_a"], stored["acceptable_b"]) == ((1, 0) if stored["run_a_id"] == RUN_1 else (0, 1))
    assert (entry["actor"], entry["entity"], entry["client"]) == ("eve", "adjudications", "test")
    detail = json.loads(entry["detail"])
    assert detail["study_id"] == sid and detail["has_comment"] is True
    assert "P00" not in entry["detail"] and "Gy" not in entry["detail"] and "dose" not in entry["detail"]


def test_only_the_named_adjudicator_may_open_or_submit(db_path, rated):
    sid, admin = rated["study_id"], rated["admin_id"]
    with opened(db_path) as conn:
        for name in ("ada", "boss"):
            with pytest.raises(AccessDenied, match="not the adjudicator"):
                adjudication.open_adjudication(conn, rated["ids"][name], sid)
        with pytest.raises(AccessDenied, match="not the adjudicator"):
            adjudication.submit_adjudication(conn, rated["ids"]["ada"], sid, "P002", True, True, client="web")
        denied = conn.execute("SELECT actor, entity, entity_id FROM audit_log WHERE action = 'access-denied'").fetchall()
        assert [tuple(r) for r in denied] == [("ada", "adjudications", str(sid)), ("boss", "adjudications", str(sid)),
                                              ("ada", "adjudications", str(sid))]
        assert conn.execute("SELECT count(*) FROM adjudications").fetchone()[0] == 0
        with pytest.raises(AccessDenied):
            adjudication.set_adjudicator(conn, actor_id=rated["ids"]["ada"], study_id=sid,
                                         reviewer_id=rated["ids"]["ada"])
        with pytest.raises(ReviewError, match="ada rates cases of study 'Prostate pilot'"):
            adjudication.set_adjudicator(conn, actor_id=admin, study_id=sid, reviewer_id=rated["ids"]["ada"])
        frank = auth.add_user(conn, "frank", actor_id=admin)[0].id
        auth.set_active(conn, "frank", False, actor_id=admin)
        with pytest.raises(ReviewError, match="deactivated"):
            adjudication.set_adjudicator(conn, actor_id=admin, study_id=sid, reviewer_id=frank)
        assert adjudication.counts(conn, sid)["adjudicator"] == "eve"


def test_adjudications_are_append_only_and_revised_by_a_new_row(db_path, rated):
    eve, sid = rated["ids"]["eve"], rated["study_id"]
    with opened(db_path) as conn:
        assert adjudicate(conn, rated, "P002", True, False) == 1
        with pytest.raises(StaleRating):
            adjudicate(conn, rated, "P002", False, False, base_revision=0)
        assert adjudicate(conn, rated, "P002", False, True, base_revision=1) == 2
        for statement in ("UPDATE adjudications SET acceptable_a = 1", "DELETE FROM adjudications"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(statement)
        assert conn.execute("SELECT count(*) FROM adjudications").fetchone()[0] == 2
        assert adjudication.adjudicated_verdicts(conn, sid, actor_id=rated["admin_id"]) == {
            "P002": {RUN_1: 0, RUN_2: 1}}
        item = adjudication.open_adjudication(conn, eve, sid, "P002")
        assert item.revision == 2 and item.comment == "checked the dose"
        with pytest.raises(AccessDenied):
            adjudication.adjudicated_verdicts(conn, sid, actor_id=rated["ids"]["ada"])


def test_the_adjudicator_cannot_become_a_rater_of_the_study(db_path):
    info = make_review_db(db_path, n_cases=6, reviewers=("ada", "ben"), overlap=1, form=Form())
    with opened(db_path) as conn:
        eve = auth.add_user(conn, "eve", actor_id=info["admin_id"])[0].id
        adjudication.set_adjudicator(conn, actor_id=info["admin_id"], study_id=info["study_id"], reviewer_id=eve)
        with pytest.raises(ReviewError, match="eve adjudicates study 'Prostate pilot', so cannot rate"):
            review.add_reviewer_to_study(conn, actor_id=info["admin_id"], study_id=info["study_id"], reviewer_id=eve)
        with pytest.raises(ReviewError, match="so cannot rate"):
            review.reassign_unrated(conn, actor_id=info["admin_id"], study_id=info["study_id"],
                                    from_reviewer_id=info["ids"]["ada"], to_reviewer_ids=[eve])


def test_post_adjudication_figures_on_a_hand_made_study(db_path, rated):
    from rocore.evaluation.dashboard import ScoreCache, compute
    from rocore.evaluation.outputs import run_pairs
    from rocore.evaluation.report import html_report, json_figures, text_report

    with opened(db_path) as conn:
        runs = run_pairs(conn, [(RUN_1, RUN_2)])
        before = compute(conn, ScoreCache(), runs)
        adjudicate(conn, rated, "P002", True, False)
        cache = ScoreCache()
        view = compute(conn, cache, runs)
    # Majority per case: run 1 acceptable in P000 only, run 2 in all four. Adjudicating P002 (run 1
    # acceptable, run 2 not) gives run 1 two of four and run 2 three of four; P003 keeps its majority.
    pre, post = view.reviews.acceptability, view.reviews.post_adjudication
    assert (pre["base"]["acceptable"], pre["finetuned"]["acceptable"], pre["base"]["n"]) == (1, 4, 4)
    assert (post["base"]["acceptable"], post["finetuned"]["acceptable"], post["base"]["n"]) == (2, 3, 4)
    assert post["base"]["share"] == 0.5 and post["finetuned"]["share"] == 0.75
    assert post["base"]["ci95"]["wilson"] == pytest.approx(proportion_confint(2, 4, method="wilson"))
    assert (post["n_disagreeing"], post["n_adjudicated"]) == (2, 1)
    assert before.reviews.post_adjudication["base"]["acceptable"] == 1, "nothing adjudicated: as before"
    assert before.reviews.adjudication.startswith("2 case(s) had reviewers disagreeing on acceptability; 0 of them")
    sentence = ("2 case(s) had reviewers disagreeing on acceptability; 1 of them were adjudicated by a named "
                "adjudicator blinded to the models.")
    assert sentence in view.methods_text and "Adjudication" in view.methods
    page = html_report(view)
    assert "Acceptability after adjudication" in page and sentence in page
    figures = json_figures(view)
    assert figures["review"]["post_adjudication"]["finetuned"]["acceptable"] == 3
    text = text_report(json.loads(json.dumps({**view.report, **figures}, allow_nan=False)))
    assert "after adjudication (1 of 2 disagreeing cases adjudicated):" in text and sentence in text


def test_admin_and_study_show_state_the_dashboards_acceptability_after_adjudication(db_path, rated, open_page):
    from rocore.evaluation.dashboard import ScoreCache, compute
    from rocore.evaluation.outputs import run_pairs

    with opened(db_path) as conn:
        assert review.study_summary(conn, rated["study_id"], actor_id=None)["post_adjudication"] is None
        adjudicate(conn, rated, "P002", True, False)
        post = compute(conn, ScoreCache(), run_pairs(conn, [(RUN_1, RUN_2)])).reviews.post_adjudication
        summary = review.study_summary(conn, rated["study_id"], actor_id=None)["post_adjudication"]
    def figures(post: dict) -> list[tuple]:
        return [(post[m]["acceptable"], post[m]["n"], post[m]["share"], post[m]["ci95"]["wilson"])
                for m in ("base", "finetuned")]

    assert figures(summary) == figures(post)
    assert figures(summary) == [(2, 4, 0.5, pytest.approx(proportion_confint(2, 4, method="wilson"))),
                                (3, 4, 0.75, pytest.approx(proportion_confint(3, 4, method="wilson")))]
    captions = [c.value for c in open_page("app_pages/admin.py", db_path).caption]
    for acceptable, share in ((2, "50.0%"), (3, "75.0%")):
        assert any(c.startswith(f"After adjudication (1 of 2 disagreeing cases adjudicated): {acceptable} of 4 "
                                f"cases, {share} (95% CI ") for c in captions)
    shown = rocore("study", "show", "--name", "Prostate pilot", "--db", db_path)
    assert shown.returncode == 0, shown.stderr
    assert ("run 1 after adjudication: 2 of 4 cases acceptable (50%)\n"
            "run 2 after adjudication: 3 of 4 cases acceptable (75%)") in shown.stdout


def test_a_reviewer_added_to_a_running_study_and_an_adjudication_and_the_counts_match(db_path):
    """Done-when: ratings under way, a reviewer joins, every case is rated, the one disagreement is
    adjudicated; assignments, ratings and adjudications in the store match what each step reported."""
    info = make_review_db(db_path, n_cases=8, reviewers=("ada", "ben"), overlap=2, form=Form())
    sid, admin = info["study_id"], info["admin_id"]
    with opened(db_path) as conn:
        for case_id in ("P000", "P001"):
            rate_case(conn, info["ids"]["ada"], sid, case_id, True, True)
        dora = auth.add_user(conn, "dora", actor_id=admin)[0].id
        added = review.add_reviewer_to_study(conn, actor_id=admin, study_id=sid, reviewer_id=dora)
        assert added["n_assignments"] > 0
        unrated = conn.execute("SELECT reviewer_id, case_id FROM assignments a WHERE study_id = ? AND NOT EXISTS "
                               "(SELECT 1 FROM ratings r WHERE r.assignment_id = a.assignment_id) "
                               "ORDER BY case_id, reviewer_id", (sid,)).fetchall()
        disputed = next(r["case_id"] for r in unrated if r["reviewer_id"] == dora)
        for reviewer_id, case_id in unrated:
            rate_case(conn, reviewer_id, sid, case_id, not (case_id == disputed and reviewer_id == dora), True)
        eve = auth.add_user(conn, "eve", actor_id=admin)[0].id
        adjudication.set_adjudicator(conn, actor_id=admin, study_id=sid, reviewer_id=eve)
        assert adjudication.adjudication_queue(conn, eve, sid) == [disputed]
        item = adjudication.open_adjudication(conn, eve, sid)
        assert sorted([(item.raters_a.acceptable, item.raters_a.raters),
                       (item.raters_b.acceptable, item.raters_b.raters)]) == [(1, 2), (2, 2)]
        adjudication.submit_adjudication(conn, eve, sid, item.case_id, True, True)

        n_assignments, n_ratings, n_adjudications = conn.execute(
            "SELECT (SELECT count(*) FROM assignments WHERE study_id = ?), (SELECT count(*) FROM ratings), "
            "(SELECT count(*) FROM adjudications WHERE study_id = ?)", (sid, sid)).fetchone()
        progress = review.study_progress(conn, sid, actor_id=admin)
        listed = review.list_studies(conn, actor_id=admin)[0]
        assert n_assignments == 16 == listed["n_assignments"] == listed["n_done"] == sum(p["done"] for p in progress)
        assert n_ratings == 16 and n_adjudications == 1
        assert {p["reviewer"]: p["assigned"] for p in progress}["dora"] == added["n_assignments"]
        assert adjudication.counts(conn, sid) == {"disagreeing": 1, "adjudicated": 1, "waiting": 0,
                                                  "adjudicator": "eve"}
        assert adjudication.adjudicated_verdicts(conn, sid, actor_id=admin) == {disputed: {RUN_1: 1, RUN_2: 1}}
        assert conn.execute("SELECT count(*) FROM audit_log WHERE action IN ('rate', 'adjudicate', "
                            "'set-adjudicator', 'add-reviewer-to-study')").fetchone()[0] == 16 + 1 + 1 + 1


def test_cli_names_the_adjudicator_and_shows_the_counts(db_path, rated):
    named = rocore("study", "adjudicator", "--name", "Prostate pilot", "--reviewer", "eve", "--db", db_path)
    assert named.returncode == 0, named.stderr
    assert named.stdout.strip() == "'eve' adjudicates study 'Prostate pilot'"
    refused = rocore("study", "adjudicator", "--name", "Prostate pilot", "--reviewer", "ada", "--db", db_path)
    assert refused.returncode == 1 and "the adjudicator must be someone who does not" in refused.stderr
    missing = rocore("study", "adjudicator", "--name", "Prostate pilot", "--db", db_path)
    assert missing.returncode == 2 and "study adjudicator needs --name and --reviewer" in missing.stderr
    with opened(db_path) as conn:
        adjudicate(conn, rated, "P003", False, True)
    shown = rocore("study", "show", "--name", "Prostate pilot", "--db", db_path)
    assert shown.returncode == 0, shown.stderr
    assert "adjudication (eve): 2 cases with raters disagreeing, 1 adjudicated" in shown.stdout
