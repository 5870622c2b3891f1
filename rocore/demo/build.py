"""The embedded default, built on the spot with no download: synthetic cases, a split, a small base
model, its LoRA fine-tune, and base and fine-tuned generation runs over the test split.

It is built into a temporary database file moved into place at the end, so an interrupted build
never leaves a half-made database that `make run` would take for a finished one. The build takes
minutes, mostly in two training steps that report nothing on the way: one progress bar with an ETA
shows how far it is.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib import DummyTqdmFile

from rocore.data.case_import import import_cases
from rocore.store.db import opened
from rocore.demo.base_model import ARCHITECTURE, build_demo_base, case_reports
from rocore.evaluation.pipeline import evaluate_outputs
from rocore.evaluation.outputs import outputs_from_runs
from rocore.generation.runs import decoding_settings, get_or_create_run, run_generation
from rocore.store.registry import register_model
from rocore.model.loading import attach_adapter, load_model
from rocore.review.auth import add_user
from rocore.review.practice import add_practice_cases
from rocore.review.studies import Form, create_study, eligible_cases
from rocore.model.prompts import TASKS, resolve_prompt_format
from rocore.data.splits import create_split, split_case_ids, split_cases
from rocore.data.synthetic import generate_cases, write_jsonl
from rocore.training.runs import create_run, list_runs, run_training
from rocore.training.trainer import TrainingConfig

DEMO_SPLIT = "demo"
DEMO_STUDY = "Demo regimen review"
# The demo study asks every scale the rating form offers, so a first look shows them all, and starts each
# reviewer on practice cases from the validation part (rocore.review.practice).
DEMO_FORM = Form(likert=True, preference=True, comment=True, edit_level=True, harm=True)
DEMO_PRACTICE_N = 3
# The literature's patients are drawn with a seed of their own, apart from the demo's cases.
LITERATURE_SEED_OFFSET = 1000
# The demo's own small model answers in the plain layout in a few tokens (a code, one word, one
# prescription): its limits stay tight, so its base model's run-on text costs no build time.
DEMO_MAX_NEW_TOKENS = {"regimen": 64, "modality": 8, "icd10": 12}
# Each step's share of the build's wall-clock time with the default settings on the quiet 2-core
# development machine (docs/benchmarks.md, 2026-12-03: pretraining ends at 212 s, the fine-tune at
# 396 s, generation at 430 s, of 431 s): the progress bar weights the steps by it.
STEP_SHARES = {"synthetic cases": 0.0044, "pretraining the base": 0.4861, "fine-tuning": 0.4270,
               "outputs": 0.0802, "review study": 0.0023}


class BuildProgress:
    """One progress bar for the whole build, in percent of its expected time, with an ETA.

    A finished step fills its share (STEP_SHARES). Within a step the bar follows what the step
    reports (`advance`: outputs generated); a step with `clock` reports nothing (the training
    steps), so the bar moves by the time the step should take at the pace the build has kept so
    far, stopping short of the step's end until it ends. A thread redraws the bar every `interval`
    seconds, so the elapsed time and the ETA never stand still.
    """

    def __init__(self, shares: Mapping[str, float] = STEP_SHARES, file=None, interval: float = 1.0):
        self.shares = shares
        # smoothing=0: the ETA is the remaining share at the average pace so far, the shares' weighting.
        width = max(map(len, shares))
        self.bar = tqdm(total=100.0, file=file, smoothing=0, dynamic_ncols=True,
                        bar_format=f"{{desc:<{width}}} {{percentage:3.0f}}%|{{bar}}| {{elapsed}} elapsed, "
                                   "about {remaining} left")
        self.done = 0.0  # percent of the build in finished steps
        self._lock = threading.Lock()
        self._step: tuple[float, float, float | None] | None = None  # (share, started, expected seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, args=(interval,), daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def step(self, name: str, clock: bool = False) -> Iterator[None]:
        """Run one step of STEP_SHARES; `clock`: move the bar by time, the step reports no progress."""
        share = 100 * self.shares[name]
        with self._lock:
            elapsed = self.bar.format_dict["elapsed"]
            expected = share * elapsed / self.done if clock and self.done else None
            self._step = (share, time.monotonic(), expected)
            self.bar.set_description_str(name, refresh=False)
        yield
        with self._lock:
            self._step = None
            self.done += share
            self._move_to(self.done)

    def advance(self, fraction: float) -> None:
        """The current step is `fraction` (0 to 1) done."""
        with self._lock:
            if self._step is not None:
                self._move_to(self.done + self._step[0] * min(fraction, 1.0))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.bar.close()

    def _move_to(self, percent: float) -> None:
        percent = min(percent, self.bar.total)  # the shares' sum may pass 100 by a rounding error
        if percent > self.bar.n:
            self.bar.update(percent - self.bar.n)

    def _tick(self, interval: float) -> None:
        while not self._stop.wait(interval):
            with self._lock:
                if self._step is not None and self._step[2]:
                    share, started, expected = self._step
                    self._move_to(self.done + share * min((time.monotonic() - started) / expected, 0.95))
                self.bar.refresh()


@contextlib.contextmanager
def _without_library_bars() -> Iterator[None]:
    """transformers draws bars of its own (loading weights, writing shards) that would break the build's one."""
    from transformers.utils import logging as transformers_logging

    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def add_demo_study(conn, run_ids: tuple[int, int], practice_run_ids: tuple[int, int] | None = None, *,
                   n_reviewers: int = 3, sample_n: int = 30, overlap: int = 2, practice_n: int = DEMO_PRACTICE_N,
                   seed: int | None = None) -> dict[str, str]:
    """Demo sign-ins and a blinded regimen study of two runs, with practice cases where practice runs are
    given: name -> access code, shown once.

    Makes an admin named 'admin' and reviewers 'reviewer1'..'reviewerN', each assigned cases of the
    study; the caller prints the codes (they are not stored in plain text anywhere). The study's
    seed is random unless given, as for any study: a fixed one would let anyone predict the sides.
    """
    codes = {}
    admin, codes["admin"] = add_user(conn, "admin", "admin", actor_id=None, client="demo")
    reviewer_ids = []
    for number in range(1, n_reviewers + 1):
        reviewer, codes[f"reviewer{number}"] = add_user(conn, f"reviewer{number}", "reviewer", actor_id=None,
                                                        client="demo")
        reviewer_ids.append(reviewer.id)
    available = len(eligible_cases(conn, *run_ids, "regimen"))
    study_id = create_study(conn, actor_id=admin.id, name=DEMO_STUDY, run_1_id=run_ids[0], run_2_id=run_ids[1],
                            reviewer_ids=reviewer_ids, sample_n=min(sample_n, available), seed=seed,
                            overlap=min(overlap, n_reviewers), form=DEMO_FORM, client="demo")
    if practice_run_ids:
        add_practice_cases(conn, actor_id=admin.id, study_id=study_id, practice_runs=practice_run_ids,
                           practice_n=practice_n, client="demo")
    return codes


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
        quantization="auto", epochs=1.0, learning_rate=3e-3, batch_size=16, logging_steps=20))
    generation_batch_size: int = 32


