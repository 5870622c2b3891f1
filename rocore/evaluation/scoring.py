"""Per-case scores of one model's outputs against the gold answers, for the three study tasks.

Scoring is the slow step (ROUGE-1 stems every token, the regimen parser runs a dozen regular
expressions), so it is kept apart from the statistics: a generation run is scored once, its
per-case scores can be stored, and rocore.evaluation.statistics only averages and resamples them.

Every score column holds floats in [0, 1] (1.0 = right), or NaN where a score is undefined for
a case, so that a stored table of scores has one shape whatever the task.

- modality (Task 2): exact match after rocore.data.labels.normalise_modality. A prediction that
  cannot be read as one modality is wrong and gets the label OTHER.
- icd10 (Task 3): exact match of normalised codes; match of the three-character category; whether
  the prediction is a code of the CDC set (valid) and a leaf code (billable); and whether it is
  the gold code with the other side of the body (laterality error).
- regimen (Task 1): ROUGE-1 F-measure (rouge-score, Porter stemmer); exact match of the text
  ignoring case and spacing; and, through rocore.data.regimen.parse_regimen, whether the first course's
  total dose and fraction count match, and whether the whole schedule (total dose and fraction
  count of every course, in order) matches. The dose scores are NaN when the gold text states no
  dose, since there is nothing to match.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from rocore.data.labels import LabelError, icd10_status, normalise_icd10, normalise_modality
from rocore.model.answers import extract_answer
from rocore.model.prompts import TASKS
from rocore.data.regimen import parse_regimen

__all__ = [
    "ALL_LABEL_COLUMNS",
    "ALL_SCORE_COLUMNS",
    "LABEL_COLUMNS",
    "OTHER",
    "SCORE_COLUMNS",
    "TASKS",
    "is_laterality_error",
    "rouge1_f",
    "score_icd10",
    "score_modality",
    "score_regimen",
    "score_rows",
    "score_task",
]

# The label of a prediction that is not a modality or not shaped like a code.
OTHER = "other"

# The per-case score columns of each task, each a float in [0, 1] or NaN.
SCORE_COLUMNS: dict[str, tuple[str, ...]] = {
    "regimen": ("correct", "rouge1_f", "total_dose_match", "fractions_match", "schedule_match"),
    "modality": ("correct",),
    "icd10": ("correct", "category_match", "valid", "billable", "laterality_error"),
}

# The label columns kept beside the scores, for per-class metrics and confusion matrices.
LABEL_COLUMNS: dict[str, tuple[str, ...]] = {
    "regimen": (),
    "modality": ("gold_label", "predicted_label"),
    "icd10": ("gold_label", "predicted_label"),
}

# Every label and score column, in the order a table of several tasks shows them.
ALL_LABEL_COLUMNS = ("gold_label", "predicted_label")
ALL_SCORE_COLUMNS = tuple(dict.fromkeys(column for task in TASKS for column in SCORE_COLUMNS[task]))


def _text(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _mapped(values: Sequence, function: Callable[[str], object]) -> pd.Series:
    """function applied once per distinct value: outputs of a run repeat themselves a lot."""
    series = pd.Series([_text(v) for v in values], dtype=object)
    return series.map({value: function(value) for value in series.unique()}).astype(object)


def _gold_label(normalise: Callable[[object], str], value: str) -> str:
    try:
        return normalise(value)
    except LabelError as exc:
        raise LabelError(f"gold answer '{value}' {exc}") from None


def _predicted_label(normalise: Callable[[object], str], value: str) -> str:
    try:
        return normalise(value)
    except LabelError:
        return OTHER


def _read_modality(text: str) -> str:
    """A prediction's modality as the answer reader sees it: raw text such as "Not a candidate for
    protons." must not score as proton just because it names one."""
    answer = extract_answer("modality", text)
    if answer is None:
        raise LabelError("no modality can be read")
    return normalise_modality(answer)


def _as_score(flags) -> np.ndarray:
    return np.asarray(flags, dtype=np.float64)


def score_modality(gold: Sequence[str], predicted: Sequence[str]) -> pd.DataFrame:
    """Per-case modality labels and correctness; a gold value that is no modality raises LabelError."""
    gold_label = _mapped(gold, functools.partial(_gold_label, normalise_modality))
    predicted_label = _mapped(predicted, functools.partial(_predicted_label, _read_modality))
    return pd.DataFrame({
        "gold_label": gold_label,
        "predicted_label": predicted_label,
        "correct": _as_score(gold_label.to_numpy() == predicted_label.to_numpy()),
    })


