"""Clinical acceptability, the paper's measure of Task 1, defined in one place for every view of it
(the Dashboard, the HTML report, the Admin page and `study show`).

A rating gives each of the two blinded outputs a verdict, acceptable or not; a rating that marks
its case unratable gives none. Per case and model, the output counts as acceptable when more than
half of the reviewers who gave it a verdict judged it acceptable (a tie is not acceptable).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import pandas as pd

from rocore.evaluation.statistics import acceptability, rater_agreement

RULE = ("per case and model, acceptable when more than half of the reviewers who gave the output a verdict "
        "judged it acceptable (a tie is not acceptable); ratings marked unratable give no verdict")


def unblind(ratings: pd.DataFrame, runs: Mapping[Hashable, int]) -> pd.DataFrame:
    """Verdicts per output from ratings of blinded sides: one row per rating and model.

    `ratings` has case_id, reviewer, run_a_id, acceptable_a, acceptable_b (ratings with a verdict
    only); `runs` maps a model key to its run id. Returns case_id, reviewer, model, verdict (0/1).
    """
    return pd.concat([
        pd.DataFrame({"case_id": ratings["case_id"], "reviewer": ratings["reviewer"], "model": model,
                      "verdict": np.where(ratings["run_a_id"] == run, ratings["acceptable_a"],
                                          ratings["acceptable_b"]).astype(int)})
        for model, run in runs.items()], ignore_index=True)


def case_verdicts(verdicts: pd.DataFrame) -> dict[Hashable, dict[str, int]]:
    """Per model, case id -> 1 when the output is acceptable by the majority rule, else 0."""
    majority = (verdicts.groupby(["model", "case_id"])["verdict"].mean() > 0.5).astype(int)
    return {model: majority[model].to_dict() for model in verdicts["model"].unique()}


def acceptability_figures(verdicts: pd.DataFrame, base: Hashable = "base",
                          finetuned: Hashable = "finetuned") -> tuple[dict, dict]:
    """(acceptability of the two models' outputs, inter-rater agreement) from unblinded verdicts."""
    by_case = case_verdicts(verdicts)
    shares = acceptability(by_case.get(base, {}), by_case.get(finetuned, {}))
    agreement = rater_agreement(pd.DataFrame({
        "item": verdicts["case_id"] + " / " + verdicts["model"].astype(str), "rater": verdicts["reviewer"],
        "label": verdicts["verdict"]}))
    return shares, agreement
