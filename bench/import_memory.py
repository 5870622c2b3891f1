"""What importing a large case file costs: wall time, peak memory, and how long it holds the write lock.

Writes an N-row CSV of synthetic cases, creates an empty database, and runs `python -m rocore import`
on it in a child process, while this process tries to take the write lock (`BEGIN IMMEDIATE` with no
busy timeout) every few milliseconds: the longest stretch in which it could not is how long a
reviewer's rating would have waited. A second child that only imports what the import needs (the CLI,
the import code, the ICD-10-CM code set) gives the baseline memory, so that peak minus baseline is what
the file itself costs. Peak memory is each child's maximum resident set as /usr/bin/time reports it
(Linux carries a process's peak across exec, so this process's own rusage of its children would count
the memory this process held when it started them).

    python bench/import_memory.py [--rows 99999] [--tree PATH]

`--tree` runs another checkout of the code (e.g. a `git worktree` of an older commit) on the same file.
"""

from __future__ import annotations

import argparse
import csv
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rocore.data.synthetic import FIELDS, generate_cases  # noqa: E402

BASELINE = ("import rocore.cli, rocore.data.case_import, rocore.data.tables, rocore.store.db; "
            "from rocore.data.labels import icd10_status; icd10_status('C61')")
PROBE_S = 0.002


def write_csv(path: Path, rows: int, seed: int) -> None:
    with open(path, "w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows({key: case[key] for key in FIELDS} for case in generate_cases(rows, seed))


def run(command: list[str], tree: Path) -> tuple[int, float, float]:
    """Exit status, wall seconds and peak resident memory (MB) of one child process."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with tempfile.NamedTemporaryFile("r") as peak:
        start = time.perf_counter()
        child = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", peak.name, *command], cwd=tree, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seconds = time.perf_counter() - start
        kilobytes = int(peak.read().split()[-1])
    if child.returncode:
        print(child.stderr.decode(errors="replace")[-2000:], file=sys.stderr)
    return child.returncode, seconds, kilobytes / 1024


class LockProbe(threading.Thread):
    """Tries to take the database's write lock every PROBE_S seconds, and keeps the longest stretch and
    the total time in which it could not."""

    def __init__(self, db: Path):
        super().__init__(daemon=True)
        self.db, self.done = db, threading.Event()
        self.longest = self.total = 0.0

    def run(self) -> None:
        conn = sqlite3.connect(self.db, timeout=0, isolation_level=None)
        busy_since = None
        while not self.done.is_set():
            now = time.perf_counter()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:  # locked
                busy_since = now if busy_since is None else busy_since
            else:
                conn.execute("ROLLBACK")
                if busy_since is not None:
                    self.longest = max(self.longest, now - busy_since)
                    self.total += now - busy_since
                    busy_since = None
            time.sleep(PROBE_S)
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=99_999, help="cases in the file (default 99,999)")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose code runs the import")
    parser.add_argument("--workdir", type=Path,
                        help="keep the file (made once, then reused) and the database here; "
                             "default: a temporary folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        cases, db = workdir / "cases.csv", workdir / "bench.db"
        if not cases.exists():
            write_csv(cases, args.rows, args.seed)
        db.unlink(missing_ok=True)
        python = sys.executable
        if run([python, "-m", "rocore", "init", "--db", str(db)], args.tree)[0]:
            return 1
        status, _, baseline = run([python, "-c", BASELINE], args.tree)
        if status:
            return 1
        probe = LockProbe(db)
        probe.start()
        status, seconds, peak = run([python, "-m", "rocore", "import", str(cases), "--db", str(db)],
                                    args.tree)
        probe.done.set()
        probe.join()
        if status:
            return 1
        size = cases.stat().st_size / 2**20
        print(f"tree                       {args.tree}")
        print(f"file                       {args.rows:,} rows, {size:,.1f} MB")
        print(f"import wall time           {seconds:,.1f} s")
        print(f"write lock held (longest)  {probe.longest:,.2f} s (in all {probe.total:,.2f} s)")
        print(f"peak RSS                   {peak:,.0f} MB")
        print(f"baseline RSS               {baseline:,.0f} MB")
        extra = peak - baseline
        print(f"peak - baseline            {extra:,.0f} MB ({extra / size:.2f} x the file)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
