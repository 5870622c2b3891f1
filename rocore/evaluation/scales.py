"""The rating scales a study may ask besides the paper's binary acceptability, defined in one place for
the rating form, the store's checks and every figure (Dashboard, HTML report, Admin page, `study show`).

- Edit level, as radiation oncology plan and contour reviews grade acceptability: acceptable as is,
  minor edits, major edits, unacceptable. With it the binary acceptability is not asked but derived
  (EDIT_RULE), so the paper's measure stays comparable across studies.
- Potential harm if the regimen were followed (none, mild or moderate, severe) and, for an output with
  some harm, its likelihood (low, medium, high): the extent and likelihood of harm of Med-PaLM's
  human evaluation (Singhal et al., Nature 2023).
- A score from 1 (poor) to 5 (excellent).

Each is ordinal. Per scale and model: the distribution over its levels (every rating counted), and
for the scales that rank outputs a case-by-case comparison (per case the mean of its reviewers'
levels, one-sided Wilcoxon signed-rank test in the scale's better direction) and agreement between
reviewers at the ordinal level (Krippendorff's alpha, weighted Cohen's kappa). Harm also gives the
share of ratings finding severe harm and the share finding any, each with a case-clustered interval.
Ratings are stored as the level's value (`Scale.values`) in the rating columns `{key}_a`, `{key}_b`.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from rocore.evaluation.statistics import ORDINAL_KAPPA_WEIGHTS, clustered_share, rater_agreement, wilcoxon_greater


@dataclass(frozen=True)
class Scale:
    key: str  # the rating columns f"{key}_a" and f"{key}_b", and the study form's choice
    name: str
    levels: tuple[str, ...]
    values: tuple[int, ...]  # what is stored for each level
    question: str  # "{output}" stands for the side shown, such as "Regimen A"
    lower_is_better: bool
    compared: bool = True  # whether outputs are compared on it case by case (likelihood is not: it is conditional)

    def label(self, value: int | None) -> str | None:
        return None if value is None else self.levels[self.values.index(value)]

    def better(self) -> str:
        return "lower" if self.lower_is_better else "higher"


EDIT = Scale("edit", "Edit level", ("Acceptable as is", "Minor edits", "Major edits", "Unacceptable"), (0, 1, 2, 3),
             "How much would {output} need editing before use?", lower_is_better=True)
HARM = Scale("harm", "Potential harm if followed", ("None", "Mild or moderate", "Severe"), (0, 1, 2),
             "Potential harm if {output} were followed", lower_is_better=True)
LIKELIHOOD = Scale("likelihood", "Likelihood of that harm", ("Low", "Medium", "High"), (0, 1, 2),
                   "How likely is that harm from {output}? (only with some harm)", lower_is_better=True,
                   compared=False)
LIKERT = Scale("likert", "Score (1-5)", ("1", "2", "3", "4", "5"), (1, 2, 3, 4, 5),
               "Score of {output} (1 poor, 5 excellent)", lower_is_better=False)
SCALES = {scale.key: scale for scale in (EDIT, HARM, LIKELIHOOD, LIKERT)}
SCALE_COLUMNS = tuple(f"{key}_{side}" for key in SCALES for side in "ab")

ACCEPTABLE_EDITS = (0, 1)
EDIT_RULE = ("with the edit-level scale the binary acceptability is not asked but derived: acceptable = "
             "'acceptable as is' or 'minor edits'; not acceptable = 'major edits' or 'unacceptable'")
SEVERE = 2
NO_HARM = 0


def acceptable_from_edit(edit: int) -> bool:
    return edit in ACCEPTABLE_EDITS


def asked_scales(edit_level: bool, harm: bool, likert: bool) -> list[Scale]:
    """The scales a study form asks, in the order the form shows them."""
    return [scale for scale, asked in ((EDIT, edit_level), (HARM, harm), (LIKELIHOOD, harm), (LIKERT, likert))
            if asked]


def study_scales(study: Mapping) -> list[Scale]:
    """The scales a stored study asks, from its form (the studies.form JSON)."""
    form = json.loads(study.get("form") or "{}")
    return asked_scales(bool(form.get("edit_level")), bool(form.get("harm")), bool(form.get("likert")))


def methods_sentence(scales: Sequence[Scale]) -> str:
    """What the methods say of the scales a study asked."""
    named = [f"{s.name.lower()} ({', '.join(s.levels)})" for s in scales if s is not LIKELIHOOD]
    if HARM in scales:
        named[[s for s in scales if s is not LIKELIHOOD].index(HARM)] += (
            f", with its likelihood ({', '.join(LIKELIHOOD.levels)}) for an output with some harm")
    asked = "; ".join(named)
    if not scales:
        return "Reviewers gave each output the paper's binary verdict, clinically acceptable or not."
    edit = f" {EDIT_RULE[0].upper()}{EDIT_RULE[1:]}." if EDIT in scales else ""
    harm = (" Harm: the share of ratings finding severe harm, and any harm, per model, with a percentile "
            "bootstrap interval resampling whole cases." if HARM in scales else "")
    return (f"Besides the binary verdict (clinically acceptable or not), reviewers rated each output on: {asked}."
            f"{edit} Ordinal scales: per case the mean of its reviewers' levels, compared between the models with "
            "the one-sided Wilcoxon signed-rank test in the scale's better direction; agreement by "
            f"Krippendorff's alpha (ordinal) and Cohen's kappa ({ORDINAL_KAPPA_WEIGHTS} weights) per pair of "
            f"reviewers.{harm}")


def unblind_levels(ratings: pd.DataFrame, runs: Mapping[Hashable, int], scale: Scale) -> pd.DataFrame:
    """One row per rating and model with the level the rating gave that model's output on `scale`:
    case_id, reviewer, model, value; ratings without a level on it are left out.

    `ratings` has case_id, reviewer, run_a_id and the scale's two columns, as for
    rocore.evaluation.acceptability.unblind."""
    frames = []
    for model, run in runs.items():
        shown_a = ratings["run_a_id"] == run
        value = ratings[f"{scale.key}_a"].where(shown_a, ratings[f"{scale.key}_b"])
        frames.append(pd.DataFrame({"case_id": ratings["case_id"], "reviewer": ratings["reviewer"], "model": model,
                                    "value": value}))
    levels = pd.concat(frames, ignore_index=True)
    levels = levels[levels["value"].notna()]
    return levels.astype({"value": int})


def _distribution(levels: pd.DataFrame, scale: Scale) -> dict:
    counts = levels["value"].value_counts()
    n = int(counts.sum())
    return {"n_ratings": n, "levels": [{"level": name, "value": value, "n": int(counts.get(value, 0)),
                                         "share": float(counts.get(value, 0) / n) if n else None}
                                        for name, value in zip(scale.levels, scale.values)]}


def _comparison(levels: pd.DataFrame, scale: Scale, base: Hashable, finetuned: Hashable) -> dict | None:
    """Per case the mean level per model, and the one-sided Wilcoxon test that fine-tuned is better."""
    per_case = levels.pivot_table(index="case_id", columns="model", values="value", aggfunc="mean")
    per_case = per_case.reindex(columns=[base, finetuned]).dropna()
    if per_case.empty:
        return None
    sign = -1.0 if scale.lower_is_better else 1.0
    test = wilcoxon_greater(sign * per_case[finetuned].to_numpy(), sign * per_case[base].to_numpy())
    return {"n_cases": len(per_case), "base_mean": float(per_case[base].mean()),
            "finetuned_mean": float(per_case[finetuned].mean()), "better": scale.better(),
            "wilcoxon_p_one_sided": test["p"], "n_nonzero": test["n_nonzero"], "notes": test["notes"],
            "method": (f"per case the mean of its reviewers' levels; scipy.stats.wilcoxon, one-sided: fine-tuned "
                       f"{scale.better()} than base, zero_method='wilcox'")}


def _agreement(levels: pd.DataFrame, scale: Scale, ratings_per_case: int | None) -> dict | None:
    if levels.empty:
        return None
    return rater_agreement(pd.DataFrame({"item": levels["case_id"] + " / " + levels["model"].astype(str),
                                         "rater": levels["reviewer"], "label": levels["value"]}),
                           ratings_per_case, levels=scale.values)


def _harm_shares(levels: pd.DataFrame, models: Sequence[Hashable]) -> dict:
    """Per model, the share of ratings finding severe harm and any harm, intervals resampling whole cases."""
    shares = {}
    for model in models:
        mine = levels[levels["model"] == model].groupby("case_id")["value"]
        totals = mine.size().to_numpy()
        shares[model] = {"severe": clustered_share(mine.apply(lambda v: int((v == SEVERE).sum())).to_numpy(), totals),
                         "any": clustered_share(mine.apply(lambda v: int((v > NO_HARM).sum())).to_numpy(), totals)}
    return shares


def scale_figures(ratings: pd.DataFrame, runs: Mapping[Hashable, int], scales: Sequence[Scale],
                  ratings_per_case: int | None = None) -> dict:
    """Per asked scale: distribution per model, case-by-case comparison, agreement (and for harm, the
    shares of severe and any harm). `runs` maps the two models, base first, to their run ids ("base" and
    "finetuned" on the Dashboard, 1 and 2 in study_summary); `ratings` are the ratings with a verdict, as for
    `unblind_levels`."""
    figures = {}
    for scale in scales:
        levels = unblind_levels(ratings, runs, scale)
        entry = {"name": scale.name, "levels": list(scale.levels), "better": scale.better(),
                 "distribution": {model: _distribution(levels[levels["model"] == model], scale) for model in runs}}
        if scale.compared:
            entry["comparison"] = _comparison(levels, scale, *runs)
            entry["agreement"] = _agreement(levels, scale, ratings_per_case)
        if scale is HARM:
            entry["shares"] = _harm_shares(levels, list(runs))
        figures[scale.key] = entry
    return figures


def distribution_table(figures: Mapping, model_names: Mapping[Hashable, str]) -> pd.DataFrame:
    """A scale's levels as rows and each model's count and share as columns, for pages and reports."""
    rows = []
    for model, name in model_names.items():
        for level in figures["distribution"][model]["levels"]:
            rows.append({"level": level["level"], "model": name, "n": level["n"], "share": level["share"]})
    table = pd.DataFrame(rows).pivot(index="level", columns="model", values=["n", "share"])
    table = table.reindex(figures["levels"])
    table.columns = [f"{model} {what}" for what, model in table.columns]
    return table[[f"{name} {what}" for name in model_names.values() for what in ("n", "share")]]


def _percent(share: Mapping) -> str:
    interval = share.get("ci95_cluster_bootstrap")
    span = f" (95% CI {interval[0]:.0%} to {interval[1]:.0%})" if interval else ""
    return "-" if share["share"] is None else f"{share['share']:.0%}{span}"


def summary_lines(figures: Mapping, model_names: Mapping[Hashable, str]) -> list[str]:
    """Each asked scale's headline figures in a sentence or two, for the Admin page and `study show`: per-case
    means and the test, ordinal alpha, harm shares (the Dashboard and the report show every figure in
    rocore.evaluation.report.scale_tables)."""
    lines = []
    for entry in figures.values():
        comparison, agreement = entry.get("comparison"), entry.get("agreement")
        if comparison:
            (base, base_name), (tuned, tuned_name) = model_names.items()
            p = comparison["wilcoxon_p_one_sided"]
            lines.append(f"{entry['name']}, per-case means over {comparison['n_cases']} cases ({entry['better']} is "
                         f"better): {base_name} {comparison['base_mean']:.2f}, {tuned_name} "
                         f"{comparison['finetuned_mean']:.2f}; one-sided Wilcoxon ({tuned_name} better) "
                         f"p = {'-' if p is None else f'{p:.3g}'}")
        if agreement and agreement["krippendorff_alpha"] is not None:
            lines.append(f"{entry['name']} agreement: Krippendorff's alpha (ordinal) "
                         f"{agreement['krippendorff_alpha']:.2f} over {agreement['n_items_krippendorff']} outputs")
        for model, name in model_names.items():
            shares = entry.get("shares", {}).get(model)
            if shares:
                lines.append(f"{name}: severe harm in {_percent(shares['severe'])} of ratings, any harm in "
                             f"{_percent(shares['any'])}")
        if "comparison" not in entry:
            counts = "; ".join(f"{name} " + ", ".join(f"{level['level'].lower()} {level['n']}"
                                                       for level in entry["distribution"][model]["levels"])
                               for model, name in model_names.items())
            lines.append(f"{entry['name']} (ratings with some harm): {counts}")
    return lines
