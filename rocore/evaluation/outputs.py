"""Paired outputs, the evaluation's one input: a table with one row per case and task, its gold answer
and each model's output (OUTPUT_COLUMNS), read from a file or from two stored generation runs.

Only a case with no output row at all is missing (None or NaN here: a stored run that has not
reached the case): it is left out of every figure, counted in "n_dropped" and named in
"dropped_cases". An empty or unreadable output (an empty cell in a file, empty raw text in a
run) is an answer, and a wrong one: dropping it would flatter the model that produced nothing. A stored run's answer is its normalised answer, or its raw text where none
could be read (a wrong answer, not a missing one); a file of raw outputs is read the same way
(`extract_answer`), so one output scores the same from a file and from the database.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from rocore.data.tables import ImportRefused, Problem, format_problems, read_table
from rocore.data.labels import LabelError, icd10_status, normalise_icd10, normalise_modality
from rocore.generation.runs import matched_run_pairs
from rocore.model.answers import extract_answer
from rocore.model.prompts import TASKS

OUTPUT_COLUMNS = ("case_id", "task", "gold", "base", "finetuned")
MODELS = ("base", "finetuned")

# One stored run's outputs with their gold answers and the case fields the dashboard filters on.
_RUN_ROWS = (
    "SELECT g.case_id, g.task, CASE g.task WHEN 'regimen' THEN c.regimen WHEN 'modality' THEN c.modality "
    "ELSE c.icd10 END AS gold, coalesce(g.answer, g.raw_text) AS output, c.site, c.modality AS case_modality "
    "FROM generations AS g JOIN cases AS c USING (case_id) WHERE g.run_id = ?")
RUN_COLUMNS = ["case_id", "task", "run_id", "gold", "output", "site", "case_modality"]


class EvaluationInputError(ValueError):
    """Outputs that cannot be evaluated; `problems` lists every located reason."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__(format_problems(problems))



def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _gold_problem(task: str, gold: str) -> str | None:
    """Why a gold answer cannot be scored, or None."""
    try:
        if task == "modality":
            normalise_modality(gold)
        elif task == "icd10" and icd10_status(normalise_icd10(gold)) == "invalid":
            return "is not a valid ICD-10-CM code"
    except LabelError as exc:
        return str(exc)
    return None


def output_problems(outputs: pd.DataFrame, name: str, rows) -> list[Problem]:
    """Every located reason why `outputs` cannot be evaluated; `rows` numbers its rows."""
    missing = [column for column in OUTPUT_COLUMNS if column not in outputs.columns]
    if missing:
        return [Problem(name, f"has no column '{column}'; expected columns {', '.join(OUTPUT_COLUMNS)}")
                for column in missing]
    problems: list[Problem] = []
    gold_problems: dict[tuple[str, str], str | None] = {}
    first_row: dict[tuple[str, str], int] = {}
    for row, case_id, task, gold in zip(rows, outputs["case_id"], outputs["task"], outputs["gold"]):
        case_id, task, gold = _cell(case_id), _cell(task).lower(), _cell(gold)
        if not case_id:
            problems.append(Problem(name, "is empty; every output needs its case id", row, "case_id"))
        if task not in TASKS:
            problems.append(Problem(name, f"{'is empty; expected' if not task else 'is not'} one of "
                                    f"{', '.join(TASKS)}", row, "task", task or None))
            continue
        if not gold:
            problems.append(Problem(name, "is empty; expected the gold answer", row, "gold"))
        else:
            if (task, gold) not in gold_problems:
                gold_problems[task, gold] = _gold_problem(task, gold)
            if gold_problems[task, gold]:
                problems.append(Problem(name, gold_problems[task, gold], row, "gold", gold))
        if case_id and (case_id, task) in first_row:
            problems.append(Problem(name, f"case '{case_id}' has a second {task} row "
                                    f"(the first is row {first_row[case_id, task]})", row, "case_id"))
        first_row.setdefault((case_id, task), row)
    return problems


def tidy_outputs(outputs: pd.DataFrame) -> pd.DataFrame:
    """The output columns with trimmed ids and lower-case tasks; missing outputs (no output row: None
    or NaN) as None, while an empty output stays an empty string, a wrong answer."""
    return pd.DataFrame({
        "case_id": [_cell(v) for v in outputs["case_id"]],
        "task": [_cell(v).lower() for v in outputs["task"]],
        "gold": [_cell(v) for v in outputs["gold"]],
        **{model: pd.Series([None if pd.isna(v) else str(v) for v in outputs[model]], dtype=object)
           for model in MODELS},
    })


