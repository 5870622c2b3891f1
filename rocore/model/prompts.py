"""The instruction templates of the three tasks (reading the answer back is rocore.model.answers).

Training, generation and evaluation all go through here, so a prompt is built one way everywhere
and every stored output names the template (`template_id`: instruction version, prompt format, chat
template) that produced it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from rocore.model.loading import ADAPTER_INFO, ModelError

TASKS = ("regimen", "modality", "icd10")
TEMPLATE_VERSION = 1
TEMPLATE_IDS = {task: f"{task}-v{TEMPLATE_VERSION}" for task in TASKS}

# How the instruction reaches the model: `chat` through the tokenizer's chat template, `plain` in
# PLAIN_TEMPLATE. A run, its adapter and its outputs record which (template_id says it per output).
PROMPT_FORMATS = ("plain", "chat")
# Instruction-tuned checkpoints say so in their names ("Llama-3.1-8B-Instruct", "Llama-2-7b-chat-hf",
# "gemma-2-9b-it"). Base models such as Qwen2.5-7B or Llama-3.1-8B ship a chat template too, but were
# never trained on it, so they get the plain layout.
_INSTRUCTION_TUNED = re.compile(r"instruct|chat|(?:^|[-_])it(?:$|[-_])", re.IGNORECASE)

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


class TaskError(ValueError):
    """A task name that is not one of TASKS."""


def check_tasks(tasks: list[str] | str) -> list[str]:
    """Tasks from a list or a comma-separated string, in TASKS order, each known."""
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise TaskError(f"unknown task {', '.join(map(repr, unknown)) or '(none)'}; tasks are {', '.join(TASKS)}")
    return [t for t in TASKS if t in names]


def is_instruction_tuned(model_path: str | Path) -> bool:
    """Whether the model's folder name (or, in a Hugging Face cache, its repository name, or the
    `_name_or_path` its config recorded) marks it as instruction-tuned."""
    path = Path(model_path)
    names = [path.name, *(part for part in path.parts if part.startswith("models--"))]
    config = path / "config.json"
    if config.is_file():
        names.append(str(json.loads(config.read_text(encoding="utf-8")).get("_name_or_path") or ""))
    return any(_INSTRUCTION_TUNED.search(Path(name).name) for name in names if name)


def default_prompt_format(tokenizer, model_path: str | Path) -> str:
    """`chat` for an instruction-tuned model whose tokenizer has a chat template, else `plain`."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    return "chat" if has_template and is_instruction_tuned(model_path) else "plain"


def check_prompt_format(tokenizer, prompt_format: str) -> None:
    """Refuse an unknown format, and the chat format for a tokenizer without a chat template."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"unknown prompt format {prompt_format!r}; choose one of {', '.join(PROMPT_FORMATS)}")
    if prompt_format == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ModelError("the chat prompt format needs a chat template, and this model's tokenizer has none: "
                         "use the plain prompt format")


def chat_template_id(tokenizer) -> str | None:
    """A short hash of the tokenizer's chat template: two tokenizers with one id format chats alike."""
    template = getattr(tokenizer, "chat_template", None)
    return hashlib.sha256(template.encode()).hexdigest()[:12] if isinstance(template, str) else None


def template_id(tokenizer, task: str, prompt_format: str) -> str:
    """The id stored with each output: the task's instruction version, the format and, for chat, which
    chat template; with the stored prompt text, enough to tell any two layouts apart."""
    if prompt_format == "chat":
        return f"{TEMPLATE_IDS[task]}-chat-{chat_template_id(tokenizer)}"
    return f"{TEMPLATE_IDS[task]}-plain"


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer starts a text with BOS (Llama-2, Mistral, the demo base were pretrained so)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos is not None and tokenizer("x")["input_ids"][:1] == [bos]


def _user_turn(task: str, diagnosis: str) -> dict:
    return {"role": "user", "content": f"{INSTRUCTIONS[task]}\n\nPatient: {diagnosis.strip()}"}


