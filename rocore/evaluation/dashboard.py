"""The Dashboard's figures from the store, kept between refreshes so that a live page costs little.

The page redraws every few seconds while generations and ratings arrive. Scoring (ROUGE-1 above
all) is the slow step, and a stored output never changes (generations are only added, INSERT OR
IGNORE), so ScoreCache keeps each run's per-case scores. A refresh reads a fingerprint of each run
(number of outputs, newest created_at) and of the cases (newest update): unchanged, nothing else is
read or scored; grown, only the rows added since are read, scored and appended. The statistics
(evaluate_scores, task by task) and the review figures are kept too, keyed by the fingerprints they
depend on: a batch of new outputs of one task recomputes that task's statistics, a new rating the
review figures, and a refresh with no new row recomputes nothing.

Everything here reads the store; the review workflow writes the ratings (rocore.review.studies).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rocore.evaluation.acceptability import (
    RATING_LEVEL,
    RULE,
    acceptability_figures,
    adjudication_sentence,
    order_checks,
    post_adjudication_figures,
    unblind,
)
from rocore.evaluation.outputs import MODELS, RunPairs, check_run_pair, run_outputs
from rocore.evaluation.pipeline import (
    MODEL_NAMES,
    evaluate_scores,
    methods_text,
    primary_endpoints,
    score_outputs,
)
from rocore.evaluation.scales import SCALE_COLUMNS, methods_sentence, scale_figures, study_scales
from rocore.evaluation.scoring import score_rows
from rocore.model.prompts import TASKS

__all__ = [
    "REFRESH_S",
    "Dashboard",
    "Filters",
    "Reviews",
    "RunScores",
    "ScoreCache",
    "compute",
    "declare_primary",
    "default_study",
    "filter_options",
    "from_outputs",
    "studies_for",
]

REFRESH_S = 5  # seconds between refreshes of the live page
TOP_CODES = 10  # ICD-10 gold codes shown in the per-code chart
ROUGE_BINS = np.linspace(0.0, 1.0, 11)
_NOTHING_TO_EVALUATE = "no cases to evaluate: "  # how evaluate_scores says a task has no pairs

@dataclass(frozen=True)
class Filters:
    """Cases kept by the page's filters: disease site (cases.site) and gold modality (cases.modality)."""

    sites: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()

    def keep(self, frame: pd.DataFrame) -> pd.Series:
        mask = pd.Series(True, index=frame.index)
        if self.sites:
            mask &= frame["site"].isin(self.sites)
        if self.modalities:
            mask &= frame["case_modality"].isin(self.modalities)
        return mask

    def describe(self) -> str:
        parts = [f"{name} {', '.join(values)}"
                 for name, values in (("site", self.sites), ("modality", self.modalities)) if values]
        return "; ".join(parts) or "none (all cases)"


@dataclass
class Reviews:
    """The blinded review of two runs: progress over the whole study, the rest over the filtered cases."""

    study: dict
    progress: pd.DataFrame
    n_assigned: int
    n_rated: int
    acceptability: dict | None
    agreement: dict | None
    message: str | None
    notes: list[str] = field(default_factory=list)
    order_checks: dict | None = None
    # Acceptability after adjudication (rocore.evaluation.acceptability.post_adjudication_figures); None
    # without verdicts.
    post_adjudication: dict | None = None
    # Per scale the study asks besides acceptability (rocore.evaluation.scales.scale_figures).
    scales: dict = field(default_factory=dict)

    @property
    def practice_sentence(self) -> str | None:
        """The methods sentence on practice cases; None for a study without."""
        n, part = self.study.get("n_practice"), self.study.get("practice_part")
        if not n:
            return None
        echo = (" The fine-tuned model was trained on that part, so its practice outputs may echo the reference."
                if part == "train" else "")
        return (f"Before the study's own cases, each reviewer rated the same {n} practice case(s) from the {part} "
                "part of the split (outputs of the same two models, sides randomized), each followed by the "
                f"reference answer; practice ratings are excluded from every figure.{echo}")

    @property
    def scales_sentence(self) -> str:
        """The methods sentence naming the scales the study asked."""
        return methods_sentence(study_scales(self.study))

    @property
    def adjudication(self) -> str | None:
        """The methods sentence on adjudication; None where no case's reviewers disagree."""
        figures = self.post_adjudication
        if not figures or not (figures["n_disagreeing"] or figures["n_adjudicated_agreeing"]):
            return None
        return adjudication_sentence(figures)

    @property
    def closed(self) -> str | None:
        """What a report says of a closed study, whose ratings stopped short of its assignments; None while
        it is open."""
        closed_at = self.study.get("closed_at")
        if not closed_at:
            return None
        return (f"The study was closed on {closed_at[:10]} by the administrator; {self.n_rated} of "
                f"{self.n_assigned} assignments were rated.")


