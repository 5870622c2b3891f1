import pytest

from rocore.model.prompts import (
    PLAIN_TEMPLATE,
    TEMPLATE_IDS,
    TaskError,
    answer_text,
    build_prompt,
    check_tasks,
    extract_answer,
)


def test_plain_template_for_tokenizers_without_chat_template(tiny_tokenizer):
    prompt = build_prompt(tiny_tokenizer, "modality", "  Left breast IDC,\n  pT1N0. ")
    assert prompt.startswith("### Patient: Left breast IDC, pT1N0.\n### Task: Which radiotherapy modality")
    assert prompt.endswith("brachytherapy.\n### Answer:")
    assert answer_text(tiny_tokenizer, "photon") == " photon</s>"
    assert PLAIN_TEMPLATE.count("{diagnosis}") == 1


def test_chat_template_is_used_when_the_tokenizer_has_one(tiny_tokenizer):
    chat = tiny_tokenizer.__class__(tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="</s>")
    chat.chat_template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
                          "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    prompt = build_prompt(chat, "icd10", "Prostate adenocarcinoma")
    assert prompt.startswith("<|user|>Give the ICD-10-CM code") and prompt.endswith("<|assistant|>")
    assert "Patient: Prostate adenocarcinoma" in prompt
    assert answer_text(chat, "C61") == "C61</s>"


def test_template_ids_are_versioned_per_task():
    assert TEMPLATE_IDS == {"regimen": "regimen-v1", "modality": "modality-v1", "icd10": "icd10-v1"}


@pytest.mark.parametrize("task, raw, expected", [
    ("modality", " Protons.", "proton"),
    ("modality", "The best choice is IMRT (photons).", "photon"),
    ("modality", "HDR brachytherapy\n\nExplanation: proton is not needed", "brachytherapy"),
    ("modality", "I cannot tell", None),
    ("icd10", " c50412", "C50.412"),
    ("icd10", "T2N0M0 disease; code C61.", "C61"),
    ("icd10", "ICD-10-CM: C34.11 (malignant neoplasm of upper lobe)", "C34.11"),
    ("icd10", "unknown", None),
    ("regimen", " 60 Gy in 20 fractions\n   with IMRT\n\n### Task: next", "60 Gy in 20 fractions with IMRT"),
    ("regimen", "   \n", None),
])
def test_extract_answer(task, raw, expected):
    assert extract_answer(task, raw) == expected


def test_check_tasks_orders_and_refuses_unknown():
    assert check_tasks("icd10, regimen") == ["regimen", "icd10"]
    with pytest.raises(TaskError, match="unknown task 'dose'; tasks are regimen, modality, icd10"):
        check_tasks(["dose"])
