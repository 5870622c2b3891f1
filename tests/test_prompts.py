import pytest

from rocore.model.prompts import (
    PLAIN_TEMPLATE,
    TEMPLATE_IDS,
    TaskError,
    build_example,
    build_prompt,
    check_tasks,
)


def test_plain_template_for_tokenizers_without_chat_template(tiny_tokenizer):
    prompt = build_prompt(tiny_tokenizer, "modality", "  Left breast IDC,\n  pT1N0. ", "plain")
    assert prompt.startswith("<s>### Patient: Left breast IDC, pT1N0.\n### Task: Which radiotherapy modality")
    assert prompt.endswith("brachytherapy.\n### Answer:")
    assert build_example(tiny_tokenizer, "modality", "x", "photon", "plain")[1] == " photon</s>"
    assert PLAIN_TEMPLATE.count("{diagnosis}") == 1


def test_chat_template_is_used_when_the_tokenizer_has_one(tiny_tokenizer):
    chat = tiny_tokenizer.__class__(tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="</s>")
    chat.chat_template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
                          "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    prompt = build_prompt(chat, "icd10", "Prostate adenocarcinoma", "chat")
    assert prompt.startswith("<|user|>Give the ICD-10-CM code") and prompt.endswith("<|assistant|>")
    assert "Patient: Prostate adenocarcinoma" in prompt
    assert build_example(chat, "icd10", "Prostate adenocarcinoma", "C61", "chat") == (prompt, "C61")


def test_template_ids_are_versioned_per_task():
    assert TEMPLATE_IDS == {"regimen": "regimen-v1", "modality": "modality-v1", "icd10": "icd10-v1"}


def test_check_tasks_orders_and_refuses_unknown():
    assert check_tasks("icd10, regimen") == ["regimen", "icd10"]
    with pytest.raises(TaskError, match="unknown task 'dose'; tasks are regimen, modality, icd10"):
        check_tasks(["dose"])
