"""One definition of clinical acceptability for every view: the dashboard and the Admin page's
study summary state the same figure for the same ratings."""

import pandas as pd
import pytest
from test_dashboard import add_study, cases_of, make_runs, rate

from rocore.evaluation.acceptability import case_verdicts, unblind
from rocore.evaluation.dashboard import ScoreCache, compute
from rocore.review.studies import study_summary
from rocore.store.db import opened


def test_majority_rule_a_tie_is_not_acceptable():
    verdicts = pd.DataFrame({"case_id": ["c1", "c1", "c2", "c2", "c3"], "reviewer": ["a", "b"] * 2 + ["a"],
                             "model": "m", "verdict": [1, 1, 1, 0, 1]})
    assert case_verdicts(verdicts) == {"m": {"c1": 1, "c2": 0, "c3": 1}}


def test_unblind_maps_sides_back_to_runs():
    ratings = pd.DataFrame({"case_id": ["c1", "c2"], "reviewer": ["a", "a"], "run_a_id": [7, 8],
                            "acceptable_a": [1, 0], "acceptable_b": [0, 1]})
    verdicts = unblind(ratings, {"base": 7, "finetuned": 8})
    assert verdicts.set_index(["model", "case_id"])["verdict"].to_dict() == {
        ("base", "c1"): 1, ("base", "c2"): 1, ("finetuned", "c1"): 0, ("finetuned", "c2"): 0}


@pytest.fixture
def store(split_db):
    db_path, _ = split_db
    with opened(db_path) as conn:
        yield conn


def test_dashboard_and_study_summary_agree(store):
    base_run, finetuned_run = make_runs(store)
    study_id = add_study(store, base_run, finetuned_run, reviewers=("ana", "ben"))
    cases = [c["case_id"] for c in cases_of(store)][:6]
    for i, case_id in enumerate(cases):
        rate(store, study_id, "ana", case_id, 1, 1)
        rate(store, study_id, "ben", case_id, i % 3 == 0, 1 if i % 2 else 0)
    shown = compute(store, ScoreCache(), base_run, finetuned_run).reviews.acceptability
    summary = study_summary(store, study_id, actor_id=None)
    for number, model in ((1, "base"), (2, "finetuned")):
        assert summary["runs"][number]["acceptable"] == shown[model]["acceptable"]
        assert summary["runs"][number]["rated"] == shown[model]["n"] == 6
        assert summary["runs"][number]["share_acceptable"] == pytest.approx(shown[model]["share"])
    # Two reviewers: acceptable only where both said yes (a 1-1 split is a tie).
    assert shown["base"]["acceptable"] == 2 and shown["finetuned"]["acceptable"] == 3
