"""How far surface tell-tales give away which side of a blinded study is which run.

A reviewer who learns that one model's text runs on ("Modality: photon. ICD-10-CM C61."), opens with
"Sure!" or is always longer can unblind every case. For each case of a study this compares the two
runs' texts on such features and reports how often (a) a linear classifier on all of them,
cross-validated over cases, and (b) the single most telling feature pick out run 1. It scans the
texts reviewers see (`studies.reviewer_text`) and, for comparison, the raw outputs.

Whether a pair is told apart does not depend on which run is shown as "A": the classifier sees the
difference of the two texts' features, through the origin, so swapping the sides swaps its answer.
It is Fisher's linear discriminant (ridge-regularised) rather than scikit-learn's LogisticRegression:
the same kind of linear rule, but in numpy it fits all thousand shuffles of the permutation test at
once, in milliseconds, where refitting LogisticRegression for them took seconds per study on two
cores. The accuracy is tested by swapping which run is which within random cases (the permutation
null), not against a binomial: cross-validated hits of one fitted direction are correlated across
cases, so under chance they spread wider than a binomial and a Wilson interval would cry wolf.
Cases whose texts agree on every feature (the same regimen from both runs) cannot be told apart and
are counted apart.
"""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Sequence

import numpy as np
from scipy.stats import binomtest

from rocore.evaluation.statistics import wilson_interval
from rocore.review.auth import require_role
from rocore.review.studies import ReviewError, reviewer_text

FOLDS = 10
PERMUTATIONS = 1000
RIDGE = 1.0  # on standardised features: keeps a feature that never varies in a fold from breaking the fit
# Fewer informative cases than this give no classifier figure, only the single features.
MIN_CASES = 6
ALPHA = 0.05


def _mentions(pattern: str):
    found = re.compile(pattern, re.IGNORECASE)
    return lambda text: float(bool(found.search(text)))


# name -> (value of a text, the text a rule picks when its value is higher, ... when lower)
FEATURES = {
    "length": (lambda text: math.log1p(len(text)), "the longer text", "the shorter text"),
    "lines": (lambda text: float(text.strip().count("\n")), "the text with more lines",
              "the text with fewer lines"),
    "icd10": (_mentions(r"icd[\s-]*10"), "the text that mentions ICD-10",
              "the text that does not mention ICD-10"),
    "modality": (_mentions(r"\bmodality\b"), "the text that says 'Modality'",
                 "the text that does not say 'Modality'"),
    "chatty": (_mentions(r"^\W*(?:sure|certainly|of course|here is|here's)\b"),
               "the text that opens with 'Sure' or the like", "the text that does not open with 'Sure'"),
}


def features(text: str) -> np.ndarray:
    """The tell-tale values of one text, in FEATURES order."""
    return np.array([value(text or "") for value, _, _ in FEATURES.values()])


def _rule_share(hits: int, n: int, n_rules: int) -> dict:
    """A rule's hits of n with the Wilson interval and the one-sided binomial p against chance,
    Bonferroni-adjusted for the `n_rules` rules it was picked from."""
    p = float(binomtest(hits, n, 0.5, alternative="greater").pvalue)
    return {"hits": hits, "n": n, "accuracy": hits / n, "ci95": wilson_interval(hits, n),
            "p_above_chance": min(1.0, p * n_rules)}


def _classifier(differences: np.ndarray) -> dict:
    """Cross-validated accuracy of the discriminant picking run 1, with the permutation test.

    Row 0 of `signs` is the study as it is; each further row swaps the runs of a random half of the
    cases, which is what the texts look like when the features say nothing about the run. A swap
    leaves the features' second moments unchanged, so each fold needs one matrix inverse for all.
    """
    n = len(differences)
    scale = np.sqrt((differences ** 2).mean(axis=0))
    z = differences / np.where(scale > 0, scale, 1.0)
    rng = np.random.default_rng(0)
    folds = rng.permutation(n) % min(FOLDS, n)
    signs = np.vstack([np.ones(n), rng.choice([-1.0, 1.0], size=(PERMUTATIONS, n))])
    hits = np.zeros(len(signs))
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        moments = z[train].T @ z[train] / train.sum() + RIDGE * np.eye(z.shape[1])
        directions = np.linalg.solve(moments, (signs[:, train] @ z[train] / train.sum()).T).T
        decisions = (directions @ z[test].T) * signs[:, test]
        hits += (decisions > 0).sum(axis=1) + 0.5 * (decisions == 0).sum(axis=1)
    accuracy = hits / n
    return {"accuracy": float(accuracy[0]), "n": n,
            "chance95": [float(v) for v in np.percentile(accuracy[1:], [2.5, 97.5])],
            "p_above_chance": float((1 + (accuracy[1:] >= accuracy[0]).sum()) / (PERMUTATIONS + 1))}


