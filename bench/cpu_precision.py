"""LoRA training and generation speed on the CPU: fp32 base against bitsandbytes NF4 base.

Why the embedded demo trains its adapter on an fp32 base when no GPU is present: the same
train_adapter path runs QLoRA on NF4 weights everywhere, but on the CPU bitsandbytes dequantises
every weight on every call. Model: the demo's architecture (rocore.demo.base_model.ARCHITECTURE) with
random weights; batches of random tokens; the same LoRA settings as the demo.

    python bench/cpu_precision.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BATCH, LENGTH, NEW_TOKENS = 16, 96, 16


def main() -> None:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from rocore.demo.base_model import ARCHITECTURE
    from rocore.model.loading import load_kwargs

    torch.manual_seed(0)
    directory = Path(tempfile.mkdtemp(prefix="bench-cpu-"))
    LlamaForCausalLM(LlamaConfig(vocab_size=2000, tie_word_embeddings=True, **ARCHITECTURE)).save_pretrained(directory)
    tokens = torch.randint(0, 2000, (BATCH, LENGTH))
    results = {"threads": torch.get_num_threads(), "batch": BATCH, "length": LENGTH}
    for quantization in ("fp32", "nf4"):
        model = AutoModelForCausalLM.from_pretrained(directory, **load_kwargs(quantization, "cpu"))
        if quantization == "nf4":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

        def step():
            model(input_ids=tokens, labels=tokens).loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        step()
        started, steps = time.perf_counter(), 3
        for _ in range(steps):
            step()
        train = BATCH * LENGTH * steps / (time.perf_counter() - started)
        model.eval()
        with torch.inference_mode():
            prompt = tokens[:, :80]
            started = time.perf_counter()
            model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW_TOKENS,
                           min_new_tokens=NEW_TOKENS, do_sample=False)
            generate = BATCH * NEW_TOKENS / (time.perf_counter() - started)
        results[quantization] = {"train_tokens_per_s": round(train), "generate_new_tokens_per_s": round(generate)}
        print(quantization, results[quantization], flush=True)
    results["fp32_over_nf4_train"] = round(results["fp32"]["train_tokens_per_s"] / results["nf4"]["train_tokens_per_s"], 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
