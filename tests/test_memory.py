"""Precision and memory by hardware: which precision a GPU trains in, when checkpointing is worth it,
and a generation run that survives running out of GPU memory."""

from types import SimpleNamespace

import pytest
import torch

from rocore.store.db import opened
from rocore.store.registry import register_model
from rocore.generation.runs import decoding_settings, generate_batch, get_or_create_run, run_generation, stops_for
from rocore.model.loading import compute_precision, load_model
from rocore.model.prompts import TASKS, build_prompt
from rocore.training.trainer import TrainingConfig, batch_activation_bytes, needs_gradient_checkpointing

GB = 1024**3
# The shapes that matter of Llama-2-7B (32k vocabulary) and Llama-3.1-8B (128k vocabulary).
LLAMA2_7B = SimpleNamespace(hidden_size=4096, num_hidden_layers=32, vocab_size=32000)
LLAMA31_8B = SimpleNamespace(hidden_size=4096, num_hidden_layers=32, vocab_size=128256)


@pytest.mark.parametrize(("device", "bf16_supported", "expected"), [
    ("cuda", False, "fp16"),  # T4, V100: no bf16, so fp16 compute with fp16=True
    ("cuda", True, "bf16"),   # A100, L4, H100
    ("cpu", False, "fp32"),
    ("cpu", True, "fp32"),    # a CPU that emulates bf16 still trains in fp32
])
def test_precision_follows_the_hardware(device, bf16_supported, expected):
    assert compute_precision(device, bf16_supported) == expected


def test_the_activation_estimate_counts_the_logits():
    without_logits = 34 * 4096 * 32 * 8 * 512
    assert batch_activation_bytes(8, 512, LLAMA31_8B) == without_logits + 4 * 128256 * 8 * 512
    # At a 128k vocabulary the logits of 8 x 2,400 tokens alone are about 10 GB (9.2 GiB).
    logits = batch_activation_bytes(8, 2400, LLAMA31_8B) - 34 * 4096 * 32 * 8 * 2400
    assert 9 * GB < logits < 10 * GB


def test_checkpointing_follows_the_longest_example_not_max_length():
    """Our examples are a few hundred tokens: a 40 GB card trains them without checkpointing even with
    max_length 4096, and checkpoints only when the examples really are that long."""
    config = TrainingConfig(batch_size=8, max_length=4096)
    assert not needs_gradient_checkpointing(config, LLAMA31_8B, "cuda", longest_example=300, free_bytes=34 * GB)
    assert needs_gradient_checkpointing(config, LLAMA31_8B, "cuda", longest_example=4096, free_bytes=34 * GB)
    # The logits decide it here: without them 8 x 500 tokens of Llama-3.1-8B would seem to fit in 22 GB.
    assert 34 * 4096 * 32 * 8 * 500 < 0.8 * 22 * GB
    assert needs_gradient_checkpointing(config, LLAMA31_8B, "cuda", longest_example=500, free_bytes=22 * GB)
    assert not needs_gradient_checkpointing(config, LLAMA2_7B, "cuda", longest_example=500, free_bytes=22 * GB)
    assert not needs_gradient_checkpointing(config, LLAMA31_8B, "cpu", longest_example=4096, free_bytes=GB)
    assert needs_gradient_checkpointing(TrainingConfig(gradient_checkpointing=True), LLAMA2_7B, "cpu", 10)


class OutOfMemoryAbove:
    """A loaded model whose generate runs out of GPU memory for batches larger than `limit`, as a
    real GPU does for a batch too large; everything else is the real model's."""

    def __init__(self, model, limit: int):
        self.model, self.limit, self.batch_sizes = model, limit, []

    def generate(self, input_ids, **kwargs):
        self.batch_sizes.append(len(input_ids))
        if len(input_ids) > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (batch of {len(input_ids)})")
        return self.model.generate(input_ids=input_ids, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


@pytest.fixture
def tight_model(tiny_model_dir):
    """The tiny model, out of memory above 3 prompts a batch; and the unwrapped model."""
    loaded = load_model(tiny_model_dir, "fp32", "cpu")
    reference = loaded.model
    loaded.model = OutOfMemoryAbove(reference, limit=3)
    return loaded, reference


def test_a_run_halves_its_batch_on_out_of_memory_and_stores_the_same_outputs(split_db, tight_model):
    loaded, reference = tight_model
    db_path, split_id = split_db
    decoding = decoding_settings({"regimen": 6, "modality": 3, "icd10": 3})
    with opened(db_path) as conn:
        base_id = register_model(conn, loaded.path, "base")
        run_id, _ = get_or_create_run(conn, base_id, None, split_id, "test", list(TASKS), "fp32", decoding, "plain")
    final = run_generation(db_path, run_id, loaded, batch_size=16)
    with opened(db_path) as conn:
        run = conn.execute("SELECT status FROM generation_runs WHERE run_id = ?", (run_id,)).fetchone()
        rows = conn.execute("SELECT g.raw_text, c.diagnosis FROM generations g JOIN cases c USING (case_id) "
                            "WHERE run_id = ? AND task = 'icd10' ORDER BY g.case_id", (run_id,)).fetchall()
    assert run["status"] == "finished" and final.done == final.total > 16
    sizes = loaded.model.batch_sizes
    # 16 failed, then 8, then 4; from then on batches of 2 (3 fits, but halving never gives 3).
    assert sizes[:3] == [16, 8, 4] and set(sizes[3:]) <= {1, 2} and sizes.count(16) == 1
    loaded.model = reference
    stops = stops_for(loaded, "plain")
    prompts = [build_prompt(loaded.tokenizer, "icd10", r["diagnosis"], "plain") for r in rows[:4]]
    assert [r["raw_text"] for r in rows[:4]] == [t for t, *_ in generate_batch(loaded, prompts, 3, None, stops)]


def test_a_batch_of_one_that_does_not_fit_fails_the_run(split_db, tiny_model_dir):
    loaded = load_model(tiny_model_dir, "fp32", "cpu")
    loaded.model = OutOfMemoryAbove(loaded.model, limit=0)
    db_path, split_id = split_db
    with opened(db_path) as conn:
        base_id = register_model(conn, loaded.path, "base")
        run_id, _ = get_or_create_run(conn, base_id, None, split_id, "test", ["modality"], "fp32",
                                      decoding_settings(), "plain")
    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_generation(db_path, run_id, loaded, batch_size=4)
    with opened(db_path) as conn:
        run = conn.execute("SELECT status, error FROM generation_runs WHERE run_id = ?", (run_id,)).fetchone()
    assert run["status"] == "failed" and "OutOfMemoryError" in run["error"]
    assert loaded.model.batch_sizes == [4, 2, 1]
