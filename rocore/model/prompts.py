"""The instruction templates of the three tasks, and how an answer is read back out of a model's text.

Training, generation and evaluation all go through here, so a prompt is built one way everywhere
and every stored output names the template (TEMPLATE_IDS) that produced it.
"""

from __future__ import annotations

import re

from rocore.data.labels import LabelError, icd10_status, modalities_mentioned, normalise_icd10

TASKS = ("regimen", "modality", "icd10")
TEMPLATE_VERSION = 1
TEMPLATE_IDS = {task: f"{task}-v{TEMPLATE_VERSION}" for task in TASKS}

INSTRUCTIONS = {
    "regimen": "Recommend the radiotherapy regimen for this patient: total dose, number of fractions, "
               "technique and any concurrent therapy.",
    "modality": "Which radiotherapy modality should treat this patient? Answer with one word: photon, "
                "proton, electron or brachytherapy.",
    "icd10": "Give the ICD-10-CM code of this diagnosis. Answer with the code only.",
}

# Models without a chat template (base models, the demo model) get this plain layout. The task
# comes last, next to the answer, so that even a small model cannot lose track of which task it is
# answering (with the task first, the demo model answered every task with a regimen).
PLAIN_TEMPLATE = "### Patient: {diagnosis}\n### Task: {instruction}\n### Answer:"
_END_OF_ANSWER = re.compile(r"\n\s*\n|\n###|<\|")
_CODE = re.compile(r"(?<![A-Za-z0-9])([A-Za-z][0-9][0-9A-Za-z](?:\.?[0-9A-Za-z]{1,4})?)(?![A-Za-z0-9])")


class TaskError(ValueError):
    """A task name that is not one of TASKS."""


def check_tasks(tasks: list[str] | str) -> list[str]:
    """Tasks from a list or a comma-separated string, in TASKS order, each known."""
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise TaskError(f"unknown task {', '.join(map(repr, unknown)) or '(none)'}; tasks are {', '.join(TASKS)}")
    return [t for t in TASKS if t in names]


def build_prompt(tokenizer, task: str, diagnosis: str) -> str:
    """The text a model continues: the tokenizer's chat template when it has one, else PLAIN_TEMPLATE."""
    instruction = INSTRUCTIONS[task]
    if getattr(tokenizer, "chat_template", None):
        message = f"{instruction}\n\nPatient: {diagnosis.strip()}"
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
        )
    return PLAIN_TEMPLATE.format(instruction=instruction, diagnosis=" ".join(diagnosis.split()))


def answer_text(tokenizer, answer: str) -> str:
    """The completion a model is trained to produce after the prompt: the gold answer, then EOS."""
    prefix = "" if getattr(tokenizer, "chat_template", None) else " "
    return f"{prefix}{answer.strip()}{tokenizer.eos_token or ''}"


def extract_answer(task: str, raw: str) -> str | None:
    """The normalised answer in a model's raw output, or None when there is none to read."""
    text = _END_OF_ANSWER.split(raw, maxsplit=1)[0].strip()
    if task == "modality":
        found = modalities_mentioned(text)
        return found[0] if found else None
    if task == "icd10":
        shaped = []
        for match in _CODE.finditer(text):
            try:
                shaped.append(normalise_icd10(match.group(1)))
            except LabelError:
                continue
        # "T2N0M0, C61": prefer the first real code over a staging string that is shaped like one.
        return next((c for c in shaped if icd10_status(c) != "invalid"), shaped[0] if shaped else None)
    return " ".join(text.split()) or None
