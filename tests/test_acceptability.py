"""One definition of clinical acceptability for every view: the Admin page, the Dashboard, the HTML
report and `evaluate --db --json` state the same figures for the same ratings; agreement and the
order checks fit the demo's design (3 reviewers, 2 per case)."""

import itertools
import json

import krippendorff
import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa
from statsmodels.stats.proportion import proportion_confint
from test_dashboard import add_study, cases_of, make_runs, rate

from rocore.cli import main
from rocore.evaluation.acceptability import case_verdicts, unblind
from rocore.evaluation.outputs import run_pairs
from rocore.evaluation.dashboard import ScoreCache, compute
from rocore.evaluation.pipeline import MODEL_NAMES
from rocore.evaluation.report import html_report
from rocore.review.auth import add_user
from rocore.review.studies import create_study, study_summary
from rocore.store.db import opened, transaction


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
    shown = compute(store, ScoreCache(), run_pairs(store, [(base_run, finetuned_run)])).reviews.acceptability
    summary = study_summary(store, study_id, actor_id=None)
    for number, model in ((1, "base"), (2, "finetuned")):
        assert summary["runs"][number]["acceptable"] == shown[model]["acceptable"]
        assert summary["runs"][number]["rated"] == shown[model]["n"] == 6
        assert summary["runs"][number]["share_acceptable"] == pytest.approx(shown[model]["share"])
    # Two reviewers: acceptable only where both said yes (a 1-1 split is a tie).
    assert shown["base"]["acceptable"] == 2 and shown["finetuned"]["acceptable"] == 3


def _demo_shaped_study(conn) -> tuple[int, int, int]:
    """The demo's design: 3 reviewers, 2 per case, made by create_study, rated with known verdicts and
    preferences; returns (study id, base run, fine-tuned run)."""
    base_run, finetuned_run = make_runs(conn)
    reviewers = [add_user(conn, f"rev{i}", "reviewer", actor_id=None)[0].id for i in (1, 2, 3)]
    study_id = create_study(conn, actor_id=None, name="Shape", run_1_id=base_run, run_2_id=finetuned_run,
                            reviewer_ids=reviewers, overlap=2, seed=0, form={"preference": True})
    rows = conn.execute("SELECT assignment_id, reviewer_id, case_id, position, run_a_id FROM assignments "
                        "WHERE study_id = ? ORDER BY assignment_id", (study_id,)).fetchall()
    with transaction(conn):
        for i, a in enumerate(rows):
            base_ok, finetuned_ok = int(i % 3 == 0), int(i % 4 != 1)
            ok_a, ok_b = (base_ok, finetuned_ok) if a["run_a_id"] == base_run else (finetuned_ok, base_ok)
            conn.execute("INSERT INTO ratings (assignment_id, revision, acceptable_a, acceptable_b, preference, "
                         "reviewer_id) VALUES (?, 1, ?, ?, ?, ?)",
                         (a["assignment_id"], ok_a, ok_b, "AB"[i % 2] if i % 5 else "none", a["reviewer_id"]))
    return study_id, base_run, finetuned_run


def test_the_demo_shaped_study_has_fleiss_and_krippendorff_per_model(store):
    study_id, base_run, finetuned_run = _demo_shaped_study(store)
    reviews = compute(store, ScoreCache(), run_pairs(store, [(base_run, finetuned_run)])).reviews
    verdicts = pd.DataFrame(study_summary_rows(store, study_id, base_run))
    for model in ("base", "finetuned"):
        agreement = reviews.agreement["by_model"][model]
        mine = verdicts[verdicts["model"] == model]
        per_case = mine.groupby("case_id")["verdict"].apply(list)
        assert agreement["ratings_per_item"] == 2 and agreement["n_items_fleiss"] == len(per_case)
        assert agreement["n_items_rated_by_all"] == 0
        assert agreement["fleiss_kappa"] == fleiss_kappa(aggregate_raters(np.array(per_case.tolist()),
                                                                          n_cat=2)[0], method="fleiss")
        wide = mine.pivot(index="case_id", columns="reviewer", values="verdict")
        assert agreement["krippendorff_alpha"] == krippendorff.alpha(
            reliability_data=wide.to_numpy(dtype=float).T, level_of_measurement="nominal")
        assert sorted(p["n_items"] for p in agreement["cohen_kappa_pairs"]) == sorted(
            int(wide[[a, b]].notna().all(axis=1).sum()) for a, b in itertools.combinations(wide.columns, 2))
    assert reviews.agreement["n_items_fleiss"] == 2 * len(verdicts["case_id"].unique())


