"""How long real answers are, in tokens, per task: the measurement behind the per-task new-token
limits (rocore.generation.runs.DEFAULT_MAX_NEW_TOKENS; docs/real-models.md).

Run a generation with generous limits first, then read its stored token counts:

    python -m rocore generate --db DB --model MODEL --split test --max-new-tokens regimen=256 \\
        --max-new-tokens modality=256 --max-new-tokens icd10=256
    python bench/answer_lengths.py --db DB [--run RUN_ID]

Per task: the median, 95th and 99th percentile and maximum of new tokens over all outputs, how many
were cut at the limit (finish_reason 'length'), and the same percentiles over the answers that ended
on their own, which are what a limit must leave room for.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

import numpy as np


def lengths(db: Path, run_id: int | None) -> dict[str, list[tuple[int, str]]]:
    """(new tokens, finish reason) of each output per task, of one run or of the newest run."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    run_id = run_id or conn.execute("SELECT max(run_id) FROM generation_runs").fetchone()[0]
    by_task: dict[str, list[tuple[int, str]]] = {}
    for task, tokens, reason in conn.execute(
            "SELECT task, output_tokens, finish_reason FROM generations WHERE run_id = ?", (run_id,)):
        by_task.setdefault(task, []).append((tokens, reason))
    return by_task


def summary(rows: list[tuple[int, str]]) -> dict:
    tokens = np.array([t for t, _ in rows])
    ended = np.array([t for t, reason in rows if reason == "stop"])
    cut = sum(reason == "length" for _, reason in rows)

    def pct(values, q):
        return int(np.ceil(np.percentile(values, q))) if len(values) else None

    return {"n": len(rows), "median": pct(tokens, 50), "p95": pct(tokens, 95), "p99": pct(tokens, 99),
            "max": int(tokens.max()), "cut": cut, "ended_p99": pct(ended, 99),
            "ended_max": int(ended.max()) if len(ended) else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--run", type=int, help="generation run (default: the newest)")
    args = parser.parse_args(argv)
    print("| task | outputs | median | p95 | p99 | max | cut at the limit | p99 / max of those that ended |")
    print("|---|---|---|---|---|---|---|---|")
    for task, rows in sorted(lengths(args.db, args.run).items()):
        s = summary(rows)
        print(f"| {task} | {s['n']} | {s['median']} | {s['p95']} | {s['p99']} | {s['max']} | {s['cut']} | "
              f"{s['ended_p99']} / {s['ended_max']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