def answers_of_raw_outputs(outputs: pd.DataFrame) -> pd.DataFrame:
    """Tidy outputs holding raw model text, as a stored run holds them: each output's extracted
    answer, or its raw text where none can be read; a missing output stays missing."""
    outputs = outputs.copy()
    for model in MODELS:
        outputs[model] = pd.Series(
            [None if text is None else extract_answer(task, text) or text
             for task, text in zip(outputs["task"], outputs[model])], dtype=object, index=outputs.index)
    return outputs


def read_outputs_file(path: str | Path, extracted: bool = False) -> pd.DataFrame:
    """Paired outputs from a CSV/TSV (or .xlsx, JSON lines) file with columns OUTPUT_COLUMNS.

    Column names are matched ignoring case and surrounding spaces. The base and finetuned columns
    hold the models' raw text, read as stored runs are read (answers_of_raw_outputs), unless
    `extracted` says they hold answers already read. An empty base or finetuned
    cell is an empty output, scored as a wrong answer (a row holds both outputs, so nothing in a
    file is missing). Raises EvaluationInputError listing every
    problem as "FILE: row N: column 'task': 'x' is not one of regimen, modality, icd10".
    """
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise EvaluationInputError([Problem(name, f"cannot be read: {exc.strerror}")]) from None
    try:
        table = read_table(data, name)
    except ImportRefused as exc:
        raise EvaluationInputError(exc.problems) from None
    by_key = {column.strip().lower(): column for column in table.columns}
    frame = pd.DataFrame(
        {column: [values.get(by_key[column], "") for _, values in table.rows]
         for column in OUTPUT_COLUMNS if column in by_key},
        index=range(len(table.rows)),
    )
    problems = table.problems + output_problems(frame, name, [number for number, _ in table.rows])
    if problems:
        raise EvaluationInputError(problems)
    return tidy_outputs(frame) if extracted else answers_of_raw_outputs(tidy_outputs(frame))


def check_run_pair(conn: sqlite3.Connection, base_run: int, finetuned_run: int) -> None:
    """Refuse two runs whose outputs cannot be paired case by case."""
    if base_run == finetuned_run:
        raise EvaluationInputError([Problem("database", f"run {base_run} was chosen twice; choose two runs")])
    runs = {r["run_id"]: r for r in conn.execute(
        "SELECT run_id, split_id, part FROM generation_runs WHERE run_id IN (?, ?)", (base_run, finetuned_run))}
    for run_id in (base_run, finetuned_run):
        if run_id not in runs:
            raise EvaluationInputError([Problem("database", f"has no generation run {run_id}")])
    if (runs[base_run]["split_id"], runs[base_run]["part"]) != (runs[finetuned_run]["split_id"],
                                                               runs[finetuned_run]["part"]):
        raise EvaluationInputError([Problem("database", f"runs {base_run} and {finetuned_run} cover different "
                                            "split parts; their outputs cannot be paired case by case")])


def run_outputs(conn: sqlite3.Connection, run_id: int, created_since: str | None = None) -> pd.DataFrame:
    """One stored run's outputs (RUN_COLUMNS), optionally only those created at or after a time."""
    cursor = conn.cursor()
    cursor.row_factory = None
    sql, params = _RUN_ROWS, (run_id,)
    if created_since is not None:
        sql, params = sql + " AND g.created_at >= ?", (run_id, created_since)
    rows = pd.DataFrame(cursor.execute(sql, params).fetchall(),
                        columns=[c for c in RUN_COLUMNS if c != "run_id"])
    rows["gold"] = rows["gold"].str.strip()
    rows.insert(2, "run_id", run_id)
    return rows