def study_summary_rows(conn, study_id: int, base_run: int) -> list[dict]:
    """Unblinded verdicts of the study, one per reviewer, case and model, read straight from the tables."""
    rows = conn.execute(
        "SELECT a.case_id, a.reviewer_id, a.run_a_id, r.acceptable_a, r.acceptable_b FROM assignments a "
        "JOIN current_ratings r USING (assignment_id) WHERE a.study_id = ?", (study_id,)).fetchall()
    return [{"case_id": r["case_id"], "reviewer": r["reviewer_id"], "model": model,
             "verdict": r["acceptable_a"] if (r["run_a_id"] == base_run) == (model == "base") else r["acceptable_b"]}
            for r in rows for model in ("base", "finetuned")]


def test_rating_level_share_and_order_checks(store):
    study_id, base_run, finetuned_run = _demo_shaped_study(store)
    reviews = compute(store, ScoreCache(), run_pairs(store, [(base_run, finetuned_run)])).reviews
    verdicts = pd.DataFrame(study_summary_rows(store, study_id, base_run))
    figures = reviews.acceptability
    assert figures["primary"] == "per_case_majority"
    for model in ("base", "finetuned"):
        mine = verdicts[verdicts["model"] == model]
        assert figures["rating_level"][model]["share"] == mine["verdict"].mean()
        assert figures["rating_level"][model]["n_ratings"] == len(mine)
        low, high = figures["rating_level"][model]["ci95_cluster_bootstrap"]
        assert low <= mine["verdict"].mean() <= high
    rows = pd.read_sql_query(
        "SELECT a.position, r.preference, r.acceptable_a, r.acceptable_b, (SELECT count(*) FROM assignments q "
        "WHERE q.study_id = a.study_id AND q.reviewer_id = a.reviewer_id) AS queue FROM assignments a "
        "JOIN current_ratings r USING (assignment_id) WHERE a.study_id = ?", store, params=(study_id,))
    checks = reviews.order_checks
    side = checks["preference_for_side_a"]
    n_a, n_ab = int((rows["preference"] == "A").sum()), int(rows["preference"].isin(["A", "B"]).sum())
    assert (side["k"], side["n"]) == (n_a, n_ab)
    assert side["ci95_wilson"] == list(proportion_confint(n_a, n_ab, method="wilson"))
    assert side["binomial_p_two_sided"] == binomtest(n_a, n_ab).pvalue
    early = rows[rows["position"] <= rows["queue"] / 2]
    expected = int(early["acceptable_a"].sum() + early["acceptable_b"].sum())
    assert checks["acceptability_by_queue_half"]["early"]["k"] == expected
    assert checks["acceptability_by_queue_half"]["early"]["n"] == 2 * len(early)


def test_admin_dashboard_report_and_cli_state_the_same_acceptability(store, open_page, capsys):
    study_id, base_run, finetuned_run = _demo_shaped_study(store)
    db_path = store.execute("PRAGMA database_list").fetchone()[2]
    view = compute(store, ScoreCache(), run_pairs(store, [(base_run, finetuned_run)]))
    expected = view.reviews.acceptability
    summary = study_summary(store, study_id, actor_id=None)

    assert main(["evaluate", "--db", db_path, "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)["review"]["acceptability"]

    admin = open_page("app_pages/admin.py", db_path)
    dashboard = open_page("app_pages/dashboard.py", db_path)
    shown = next(f.value for f in dashboard.dataframe if "Wilson 95% CI" in f.value.columns)
    page = html_report(view)
    for number, model in ((1, "base"), (2, "finetuned")):
        figures = expected[model]
        low, high = figures["ci95"]["wilson"]
        assert cli[model] == figures
        assert (summary["runs"][number]["acceptable"], summary["runs"][number]["rated"],
                summary["runs"][number]["share_acceptable"], summary["runs"][number]["ci95_wilson"]) == (
            figures["acceptable"], figures["n"], figures["share"], [low, high])
        metric = next(m for m in admin.metric if m.label == f"Run {(base_run, finetuned_run)[number - 1]} "
                                                               "acceptable (per case)")
        assert metric.value == f"{figures['share']:.1%}"
        assert any(f"95% CI {low:.1%} to {high:.1%} (Wilson)" in c.value for c in admin.caption)
        row = shown.loc[MODEL_NAMES[model]]
        assert (row["acceptable cases"], row["cases"], row["share"]) == (figures["acceptable"], figures["n"],
                                                                         figures["share"])
        assert row["Wilson 95% CI"] == f"[{low:.3f}, {high:.3f}]"
        assert f"<td>{figures['acceptable']}</td>" in page and f"[{low:.3f}, {high:.3f}]" in page
        assert f"<td>{figures['share']:.4g}</td>" in page