@dataclass
class Dashboard:
    """Every figure of the page (and of the HTML report) and the per-case rows they come from."""

    source: dict
    filters: Filters
    scores: pd.DataFrame  # one row per case, task and model: the per-case CSV
    n_cases: int
    report: dict | None  # rocore.evaluation.pipeline's report; None when no case has outputs from both models
    message: str | None
    rouge_histogram: pd.DataFrame | None
    icd10_codes: pd.DataFrame | None
    reviews: Reviews | None
    methods: dict
    primary: dict | None = None  # rocore.evaluation.pipeline.primary_endpoints
    methods_text: str = ""  # the methods as one paragraph for a paper
    # About the two stored runs themselves (outputs cut at the limit, prompt formats); none for a file.
    run_notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- runs and choices


def filter_options(conn: sqlite3.Connection) -> tuple[list[str], list[str]]:
    """(disease sites, gold modalities) that stored cases have."""
    sites = [r[0] for r in conn.execute(
        "SELECT DISTINCT site FROM cases WHERE site IS NOT NULL ORDER BY site")]
    modalities = [r[0] for r in conn.execute("SELECT DISTINCT modality FROM cases ORDER BY modality")]
    return sites, modalities


def studies_for(conn: sqlite3.Connection, runs: RunPairs) -> list[dict]:
    """Review studies that compare exactly the two runs paired for the study's task, newest first,
    each with its number of rated assignments (n_rated)."""
    studies = []
    for task, base_run, finetuned_run in runs.pairs:
        studies += [dict(r) for r in conn.execute(
            "SELECT study_id, name, task, overlap, form, created_at, closed_at, "
            "(SELECT count(DISTINCT case_id) FROM practice_assignments AS p WHERE p.study_id = s.study_id) "
            "AS n_practice, (SELECT part FROM generation_runs WHERE run_id = s.practice_run_1_id) AS practice_part, "
            "(SELECT count(DISTINCT assignment_id) FROM "
            "assignments AS a JOIN ratings USING (assignment_id) WHERE a.study_id = s.study_id) AS n_rated "
            "FROM studies AS s WHERE task = ? AND "
            "((run_1_id = ? AND run_2_id = ?) OR (run_1_id = ? AND run_2_id = ?))",
            (task, base_run, finetuned_run, finetuned_run, base_run))]
    return sorted(studies, key=lambda study: -study["study_id"])


def default_study(studies: list[dict]) -> int | None:
    """The study to show first (studies_for's list): the newest with ratings, so that a newer study
    nobody has rated yet does not hide the figures; None when no study has any."""
    return next((study["study_id"] for study in studies if study["n_rated"]), None)


@contextlib.contextmanager
def _snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """One read transaction, so that fingerprints and the rows read after them agree."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


def _db_key(conn: sqlite3.Connection) -> str:
    return conn.execute("PRAGMA database_list").fetchone()[2]


def _keys(rows: pd.DataFrame) -> list[tuple[str, str]]:
    return list(zip(rows["case_id"].tolist(), rows["task"].tolist()))


@dataclass
class RunScores:
    """A run's per-case scores as of `fingerprint`: (outputs, newest created_at, newest case update)."""

    fingerprint: tuple
    frame: pd.DataFrame  # sorted by task and case, as rocore.evaluation.outputs.outputs_from_runs orders them
    keys: set[tuple[str, str]]  # (case_id, task) of every row
    task_counts: dict[str, int]


