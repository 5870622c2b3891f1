"""The embedded default, built on the spot with no download: synthetic cases, a split, a small base
model, its LoRA fine-tune, and base and fine-tuned generation runs over the test split.

It is built into a temporary database file moved into place at the end, so an interrupted build
never leaves a half-made database that `make run` would take for a finished one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rocore.data.case_import import import_cases
from rocore.store.db import opened
from rocore.demo.base_model import ARCHITECTURE, build_demo_base, case_reports
from rocore.evaluation.pipeline import evaluate_outputs
from rocore.evaluation.outputs import outputs_from_runs
from rocore.generation.runs import decoding_settings, get_or_create_run, run_generation
from rocore.store.registry import register_model
from rocore.model.loading import attach_adapter, load_model
from rocore.review.studies import add_demo_reviewers
from rocore.model.prompts import TASKS, resolve_prompt_format
from rocore.data.splits import create_split, split_case_ids, split_cases
from rocore.data.synthetic import generate_cases, write_jsonl
from rocore.training.trainer import TrainingConfig, train_adapter

DEMO_SPLIT = "demo"
# The literature's patients are drawn with a seed of their own, apart from the demo's cases.
LITERATURE_SEED_OFFSET = 1000
# The demo's own small model answers in the plain layout in a few tokens (a code, one word, one
# prescription): its limits stay tight, so its base model's run-on text costs no build time.
DEMO_MAX_NEW_TOKENS = {"regimen": 64, "modality": 8, "icd10": 12}


@dataclass
class DemoSettings:
    """Sizes of the demo; the defaults fit the 10-minute goal on a 2-core machine."""

    n_cases: int = 2000
    seed: int = 0
    architecture: dict = field(default_factory=lambda: dict(ARCHITECTURE))
    # Pretraining reads case reports on this many other synthetic patients (rocore.demo.base_model).
    literature_cases: int = 4000
    pretrain_epochs: float = 2.0
    # bitsandbytes' 4-bit kernels train about 30x slower than fp32 on the CPU (docs/benchmarks.md),
    # so on a machine without CUDA the demo trains its LoRA adapter on an fp32 base through the
    # same train_adapter path; on a GPU the same call runs QLoRA on an NF4 base.
    finetune: TrainingConfig = field(default_factory=lambda: TrainingConfig(
        quantization="auto", epochs=1.0, learning_rate=3e-3, batch_size=16, logging_steps=50))
    generation_batch_size: int = 32


def build_demo(db_path: str | Path, workdir: str | Path, settings: DemoSettings | None = None,
               progress: Callable[[str], None] = print) -> Path:
    """Build the whole demo into `db_path`; refuses to overwrite an existing database."""
    settings = settings or DemoSettings()
    db_path, workdir = Path(db_path), Path(workdir)
    if db_path.exists():
        raise FileExistsError(f"{db_path} already exists; delete it to rebuild the demo")
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def say(message: str) -> None:
        progress(f"[{time.monotonic() - started:6.1f}s] {message}")

    n, seed = settings.n_cases, settings.seed
    cases_file = workdir / f"synthetic-cases-n{n}-seed{seed}.jsonl"
    cases = generate_cases(n, seed)
    write_jsonl(cases, cases_file)
    say(f"wrote {n} synthetic cases to {cases_file}")
    partial = db_path.with_name(db_path.name + ".partial")
    for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
        leftover.unlink(missing_ok=True)
    with opened(partial) as conn:
        result = import_cases(conn, cases_file.read_bytes(), cases_file.name, actor="demo")
        say(f"imported {result.n_inserted} cases")
        split_id = create_split(conn, DEMO_SPLIT, seed=seed)
        train, validation = split_cases(conn, split_id, "train"), split_cases(conn, split_id, "validation")
        say(f"created split '{DEMO_SPLIT}': {len(train)} train, {len(validation)} validation, "
            f"{len(split_case_ids(conn, split_id, 'test'))} test cases")

    reports = case_reports(settings.literature_cases, seed=seed + LITERATURE_SEED_OFFSET,
                           exclude={case["diagnosis"] for case in cases})
    base_dir = build_demo_base(workdir / "models" / "demo-base", train, reports, seed=seed,
                               epochs=settings.pretrain_epochs, architecture=settings.architecture, progress=say)
    say("pretrained the demo base model")
    config = settings.finetune
    adapter_dir = train_adapter(base_dir, train, validation, workdir / "models" / "demo-lora", config)
    say(f"fine-tuned a LoRA adapter (r={config.lora_r}, {config.epochs:g} epoch(s)) into {adapter_dir}")

    loaded = load_model(base_dir, "auto")
    attach_adapter(loaded, adapter_dir, "finetuned")
    decoding = decoding_settings(DEMO_MAX_NEW_TOKENS)
    with opened(partial) as conn:
        base_id = register_model(conn, base_dir, "base", details={"demo": True})
        adapter_id = register_model(conn, adapter_dir, "adapter", base_model_id=base_id, details={"demo": True})
        runs = {name: get_or_create_run(conn, base_id, model_id, split_id, "test", list(TASKS),
                                        loaded.quantization, decoding,
                                        resolve_prompt_format(loaded.tokenizer, base_dir, "auto", adapter))[0]
                for name, model_id, adapter in (("base", None, None), ("finetuned", adapter_id, adapter_dir))}
    for name, run_id in runs.items():
        final = run_generation(partial, run_id, loaded, adapter=None if name == "base" else "finetuned",
                               batch_size=settings.generation_batch_size)
        say(f"generated {final.done} {name} outputs (run {run_id}, {final.new_tokens / final.elapsed_s:.0f} "
            "new tokens/s)")
    with opened(partial) as conn:
        report = evaluate_outputs(outputs_from_runs(conn, runs["base"], runs["finetuned"]))
        # The study's seed is drawn at random and stored: the demo's fixed seed would let anyone
        # predict which run each reviewer sees as "A".
        codes = add_demo_reviewers(conn, runs["base"], runs["finetuned"])
    say(f"created demo sign-ins {', '.join(codes)} and a blinded regimen study of the two runs")
    for task, metric in (("regimen", "rouge1_f"), ("modality", "accuracy"), ("icd10", "accuracy")):
        result = report["tasks"][task]
        say(f"{task}: {metric} base {result['base'][metric]:.2f}, fine-tuned {result['finetuned'][metric]:.2f} "
            f"(one-sided Wilcoxon p = {result['paired']['wilcoxon_p_one_sided']:.2g})")
    os.replace(partial, db_path)
    say(f"demo database ready: {db_path}")
    return db_path
