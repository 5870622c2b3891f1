"""Loading real transformers models (tiny Llamas built from a config) in 4-bit and fp32 on the CPU."""

import json
import shutil
import threading

import pytest
import torch

from conftest import save_tiny_llama
from rocore.generation.runs import generate_batch
from rocore.model.loading import (ModelError, adapter_for_generation, attach_adapter, load_model, resolve_quantization,
                                  using_adapter)

PROMPTS = ["### Task: modality\n### Patient: prostate cancer\n### Answer:", "### Patient: left breast"]


def greedy(loaded, adapter=None, n=8):
    return [text for text, _, _, _ in generate_batch(loaded, PROMPTS, n, adapter)]


def test_nf4_loads_4bit_layers_and_generates(tiny_model_dir):
    import bitsandbytes as bnb

    loaded = load_model(tiny_model_dir, "nf4")
    assert loaded.quantization == "nf4"
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in loaded.model.modules())
    quant = loaded.model.config.quantization_config
    assert quant.bnb_4bit_quant_type == "nf4" and quant.bnb_4bit_use_double_quant
    outputs = generate_batch(loaded, PROMPTS, 6, None)
    assert all(0 < new <= 6 for _, _, new, _ in outputs)


def test_fp32_and_auto_on_the_cpu(tiny_model_dir):
    loaded = load_model(tiny_model_dir, "auto")
    assert (loaded.quantization, loaded.device) == ("fp32", "cpu")
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert loaded.tokenizer.padding_side == "left"


def test_adapter_on_and_off_from_one_base(tiny_model_dir, tiny_adapter_dir):
    loaded = load_model(tiny_model_dir, "fp32")
    before = greedy(loaded)
    base_weights = loaded.model.model.layers[0].self_attn.q_proj.weight
    attach_adapter(loaded, tiny_adapter_dir, "finetuned")
    assert greedy(loaded, None) == before, "with the adapter off, the base must answer as before"
    assert greedy(loaded, "finetuned") != before, "the adapter must change the outputs"
    assert loaded.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight is base_weights
    assert greedy(loaded, None) == before


def test_concurrent_requests_cannot_switch_the_adapter_under_each_other(tiny_model_dir, tiny_adapter_dir):
    loaded = load_model(tiny_model_dir, "fp32")
    attach_adapter(loaded, tiny_adapter_dir, "finetuned")
    expected = {None: greedy(loaded, None), "finetuned": greedy(loaded, "finetuned")}
    seen, errors = [], []

    def worker(adapter):
        try:
            for _ in range(5):
                seen.append(greedy(loaded, adapter) == expected[adapter])
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(a,)) for a in (None, "finetuned") * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(seen) == 30 and all(seen)


BATCH = [f"### Task: regimen\n### Patient: case {i} with {site} cancer\n### Answer:"
         for i, site in enumerate(["prostate", "left breast", "lung", "rectal", "cervical", "glioma"] * 4)]


def weights(loaded) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in loaded.model.state_dict().items()}


def test_a_merged_adapter_answers_as_the_unmerged_one_and_leaves_the_base_as_it_was(tiny_model_dir, tiny_adapter_dir):
    loaded = load_model(tiny_model_dir, "fp32")
    attach_adapter(loaded, tiny_adapter_dir, "finetuned")
    base = generate_batch(loaded, BATCH, 10, None)
    unmerged = generate_batch(loaded, BATCH, 10, "finetuned")
    before = weights(loaded)
    assert unmerged != base, "the random adapter must change the outputs for the comparison to mean anything"
    with adapter_for_generation(loaded, "finetuned") as merged:
        assert merged and loaded.merged.name == "finetuned"
        q_proj = loaded.model.base_model.model.model.layers[0].self_attn.q_proj
        assert q_proj.merged and not torch.equal(q_proj.base_layer.weight, before[
            "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"]), "the weights carry the delta"
        assert generate_batch(loaded, BATCH, 10, "finetuned") == unmerged
        with adapter_for_generation(loaded, "finetuned") as again:  # re-entered by a caller's caller
            assert again and generate_batch(loaded, BATCH, 10, "finetuned") == unmerged
        assert loaded.merged is not None
    assert loaded.merged is None and not q_proj.merged
    after = weights(loaded)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before), "restored bit for bit, not within a tolerance"
    assert generate_batch(loaded, BATCH, 10, None) == base
    assert generate_batch(loaded, BATCH, 10, "finetuned") == unmerged


def test_the_base_asked_for_inside_a_merged_span_gets_the_base_weights(tiny_model_dir, tiny_adapter_dir):
    loaded = load_model(tiny_model_dir, "fp32")
    attach_adapter(loaded, tiny_adapter_dir, "finetuned")
    base, before = generate_batch(loaded, BATCH, 10, None), weights(loaded)
    with adapter_for_generation(loaded, "finetuned"):
        assert generate_batch(loaded, BATCH, 10, None) == base
        assert loaded.merged is None, "the merge ends rather than the base answering from merged weights"
    assert all(torch.equal(t, before[k]) for k, t in weights(loaded).items())