class ScoreCache:
    """Per-case scores of generation runs and the figures made from them, shared by the page's sessions.

    Thread-safe (Streamlit serves each session on its own thread). `rows_scored` counts the
    outputs scored so far: a refresh that scores nothing leaves it unchanged.
    """

    def __init__(self, max_runs: int = 8, max_figures: int = 32):
        self._lock = threading.RLock()
        self._runs: OrderedDict[tuple, RunScores] = OrderedDict()
        self._figures: OrderedDict[Hashable, tuple[Hashable, object]] = OrderedDict()
        self._max_runs, self._max_figures = max_runs, max_figures
        self.rows_scored = 0

    def _score(self, rows: pd.DataFrame) -> pd.DataFrame:
        self.rows_scored += len(rows)
        return score_rows(rows)

    def run_scores(self, conn: sqlite3.Connection, run_id: int) -> RunScores:
        """The run's per-case scores as stored now; only rows not scored before are scored."""
        key = (_db_key(conn), run_id)
        with self._lock, _snapshot(conn):
            n, newest = conn.execute("SELECT count(*), max(created_at) FROM generations WHERE run_id = ?",
                                     (run_id,)).fetchone()
            fingerprint = (n, newest, conn.execute("SELECT max(updated_at) FROM cases").fetchone()[0])
            entry = self._runs.get(key)
            if entry is not None and entry.fingerprint == fingerprint:
                self._runs.move_to_end(key)
                return entry
            frame, keys = None, None
            grown = entry is not None and entry.fingerprint[1] is not None and n > entry.fingerprint[0]
            if grown and entry.fingerprint[2] == fingerprint[2]:
                added = run_outputs(conn, run_id, created_since=entry.fingerprint[1])
                added_keys = _keys(added)
                added = added[[k not in entry.keys for k in added_keys]]
                if len(entry.frame) + len(added) == n:
                    frame = pd.concat([entry.frame, self._score(added)], ignore_index=True)
                    keys = entry.keys.union(added_keys)
            if frame is None:
                frame = self._score(run_outputs(conn, run_id))
                keys = set(_keys(frame))
            frame = frame.sort_values(["task", "case_id"], kind="stable", ignore_index=True)
            entry = RunScores(fingerprint, frame, keys, frame["task"].value_counts().to_dict())
            self._runs[key] = entry
            self._runs.move_to_end(key)
            while len(self._runs) > self._max_runs:
                self._runs.popitem(last=False)
            return entry

    def figures(self, view: Hashable, fingerprint: Hashable, build: Callable[[], object]) -> object:
        """The figures of `view` (what is shown: runs, filters) as of `fingerprint` (the data they come
        from), built when the data changed; one version per view is kept, so memory stays bounded."""
        with self._lock:
            stored = self._figures.get(view)
            if stored is not None and stored[0] == fingerprint:
                self._figures.move_to_end(view)
                return stored[1]
            value = build()
            self._figures[view] = (fingerprint, value)
            self._figures.move_to_end(view)
            while len(self._figures) > self._max_figures:
                self._figures.popitem(last=False)
            return value


# --------------------------------------------------------------------------- figures from scores


def _paired(scores: pd.DataFrame, task: str, column: str) -> pd.DataFrame:
    """Per case (index) the two models' `column` for the cases of `task` both models answered."""
    rows = scores[scores["task"] == task]
    return rows.pivot(index="case_id", columns="model", values=column).reindex(columns=list(MODELS)).dropna()


def _rouge_histogram(scores: pd.DataFrame) -> pd.DataFrame | None:
    paired = _paired(scores, "regimen", "rouge1_f")
    if paired.empty:
        return None
    labels = [f"{low:.1f}-{high:.1f}" for low, high in itertools.pairwise(ROUGE_BINS)]
    return pd.DataFrame({MODEL_NAMES[m]: np.histogram(paired[m], bins=ROUGE_BINS)[0] for m in MODELS},
                        index=pd.Index(labels, name="ROUGE-1 F"))


