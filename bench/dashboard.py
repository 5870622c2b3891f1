"""Dashboard statistics: cold, and on each kind of refresh, for a study the size of a real one.

Builds a database of 10,000 synthetic cases (rocore.data.synthetic, imported the usual way), a base and
a fine-tuned generation run over all of them for the three tasks (outputs inserted directly:
plausible answers, mostly right for the fine-tuned model, mostly wrong for the base one), and a
review study of the two runs: three reviewers each rate the same 1,000 cases (3,000 current
ratings, 2% unratable, every twentieth revised once). Then times rocore.evaluation.dashboard.compute, the
function the page calls on every refresh:

- cold: the first call, a new cache: reads and scores all outputs (ROUGE-1 above all), statistics;
- statistics: scores cached, every statistic recomputed (a cache that keeps no figures);
- new generations: a batch of new outputs arrives: only it is scored, the statistics recomputed;
- new ratings: a few ratings arrive: only the review figures are recomputed;
- no change: a refresh with nothing new (fingerprints only);
- filter change: a filter chosen on the page (photon cases): statistics of those cases only.

    python bench/dashboard.py [--cases 10000] [--repeats 5] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rocore.data.case_import import import_cases
from rocore.evaluation.dashboard import compute, Filters, ScoreCache
from rocore.evaluation.outputs import RunPairs
from rocore.store.db import opened, transaction
from rocore.data.labels import MODALITIES
from rocore.data.synthetic import generate_cases, write_jsonl

TASKS = ("regimen", "modality", "icd10")
RUNS = RunPairs(tuple((task, 1, 2) for task in TASKS))  # run 1 the base, run 2 the fine-tuned, every task
BATCH = 64  # outputs per stored batch, as a generation run writes them
HELD_BACK = 5  # batches of fine-tuned regimen outputs left out of the cold database, added one by one


def _answer(rng: random.Random, case: dict, task: str, other: dict, right: float) -> str:
    """The gold answer with probability `right`, else a plausible wrong one."""
    if rng.random() < right:
        return case[task]
    if task == "modality":
        return rng.choice([m for m in MODALITIES if m != case["modality"]])
    if task == "icd10":
        return rng.choice([other["icd10"], case["icd10"].split(".")[0]])
    return rng.choice([other["regimen"], case["regimen"].replace(" in ", " / ", 1),
                       f"{other['regimen']} if tolerated"])


def build(db_path: Path, n_cases: int, seed: int = 0) -> list[tuple]:
    """The study database; returns the held-back fine-tuned regimen rows, to be added later."""
    rng = random.Random(seed)
    cases = generate_cases(n_cases, seed=seed)
    cases_file = db_path.parent / "cases.jsonl"
    write_jsonl(cases, cases_file)
    right = {"base": {"regimen": 0.05, "modality": 0.55, "icd10": 0.2},
             "finetuned": {"regimen": 0.45, "modality": 0.9, "icd10": 0.75}}
    rows = []
    for run_id, model in ((1, "base"), (2, "finetuned")):
        for task in TASKS:
            for case in cases:
                text = _answer(rng, case, task, rng.choice(cases), right[model][task])
                rows.append((run_id, case["case_id"], task, f"{task}-v1", text, text, 200, 12, 0.01))
    end = 4 * n_cases  # rows are run 1's three tasks, then run 2's: this ends run 2's regimen rows
    held = rows[end - HELD_BACK * BATCH:end]
    stored = rows[:end - HELD_BACK * BATCH] + rows[end:]
    with opened(db_path) as conn:
        import_cases(conn, cases_file.read_bytes(), cases_file.name)
        with transaction(conn):
            conn.execute("INSERT INTO splits (split_id, name, seed, fractions, strata, n_cases) "
                         "VALUES (1, 'bench', 0, '[0, 0, 1]', 'none', ?)", (n_cases,))
            conn.executemany("INSERT INTO split_cases VALUES (1, ?, 'test')",
                             [(c["case_id"],) for c in cases])
            conn.execute("INSERT INTO models (model_id, name, kind, path) "
                         "VALUES (1, 'base', 'base', '/models/base')")
            conn.execute("INSERT INTO models (model_id, name, kind, path, base_model_id) "
                         "VALUES (2, 'adapter', 'adapter', '/models/adapter', 1)")
            for run_id, adapter in ((1, None), (2, 2)):
                conn.execute("INSERT INTO generation_runs (run_id, base_model_id, adapter_model_id, "
                             "split_id, part, tasks, quantization, status) "
                             "VALUES (?, 1, ?, 1, 'test', ?, 'nf4', 'finished')",
                             (run_id, adapter, json.dumps(TASKS)))
            conn.executemany(INSERT_GENERATION, stored)
        _review_study(conn, cases, rng)
    return held


INSERT_GENERATION = ("INSERT INTO generations (run_id, case_id, task, template_id, raw_text, answer, "
                     "prompt_tokens, output_tokens, seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")


def _review_study(conn, cases: list[dict], rng: random.Random, n_ratings: int = 3000,
                  n_reviewers: int = 3) -> None:
    """Every reviewer rates the same n_ratings / n_reviewers cases; a case's two outputs are truly
    acceptable or not (fine-tuned more often) and each reviewer agrees with the truth 85% of the time."""
    with transaction(conn):
        conn.executemany("INSERT INTO reviewers (reviewer_id, name, code_hash, code_salt) "
                         "VALUES (?, ?, x'00', x'00')",
                         [(i, f"reviewer {i}") for i in range(1, n_reviewers + 1)])
        conn.execute("INSERT INTO studies (study_id, name, task, run_1_id, run_2_id, seed, overlap) "
                     "VALUES (1, 'bench', 'regimen', 1, 2, 0, ?)", (n_reviewers,))
        assignment_id = 0
        for position, case in enumerate(cases[:n_ratings // n_reviewers], start=1):
            truth = {1: rng.random() < 0.35, 2: rng.random() < 0.75}  # run -> acceptable
            for reviewer in range(1, n_reviewers + 1):
                assignment_id += 1
                run_a, run_b = rng.sample((1, 2), 2)
                conn.execute("INSERT INTO assignments VALUES (?, 1, ?, ?, ?, ?, ?)",
                             (assignment_id, reviewer, case["case_id"], position, run_a, run_b))
                verdict = {run: int(good if rng.random() < 0.85 else not good) for run, good in truth.items()}
                unratable = "diagnosis incomplete" if rng.random() < 0.02 else None
                for revision in (1, 2) if assignment_id % 20 == 0 else (1,):
                    conn.execute(
                        "INSERT INTO ratings (assignment_id, revision, acceptable_a, acceptable_b, likert_a, "
                        "likert_b, preference, unratable_reason, reviewer_id) "
                        "VALUES (?, ?, ?, ?, 3, 3, 'none', ?, ?)",
                        (assignment_id, revision, None if unratable else verdict[run_a],
                         None if unratable else verdict[run_b], unratable, reviewer))


def _timed(call) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process): on a shared machine the CPU time shows what
    the work costs when it has a core to itself."""
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        db_path = Path(workdir) / "reviews.db"
        started = time.perf_counter()
        held = build(db_path, args.cases)
        print(f"built {db_path} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        cache = ScoreCache()
        results: dict[str, list[tuple[float, float]]] = {}
        with opened(db_path) as conn:
            def refresh():
                return compute(conn, cache, RUNS)

            results["cold"] = [_timed(refresh)]
            scored = cache.rows_scored
            keeps_no_figures = ScoreCache(max_figures=0)
            compute(conn, keeps_no_figures, RUNS)
            results["statistics"] = [_timed(lambda: compute(conn, keeps_no_figures, RUNS))
                                     for _ in range(args.repeats)]
            results["new generations"] = []
            for start in range(0, len(held), BATCH):
                with transaction(conn):
                    conn.executemany(INSERT_GENERATION, held[start:start + BATCH])
                results["new generations"].append(_timed(refresh))
            if cache.rows_scored != scored + len(held):
                raise AssertionError("a refresh scored more than the new rows")
            results["new ratings"] = []
            for repeat in range(args.repeats):
                with transaction(conn):
                    conn.executemany(
                        "INSERT INTO ratings (assignment_id, revision, acceptable_a, acceptable_b, "
                        "reviewer_id) SELECT assignment_id, 1 + (SELECT max(revision) FROM ratings AS r "
                        "WHERE r.assignment_id = a.assignment_id), 1, 1, reviewer_id "
                        "FROM assignments AS a WHERE assignment_id = ?",
                        [(i,) for i in range(1 + 10 * repeat, 11 + 10 * repeat)])
                results["new ratings"].append(_timed(refresh))
            results["no change"] = [_timed(refresh) for _ in range(4 * args.repeats)]
            photon = Filters(modalities=("photon",))
            results["filter change"] = [_timed(lambda: compute(conn, cache, RUNS, photon))]
            final = refresh()
        summary = {
            "cpus": os.cpu_count(), "cases": args.cases, "outputs": len(final.scores),
            "current ratings": final.reviews.n_rated,
            "seconds": {name: {"median": statistics.median(wall for wall, _ in times),
                               "max": max(wall for wall, _ in times),
                               "median_cpu": statistics.median(cpu for _, cpu in times), "runs": len(times)}
                        for name, times in results.items()},
            "load_average": os.getloadavg(),
            "pairs": {task: report["paired"]["n_pairs"] for task, report in final.report["tasks"].items()},
            "acceptability": {m: final.reviews.acceptability[m]["share"] for m in ("base", "finetuned")},
            "fleiss_kappa": final.reviews.agreement["fleiss_kappa"],
        }
    print(f"{'refresh':<16} {'median s':>9} {'max s':>7} {'median CPU s':>13} {'runs':>5}")
    for name, figures in summary["seconds"].items():
        print(f"{name:<16} {figures['median']:>9.3f} {figures['max']:>7.3f} {figures['median_cpu']:>13.3f} "
              f"{figures['runs']:>5}")
    print(json.dumps({k: v for k, v in summary.items() if k != "seconds"}))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