# Where neoplasm codes (ICD-10-CM chapter 2, C00-D49) write the side of the body: code prefix ->
# (n, pairs): the side is the n-th character of the code, not counting the dot (so index n of the
# dotted code), and each pair is the (right, left) characters. The longest matching prefix
# applies. Derived from the CDC descriptions of the pinned code set (codes one character apart
# whose descriptions differ only in "right"/"left"); the rule reproduces that exactly for every
# pair of valid codes one character apart in the chapter, and so leaves out C79.51/C79.52 (bone,
# bone marrow).
_SIDE_CHARACTER: dict[str, tuple[int, tuple[str, ...]]] = {
    **dict.fromkeys(
        ("C34", "C40", "C43.1", "C43.2", "C43.6", "C43.7", "C46", "C47", "C49.1", "C49.2", "C4A.1",
         "C4A.2", "C4A.6", "C4A.7", "C50.A", "C57", "C62", "C63", "C69", "C72", "C74", "C76", "C78",
         "C79.0", "C79.6", "C79.7", "D02", "D03.1", "D03.2", "D03.6", "D03.7", "D04", "D05", "D09",
         "D14", "D16", "D21", "D22", "D23", "D29", "D30", "D31", "D35", "D39", "D40", "D41", "D44",
         "D48"),
        (5, ("12",)),
    ),
    **dict.fromkeys(("C50", "D49"), (6, ("12",))),
    **dict.fromkeys(("C56", "C64", "C65", "C66", "D24"), (4, ("12",))),
    "C44": (6, ("29",)),
    "D17.2": (5, ("12", "34")),
    "D27": (4, ("01",)),
}


def is_laterality_error(gold: str, predicted: str) -> bool:
    """Whether a normalised code is the gold code for the other side of the body.

    Both must be valid codes that differ only in the side character of their category (see
    _SIDE_CHARACTER): C50.411/C50.412 (breast, 6th character), C34.11/C34.12 (lung, 5th),
    C49.21/C49.22 (lower limb), C44.212/C44.219 (skin of ear: 2 right, 9 left). An unspecified
    side (C50.419) is not a wrong side.
    """
    prefixes = [prefix for prefix in _SIDE_CHARACTER if gold.startswith(prefix)]
    if not prefixes or len(gold) != len(predicted):
        return False
    n, pairs = _SIDE_CHARACTER[max(prefixes, key=len)]
    if n >= len(gold) or gold[:n] != predicted[:n] or gold[n + 1:] != predicted[n + 1:]:
        return False
    if not any({gold[n], predicted[n]} == set(pair) for pair in pairs):
        return False
    return "invalid" not in (icd10_status(gold), icd10_status(predicted))


def score_icd10(gold: Sequence[str], predicted: Sequence[str]) -> pd.DataFrame:
    """Per-case codes and code scores; a gold value not shaped like a code raises LabelError."""
    gold_label = _mapped(gold, functools.partial(_gold_label, normalise_icd10))
    predicted_label = _mapped(predicted, functools.partial(_predicted_label, normalise_icd10))
    status = predicted_label.map(
        {code: "invalid" if code == OTHER else icd10_status(code) for code in predicted_label.unique()}
    )
    gold_codes, predicted_codes = gold_label.to_numpy(), predicted_label.to_numpy()
    pairs = pd.Series(list(zip(gold_codes, predicted_codes)), dtype=object)
    laterality = pairs.map({
        pair: pair[1] != OTHER and is_laterality_error(*pair) for pair in pairs.unique()
    })
    return pd.DataFrame({
        "gold_label": gold_label,
        "predicted_label": predicted_label,
        "correct": _as_score(gold_codes == predicted_codes),
        "category_match": _as_score(
            (predicted_label != OTHER) & (gold_label.str[:3] == predicted_label.str[:3])
        ),
        "valid": _as_score(status != "invalid"),
        "billable": _as_score(status == "billable"),
        "laterality_error": _as_score(laterality),
    })


@functools.cache
def _rouge_scorer():
    """rouge-score's ROUGE-1 scorer with its own tokenizer and Porter stemmer, run once per text.

    Gold regimens repeat across cases and stemming is most of ROUGE's cost, so remembering the
    tokens of each distinct text makes scoring several times faster without changing a score.
    rouge-score is imported here, on first use, because it imports all of NLTK (over a second),
    which the statistics alone do not need.
    """
    from rouge_score import rouge_scorer, tokenizers

    tokens = functools.lru_cache(maxsize=200_000)(tokenizers.DefaultTokenizer(use_stemmer=True).tokenize)

    class MemoTokenizer(tokenizers.Tokenizer):
        def tokenize(self, text: str) -> list[str]:
            return tokens(text)

    return rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True, tokenizer=MemoTokenizer())