def _icd10_codes(scores: pd.DataFrame) -> pd.DataFrame | None:
    """The top gold codes with each model's share of exact codes, most frequent first (ties by code):
    the one order of the codes, which the page and the report keep as it comes."""
    paired = _paired(scores, "icd10", "correct")
    if paired.empty:
        return None
    rows = scores[(scores["task"] == "icd10") & (scores["model"] == "base")]
    gold = rows.set_index("case_id")["gold_label"].reindex(paired.index)
    counts = gold.value_counts()
    top = sorted(counts.index, key=lambda code: (-counts[code], code))[:TOP_CODES]
    shares = paired.groupby(gold).mean().loc[top]
    return pd.DataFrame({"cases": counts.loc[top], **{MODEL_NAMES[m]: shares[m] for m in MODELS}},
                        index=pd.Index(top, name="gold code"))


def _task_figures(rows: pd.DataFrame, task: str) -> dict:
    """One task's statistics (evaluate_scores on its rows) and chart, or the note why there are none."""
    try:
        report = evaluate_scores(rows)
    except ValueError as exc:
        if not str(exc).startswith(_NOTHING_TO_EVALUATE):
            raise
        return {"report": None, "notes": [str(exc).removeprefix(_NOTHING_TO_EVALUATE)], "chart": None}
    chart = {"regimen": _rouge_histogram, "icd10": _icd10_codes}.get(task)
    return {"report": report, "notes": report["notes"], "chart": chart(rows) if chart else None}



def _score_figures(scores: pd.DataFrame, filters: Filters,
                   task_figures: Callable[[str, pd.DataFrame], dict] | None = None) -> dict:
    """The kept cases' report, histogram and per-code table, or why there is no report.

    Each task's figures come from `task_figures` (compute keeps them per task, so that a batch of
    new outputs of one task recomputes that task only) and are merged as evaluate_scores merges
    them: the report equals evaluate_scores over all the tasks' rows.
    """
    task_figures = task_figures or (lambda task, rows: _task_figures(rows, task))
    if filters.sites or filters.modalities:
        scores = scores[filters.keep(scores)]
    figures = {"scores": scores, "n_cases": int(scores["case_id"].nunique()), "report": None, "message": None,
               "rouge_histogram": None, "icd10_codes": None}
    if scores.empty:
        figures["message"] = ("No case matches the filters." if filters.sites or filters.modalities
                              else "These runs have no outputs yet.")
        return figures
    by_task = {task: scores[scores["task"] == task] for task in TASKS}
    per_task = {task: task_figures(task, rows) for task, rows in by_task.items() if not rows.empty}
    reports = {task: f["report"] for task, f in per_task.items() if f["report"] is not None}
    if not reports:
        figures["message"] = ("No case has outputs from both runs: the two runs have no case and task in "
                              "common (yet).")
        return figures
    figures["report"] = {"tasks": {task: report["tasks"][task] for task, report in reports.items()},
                         "methods": next(iter(reports.values()))["methods"],
                         "notes": [note for f in per_task.values() for note in f["notes"]]}
    figures["rouge_histogram"] = per_task.get("regimen", {}).get("chart")
    figures["icd10_codes"] = per_task.get("icd10", {}).get("chart")
    return figures


# --------------------------------------------------------------------------- reviews


def _ratings_fingerprint(conn: sqlite3.Connection) -> tuple:
    return tuple(conn.execute(
        "SELECT (SELECT count(*) FROM ratings), (SELECT max(rating_id) FROM ratings), "
        "(SELECT count(*) FROM assignments), (SELECT max(assignment_id) FROM assignments), "
        "(SELECT count(*) FROM reviewers), (SELECT count(*) FROM adjudications), "
        # Every change to a study (a reviewer added, cases reassigned, closing) is audited with it.
        "(SELECT max(audit_id) FROM audit_log WHERE entity = 'studies')").fetchone())


