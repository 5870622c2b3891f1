"""Reviewers under load: ratings submitted continuously while a large import, a generation run and the
dashboard's refresh run against the same database.

The store is bench/dashboard.py's study database (synthetic cases, a base and a fine-tuned run with
outputs for every case), plus a study of the two runs for `--reviewers` reviewers (overlap 2). Then,
all at once:

- the reviewers: one thread each in this process, as Streamlit serves each browser session on a
  thread of one process; each opens its next case and submits a rating through
  `rocore.review.studies.save_rating`, the Review page's call, with no pause; once through its
  cases it revises them from the first;
- an import of `--import-rows` new synthetic cases: `python -m rocore import` in its own process,
  timed, its peak memory read by /usr/bin/time;
- a generation run: `python -m rocore generate` in its own process with a small random Llama (fp32,
  CPU), `--limit` outputs;
- the dashboard: a thread calling `rocore.evaluation.dashboard.compute` every second, the page's call.

The reviewers start first and stop `--tail` seconds after the import and the generation have ended.
A submission is "refused" when save_rating raises NotSaved (the store could not take it; the page
keeps the answers), "failed" on any other exception, and "lost" when it returned a new rating that
the database does not hold at the end. Every figure is printed as JSON.

    python bench/load.py [--reviewers 20] [--import-rows 99999] [--limit 600] [--out results.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.dashboard import RUNS, build  # noqa: E402
from rocore.data.synthetic import generate_cases  # noqa: E402
from rocore.evaluation.dashboard import ScoreCache, compute  # noqa: E402
from rocore.review import auth, studies  # noqa: E402
from rocore.store.db import opened  # noqa: E402

STUDY_CASES = 2000


def add_study(db_path: Path, n_reviewers: int) -> tuple[int, list[int]]:
    """A study of runs 1 and 2 (regimen) for new reviewers, two reviewers a case; (study id, reviewer ids)."""
    with opened(db_path) as conn:
        ids = [auth.add_user(conn, f"load reviewer {i}", actor_id=None)[0].id for i in range(1, n_reviewers + 1)]
        study_id = studies.create_study(conn, actor_id=None, name="load", run_1_id=1, run_2_id=2, reviewer_ids=ids,
                                        overlap=2, form=studies.Form(likert=True, preference=True))
    return study_id, ids


def write_import_file(path: Path, n_rows: int) -> None:
    """New cases (ids LOAD-...) as a department's CSV export."""
    cases = generate_cases(n_rows, seed=3)
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=list(cases[0]))
        writer.writeheader()
        for case in cases:
            writer.writerow({**case, "case_id": case["case_id"].replace("SYN", "LOAD")})