def build_demo(db_path: str | Path, workdir: str | Path, settings: DemoSettings | None = None,
               progress: Callable[[str], None] = print, bar_file=None) -> Path:
    """Build the whole demo into `db_path`; refuses to overwrite an existing database. `progress`
    gets each step's messages; the progress bar goes to `bar_file` (default: standard output)."""
    settings = settings or DemoSettings()
    db_path, workdir = Path(db_path), Path(workdir)
    if db_path.exists():
        raise FileExistsError(f"{db_path} already exists; delete it to rebuild the demo")
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def say(message: str) -> None:
        progress(f"[{time.monotonic() - started:6.1f}s] {message}")

    n, seed = settings.n_cases, settings.seed
    partial = db_path.with_name(db_path.name + ".partial")
    console = sys.stdout
    # What the steps print (messages, the trainers' loss lines) goes above the bar, not through it.
    with contextlib.redirect_stdout(DummyTqdmFile(console)), _without_library_bars(), \
            contextlib.closing(BuildProgress(file=bar_file or console)) as bar:
        with bar.step("synthetic cases"):
            cases_file = workdir / f"synthetic-cases-n{n}-seed{seed}.jsonl"
            cases = generate_cases(n, seed)
            write_jsonl(cases, cases_file)
            say(f"wrote {n} synthetic cases to {cases_file}")
            for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
                leftover.unlink(missing_ok=True)
            with opened(partial) as conn:
                result = import_cases(conn, cases_file.read_bytes(), cases_file.name, actor="demo")
                say(f"imported {result.n_inserted} cases")
                split_id = create_split(conn, DEMO_SPLIT, seed=seed, actor="demo")
                train, validation = split_cases(conn, split_id, "train"), split_cases(conn, split_id, "validation")
                say(f"created split '{DEMO_SPLIT}': {len(train)} train, {len(validation)} validation, "
                    f"{len(split_case_ids(conn, split_id, 'test'))} test cases")

        with bar.step("pretraining the base", clock=True):
            reports = case_reports(settings.literature_cases, seed=seed + LITERATURE_SEED_OFFSET,
                                   exclude={case["diagnosis"] for case in cases})
            base_dir = build_demo_base(workdir / "models" / "demo-base", train, reports, seed=seed,
                                       epochs=settings.pretrain_epochs, architecture=settings.architecture,
                                       progress=say)
            say("pretrained the demo base model")

        with bar.step("fine-tuning", clock=True):
            # A recorded training run, as the Train page makes one: the page lists it with its losses.
            config = settings.finetune
            with opened(partial) as conn:
                base_id = register_model(conn, base_dir, "base", details={"demo": True})
                training_run = create_run(conn, base_dir, DEMO_SPLIT, config, workdir / "models" / "demo-lora",
                                          actor="demo")
            run_training(partial, training_run, actor="demo")
            with opened(partial) as conn:
                trained = next(run for run in list_runs(conn) if run["run_id"] == training_run)
            adapter_dir, adapter_id = Path(trained["adapter_path"]), trained["adapter_model_id"]
            say(f"fine-tuned a LoRA adapter (r={config.lora_r}, {config.epochs:g} epoch(s), training run "
                f"{training_run}) into {adapter_dir}")

        with bar.step("outputs"):
            loaded = load_model(base_dir, "auto")
            attach_adapter(loaded, adapter_dir, "finetuned")
            decoding = decoding_settings(DEMO_MAX_NEW_TOKENS)
            # Every task over the test part, for the figures and the study; the regimen over the validation
            # part, for the study's practice cases.
            with opened(partial) as conn:
                runs = {(part, name): get_or_create_run(conn, base_id, model_id, split_id, part, tasks,
                                                        loaded.quantization, decoding,
                                                        resolve_prompt_format(loaded.tokenizer, base_dir, "auto",
                                                                              adapter))[0]
                        for part, tasks in (("test", list(TASKS)), ("validation", ["regimen"]))
                        for name, model_id, adapter in (("base", None, None), ("finetuned", adapter_id, adapter_dir))}
            for i, ((part, name), run_id) in enumerate(runs.items()):
                final = run_generation(partial, run_id, loaded, adapter=None if name == "base" else "finetuned",
                                       batch_size=settings.generation_batch_size, actor="demo",
                                       progress=lambda state, i=i: bar.advance((i + state.done / state.total)
                                                                               / len(runs)))
                say(f"generated {final.done} {name} outputs over the {part} part (run {run_id}, "
                    f"{final.new_tokens / final.elapsed_s:.0f} new tokens/s)")

        with bar.step("review study"):
            with opened(partial) as conn:
                report = evaluate_outputs(outputs_from_runs(conn, runs["test", "base"], runs["test", "finetuned"]))
                # The study's seed is drawn at random and stored: the demo's fixed seed would let anyone
                # predict which run each reviewer sees as "A".
                codes = add_demo_study(conn, (runs["test", "base"], runs["test", "finetuned"]),
                                       (runs["validation", "base"], runs["validation", "finetuned"]))
            say(f"created demo sign-ins {', '.join(codes)} and a blinded regimen study of the two test runs, "
                f"with {DEMO_PRACTICE_N} practice cases from the validation runs")
            for task, metric in (("regimen", "rouge1_f"), ("modality", "accuracy"), ("icd10", "accuracy")):
                result = report["tasks"][task]
                say(f"{task}: {metric} base {result['base'][metric]:.2f}, fine-tuned "
                    f"{result['finetuned'][metric]:.2f} (one-sided Wilcoxon p = "
                    f"{result['paired']['wilcoxon_p_one_sided']:.2g})")
            os.replace(partial, db_path)
    say(f"demo database ready: {db_path}")
    return db_path