def _review_rows(conn: sqlite3.Connection, study_id: int, base_run: int, finetuned_run: int) -> pd.DataFrame:
    """One row per assignment of the study with its current rating (highest revision), if any."""
    cursor = conn.cursor()
    cursor.row_factory = None
    rows = cursor.execute(
        "SELECT a.case_id, v.name, a.run_a_id, a.run_b_id, r.rating_id, r.acceptable_a, r.acceptable_b, "
        "r.unratable_reason, c.site, c.modality, "
        # The place in the reviewer's queue: stored positions have gaps once cases were handed on.
        "row_number() OVER (PARTITION BY a.reviewer_id ORDER BY a.position), r.preference, "
        "(SELECT count(*) FROM assignments AS q WHERE q.study_id = a.study_id AND q.reviewer_id = a.reviewer_id), "
        f"{', '.join(f'r.{column}' for column in SCALE_COLUMNS)} "
        "FROM assignments AS a JOIN reviewers AS v USING (reviewer_id) JOIN cases AS c USING (case_id) "
        "LEFT JOIN current_ratings AS r USING (assignment_id) "
        "WHERE a.study_id = ? AND a.run_a_id IN (?, ?) AND a.run_b_id IN (?, ?)",
        (study_id, base_run, finetuned_run, base_run, finetuned_run)).fetchall()
    return pd.DataFrame(rows, columns=["case_id", "reviewer", "run_a_id", "run_b_id", "rating_id",
                                       "acceptable_a", "acceptable_b", "unratable_reason", "site",
                                       "case_modality", "position", "preference", "queue_length", *SCALE_COLUMNS])


def adjudication_verdicts(conn: sqlite3.Connection, study_id: int) -> dict[str, dict[int, int]]:
    """Each adjudicated case's current verdict in run terms: case id -> {run id: 1 acceptable / 0 not}.
    Unchecked: for staff pages and reports (rocore.review.adjudication.adjudicated_verdicts checks)."""
    rows = conn.execute("SELECT case_id, run_a_id, run_b_id, acceptable_a, acceptable_b FROM current_adjudications "
                        "WHERE study_id = ?", (study_id,))
    return {r["case_id"]: {r["run_a_id"]: r["acceptable_a"], r["run_b_id"]: r["acceptable_b"]} for r in rows}


def adjudicated_by_model(conn: sqlite3.Connection, study_id: int, runs: Mapping[Hashable, int]) -> dict:
    """Each adjudicated case's current verdict per model of `runs` (model -> run id): case id -> {model: 1/0},
    as post_adjudication_figures takes them."""
    return {case_id: {model: verdicts[run_id] for model, run_id in runs.items()}
            for case_id, verdicts in adjudication_verdicts(conn, study_id).items()}


def _reviews(rows: pd.DataFrame, study: dict, base_run: int, finetuned_run: int, filters: Filters,
             adjudicated: Mapping[str, Mapping[str, int]] | None = None) -> Reviews:
    rated = rows["rating_id"].notna()
    progress = pd.DataFrame({
        "assigned": rows.groupby("reviewer").size(),
        "rated": rated.groupby(rows["reviewer"]).sum(),
        "unratable": rows["unratable_reason"].notna().groupby(rows["reviewer"]).sum(),
    }).astype(int)
    progress["share rated"] = progress["rated"] / progress["assigned"]
    reviews = Reviews(study, progress.rename_axis("reviewer"), len(rows), int(rated.sum()), None, None, None)
    judged = rows[rated & rows["unratable_reason"].isna() & filters.keep(rows)]
    if judged.empty:
        reviews.message = ("No ratings yet." if not rated.any() else
                           "No rated case matches the filters." if filters.sites or filters.modalities else
                           "No ratings with a verdict yet (every rating so far marks its case unratable).")
        return reviews
    runs = dict(zip(MODELS, (base_run, finetuned_run)))
    verdicts = unblind(judged, runs)
    reviews.acceptability, reviews.agreement = acceptability_figures(verdicts, ratings_per_case=study.get("overlap"))
    reviews.order_checks = order_checks(judged)
    reviews.post_adjudication = post_adjudication_figures(verdicts, adjudicated or {})
    reviews.scales = scale_figures(judged, runs, study_scales(study), study.get("overlap"))
    reviews.notes = [f"acceptability: {n}" for n in reviews.acceptability["notes"]]
    reviews.notes += [f"agreement: {n}" for n in reviews.agreement["notes"]]
    for model, figures in reviews.agreement["by_model"].items():
        reviews.notes += [f"agreement ({MODEL_NAMES[model]}): {n}" for n in (figures or {}).get("notes", [])]
    return reviews


