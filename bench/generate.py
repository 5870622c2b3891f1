"""Generation throughput: the product's generation run against the loop a researcher writes by hand.

The model has the shape of Llama-2-7B (or `--shape tiny` for a CPU smoke run) with random weights,
which run at the speed of trained ones and need no download. Both sides answer the same synthetic
cases' regimen prompts with greedy decoding and the same number of new tokens (random weights
never stop early), on the same GPU in one process. The product side is rocore's generation run
(sorted, left-padded batches written to a real database); the naive side calls `model.generate`
once per case, timed on the first `--naive-prompts` prompts. Reported: new tokens per second and
their ratio, for nf4 and bf16, three ways each: the base alone, with the LoRA adapter unmerged, and
with it merged for the run (`adapter_for_generation`; nf4 stays unmerged), with each fine-tuned
way's speed as a share of the base's (`speed_vs_base`, 1.0: the base's speed), the time the merge
took, and how many of the merged run's outputs equal the unmerged run's. Each way answers into its
own database, so no run resumes another.

With `--serve-transformers` (the bench starts `transformers serve` on its base) or `--server-url` and
`--served-model` (a server already serving `--base-dir`, such as vLLM), the same prompts also go through
the OpenAI-compatible backend (`--concurrency` requests at a time), reported beside the local base run
as new tokens per second and their ratio (`speed_vs_local_base`). A server cannot be told a minimum of
new tokens, so its answers may end early: its rate counts the tokens it generated.

    python bench/generate.py --prompts 512 --batch-size 64 --out docs/bench-generate.json
    vllm serve /models/Llama-2-7b-hf --served-model-name base --port 8000 &
    python bench/generate.py --base-dir /models/Llama-2-7b-hf --quantizations bf16 \
        --server-url http://127.0.0.1:8000/v1 --served-model base --concurrency 64
"""

from __future__ import annotations

import argparse
import json
import os
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


# (name, adapter, merged for the run where the base's precision allows)
VARIANTS = (("base", None, False), ("unmerged", "finetuned", False), ("merged", "finetuned", True))


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


def prepared_db(db_path: Path, cases_file: Path, base_dir: Path,
                adapter_dir: Path | None) -> tuple[int, list[str], int | None]:
    """A database holding the cases and the same seeded split: (split id, test case ids, adapter's model id)."""
    from rocore.data.case_import import import_cases
    from rocore.data.splits import create_split, split_case_ids
    from rocore.store.db import opened
    from rocore.store.registry import register_model

    with opened(db_path) as conn:
        import_cases(conn, cases_file.read_bytes(), cases_file.name)
        split_id = create_split(conn, "bench", fractions={"train": 0.7, "validation": 0.05, "test": 0.25})
        base_id = register_model(conn, base_dir, "base")
        adapter_id = register_model(conn, adapter_dir, "adapter", base_id) if adapter_dir else None
        return split_id, split_case_ids(conn, split_id, "test"), adapter_id


def stored_outputs(db_path: Path) -> dict[tuple[str, str], str]:
    from rocore.store.db import opened

    with opened(db_path) as conn:
        return {(r[0], r[1]): r[2] for r in conn.execute("SELECT case_id, task, raw_text FROM generations")}


def product_run(db_path: Path, split_id: int, loaded, adapter_id, adapter: str | None, new_tokens: int,
                batch_size: int) -> tuple[float, int]:
    """New tokens per second of rocore's generation run over the test part, and outputs written."""
    from rocore.generation.runs import decoding_settings, get_or_create_run, run_generation
    from rocore.store.db import opened
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