@dataclass(frozen=True)
class RunPairs:
    """Which base run is compared with which fine-tuned run, task by task: a task may have been
    generated in runs of its own. `pairs` holds (task, base run, fine-tuned run) in TASKS order."""

    pairs: tuple[tuple[str, int, int], ...]

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(task for task, _, _ in self.pairs)

    def for_task(self, task: str) -> tuple[int, int] | None:
        return next(((base, tuned) for t, base, tuned in self.pairs if t == task), None)

    def distinct(self) -> dict[tuple[int, int], list[str]]:
        """{(base run, fine-tuned run): its tasks}, in the order of their first task."""
        grouped: dict[tuple[int, int], list[str]] = {}
        for task, base, tuned in self.pairs:
            grouped.setdefault((base, tuned), []).append(task)
        return grouped

    def run_ids(self) -> list[int]:
        return list(dict.fromkeys(run for pair in self.distinct() for run in pair))

    def describe(self) -> str:
        """The pairs in words, for a report and for the terminal."""
        return "; ".join(f"{', '.join(tasks)}: base run {base}, fine-tuned run {tuned}"
                         for (base, tuned), tasks in self.distinct().items())

    def as_source(self) -> dict:
        """The pairs as a report's JSON `source` names them: `runs` {task: {"base_run", "finetuned_run"}},
        and where one pair covers every task, `base_run` and `finetuned_run` as before per-task pairing."""
        single = self.distinct()
        one = {"base_run": next(iter(single))[0], "finetuned_run": next(iter(single))[1]} if len(single) == 1 else {}
        return {**one, "runs": {task: {"base_run": base, "finetuned_run": tuned} for task, base, tuned in self.pairs}}

    @classmethod
    def from_source(cls, source: Mapping) -> RunPairs:
        return cls(tuple((task, runs["base_run"], runs["finetuned_run"]) for task, runs in source["runs"].items()))


def _run_tasks(conn: sqlite3.Connection, run_id: int) -> list[str]:
    return json.loads(conn.execute("SELECT tasks FROM generation_runs WHERE run_id = ?", (run_id,)).fetchone()[0])


def run_pairs(conn: sqlite3.Connection, named: list[tuple[int, int]] | None = None) -> RunPairs:
    """The runs to compare: each named (base, fine-tuned) pair for the tasks both its runs generated,
    else the pairs matched per task (rocore.generation.runs.matched_run_pairs), checked."""
    if not named:
        matched = matched_run_pairs(conn)
        if not matched:
            raise EvaluationInputError([Problem("database", (
                "has no base and fine-tuned generation runs to pair: a fine-tuned run needs a base-only run of "
                "the same base model over the same split part, with the same prompt format and task; generate "
                "both first, or name the runs to compare"))])
        return RunPairs(tuple((task, *matched[task]) for task in TASKS if task in matched))
    problems, by_task = [], {}
    for base, tuned in named:
        check_run_pair(conn, base, tuned)
        base_tasks, tuned_tasks = _run_tasks(conn, base), _run_tasks(conn, tuned)
        common = [task for task in TASKS if task in base_tasks and task in tuned_tasks]
        if not common:
            problems.append(Problem("database", (
                f"runs {base} and {tuned} have no task in common (run {base}: {', '.join(base_tasks)}; "
                f"run {tuned}: {', '.join(tuned_tasks)})")))
        for task in common:
            if task in by_task:
                problems.append(Problem("database", (
                    f"task {task} is in two of the pairs named (runs {by_task[task][0]} and {by_task[task][1]}, "
                    f"runs {base} and {tuned}); name one pair per task")))
            by_task.setdefault(task, (base, tuned))
    if problems:
        raise EvaluationInputError(problems)
    return RunPairs(tuple((task, *by_task[task]) for task in TASKS if task in by_task))


def outputs_from_runs(conn: sqlite3.Connection, base_run: int, finetuned_run: int) -> pd.DataFrame:
    """The paired-output table of two stored generation runs, gold answers from the cases; a case one
    run has not reached yet is missing for that model."""
    check_run_pair(conn, base_run, finetuned_run)
    frames = [run_outputs(conn, run).set_index(["case_id", "task"])[["gold", "output"]].rename(
        columns={"output": model}) for model, run in zip(MODELS, (base_run, finetuned_run))]
    paired = frames[0].join(frames[1], how="outer", suffixes=("_base", ""))
    if paired.empty:
        raise EvaluationInputError([Problem("database", f"runs {base_run} and {finetuned_run} have no outputs yet")])
    paired["gold"] = paired["gold"].fillna(paired.pop("gold_base"))
    paired = paired.reset_index().sort_values(["task", "case_id"], kind="stable", ignore_index=True)
    return tidy_outputs(paired[list(OUTPUT_COLUMNS)])