def _best_rule(differences: np.ndarray) -> dict | None:
    """The single feature and direction that picks run 1 most reliably (highest lower Wilson bound),
    counted over the cases in which that feature differs between the two texts."""
    best = None
    for column, (name, (_, higher, lower)) in enumerate(FEATURES.items()):
        signs = np.sign(differences[:, column])
        n = int((signs != 0).sum())
        if not n:
            continue
        above = int((signs > 0).sum())
        for hits, picks in ((above, higher), (n - above, lower)):
            rule = {"feature": name, "rule": f"{picks} is run 1", **_rule_share(hits, n, 2 * len(FEATURES))}
            if best is None or rule["ci95"][0] > best["ci95"][0]:
                best = rule
    return best


def scan_pairs(pairs: Sequence[tuple[str, str]]) -> dict:
    """How well the tell-tales pick run 1 out of (run 1 text, run 2 text) pairs, in any order.

    classifier: the cross-validated accuracy over the informative cases, the range 95% of shuffles
    reach and the permutation p (None below MIN_CASES); best_rule: the most telling single feature;
    alike: cases with no difference; given_away: either is above chance at ALPHA.
    """
    differences = np.array([features(first) - features(second) for first, second in sorted(pairs)])
    differences = differences.reshape(-1, len(FEATURES))
    informative = differences[np.any(differences != 0, axis=1)]
    classifier = _classifier(informative) if len(informative) >= MIN_CASES else None
    rule = _best_rule(informative)
    return {"cases": len(pairs), "alike": len(pairs) - len(informative), "classifier": classifier,
            "best_rule": rule,
            "given_away": bool(classifier and classifier["p_above_chance"] < ALPHA
                               or rule and rule["p_above_chance"] < ALPHA)}


def study_blinding(conn: sqlite3.Connection, study_id: int, *, actor_id: int | None) -> dict:
    """The scan of a study's cases: "shown" on the texts reviewers see, "raw" on the raw outputs. Staff only."""
    require_role(conn, actor_id)
    study = conn.execute("SELECT task, run_1_id, run_2_id FROM studies WHERE study_id = ?", (study_id,)).fetchone()
    if study is None:
        raise ReviewError(f"There is no study {study_id}.")
    rows = conn.execute(
        "SELECT g1.raw_text AS raw_1, g1.answer AS answer_1, g2.raw_text AS raw_2, g2.answer AS answer_2 "
        "FROM (SELECT DISTINCT case_id FROM assignments WHERE study_id = ?) a "
        "JOIN generations g1 ON g1.case_id = a.case_id AND g1.run_id = ? AND g1.task = ? "
        "JOIN generations g2 ON g2.case_id = a.case_id AND g2.run_id = ? AND g2.task = ? ORDER BY a.case_id",
        (study_id, study["run_1_id"], study["task"], study["run_2_id"], study["task"])).fetchall()
    return {"shown": scan_pairs([(reviewer_text(r["answer_1"], r["raw_1"]), reviewer_text(r["answer_2"], r["raw_2"]))
                                 for r in rows]),
            "raw": scan_pairs([(r["raw_1"], r["raw_2"]) for r in rows])}


def _picked(classifier: dict) -> str:
    low, high = classifier["chance95"]
    return (f"{classifier['accuracy']:.0%} of {classifier['n']} cases (by chance, with the runs shuffled "
            f"within each case: {low:.0%} to {high:.0%}; p = {classifier['p_above_chance']:.2g})")


def describe(check: dict) -> tuple[bool, str]:
    """Whether the texts reviewers see give the sides away, and the Admin page's sentence on a
    `study_blinding` result."""
    shown, raw = check["shown"], check["raw"]
    if shown["classifier"] is None:
        return shown["given_away"], (f"Blinding check: only {shown['cases'] - shown['alike']} case(s) whose two "
                                     "texts differ, too few to measure tell-tales.")
    parts = [("Blinding check on the texts reviewers see: length, line breaks and the words 'ICD-10', "
              f"'Modality' and 'Sure' pick run 1 in {_picked(shown['classifier'])}.")]
    if shown["best_rule"]:
        rule = shown["best_rule"]
        parts.append(f"Most telling: {rule['rule']} in {rule['hits']} of {rule['n']} cases "
                     f"(p = {rule['p_above_chance']:.2g} over the {2 * len(FEATURES)} rules tried).")
    if shown["alike"]:
        parts.append(f"{shown['alike']} case(s) have texts alike in all of these.")
    if raw["classifier"] is not None:
        parts.append(f"The raw outputs would give run 1 away in {raw['classifier']['accuracy']:.0%}.")
    if shown["given_away"]:
        parts.append("Differences in the answers themselves count too: a model that often gives a short "
                     "or no regimen is told apart by length.")
    return shown["given_away"], " ".join(parts)
