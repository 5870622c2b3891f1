"""The dashboard's figures from a real store: equal to the evaluation report, cached between refreshes,
scored incrementally, filtered, and the blinded ratings mapped back to the runs.

The helpers at the top build generation runs and review studies with known outputs and verdicts;
the page and report tests import them.
"""

from __future__ import annotations

import json

import pytest

from rocore.evaluation.dashboard import compute, default_study, Filters, from_outputs, ScoreCache, studies_for
from rocore.store.db import opened, transaction
from rocore.evaluation.outputs import EvaluationInputError, outputs_from_runs, run_pairs
from rocore.evaluation.pipeline import evaluate_outputs
from rocore.generation.runs import get_or_create_run
from rocore.store.registry import register_model

TASKS = ("regimen", "modality", "icd10")
WRONG = {"modality": "surgery", "icd10": "C80.1"}


# --------------------------------------------------------------------------- helpers


def cases_of(conn, part: str = "test") -> list[dict]:
    """The cases of split 'main' in `part`, sorted by id."""
    return [dict(r) for r in conn.execute(
        "SELECT c.* FROM split_cases s JOIN cases c USING (case_id) WHERE s.split_id = 1 AND s.part = ? "
        "ORDER BY c.case_id", (part,))]


def output(case: dict, task: str, model: str, i: int) -> str:
    """Known outputs: the fine-tuned model is right three times in four, the base model once in four."""
    right = i % 4 != 0 if model == "finetuned" else i % 4 == 0
    if right:
        return case[task]
    return f"{case['regimen']} twice daily" if task == "regimen" else WRONG[task]


def add_run(conn, model: str, tasks=TASKS, part: str = "test") -> int:
    """An empty generation run of the base model, or of its adapter; its id."""
    base_id = register_model(conn, "/models/base", "base")
    adapter_id = register_model(conn, "/models/adapter", "adapter", base_id) if model == "finetuned" else None
    run_id, _ = get_or_create_run(conn, base_id, adapter_id, 1, part, list(tasks), "fp32", {}, "plain")
    return run_id


def add_outputs(conn, run_id: int, rows, created_at: str | None = None) -> None:
    """Store (case_id, task, text) rows as a generation run does; created_at: now unless given."""
    with transaction(conn):
        conn.executemany(
            "INSERT INTO generations (run_id, case_id, task, template_id, raw_text, answer, prompt_tokens, "
            "output_tokens, seconds, created_at) VALUES (?, ?, ?, 't', ?, ?, 10, 3, 0.1, "
            "coalesce(?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))",
            [(run_id, case_id, task, text, text, created_at) for case_id, task, text in rows])


def make_runs(conn, part: str = "test", base_tasks=TASKS, finetuned_tasks=TASKS) -> tuple[int, int]:
    """A base and a fine-tuned run with every known output of `part`."""
    cases = cases_of(conn, part)
    runs = []
    for model, tasks in (("base", base_tasks), ("finetuned", finetuned_tasks)):
        run_id = add_run(conn, model, tasks, part)
        add_outputs(conn, run_id, [(c["case_id"], task, output(c, task, model, i))
                                   for task in tasks for i, c in enumerate(cases)])
        runs.append(run_id)
    return runs[0], runs[1]


def add_study(conn, base_run: int, finetuned_run: int, reviewers=("ana", "ben", "cem"),
              name: str = "acceptability") -> int:
    """A regimen study of the two runs, every test case assigned to every reviewer, sides alternating."""
    with transaction(conn):
        ids = [conn.execute("INSERT INTO reviewers (name, code_hash, code_salt) VALUES (?, x'00', x'00')",
                            (name,)).lastrowid for name in reviewers]
        study_id = conn.execute("INSERT INTO studies (name, run_1_id, run_2_id, seed, overlap) "
                                "VALUES (?, ?, ?, 0, ?)",
                                (name, base_run, finetuned_run, len(reviewers))).lastrowid
        for position, case in enumerate(cases_of(conn), start=1):
            for reviewer_id in ids:
                sides = (base_run, finetuned_run)
                if (position + reviewer_id) % 2:
                    sides = sides[::-1]
                conn.execute("INSERT INTO assignments (study_id, reviewer_id, case_id, position, run_a_id, "
                             "run_b_id) VALUES (?, ?, ?, ?, ?, ?)",
                             (study_id, reviewer_id, case["case_id"], position, *sides))
    return study_id