# --------------------------------------------------------------------------- methods


def _methods(report: dict | None, reviews: Reviews | None) -> dict:
    """Which tests and settings made each figure, in words; the task figures' from the report's methods."""
    methods = {}
    if report is not None:
        m = report["methods"]
        boot = m["bootstrap"]
        scores = "; ".join(f"{task}: {text}" for task, text in m["scores"].items())
        methods |= {
            "Task tables": (
                f"Means of per-case scores over the cases with outputs from both models ({m['pairing']}). "
                "95% intervals (the table's 'interval' column names them): 0/1 scores, Wilson for each model "
                "and Newcombe's paired interval for the difference; ROUGE-1 F and macro-F1, "
                f"{boot['method']} bootstrap, {boot['resamples']} resamples, seed {boot['seed']}: "
                f"{boot['description']}. Scores: {scores}. Precision, recall, F1: {m['classification']}; "
                f"macro averages {m['macro_averages']}."),
            "p-values": (f"Exact sign test: {m['sign_test']}. Exact McNemar: {m['mcnemar']}. One-sided Wilcoxon "
                         f"signed-rank: {m['wilcoxon']}. Intervals of differences of 0/1 scores: {m['newcombe']}; "
                         f"of single proportions: {m['wilson']}."),
            "Primary endpoints": m["primary"],
            "Confusion matrices and per-class chart (modality)": m["classification"],
            "ICD-10 top codes": (
                f"The {TOP_CODES} most frequent gold codes among the paired ICD-10 cases, most frequent first "
                "(ties by code), in this order on the page and in the report; per "
                "code and model, the share of outputs that are exactly that code (per-class recall)."),
            "ROUGE-1 distribution": (
                "Per-case ROUGE-1 F of the paired regimen cases, the score of the regimen table, counted in "
                "10 bins of width 0.1 (numpy.histogram: the last bin includes 1.0)."),
        }
    methods["Filters"] = (
        "A case is kept when its disease site (cases.site) is one of the chosen sites and its gold modality "
        "(cases.modality) one of the chosen modalities; no choice keeps all. Every figure is recomputed on "
        "the kept cases (ICD-10 labels: the kept cases' gold codes); review progress covers the whole study.")
    if reviews is not None:
        methods |= {
            "Acceptability": (
                "The current rating (highest revision) of each assignment of the study; the blinded sides "
                "A and B are mapped back to the runs through the assignment. A rating marked unratable gives "
                f"no verdict. Primary, per case and model: {RULE}; share per model with Wilson interval "
                "(statsmodels proportion_confint, method='wilson', alpha 0.05); paired: exact sign test "
                "one-sided (fine-tuned > base), exact McNemar two-sided, difference with Newcombe's paired "
                "interval; one-sided Wilcoxon on the per-case verdicts as the paper's replication figure. "
                f"Secondary, rating level: {RATING_LEVEL}."),
            "Inter-rater agreement": (
                "Labels: each reviewer's acceptable/not verdict. Per model (items: that model's outputs) and "
                "pooled (items: every output of either model). Fleiss' kappa (statsmodels fleiss_kappa over "
                "aggregate_raters) over the items with exactly k verdicts (k: the study's reviewers per case), "
                "whoever gave them; Krippendorff's alpha (krippendorff, nominal) over all verdicts; Cohen's "
                "kappa (sklearn cohen_kappa_score) for each pair of reviewers over the items both rated. "
                "Each with its number of items."),
            "Position and order checks": (
                "Not run in the paper. Side: the share of preferences for the output shown as 'A' among "
                "ratings preferring A or B, Wilson interval and exact binomial test against 1/2 (no side "
                "effect: 1/2). Order: the share of verdicts 'acceptable' for outputs in the first and the "
                "second half of each reviewer's queue, each with its Wilson interval."),
            "Adjudication": (
                "A case is disagreeing when the current ratings with a verdict differ on the acceptability of "
                "either model's output. The study's named adjudicator, who rates none of its cases, sees each "
                "such case blinded (the outputs as A and B, sides drawn for them, and only how many raters "
                "found each side acceptable) and gives a verdict on each output, stored append-only. "
                "Post-adjudication acceptability: per case and model, the adjudicator's current verdict where "
                "there is one, else the reviewers' verdict by the majority rule; shares, intervals and tests as "
                "for the primary figure."),
            "Rating scales": reviews.scales_sentence,
            **({"Practice cases": reviews.practice_sentence} if reviews.practice_sentence else {}),
            "Review progress": ("Per reviewer: assignments in the study, those with a rating (rated), and of "
                                "those the ones marked unratable."),
        }
    return methods