def served_run(db_path: Path, split_id: int, base_dir: Path, server, batch_size: int, new_tokens: int) -> dict:
    """New tokens per second of the same run through an OpenAI-compatible server, and what it stored."""
    from rocore.generation.openai_compatible import load_served
    from rocore.generation.runs import SERVED_QUANTIZATION, decoding_settings, get_or_create_run, run_generation
    from rocore.store.db import opened
    from rocore.store.registry import register_model

    with opened(db_path) as conn:
        base_id = register_model(conn, base_dir, "base")
        run_id, _ = get_or_create_run(conn, base_id, None, split_id, "test", ["regimen"], SERVED_QUANTIZATION,
                                      decoding_settings({"regimen": new_tokens}), "plain", server=server)
    final = run_generation(db_path, run_id, load_served(server, base_dir), batch_size=batch_size)
    return {"tokens_per_s": final.new_tokens / final.elapsed_s, "done": final.done,
            "new_tokens_each": final.new_tokens / max(final.done, 1), "outputs": stored_outputs(db_path)}


def start_transformers_serve(base_dir: Path, workdir: Path):
    """`transformers serve` on the bench's base, on a free port of 127.0.0.1; (process, URL) once it answers."""
    import socket
    import subprocess
    import urllib.request

    import torch

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    device = ["--device", "cuda", "--dtype", "bfloat16"] if torch.cuda.is_available() else ["--device", "cpu",
                                                                                           "--dtype", "float32"]
    process = subprocess.Popen([str(Path(sys.executable).parent / "transformers"), "serve", str(base_dir), "--host",
                                "127.0.0.1", "--port", str(port), *device],
                               stdout=open(workdir / "serve.log", "wb"), stderr=subprocess.STDOUT,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return process, f"http://127.0.0.1:{port}/v1"
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"transformers serve ended; see {workdir / 'serve.log'}")
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("transformers serve did not answer in 5 minutes")


def measure(loaded, db_path: Path, cases_file: Path, adapter_dir: Path, by_id: dict, adapter: str | None,
            args) -> dict:
    """One way, timed in a fresh database: the naive loop, then the product's run, both inside
    `adapter_for_generation` as a run holds it (which merges unless `loaded.merge_for_generation`
    is off)."""
    import torch

    from rocore.model.loading import adapter_for_generation
    from rocore.model.prompts import build_prompt

    split_id, test_ids, adapter_id = prepared_db(db_path, cases_file, loaded.path, adapter_dir)
    prompts = [build_prompt(loaded.tokenizer, "regimen", by_id[i]["diagnosis"], "plain") for i in test_ids]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    with adapter_for_generation(loaded, adapter) as merged:
        _sync()
        merge_s = time.perf_counter() - started
        naive = naive_loop(loaded, prompts[: args.naive_prompts], args.new_tokens, adapter)
        product, done = product_run(db_path, split_id, loaded, adapter_id if adapter else None, adapter,
                                    args.new_tokens, args.batch_size)
    return {"merged": merged, "merge_s": merge_s, "naive": naive, "product": product, "done": done,
            "outputs": stored_outputs(db_path),
            "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if torch.cuda.is_available() else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="llama-2-7b")
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--naive-prompts", type=int, default=24)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--quantizations", default="nf4,bf16")
    parser.add_argument("--rounds", type=int, default=1,
                        help="time each way this many times, in turns and each in a fresh database, and keep "
                             "its fastest: on a shared machine, the least disturbed")
    parser.add_argument("--base-dir", type=Path,
                        help="time this model folder (base only, no adapter ways) instead of a random one of --shape")
    parser.add_argument("--serve-transformers", action="store_true",
                        help="also time the base through `transformers serve`, started here")
    parser.add_argument("--server-url", help="also time the base through this OpenAI-compatible server, which "
                                             "serves --base-dir as --served-model")
    parser.add_argument("--served-model")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.server_url and not (args.base_dir and args.served_model):
        parser.error("--server-url needs --base-dir (the folder the server serves) and --served-model")

    import torch

    from rocore.data.synthetic import generate_cases, write_jsonl
    from rocore.model.loading import attach_adapter, load_model

    workdir = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    # A test fraction that puts `--prompts` cases in the test part.
    n_cases = args.prompts * 4
    cases = generate_cases(n_cases, seed=0)
    cases_file = workdir / "cases.jsonl"
    write_jsonl(cases, cases_file)
    if args.base_dir:
        base_dir, adapter_dir, variants = args.base_dir, None, VARIANTS[:1]
    else:
        base_dir, adapter_dir = build_model(workdir, args.shape, cases)
        variants = VARIANTS
    results = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU)",
               "shape": str(args.base_dir or args.shape), "new_tokens": args.new_tokens,
               "batch_size": args.batch_size, "runs": []}
    by_id = {c["case_id"]: c for c in cases}
    for quantization in args.quantizations.split(","):
        loaded = load_model(base_dir, quantization)
        if adapter_dir:
            attach_adapter(loaded, adapter_dir, "finetuned")
        timed = {variant: [] for variant, _, _ in variants}
        for n in range(args.rounds):  # the ways take turns, so a burst of load elsewhere slows each alike
            for variant, adapter, merge in variants:
                loaded.merge_for_generation = merge
                timed[variant].append(measure(loaded, workdir / f"{quantization}-{variant}-{n}.db", cases_file,
                                              adapter_dir, by_id, adapter, args))
        base_speed, outputs = None, {}
        for variant, _, _ in variants:
            best = max(timed[variant], key=lambda m: m["product"])
            outputs[variant] = best["outputs"]
            base_speed = base_speed or best["product"]
            row = {"quantization": quantization, "variant": variant, "merged": best["merged"],
                   "prompts": best["done"], "naive_tokens_per_s": round(best["naive"], 1),
                   "product_tokens_per_s": round(best["product"], 1), "ratio": round(best["product"] / best["naive"], 1),
                   "speed_vs_base": round(best["product"] / base_speed, 2), "merge_s": round(best["merge_s"], 3),
                   "product_tokens_per_s_each_round": [round(m["product"], 1) for m in timed[variant]],
                   "peak_gpu_memory_gb": best["peak_gb"]}
            if variant == "merged":
                same = sum(outputs["merged"][k] == text for k, text in outputs["unmerged"].items())
                row["same_outputs_as_unmerged"] = f"{same}/{len(outputs['unmerged'])}"
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
        results.setdefault("local_base_tokens_per_s", {})[quantization] = base_speed
        results.setdefault("local_base_outputs", {})[quantization] = outputs["base"]
        del loaded
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    if args.serve_transformers or args.server_url:
        time_server(args, workdir, cases_file, base_dir, results)
    results.pop("local_base_outputs", None)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