def rate(conn, study_id: int, reviewer: str, case_id: str, base_ok: int | None, finetuned_ok: int | None,
         unratable: str | None = None) -> None:
    """A new revision of the reviewer's rating of the case, given per model (mapped to sides A/B here)."""
    a = conn.execute(
        "SELECT a.assignment_id, a.reviewer_id, a.run_a_id, s.run_1_id FROM assignments a "
        "JOIN reviewers v USING (reviewer_id) JOIN studies s USING (study_id) "
        "WHERE a.study_id = ? AND v.name = ? AND a.case_id = ?",
        (study_id, reviewer, case_id)).fetchone()
    base_is_a = a["run_a_id"] == a["run_1_id"]
    verdict_a, verdict_b = (base_ok, finetuned_ok) if base_is_a else (finetuned_ok, base_ok)
    with transaction(conn):
        conn.execute(
            "INSERT INTO ratings (assignment_id, revision, acceptable_a, acceptable_b, unratable_reason, "
            "reviewer_id) VALUES (?, 1 + (SELECT coalesce(max(revision), 0) FROM ratings "
            "WHERE assignment_id = ?), ?, ?, ?, ?)",
            (a["assignment_id"], a["assignment_id"], verdict_a, verdict_b, unratable, a["reviewer_id"]))


# --------------------------------------------------------------------------- tests


@pytest.fixture
def store(split_db):
    db_path, _ = split_db
    with opened(db_path) as conn:
        yield conn


def test_figures_are_the_evaluation_report(store):
    base_run, finetuned_run = make_runs(store)
    view = compute(store, ScoreCache(), run_pairs(store, [(base_run, finetuned_run)]))
    assert view.report == evaluate_outputs(outputs_from_runs(store, base_run, finetuned_run))
    assert view.n_cases == len(cases_of(store))
    assert set(view.scores["model"]) == {"base", "finetuned"} and len(view.scores) == 6 * view.n_cases
    assert view.rouge_histogram.sum().tolist() == [view.n_cases, view.n_cases]
    codes = view.icd10_codes
    assert codes["cases"].is_monotonic_decreasing and len(codes) <= 10
    assert view.reviews is None and "Task tables" in view.methods and "Acceptability" not in view.methods


def test_a_refresh_without_new_rows_scores_nothing_and_reuses_everything(store):
    base_run, finetuned_run = make_runs(store)
    cache = ScoreCache()
    first = compute(store, cache, run_pairs(store, [(base_run, finetuned_run)]))
    scored = cache.rows_scored
    assert scored == len(first.scores)
    again = compute(store, cache, run_pairs(store, [(base_run, finetuned_run)]))
    assert cache.rows_scored == scored
    assert again.report is first.report and again.scores is first.scores
    assert cache.run_scores(store, base_run).frame is cache.run_scores(store, base_run).frame


