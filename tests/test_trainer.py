"""QLoRA fine-tuning for real: bitsandbytes NF4 base + peft LoRA + transformers Trainer on the CPU."""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from rocore.model.loading import ModelError, attach_adapter, load_model
from rocore.model.prompts import build_example
from rocore.training.trainer import (
    IGNORE_INDEX,
    Processes,
    TrainingCancelled,
    TrainingConfig,
    check_config,
    from_main,
    join_processes,
    load_for_training,
    sft_examples,
    train_adapter,
    validation_subsample,
)


def test_sft_examples_train_on_the_answer_only(tiny_tokenizer, synthetic_cases):
    case = synthetic_cases[0]
    (example,) = sft_examples(tiny_tokenizer, [case], ["icd10"], max_length=512, prompt_format="plain")
    prompt_text, completion = build_example(tiny_tokenizer, "icd10", case["diagnosis"], case["icd10"], "plain")
    prompt = tiny_tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    answer = tiny_tokenizer(completion, add_special_tokens=False)["input_ids"]
    assert example["input_ids"] == prompt + answer
    assert example["labels"] == [IGNORE_INDEX] * len(prompt) + answer
    assert answer[-1] == tiny_tokenizer.eos_token_id


def test_over_long_prompts_are_cut_from_the_left_keeping_the_answer(tiny_tokenizer, synthetic_cases):
    (example,) = sft_examples(tiny_tokenizer, synthetic_cases[:1], ["regimen"], max_length=24, prompt_format="plain")
    assert len(example["input_ids"]) == 24
    completion = build_example(tiny_tokenizer, "regimen", "x", synthetic_cases[0]["regimen"], "plain")[1]
    answer = tiny_tokenizer(completion, add_special_tokens=False)["input_ids"]
    assert example["input_ids"][-len(answer):] == answer