def time_server(args, workdir: Path, cases_file: Path, base_dir: Path, results: dict) -> None:
    """The base's run through the server, `--rounds` times each in a fresh database, beside the local
    base run of each precision timed above."""
    from rocore.generation.openai_compatible import Server

    process = None
    if args.server_url:
        url, name = args.server_url, args.served_model
    else:
        process, url = start_transformers_serve(base_dir, workdir)
        name = str(base_dir)
    try:
        server = Server(url, name, concurrency=args.concurrency)
        timed = []
        for n in range(args.rounds):
            db_path = workdir / f"served-{n}.db"
            split_id, _, _ = prepared_db(db_path, cases_file, base_dir, None)
            timed.append(served_run(db_path, split_id, base_dir, server, args.batch_size, args.new_tokens))
    finally:
        if process is not None:
            process.kill()
    best = max(timed, key=lambda m: m["tokens_per_s"])
    row = {"variant": "served", "server": "transformers serve" if process is not None else url,
           "concurrency": args.concurrency, "prompts": best["done"],
           "new_tokens_each": round(best["new_tokens_each"], 1),
           "served_tokens_per_s": round(best["tokens_per_s"], 1),
           "served_tokens_per_s_each_round": [round(m["tokens_per_s"], 1) for m in timed],
           "speed_vs_local_base": {q: round(best["tokens_per_s"] / speed, 2)
                                   for q, speed in results["local_base_tokens_per_s"].items()},
           "same_outputs_as_local_base": {
               q: f"{sum(best['outputs'].get(k) == text for k, text in outputs.items())}/{len(outputs)}"
               for q, outputs in results["local_base_outputs"].items()}}
    results["runs"].append(row)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