def test_new_outputs_are_scored_alone_and_appended(store):
    cases = cases_of(store)
    base_run, finetuned_run = make_runs(store)
    with transaction(store):  # the fine-tuned run has not reached its regimen outputs yet
        store.execute("DELETE FROM generations WHERE run_id = ? AND task = 'regimen'", (finetuned_run,))
    cache = ScoreCache()
    before = compute(store, cache, run_pairs(store, [(base_run, finetuned_run)]))
    assert before.report == evaluate_outputs(outputs_from_runs(store, base_run, finetuned_run))
    assert "regimen" not in before.report["tasks"]
    scored = cache.rows_scored
    newest = store.execute("SELECT max(created_at) FROM generations WHERE run_id = ?",
                           (finetuned_run,)).fetchone()[0]
    # Rows stored in the same millisecond as the newest cached one are read again and must not be rescored.
    add_outputs(store, finetuned_run, [(c["case_id"], "regimen", output(c, "regimen", "finetuned", i))
                                       for i, c in enumerate(cases[:3])], created_at=newest)
    add_outputs(store, finetuned_run, [(c["case_id"], "regimen", output(c, "regimen", "finetuned", i))
                                       for i, c in enumerate(cases) if i >= 3])
    after = compute(store, cache, run_pairs(store, [(base_run, finetuned_run)]))
    assert cache.rows_scored == scored + len(cases)
    assert after.report == evaluate_outputs(outputs_from_runs(store, base_run, finetuned_run))
    assert after.report["tasks"]["regimen"]["paired"]["n_pairs"] == len(cases)
    # The tasks without new outputs are not recomputed.
    assert after.report["tasks"]["modality"] is before.report["tasks"]["modality"]
    assert after.report["tasks"]["regimen"] is not before.report["tasks"].get("regimen")


def test_a_changed_gold_answer_rescores_the_runs(store):
    base_run, finetuned_run = make_runs(store)
    cache = ScoreCache()
    before = compute(store, cache, run_pairs(store, [(base_run, finetuned_run)]))
    case_id = cases_of(store)[1]["case_id"]  # the fine-tuned modality answer of case 1 is right
    with transaction(store):
        store.execute("UPDATE cases SET modality = CASE modality WHEN 'photon' THEN 'proton' "
                      "ELSE 'photon' END, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') "
                      "WHERE case_id = ?", (case_id,))
    after = compute(store, cache, run_pairs(store, [(base_run, finetuned_run)]))
    accuracy = [view.report["tasks"]["modality"]["finetuned"]["accuracy"] for view in (before, after)]
    assert accuracy[1] == pytest.approx(accuracy[0] - 1 / before.n_cases)
    assert after.report == evaluate_outputs(outputs_from_runs(store, base_run, finetuned_run))


def test_filters_keep_the_cases_of_the_chosen_sites_and_modalities(store):
    base_run, finetuned_run = make_runs(store)
    cases = cases_of(store)
    site = max({c["site"] for c in cases}, key=[c["site"] for c in cases].count)
    view = compute(store, ScoreCache(), run_pairs(store, [(base_run, finetuned_run)]), Filters(sites=(site,)))
    kept = {c["case_id"] for c in cases if c["site"] == site}
    assert view.n_cases == len(kept) < len(cases)
    outputs = outputs_from_runs(store, base_run, finetuned_run)
    assert view.report == evaluate_outputs(outputs[outputs["case_id"].isin(kept)].reset_index(drop=True))
    photon = compute(store, ScoreCache(), run_pairs(store, [(base_run, finetuned_run)]), Filters(modalities=("photon",)))
    assert photon.n_cases == sum(c["modality"] == "photon" for c in cases)
    nothing = compute(store, ScoreCache(), run_pairs(store, [(base_run, finetuned_run)]), Filters(sites=("nowhere",)))
    assert nothing.report is None and nothing.message == "No case matches the filters."


def test_runs_without_overlapping_tasks_cases_or_outputs(store):
    base_run, finetuned_run = make_runs(store, base_tasks=("modality",), finetuned_tasks=("icd10",))
    with pytest.raises(EvaluationInputError, match=f"runs {base_run} and {finetuned_run} have no task in common "
                                                   f"\\(run {base_run}: modality; run {finetuned_run}: icd10\\)"):
        run_pairs(store, [(base_run, finetuned_run)])
    base_run = add_run(store, "base", ("icd10",))  # no output yet
    view = compute(store, ScoreCache(), run_pairs(store, [(base_run, finetuned_run)]))
    assert view.report is None and "no case and task in common" in view.message
    assert view.rouge_histogram is None and view.icd10_codes is None
    empty = [add_run(store, model, ("regimen",), "validation") for model in ("base", "finetuned")]
    assert compute(store, ScoreCache(), run_pairs(store, [empty])).message == "These runs have no outputs yet."