def rouge1_f(gold: str, predicted: str) -> float:
    """ROUGE-1 F-measure of a predicted text against the gold text (rouge-score, Porter stemmer)."""
    return _rouge_scorer().score(target=gold, prediction=predicted)["rouge1"].fmeasure


def _squashed(text: str) -> str:
    return " ".join(text.casefold().split())


@functools.lru_cache(maxsize=200_000)
def _schedule(text: str) -> tuple[tuple[float | None, int | None], ...]:
    """(total dose in Gy, fraction count) of each course the text states, in order."""
    return tuple((c.total_dose_gy, c.fractions) for c in parse_regimen(text).components)


def _same(first: float | None, second: float | None) -> bool:
    if first is None or second is None:
        return first is second
    return math.isclose(first, second, rel_tol=0.0, abs_tol=1e-6)


def _dose_scores(gold: str, predicted: str) -> tuple[float, float, float]:
    """(first course's total matches, its fraction count matches, every course matches)."""
    gold_courses, predicted_courses = _schedule(gold), _schedule(predicted)
    if not gold_courses:
        return (math.nan, math.nan, math.nan)
    matches = [
        (_same(gold_total, predicted_total), _same(gold_fractions, predicted_fractions))
        for (gold_total, gold_fractions), (predicted_total, predicted_fractions)
        in zip(gold_courses, predicted_courses)
    ]
    total, fractions = matches[0] if matches else (False, False)
    schedule = len(gold_courses) == len(predicted_courses) and all(t and f for t, f in matches)
    return (float(total), float(fractions), float(schedule))


def _regimen_scores(gold: str, predicted: str) -> tuple[float, ...]:
    return (
        float(_squashed(gold) == _squashed(predicted)),
        rouge1_f(gold, predicted),
        *_dose_scores(gold, predicted),
    )


def score_regimen(gold: Sequence[str], predicted: Sequence[str]) -> pd.DataFrame:
    """Per-case regimen scores: exact text, ROUGE-1 F and dose/fraction matches (see module doc)."""
    pairs = pd.Series(list(zip(map(_text, gold), map(_text, predicted))), dtype=object)
    scores = pairs.map({pair: _regimen_scores(*pair) for pair in pairs.unique()})
    return pd.DataFrame(
        np.array(scores.tolist(), dtype=np.float64).reshape(len(pairs), len(SCORE_COLUMNS["regimen"])),
        columns=list(SCORE_COLUMNS["regimen"]),
    )


_SCORERS: dict[str, Callable[[Sequence[str], Sequence[str]], pd.DataFrame]] = {
    "regimen": score_regimen,
    "modality": score_modality,
    "icd10": score_icd10,
}


def score_task(task: str, gold: Sequence[str], predicted: Sequence[str]) -> pd.DataFrame:
    """One row per case, in input order: LABEL_COLUMNS[task] then SCORE_COLUMNS[task]."""
    if task not in _SCORERS:
        raise ValueError(f"task '{task}' is not one of {', '.join(TASKS)}")
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold answers but {len(predicted)} predictions")
    return _SCORERS[task](gold, predicted)


def score_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """`rows` (case_id, task, gold, output, and any other columns) with every label and score column
    of rocore.evaluation.scoring added, the rows grouped by task in TASKS order, input order kept within a task.

    One row is one output of one model, so rows of any runs or models can be scored together or
    apart (the dashboard scores only the rows a run has added since it last looked) and
    concatenated; score columns a row's task does not have are NaN.
    """
    frames = []
    for task in TASKS:
        part = rows[rows["task"] == task]
        if part.empty:
            continue
        scores = score_task(task, part["gold"].tolist(), part["output"].tolist())
        scores.index = part.index
        frames.append(pd.concat([part, scores], axis=1))
    if not frames:
        return rows.reindex(columns=[*rows.columns, *ALL_LABEL_COLUMNS, *ALL_SCORE_COLUMNS])
    return pd.concat(frames).reindex(columns=[*rows.columns, *ALL_LABEL_COLUMNS, *ALL_SCORE_COLUMNS])