def test_the_merged_span_holds_the_lock(tiny_model_dir, tiny_adapter_dir):
    loaded = load_model(tiny_model_dir, "fp32")
    attach_adapter(loaded, tiny_adapter_dir, "finetuned")
    base = generate_batch(loaded, BATCH[:2], 6, None)
    seen = []
    with adapter_for_generation(loaded, "finetuned"):
        other = threading.Thread(target=lambda: seen.append(generate_batch(loaded, BATCH[:2], 6, None)))
        other.start()
        other.join(timeout=1)
        assert other.is_alive() and not seen, "a base request from another thread waits for the span to end"
    other.join()
    assert seen == [base]


def test_nf4_and_opted_out_adapters_stay_unmerged(tiny_model_dir, tiny_adapter_dir):
    loaded = load_model(tiny_model_dir, "nf4")
    attach_adapter(loaded, tiny_adapter_dir, "finetuned")
    unmerged = generate_batch(loaded, BATCH[:4], 6, "finetuned")
    with adapter_for_generation(loaded, "finetuned") as merged:
        assert not merged and loaded.merged is None
        assert generate_batch(loaded, BATCH[:4], 6, "finetuned") == unmerged
    loaded = load_model(tiny_model_dir, "fp32")
    attach_adapter(loaded, tiny_adapter_dir, "finetuned")
    loaded.merge_for_generation = False
    with adapter_for_generation(loaded, "finetuned") as merged:
        assert not merged and loaded.merged is None
    with pytest.raises(ModelError, match="no adapter named 'x'"), adapter_for_generation(loaded, "x"):
        pass


def test_an_adapter_on_a_tied_weight_stays_unmerged(tmp_path, tiny_tokenizer):
    """Merging into lm_head's weight would change the input embeddings tied to it as well."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base_dir = save_tiny_llama(tmp_path / "tied", tiny_tokenizer, tie_word_embeddings=True)
    lora = LoraConfig(r=4, target_modules=["q_proj", "lm_head"], init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), lora).save_pretrained(tmp_path / "adapter")
    loaded = load_model(base_dir, "fp32")
    attach_adapter(loaded, tmp_path / "adapter", "finetuned")
    with adapter_for_generation(loaded, "finetuned") as merged:
        assert not merged and loaded.merged is None


def test_missing_and_wrong_model_directories(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(ModelError, match="has no config.json: it is not a Hugging Face model directory"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"], "model_type": "bert"}))
    with pytest.raises(ModelError, match="BertForMaskedLM model, not a causal language model"):
        load_model(tmp_path)


def test_auto_precision_trains_qlora_on_a_gpu_and_full_precision_on_the_cpu(tiny_model_dir):
    assert resolve_quantization("auto", "cuda", tiny_model_dir, training=True) == "nf4"
    assert resolve_quantization("auto", "cpu", tiny_model_dir, training=True) == "fp32"
    assert resolve_quantization("auto", "cpu", tiny_model_dir) == "fp32"
    assert resolve_quantization("bf16", "cuda", tiny_model_dir, training=True) == "bf16", "a choice is kept"


def test_bad_choices(tiny_model_dir):
    with pytest.raises(ModelError, match="unknown quantization 'int4'"):
        resolve_quantization("int4", "cpu", tiny_model_dir)
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no usable CUDA GPU"):
            load_model(tiny_model_dir, "nf4", device="cuda")


def test_adapter_of_another_base_is_refused(tmp_path, tiny_tokenizer, tiny_model_dir, tiny_adapter_dir):
    other = save_tiny_llama(tmp_path / "wider", tiny_tokenizer, hidden_size=96)
    loaded = load_model(other, "fp32")
    with pytest.raises(ModelError, match="was trained on another base model"):
        attach_adapter(loaded, tiny_adapter_dir)
    (tiny_adapter_dir / "rocore_adapter.json").rename(tmp_path / "info.json")
    try:
        with pytest.raises(ModelError, match="does not fit the base model"):
            attach_adapter(loaded, tiny_adapter_dir)
    finally:
        (tmp_path / "info.json").rename(tiny_adapter_dir / "rocore_adapter.json")
    with pytest.raises(ModelError, match="not a LoRA adapter directory"):
        attach_adapter(loaded, tmp_path)
    with pytest.raises(ModelError, match="no adapter named 'x'"):
        with using_adapter(loaded, "x"):
            pass


def test_truncated_weights_are_a_model_error_naming_the_directory(tmp_path, tiny_model_dir):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # an interrupted copy or download
    with pytest.raises(ModelError, match=f"{broken} could not be loaded in fp32"):
        load_model(broken, "fp32", "cpu")