def test_pairs_that_cannot_be_compared_are_refused(store):
    base_run, _ = make_runs(store)
    other = add_run(store, "finetuned", part="validation")
    with pytest.raises(EvaluationInputError, match="cover different split parts"):
        compute(store, ScoreCache(), run_pairs(store, [(base_run, other)]))
    with pytest.raises(EvaluationInputError, match="has no generation run 99"):
        compute(store, ScoreCache(), run_pairs(store, [(base_run, 99)]))
    with pytest.raises(EvaluationInputError, match="chosen twice"):
        compute(store, ScoreCache(), run_pairs(store, [(base_run, base_run)]))


def test_acceptability_from_blinded_ratings(store):
    base_run, finetuned_run = make_runs(store)
    study_id = add_study(store, base_run, finetuned_run)
    cache = ScoreCache()
    view = compute(store, cache, run_pairs(store, [(base_run, finetuned_run)]))
    assert view.reviews.acceptability is None and view.reviews.message == "No ratings yet."
    assert view.reviews.progress["assigned"].tolist() == [len(cases_of(store))] * 3
    cases = [c["case_id"] for c in cases_of(store)][:8]
    for i, case_id in enumerate(cases):
        rate(store, study_id, "ana", case_id, 0, 1)
        rate(store, study_id, "ben", case_id, 0, 1 if i % 2 else 0)  # every other fine-tuned output
    rate(store, study_id, "cem", cases[0], 1, 1)
    rate(store, study_id, "cem", cases[0], 0, 0)  # a revision replaces the first verdict
    rate(store, study_id, "cem", cases[1], None, None, unratable="no diagnosis")
    scored = cache.rows_scored
    view = compute(store, cache, run_pairs(store, [(base_run, finetuned_run)]))
    assert cache.rows_scored == scored  # new ratings score nothing
    reviews = view.reviews
    # The majority of current verdicts: fine-tuned outputs of odd cases (ana and ben say yes); of even
    # cases, none (ana yes, ben no: a tie is not acceptable; case 0: cem's revision says no).
    assert reviews.acceptability["finetuned"]["acceptable"] == 4
    assert reviews.acceptability["base"]["acceptable"] == 0
    assert reviews.acceptability["base"]["n"] == 8
    assert reviews.progress.loc["cem", ["rated", "unratable"]].tolist() == [2, 1]
    assert reviews.n_rated == 18 and reviews.agreement["n_raters"] == 3
    assert "Acceptability" in view.methods and "Inter-rater agreement" in view.methods
    filtered = compute(store, cache, run_pairs(store, [(base_run, finetuned_run)]), Filters(sites=("nowhere",)))
    assert filtered.reviews.acceptability is None and "No rated case matches" in filtered.reviews.message


def test_the_default_study_is_the_newest_with_ratings(store):
    base_run, finetuned_run = make_runs(store)
    runs = run_pairs(store, [(base_run, finetuned_run)])
    older = add_study(store, base_run, finetuned_run, reviewers=("ana",))
    newer = add_study(store, base_run, finetuned_run, reviewers=("ben",), name="second look")
    assert default_study(studies_for(store, runs)) is None
    assert compute(store, ScoreCache(), runs).reviews.study["study_id"] == newer  # its progress, at least
    rate(store, older, "ana", cases_of(store)[0]["case_id"], 1, 1)
    studies = studies_for(store, runs)
    assert [(s["study_id"], s["n_rated"]) for s in studies] == [(newer, 0), (older, 1)]
    assert default_study(studies) == older
    assert compute(store, ScoreCache(), runs).reviews.study["study_id"] == older
    assert compute(store, ScoreCache(), runs, study_id=newer).reviews.study["study_id"] == newer


