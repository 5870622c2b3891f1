"""Clinical acceptability, the paper's measure of Task 1, defined in one place for every view of it
(the Dashboard, the HTML report, the Admin page and `study show`).

A rating gives each of the two blinded outputs a verdict, acceptable or not; a rating that marks
its case unratable gives none. Per case and model, the output counts as acceptable when more than
half of the reviewers who gave it a verdict judged it acceptable (a tie is not acceptable). That
per-case share is the primary figure; the share of all verdicts (rating level), with an interval
that resamples whole cases, is reported beside it and labelled as such.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import pandas as pd

from rocore.evaluation.statistics import (
    acceptability,
    clustered_share,
    rater_agreement,
    share_with_test,
)

PRIMARY = "per_case_majority"
RATING_LEVEL = ("share of all verdicts (every reviewer's verdict on every output), secondary; 95% interval: "
                "percentile bootstrap resampling whole cases with all their verdicts")
RULE = ("per case and model, acceptable when more than half of the reviewers who gave the output a verdict "
        "judged it acceptable (a tie is not acceptable); ratings marked unratable give no verdict")
ADJUDICATED_RULE = ("per case and model, the adjudicator's current verdict where the case was adjudicated, "
                    "else the reviewers' verdict by the majority rule (unanimous where they agree)")


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


def disagreeing(verdicts: pd.DataFrame) -> set[Hashable]:
    """Case ids whose reviewers differ on the acceptability of either model's output."""
    spread = verdicts.groupby(["case_id", "model"])["verdict"].nunique()
    return set(spread[spread > 1].index.get_level_values("case_id"))


def post_adjudication_figures(verdicts: pd.DataFrame, adjudicated: Mapping[Hashable, Mapping[Hashable, int]],
                              base: Hashable = "base", finetuned: Hashable = "finetuned") -> dict:
    """Acceptability after adjudication, per case: the adjudicator's verdict where the case has one, else the
    reviewers' verdict by RULE (unanimous wherever they agree). Shares and tests as in `acceptability_figures`'
    primary figure, with the counts the methods report: disagreeing cases and those of them adjudicated.

    `verdicts` as for acceptability_figures; `adjudicated`: case id -> {model: 1/0}, for cases among them.
    """
    by_case = case_verdicts(verdicts)
    adjudicated = {case_id: verdict for case_id, verdict in adjudicated.items()
                   if case_id in set(verdicts["case_id"])}
    for model in (base, finetuned):
        by_case.setdefault(model, {}).update({case_id: int(verdict[model]) for case_id, verdict in adjudicated.items()})
    shares = acceptability(by_case[base], by_case[finetuned])
    split = disagreeing(verdicts)
    shares["rule"] = ADJUDICATED_RULE
    shares["n_disagreeing"] = len(split)
    shares["n_adjudicated"] = len(split & set(adjudicated))
    shares["n_adjudicated_agreeing"] = len(set(adjudicated) - split)
    return shares


def adjudication_sentence(figures: Mapping) -> str:
    """The methods sentence on adjudication."""
    agreeing = figures.get("n_adjudicated_agreeing")
    extra = (f"; {agreeing} adjudicated case(s) whose reviewers agree now keep the adjudicator's verdict"
             if agreeing else "")
    return (f"{figures['n_disagreeing']} case(s) had reviewers disagreeing on acceptability; "
            f"{figures['n_adjudicated']} of them were adjudicated by a named adjudicator blinded to the models"
            f"{extra}. Post-adjudication acceptability: {ADJUDICATED_RULE}.")


def rating_level(verdicts: pd.DataFrame, models: Mapping[str, Hashable]) -> dict:
    """Per model, the share of all verdicts that are acceptable, with a case-clustered bootstrap interval."""
    result = {}
    for name, model in models.items():
        mine = verdicts[verdicts["model"] == model].groupby("case_id")["verdict"]
        result[name] = clustered_share(mine.sum().to_numpy(), mine.size().to_numpy())
    return result


def acceptability_figures(verdicts: pd.DataFrame, base: Hashable = "base", finetuned: Hashable = "finetuned",
                          ratings_per_case: int | None = None) -> tuple[dict, dict]:
    """(acceptability of the two models' outputs, inter-rater agreement) from unblinded verdicts.

    Acceptability: per case by RULE (the primary figure) and at rating level. Agreement on the
    verdicts: per model (items: that model's outputs) and pooled (items: every output), with
    `ratings_per_case` the k of Fleiss' kappa (default: the most common number of verdicts).
    """
    by_case = case_verdicts(verdicts)
    shares = acceptability(by_case.get(base, {}), by_case.get(finetuned, {}))
    shares["primary"] = PRIMARY
    shares["rule"] = RULE
    shares["rating_level"] = rating_level(verdicts, {"base": base, "finetuned": finetuned})
    shares["rating_level"]["description"] = RATING_LEVEL

    def agreement_of(rows: pd.DataFrame, item: pd.Series) -> dict:
        return rater_agreement(pd.DataFrame({"item": item, "rater": rows["reviewer"], "label": rows["verdict"]}),
                               ratings_per_case)

    agreement = agreement_of(verdicts, verdicts["case_id"] + " / " + verdicts["model"].astype(str))
    agreement["by_model"] = {}
    for name, model in (("base", base), ("finetuned", finetuned)):
        rows = verdicts[verdicts["model"] == model]
        agreement["by_model"][name] = agreement_of(rows, rows["case_id"]) if len(rows) else None
    return shares, agreement


def order_checks(rows: pd.DataFrame) -> dict:
    """Checks of the blinded design the paper did not report: side and queue-position effects.

    `rows`: one row per assignment with position, queue_length (the reviewer's assignments in
    the study), preference ('A', 'B', 'none' or None) and acceptable_a,
    acceptable_b (verdicts; None where not rated or unratable). Side: the share of preferences for
    the output shown as "A" among ratings preferring A or B, with Wilson interval and an exact
    binomial test against 1/2. Order: the share of verdicts "acceptable" in the first half of each
    reviewer's queue and in the second half, each with its Wilson interval (verdicts counted one
    by one, as in the rating-level share).
    """
    preferred = rows["preference"].isin(["A", "B"])
    side = share_with_test(int((rows["preference"] == "A").sum()), int(preferred.sum()))
    judged = rows[rows["acceptable_a"].notna() & rows["acceptable_b"].notna()]
    early = judged["position"] <= judged["queue_length"] / 2
    by_half = {}
    for name, part in (("early", judged[early]), ("late", judged[~early])):
        acceptable = int(part["acceptable_a"].astype(int).sum() + part["acceptable_b"].astype(int).sum())
        by_half[name] = share_with_test(acceptable, 2 * len(part))
        del by_half[name]["binomial_p_two_sided"]
    return {"preference_for_side_a": side, "acceptability_by_queue_half": by_half,
            "description": ("side: share of preferences for the output shown as 'A' among ratings that prefer "
                            "A or B, Wilson 95% interval, exact binomial test against 1/2 (scipy binomtest); "
                            "queue: share of verdicts 'acceptable' for outputs rated in the first half "
                            "(position <= half the reviewer's queue) and in the second half, Wilson 95% "
                            "intervals over verdicts")}