def build_prompt(tokenizer, task: str, diagnosis: str, prompt_format: str) -> str:
    """The exact text a model continues, special tokens written out: tokenise it with
    add_special_tokens=False. chat: the chat template over one user turn plus the assistant's header;
    plain: PLAIN_TEMPLATE, after BOS where the tokenizer adds one. tokenizer None gives the bare plain
    layout (to train a tokenizer on)."""
    if prompt_format == "plain":
        text = PLAIN_TEMPLATE.format(instruction=INSTRUCTIONS[task], diagnosis=" ".join(diagnosis.split()))
        return f"{tokenizer.bos_token}{text}" if tokenizer is not None and adds_bos(tokenizer) else text
    check_prompt_format(tokenizer, prompt_format)
    return tokenizer.apply_chat_template([_user_turn(task, diagnosis)], tokenize=False, add_generation_prompt=True)


def build_example(tokenizer, task: str, diagnosis: str, answer: str, prompt_format: str) -> tuple[str, str]:
    """(prompt, completion) to train on, the loss on the completion only. chat: the completion is what
    the template writes for the assistant's turn after the prompt, so it ends with the template's own
    end-of-turn marker (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`), as TRL's prompt-completion path
    does; plain: the answer, then EOS (none when tokenizer is None)."""
    prompt = build_prompt(tokenizer, task, diagnosis, prompt_format)
    if prompt_format == "plain":
        eos = (tokenizer.eos_token or "") if tokenizer is not None else ""
        return prompt, f" {answer.strip()}{eos}"
    full = tokenizer.apply_chat_template(
        [_user_turn(task, diagnosis), {"role": "assistant", "content": answer.strip()}], tokenize=False)
    if not full.startswith(prompt):
        raise ModelError("this chat template writes the conversation differently once the assistant has "
                         "answered, so the answer cannot be separated from the prompt: use the plain prompt format")
    return prompt, full[len(prompt):]


def end_of_turn(tokenizer) -> str | None:
    """The marker the chat template writes after an assistant's answer (`<|im_end|>`, `<|eot_id|>`,
    `<end_of_turn>`, `</s>`), or None without a chat template: generation must stop on it."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    probe = "\x1fanswer\x1f"
    full = tokenizer.apply_chat_template([_user_turn("icd10", "x"), {"role": "assistant", "content": probe}],
                                         tokenize=False)
    after = full.rsplit(probe, 1)[-1].strip()
    if not after:
        return None
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    first = tokenizer.convert_ids_to_tokens(ids[0]) if ids else None
    if first in tokenizer.all_special_tokens or first in tokenizer.get_added_vocab():
        return first
    return after.split()[0]


def resolve_prompt_format(tokenizer, model_path: str | Path, requested: str = "auto",
                          adapter_path: str | Path | None = None) -> str:
    """The format to generate with: the one requested, else the adapter's, else the model's default.
    An adapter is refused (ModelError) in another format than it was trained in, or on a base whose
    tokenizer lacks the chat template it was trained with: it would be tested on prompts it never saw."""
    info_file = Path(adapter_path) / ADAPTER_INFO if adapter_path is not None else None
    info = json.loads(info_file.read_text(encoding="utf-8")) if info_file and info_file.is_file() else {}
    trained = info.get("prompt_format")
    prompt_format = (trained or default_prompt_format(tokenizer, model_path)) if requested == "auto" else requested
    if trained and trained != prompt_format:
        raise ModelError(f"adapter {adapter_path} was trained with the {trained} prompt format, not "
                         f"{prompt_format}: generate with the {trained} prompt format")
    if trained == "chat" and info.get("chat_template") != chat_template_id(tokenizer):
        has = "a different chat template" if chat_template_id(tokenizer) else "no chat template"
        raise ModelError(f"adapter {adapter_path} was trained with chat template {info.get('chat_template')}, "
                         f"but the tokenizer of {model_path} has {has}: load the base with the tokenizer the "
                         "adapter was trained with")
    check_prompt_format(tokenizer, prompt_format)
    return prompt_format