def test_from_outputs_is_the_evaluation_report(store):
    base_run, finetuned_run = make_runs(store)
    outputs = outputs_from_runs(store, base_run, finetuned_run)
    outputs.loc[0, "base"] = None  # a missing output is left out, as evaluate_outputs does
    view = from_outputs(outputs, {"file": "outputs.csv"})
    assert view.report == evaluate_outputs(outputs)
    assert len(view.scores) == 2 * len(outputs) - 1


def test_each_scale_the_study_asks_has_its_figures_methods_and_report_tables(store):
    from rocore.evaluation.report import html_report, json_figures, text_report

    base_run, finetuned_run = make_runs(store)
    study_id = add_study(store, base_run, finetuned_run, reviewers=("ana", "ben"))
    store.execute("UPDATE studies SET form = ? WHERE study_id = ?",
                  (json.dumps({"edit_level": True, "harm": True, "comment": True}), study_id))
    cases = [c["case_id"] for c in cases_of(store)][:6]
    for i, case_id in enumerate(cases):
        for reviewer in ("ana", "ben"):
            a = store.execute("SELECT a.assignment_id, a.reviewer_id, a.run_a_id FROM assignments a JOIN reviewers v "
                              "USING (reviewer_id) WHERE a.study_id = ? AND v.name = ? AND a.case_id = ?",
                              (study_id, reviewer, case_id)).fetchone()
            levels = {base_run: (2 + i % 2, 2 if i < 2 else 0), finetuned_run: (i % 2, 0)}  # (edit, harm) per run
            edit_a, harm_a = levels[a["run_a_id"]]
            edit_b, harm_b = levels[finetuned_run if a["run_a_id"] == base_run else base_run]
            store.execute("INSERT INTO ratings (assignment_id, revision, acceptable_a, acceptable_b, edit_a, edit_b, "
                          "harm_a, harm_b, likelihood_a, likelihood_b, reviewer_id) VALUES (?, 1, ?, ?, ?, ?, ?, ?, "
                          "?, ?, ?)", (a["assignment_id"], edit_a <= 1, edit_b <= 1, edit_a, edit_b, harm_a, harm_b,
                                       1 if harm_a else None, 1 if harm_b else None, a["reviewer_id"]))
    view = compute(store, ScoreCache(), run_pairs(store, [(base_run, finetuned_run)]))
    scales = view.reviews.scales
    assert list(scales) == ["edit", "harm", "likelihood"]
    edit = scales["edit"]
    assert edit["comparison"]["n_cases"] == 6 and edit["comparison"]["base_mean"] == 2.5
    assert edit["comparison"]["finetuned_mean"] == 0.5 and edit["comparison"]["wilcoxon_p_one_sided"] < 0.05
    assert edit["agreement"]["level"] == "ordinal" and edit["agreement"]["krippendorff_alpha"] == 1.0
    assert scales["harm"]["shares"]["base"]["severe"]["share"] == pytest.approx(2 / 6)
    assert scales["harm"]["shares"]["finetuned"]["any"]["share"] == 0
    assert view.reviews.acceptability["finetuned"]["acceptable"] == 6, "acceptability is the edit level's"
    assert "edit level (Acceptable as is, Minor edits, Major edits, Unacceptable)" in view.methods_text
    assert "with its likelihood (Low, Medium, High)" in view.methods["Rating scales"]
    page = html_report(view)
    for title in ("Edit level: ratings per level", "Edit level: figures", "Potential harm if followed: figures",
                  "share of ratings: severe harm, base [95% CI]", "Likelihood of that harm: ratings per level"):
        assert title in page
    text = text_report({"tasks": {}, "notes": [], **json_figures(view)})
    assert "Edit level: figures:" in text and "Krippendorff's alpha (ordinal), 12 outputs" in text
