"""Training throughput and memory: the product's QLoRA fine-tune against a default QLoRA recipe.

Both train a LoRA adapter (r=16, all linear layers) on an NF4 Llama-2-7B-shaped base with random
weights (trained weights run at the same speed) on the same synthetic cases, for the same number
of steps, through rocore.training.trainer.train_adapter. The default recipe turns gradient checkpointing
on, pads to the longest example of each randomly drawn batch and does not group by length; the
product groups batches by length and turns checkpointing on only when memory needs it. Reported:
non-padding tokens per second, peak GPU memory, and the product with checkpointing forced on
(the memory goal: at most 10 GB). Goals: at least 1.4x the default recipe's throughput.

    python bench/train.py --steps 40 --out docs/bench-train.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.generate import SHAPES, build_model  # noqa: E402


class _Tokens:
    """Reads the Trainer's count of non-padding tokens at the end of training."""

    def __init__(self):
        from transformers import TrainerCallback

        outer = self

        class Callback(TrainerCallback):
            def on_train_end(self, args, state, control, **kwargs):
                outer.tokens = state.num_input_tokens_seen

        self.callback = Callback()
        self.tokens = 0


def measure(base_dir: Path, cases: list[dict], workdir: Path, name: str, steps: int, batch_size: int, **settings) -> dict:
    import torch

    from rocore.training.trainer import TrainingConfig, train_adapter

    config = TrainingConfig(quantization="nf4", max_steps=steps, batch_size=batch_size, logging_steps=steps,
                            early_stopping_patience=None, **settings)
    counter = _Tokens()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    train_adapter(base_dir, cases, [], workdir / name, config, callbacks=[counter.callback])
    elapsed = time.perf_counter() - started
    return {"recipe": name, **settings, "steps": steps, "batch_size": batch_size,
            "tokens_per_s": round(counter.tokens / elapsed, 1),
            "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if torch.cuda.is_available() else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="llama-2-7b")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    from rocore.data.synthetic import generate_cases

    workdir = Path(tempfile.mkdtemp(prefix="bench-train-"))
    cases = generate_cases(max(args.steps * args.batch_size, 64), seed=1)
    base_dir, _ = build_model(workdir, args.shape, cases)
    runs = [
        measure(base_dir, cases, workdir, "default", args.steps, args.batch_size,
                gradient_checkpointing=True, group_by_length=False),
        measure(base_dir, cases, workdir, "product", args.steps, args.batch_size,
                gradient_checkpointing="auto", group_by_length=True),
        measure(base_dir, cases, workdir, "product-checkpointing", args.steps, args.batch_size,
                gradient_checkpointing=True, group_by_length=True),
    ]
    result = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU)", "shape": args.shape,
              "runs": runs, "speedup": round(runs[1]["tokens_per_s"] / runs[0]["tokens_per_s"], 2)}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