def _run_notes(conn: sqlite3.Connection, base_run: int, finetuned_run: int) -> list[str]:
    """What the reader of a comparison must know about the runs themselves: how many outputs each cut
    at the new-token limit (an answer cut short is scored as it stands), prompt formats that differ, and
    where a run was generated when one came from a server (another engine, possibly other weights' precision)."""
    runs = {r["run_id"]: r for r in conn.execute(
        "SELECT r.run_id, r.prompt_format, r.backend, r.server_url, r.served_model, r.quantization, "
        "count(g.case_id) AS n, "
        "sum(g.finish_reason = 'length') AS cut, sum(g.finish_reason IS NULL) AS unrecorded "
        "FROM generation_runs r LEFT JOIN generations g USING (run_id) WHERE r.run_id IN (?, ?) "
        "GROUP BY r.run_id", (base_run, finetuned_run))}
    cut_by_task = {}
    for run_id, task, n in sorted(conn.execute(
            "SELECT run_id, task, count(*) FROM generations WHERE run_id IN (?, ?) AND finish_reason = 'length' "
            "GROUP BY run_id, task", (base_run, finetuned_run)), key=lambda row: TASKS.index(row[1])):
        cut_by_task.setdefault(run_id, []).append(f"{task} {n}")
    counts = []
    for name, run_id in (("base", base_run), ("fine-tuned", finetuned_run)):
        run = runs[run_id]
        tasks = f" ({', '.join(cut_by_task[run_id])})" if run_id in cut_by_task else ""
        unrecorded = f", {run['unrecorded']} not recorded" if run["unrecorded"] else ""
        counts.append(f"run {run_id} ({name}) {run['cut'] or 0} of {run['n']}{tasks}{unrecorded}")
    notes = [f"outputs cut at the new-token limit: {'; '.join(counts)}"]
    formats = [runs[run_id]["prompt_format"] or "unrecorded" for run_id in (base_run, finetuned_run)]
    if formats[0] != formats[1]:
        notes.append(f"the runs use different prompt formats (run {base_run}: {formats[0]}, run {finetuned_run}: "
                     f"{formats[1]}): the difference mixes the fine-tune with the prompt layout")
    if any(runs[run_id]["backend"] != "local" for run_id in (base_run, finetuned_run)):
        where = [f"run {run_id} ({name}) " + (
            f"by the OpenAI-compatible server {runs[run_id]['server_url']} as {runs[run_id]['served_model']}"
            if runs[run_id]["backend"] == "openai" else f"locally in {runs[run_id]['quantization']}")
            for name, run_id in (("base", base_run), ("fine-tuned", finetuned_run))]
        notes.append(f"generated {'; '.join(where)}")
    return notes


# --------------------------------------------------------------------------- entry points