def save_random_llama(directory: Path) -> Path:
    """A small randomly initialised Llama and a tokenizer trained on synthetic text: it writes until
    its token limit, which is what a generation run's load on the store needs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rocore.demo.base_model import train_tokenizer

    texts = [f"{c['diagnosis']} {c['regimen']} {c['modality']} {c['icd10']}" for c in generate_cases(300, seed=9)]
    tokenizer = train_tokenizer(texts)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


class Reviewer(threading.Thread):
    """Rates its cases one after another, as fast as the store lets it."""

    def __init__(self, db_path: Path, reviewer_id: int, study_id: int, stop: threading.Event, seed: int):
        super().__init__(daemon=True)
        self.db_path, self.reviewer_id, self.study_id, self.stop = db_path, reviewer_id, study_id, stop
        self.rng = random.Random(seed)
        self.latencies: list[tuple[float, float]] = []  # (start, seconds) of every submission
        self.saved: list[tuple[int, studies.Rating]] = []  # new ratings: (rating id, what was submitted)
        self.refused: list[str] = []
        self.failed: list[str] = []

    def rating(self) -> studies.Rating:
        pick = self.rng.choice
        return studies.Rating(pick((True, False)), pick((True, False)), pick(studies.LIKERT), pick(studies.LIKERT),
                              pick(studies.PREFERENCES))

    def run(self) -> None:
        position = None
        while not self.stop.is_set():
            with opened(self.db_path, create=False) as conn:
                item = studies.open_item(conn, self.reviewer_id, self.study_id, position)
                if item is None:  # through every case: revise from the first
                    position = 1
                    continue
            rating = self.rating()
            started = time.perf_counter()
            try:
                saved = studies.save_rating(self.db_path, self.reviewer_id, item.assignment_id, rating, item.revision)
            except studies.NotSaved as exc:
                self.refused.append(str(exc))
            except Exception as exc:  # noqa: BLE001 - every other failure is counted and named
                self.failed.append(f"{type(exc).__name__}: {exc}")
            else:
                if not saved.duplicate:
                    self.saved.append((saved.rating_id, rating))
            self.latencies.append((started, time.perf_counter() - started))
            position = None if position is None else (item.position % item.total) + 1


def refresh_dashboard(db_path: Path, study_id: int, stop: threading.Event, timings: list[float]) -> None:
    cache = ScoreCache()
    while not stop.is_set():
        started = time.perf_counter()
        with opened(db_path, create=False) as conn:
            compute(conn, cache, RUNS, study_id=study_id)
        timings.append(time.perf_counter() - started)
        stop.wait(1.0)


def timed_process(command: list[str], log: Path) -> subprocess.Popen:
    """`command` under /usr/bin/time, which writes its wall time and peak memory to `log`.time."""
    return subprocess.Popen(["/usr/bin/time", "-f", "%e %M", "-o", f"{log}.time", *command], cwd=ROOT,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1] if len(values) > 1 else (
        values[0] if values else float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reviewers", type=int, default=20)
    parser.add_argument("--import-rows", type=int, default=99_999, help="rows of the imported CSV (the header "
                                                                        "makes the file's 100,000th)")
    parser.add_argument("--limit", type=int, default=600, help="outputs the generation run makes")
    parser.add_argument("--tail", type=float, default=10.0, help="seconds the reviewers go on after the rest")
    parser.add_argument("--without", action="append", default=[], choices=("import", "generation", "dashboard"),
                        help="leave this load out, to tell which one slows the reviewers (repeatable)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        db_path = work / "reviews.db"
        build(db_path, STUDY_CASES)
        study_id, reviewer_ids = add_study(db_path, args.reviewers)
        import_file = work / "export.csv"
        write_import_file(import_file, args.import_rows)
        model_dir = save_random_llama(work / "model")
        print(f"built the study database, a {import_file.stat().st_size:,}-byte import file and a model",
              file=sys.stderr)

        stop_reviewers, stop_dashboard = threading.Event(), threading.Event()
        reviewers = [Reviewer(db_path, rid, study_id, stop_reviewers, seed) for seed, rid in enumerate(reviewer_ids)]
        dashboard_timings: list[float] = []
        dashboard = threading.Thread(target=refresh_dashboard, args=(db_path, study_id, stop_dashboard,
                                                                     dashboard_timings), daemon=True)
        started = time.perf_counter()
        for reviewer in reviewers:
            reviewer.start()
        time.sleep(2.0)
        if "dashboard" not in args.without:
            dashboard.start()
        load_started = time.perf_counter()
        commands = {"import": [sys.executable, "-m", "rocore", "import", str(import_file), "--db", str(db_path)],
                    "generation": [sys.executable, "-m", "rocore", "generate", "--db", str(db_path), "--model",
                                   str(model_dir), "--split-name", "bench", "--quantization", "fp32", "--tasks",
                                   "regimen", "--limit", str(args.limit), "--batch-size", "16",
                                   "--max-new-tokens", "regimen=64"]}
        processes = {load: timed_process(command, work / f"{load}.log") for load, command in commands.items()
                     if load not in args.without}
        exits = {load: process.wait() for load, process in processes.items()}
        import_rc, generate_rc = exits.get("import"), exits.get("generation")
        load_ended = time.perf_counter()
        time.sleep(args.tail)
        stop_reviewers.set()
        stop_dashboard.set()
        for thread in [*reviewers, dashboard]:
            if thread.is_alive():
                thread.join()
        ended = time.perf_counter()

        import_s, import_kb = ((work / "import.log.time").read_text().split()[-2:] if "import" in processes
                               else (0, 0))
        with opened(db_path, create=False) as conn:
            stored = {row["rating_id"]: row for row in conn.execute(
                "SELECT r.* FROM ratings r JOIN assignments a USING (assignment_id) WHERE a.study_id = ?",
                (study_id,))}
            n_imported = conn.execute("SELECT count(*) FROM cases WHERE case_id LIKE 'LOAD-%'").fetchone()[0]
            n_generated = conn.execute("SELECT count(*) FROM generations WHERE run_id = 3").fetchone()[0]
            integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        saved = [entry for r in reviewers for entry in r.saved]
        lost = [rating_id for rating_id, rating in saved if rating_id not in stored or (
            bool(stored[rating_id]["acceptable_a"]), bool(stored[rating_id]["acceptable_b"]),
            stored[rating_id]["likert_a"], stored[rating_id]["likert_b"], stored[rating_id]["preference"]) != (
            rating.acceptable_a, rating.acceptable_b, rating.likert_a, rating.likert_b, rating.preference)]
        latencies = [s for r in reviewers for _, s in r.latencies]
        under_load = [s for r in reviewers for t, s in r.latencies if load_started <= t <= load_ended]
        slowest = sorted(((s, t) for r in reviewers for t, s in r.latencies), reverse=True)[:5]
        results = {
            "reviewers": args.reviewers,
            "without": args.without,
            "seconds": round(ended - started, 1),
            "submissions": len(latencies),
            "new_ratings": len(saved),
            "lost": len(lost),
            "refused": sum(len(r.refused) for r in reviewers),
            "failed": sum(len(r.failed) for r in reviewers),
            "failures": sorted({m for r in reviewers for m in r.failed + r.refused})[:5],
            "submit_s": {"p50": round(percentile(latencies, 0.5), 3), "p99": round(percentile(latencies, 0.99), 3),
                         "max": round(max(latencies), 3)},
            "submit_s_while_importing_and_generating": {
                "n": len(under_load), "p50": round(percentile(under_load, 0.5), 3),
                "p99": round(percentile(under_load, 0.99), 3), "max": round(max(under_load), 3)},
            "slowest_submissions": [{"s": round(s, 3), "started_after_load_s": round(t - load_started, 2)}
                                    for s, t in slowest],
            "import": {"exit": import_rc, "rows": args.import_rows, "imported": n_imported,
                       "file_bytes": import_file.stat().st_size, "seconds": float(import_s),
                       "peak_rss_mb": round(int(import_kb) / 1024, 1)},
            "generation": {"exit": generate_rc, "outputs": n_generated},
            "load_s": round(load_ended - load_started, 1),
            "dashboard_refreshes": {"n": len(dashboard_timings),
                                    "p50_s": round(statistics.median(dashboard_timings), 3) if dashboard_timings
                                    else None},
            "integrity_check": integrity,
        }
        if import_rc or generate_rc:
            for log in (f"{load}.log" for load in processes):
                print(f"--- {log}", (work / log).read_text()[-2000:], sep="\n", file=sys.stderr)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