def test_a_base_without_weights_is_a_model_error_naming_it(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    with pytest.raises(ModelError, match=re.escape(f"{tmp_path} could not be loaded in fp32: ")):
        load_for_training(tmp_path, TrainingConfig(quantization="fp32"), device="cpu")


@pytest.mark.slow
def test_qlora_on_a_4bit_base_lowers_the_loss_and_saves_a_loadable_adapter(tmp_path, tiny_model_dir, synthetic_cases):
    config = TrainingConfig(quantization="nf4", epochs=5, batch_size=8, learning_rate=1e-2, logging_steps=3,
                            lora_r=8, lora_alpha=16)
    adapter_dir = train_adapter(tiny_model_dir, synthetic_cases[:24], synthetic_cases[24:32], tmp_path / "run", config)
    info = json.loads((adapter_dir / "rocore_adapter.json").read_text())
    assert info["quantization"] == "nf4" and info["config"]["lora_r"] == 8 and info["n_train_examples"] == 72
    history = json.loads(sorted((tmp_path / "run" / "checkpoints").glob("checkpoint-*/trainer_state.json"))[-1]
                         .read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    eval_losses = [h["eval_loss"] for h in history if "eval_loss" in h]
    assert losses[-1] < losses[0] * 0.8 and eval_losses[-1] < eval_losses[0]
    loaded = load_model(tiny_model_dir, "nf4")
    attach_adapter(loaded, adapter_dir)
    assert "finetuned" in loaded.adapters


def test_a_validation_sample_is_seeded_ordered_and_the_same_each_time():
    examples = [{"i": i} for i in range(40)]
    sample = validation_subsample(examples, 10, seed=3)
    assert sample == validation_subsample(examples, 10, seed=3) != validation_subsample(examples, 10, seed=4)
    assert len(sample) == 10 and sample == sorted(sample, key=lambda e: e["i"])
    assert validation_subsample(examples, None, 3) is examples and validation_subsample(examples, 40, 3) is examples
    assert check_config(TrainingConfig(eval_max_examples=0)) == [
        "eval_max_examples: 0 must be a whole number of at least 1, or empty"]


def test_each_evaluation_runs_on_the_validation_sample_only(tmp_path, tiny_model_dir, synthetic_cases):
    from transformers import TrainerCallback

    class CountEvalBatches(TrainerCallback):
        batches = 0

        def on_prediction_step(self, args, state, control, **kwargs):
            CountEvalBatches.batches += 1

    config = TrainingConfig(quantization="fp32", tasks=["modality", "icd10"], max_steps=2, batch_size=2,
                            eval_steps=1, early_stopping_patience=None, eval_max_examples=5)
    adapter_dir = train_adapter(tiny_model_dir, synthetic_cases[:4], synthetic_cases[4:16], tmp_path / "run",
                                config, device="cpu", callbacks=[CountEvalBatches()])
    info = json.loads((adapter_dir / "rocore_adapter.json").read_text())
    assert (info["n_eval_examples"], info["n_validation_examples"]) == (5, 24)
    assert info["config"]["eval_max_examples"] == 5
    assert CountEvalBatches.batches == 2 * 3  # two evaluations of ceil(5 / 2) batches, not of 12


def test_a_cancel_during_an_evaluation_stops_it_at_once_and_keeps_a_resumable_checkpoint(tmp_path, tiny_model_dir,
                                                                                      synthetic_cases):
    from transformers import TrainerCallback

    class CancelDuringEvaluation(TrainerCallback):
        batches = 0

        def on_prediction_step(self, args, state, control, **kwargs):
            CancelDuringEvaluation.batches += 1
            raise TrainingCancelled("cancelled")

    config = TrainingConfig(quantization="fp32", tasks=["modality", "icd10"], max_steps=4, batch_size=2,
                            eval_steps=2, early_stopping_patience=None)
    cases, validation = synthetic_cases[:4], synthetic_cases[4:16]
    with pytest.raises(TrainingCancelled):
        train_adapter(tiny_model_dir, cases, validation, tmp_path / "run", config, device="cpu",
                      callbacks=[CancelDuringEvaluation()])
    assert CancelDuringEvaluation.batches == 1, "the evaluation (12 batches) stopped at its first"
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-2"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 2
    assert not (tmp_path / "run" / "adapter").exists(), "no adapter from a cancelled run"
    adapter_dir = train_adapter(tiny_model_dir, cases, validation, tmp_path / "run", config, device="cpu", resume=True)
    info = json.loads((adapter_dir / "rocore_adapter.json").read_text())
    assert info["final_eval_loss"] is not None


def test_the_default_precision_on_the_cpu_is_fp32_and_the_loss_is_logged_from_the_first_step(tmp_path, tiny_model_dir,
                                                                                             synthetic_cases):
    from transformers import TrainerCallback

    class Logs(TrainerCallback):
        steps = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if "loss" in logs:
                Logs.steps.append(state.global_step)

    config = TrainingConfig(tasks=["modality"], max_steps=3, batch_size=2)
    assert config.quantization == "auto" and config.logging_steps == 10
    adapter_dir = train_adapter(tiny_model_dir, synthetic_cases[:6], [], tmp_path / "run", config, device="cpu",
                                callbacks=[Logs()])
    info = json.loads((adapter_dir / "rocore_adapter.json").read_text())
    assert (info["quantization"], info["precision"]) == ("fp32", "fp32"), "not 4-bit, 20 times slower on a CPU"
    assert Logs.steps[0] == 1, "a loss at the first step, not only at step 10"


# Run by two processes of `torchrun`: what each process hears from the main one.
# Each process writes what it heard to a file of its own: lines both print to one pipe can interleave.
AGREEING = """
import json, os, pathlib, sys
from rocore.training.trainer import TrainingCancelled, from_main, join_processes

processes = join_processes("cpu")
heard = [processes.rank, processes.count, os.getpid(), from_main(os.getpid)]
for error in (TrainingCancelled("run 1 was cancelled"), ZeroDivisionError("division by zero")):
    def fail(error=error):
        raise error
    try:
        from_main(fail)
    except Exception as exc:
        heard.append(f"{type(exc).__name__}: {exc}")
pathlib.Path(sys.argv[1], f"rank-{processes.rank}.json").write_text(json.dumps(heard))
"""


def test_one_process_is_its_own_main_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert join_processes("cpu") == Processes(0, 1) and Processes().main
    assert from_main(os.getpid) == os.getpid()


@pytest.mark.parametrize("variable, name", [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")])
def test_sharded_launches_are_refused_before_anything_loads(monkeypatch, variable, name):
    monkeypatch.setenv(variable, "true")
    with pytest.raises(ValueError, match=f"^{name} is not supported: rocore trains data parallel"):
        join_processes("cpu")


@pytest.mark.slow
def test_processes_hear_the_main_process_result_and_stop_with_it(tmp_path):
    script = tmp_path / "agreeing.py"
    script.write_text(AGREEING)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    heard = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    (main, count, main_pid, main_heard, *main_errors), (other, _, other_pid, other_heard, *other_errors) = heard
    assert (main, other, count) == (0, 1, 2) and main_pid != other_pid
    assert main_heard == other_heard == main_pid, "the main process's result, everywhere"
    assert main_errors == ["TrainingCancelled: run 1 was cancelled", "ZeroDivisionError: division by zero"]
    assert other_errors == ["TrainingCancelled: run 1 was cancelled",
                            "MainProcessFailed: the main process stopped: ZeroDivisionError: division by zero"]