def compute(conn: sqlite3.Connection, cache: ScoreCache, runs: RunPairs,
            filters: Filters = Filters(), study_id: int | None = None) -> Dashboard:
    """Every figure of the dashboard for the paired runs; what did not change since the last call is reused.

    Raises EvaluationInputError for a pair that cannot be compared (a missing run, different
    split parts). study_id: the review study to show (default: default_study, else the newest on
    these runs, whose progress is still worth showing).
    """
    with _snapshot(conn):
        for base_run, finetuned_run in runs.distinct():
            check_run_pair(conn, base_run, finetuned_run)
        db = _db_key(conn)
        scored = {run_id: cache.run_scores(conn, run_id) for run_id in runs.run_ids()}
        view = (db, runs, filters)
        cases_version = next(iter(scored.values())).fingerprint[2]

        def task_figures(task: str, rows: pd.DataFrame) -> dict:
            base_run, finetuned_run = runs.for_task(task)
            counts = (scored[base_run].task_counts.get(task), scored[finetuned_run].task_counts.get(task),
                      cases_version)
            return cache.figures(("task", task, *view), counts, lambda: _task_figures(rows, task))

        def paired_scores() -> pd.DataFrame:
            """Each task's rows from the two runs paired for it, ordered as the runs' frames are."""
            frames = []
            for model in MODELS:
                for task in sorted(runs.tasks):
                    frame = scored[runs.for_task(task)[MODELS.index(model)]].frame
                    frames.append(frame[frame["task"] == task].assign(model=model))
            return pd.concat(frames, ignore_index=True)

        figures = cache.figures(("scores", *view), tuple(scored[run_id].fingerprint for run_id in scored),
                                lambda: _score_figures(paired_scores(), filters, task_figures))
        studies = studies_for(conn, runs)
        if study_id is None:
            study_id = default_study(studies) or next((s["study_id"] for s in studies), None)
        study = next((s for s in studies if s["study_id"] == study_id), None)
        reviews = None
        if study is not None:
            base_run, finetuned_run = runs.for_task(study["task"])
            reviews = cache.figures(
                ("reviews", study["study_id"], *view), (_ratings_fingerprint(conn), cases_version),
                lambda: _reviews(_review_rows(conn, study["study_id"], base_run, finetuned_run), study,
                                 base_run, finetuned_run, filters,
                                 adjudicated_by_model(conn, study["study_id"],
                                                      {"base": base_run, "finetuned": finetuned_run})))
        run_notes = [note for pair in runs.distinct() for note in _run_notes(conn, *pair)]
    view = Dashboard(source={"db": db, **runs.as_source()}, filters=filters,
                     **figures, reviews=reviews, methods=_methods(figures["report"], reviews), run_notes=run_notes)
    return declare_primary(view)


def from_outputs(outputs: pd.DataFrame, source: dict) -> Dashboard:
    """The figures for a table of paired outputs (rocore.evaluation.outputs.OUTPUT_COLUMNS); no reviews."""
    figures = _score_figures(score_outputs(outputs), Filters())
    return declare_primary(Dashboard(source=source, filters=Filters(), **figures, reviews=None,
                                     methods=_methods(figures["report"], None)))


def declare_primary(view: Dashboard, declared: Mapping[str, str] | None = None) -> Dashboard:
    """The view with its primary endpoints (rocore.evaluation.pipeline.primary_endpoints: the defaults,
    or those a study or report declares) and the methods paragraph that states them.

    Regimen acceptability is the default Task 1 endpoint when the view's study rates regimens and
    has verdicts. Raises ValueError for an endpoint that cannot be primary.
    """
    acceptability = view.reviews.acceptability if view.reviews is not None else None
    regimen = acceptability if view.reviews is not None and view.reviews.study["task"] == "regimen" else None
    primary = (primary_endpoints(view.report, regimen, dict(declared or {})) if view.report is not None
               else None)
    closed = view.reviews.closed if view.reviews is not None else None
    adjudication = view.reviews.adjudication if view.reviews is not None else None
    scales = view.reviews.scales_sentence if view.reviews is not None else None
    practice = view.reviews.practice_sentence if view.reviews is not None else None
    return dataclasses.replace(view, primary=primary, methods_text=" ".join(
        filter(None, (methods_text(view.report, primary, acceptability), scales, practice, adjudication, closed))))
