"""Generation throughput: the product's generation run against the loop a researcher writes by hand.

The model has the shape of Llama-2-7B (or `--shape tiny` for a CPU smoke run) with random weights,
which run at the speed of trained ones and need no download. Both sides answer the same synthetic
cases' regimen prompts with greedy decoding and the same number of new tokens (random weights
never stop early), on the same GPU in one process. The product side is rocore's generation run
(sorted, left-padded batches written to a real database); the naive side calls `model.generate`
once per case, timed on the first `--naive-prompts` prompts. Reported: new tokens per second and
their ratio, for nf4 and bf16, base alone and with an unmerged LoRA adapter.

    python bench/generate.py --prompts 512 --batch-size 64 --out docs/bench-generate.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = {
    "llama-2-7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
                   "max_position_embeddings": 4096},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 4, "vocab_size": 4000, "max_position_embeddings": 512},
}


def build_model(workdir: Path, shape: str, cases: list[dict]) -> tuple[Path, Path]:
    """A random-weight base of the given shape with a tokenizer trained on the cases, and a random
    (non-zero) LoRA adapter on all linear layers, both saved like real checkpoints."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from rocore.demo.base_model import train_tokenizer
    from rocore.model.loading import write_adapter_info
    from rocore.model.prompts import INSTRUCTIONS

    tokenizer = train_tokenizer([c["diagnosis"] for c in cases] + list(INSTRUCTIONS.values()), vocab_size=4000)
    config = LlamaConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **SHAPES[shape])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    base_dir, adapter_dir = workdir / "base", workdir / "adapter"
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(adapter_dir)
    write_adapter_info(adapter_dir, base_dir, {"purpose": "benchmark"})
    del model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return base_dir, adapter_dir


def naive_loop(loaded, prompts: list[str], new_tokens: int, adapter: str | None) -> float:
    """New tokens per second of one `generate` call per prompt, as written by hand."""
    import torch

    from rocore.model.loading import using_adapter

    started, produced = time.perf_counter(), 0
    for prompt in prompts:
        encoded = loaded.tokenizer(prompt, return_tensors="pt").to(loaded.model.device)
        with using_adapter(loaded, adapter) as model, torch.inference_mode():
            output = model.generate(**encoded, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        produced += output.shape[1] - encoded["input_ids"].shape[1]
    _sync()
    return produced / (time.perf_counter() - started)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def product_run(db_path: Path, split_id: int, loaded, adapter_id, adapter: str | None, new_tokens: int,
                batch_size: int) -> tuple[float, int]:
    """New tokens per second of rocore's generation run over the test part, and outputs written."""
    from rocore.store.db import opened
    from rocore.generation.runs import decoding_settings, get_or_create_run, run_generation
    from rocore.store.registry import register_model

    with opened(db_path) as conn:
        base_id = register_model(conn, loaded.path, "base")
        run_id, _ = get_or_create_run(conn, base_id, adapter_id, split_id, "test", ["regimen"], loaded.quantization,
                                      {**decoding_settings({"regimen": new_tokens}), "min_new_tokens": new_tokens},
                                      "plain")
    loaded.model.generation_config.min_new_tokens = new_tokens
    final = run_generation(db_path, run_id, loaded, adapter=adapter, batch_size=batch_size)
    loaded.model.generation_config.min_new_tokens = None
    _sync()
    return final.new_tokens / final.elapsed_s, final.done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="llama-2-7b")
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--naive-prompts", type=int, default=24)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--quantizations", default="nf4,bf16")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    from rocore.data.case_import import import_cases
    from rocore.store.db import opened
    from rocore.store.registry import register_model
    from rocore.model.loading import attach_adapter, load_model
    from rocore.model.prompts import build_prompt
    from rocore.data.splits import create_split, split_case_ids
    from rocore.data.synthetic import generate_cases, write_jsonl

    workdir = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    # A test fraction that puts `--prompts` cases in the test part.
    n_cases = args.prompts * 4
    cases = generate_cases(n_cases, seed=0)
    write_jsonl(cases, workdir / "cases.jsonl")
    base_dir, adapter_dir = build_model(workdir, args.shape, cases)
    results = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU)",
               "shape": args.shape, "new_tokens": args.new_tokens, "batch_size": args.batch_size, "runs": []}
    for quantization in args.quantizations.split(","):
        db_path = workdir / f"{quantization}.db"
        with opened(db_path) as conn:
            import_cases(conn, (workdir / "cases.jsonl").read_bytes(), "cases.jsonl")
            split_id = create_split(conn, "bench", fractions={"train": 0.7, "validation": 0.05, "test": 0.25})
            test_ids = split_case_ids(conn, split_id, "test")
        loaded = load_model(base_dir, quantization)
        attach_adapter(loaded, adapter_dir, "finetuned")
        with opened(db_path) as conn:
            adapter_id = register_model(conn, adapter_dir, "adapter", register_model(conn, base_dir, "base"))
        by_id = {c["case_id"]: c for c in cases}
        prompts = [build_prompt(loaded.tokenizer, "regimen", by_id[i]["diagnosis"], "plain") for i in test_ids]
        for adapter, model_id in ((None, None), ("finetuned", adapter_id)):
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            naive = naive_loop(loaded, prompts[: args.naive_prompts], args.new_tokens, adapter)
            product, done = product_run(db_path, split_id, loaded, model_id, adapter, args.new_tokens, args.batch_size)
            row = {"quantization": quantization, "adapter": adapter is not None, "prompts": done,
                   "naive_tokens_per_s": round(naive, 1), "product_tokens_per_s": round(product, 1),
                   "ratio": round(product / naive, 1),
                   "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2)
                   if torch.cuda.is_available() else None}
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
        del loaded
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
