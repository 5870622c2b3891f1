"""Train/validation/test splits: stratified, seeded, stored, and free of leaked diagnosis text.

A split is stored once and referenced by every training and generation run made from it, so the
held-out cases of a study never change under it. Cases whose diagnosis text is the same (after
normalising whitespace and case) always land in the same part: otherwise the test set would
measure memorisation.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass

from rocore.store.audit import audit
from rocore.store.db import transaction

PARTS = ("train", "validation", "test")
DEFAULT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
STRATA = "modality+site"


class SplitError(ValueError):
    """A split that cannot be made or is not sound."""


@dataclass(frozen=True)
class SplitCase:
    case_id: str
    diagnosis: str
    modality: str
    site: str


def normalised_text(text: str) -> str:
    """The form in which two diagnosis texts count as the same."""
    return re.sub(r"\s+", " ", text).strip().lower()


def check_fractions(fractions: dict[str, float]) -> dict[str, float]:
    if set(fractions) != set(PARTS):
        raise SplitError(f"fractions must be given for exactly {', '.join(PARTS)}")
    if any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
        raise SplitError(f"fractions must be non-negative and add up to 1, got {fractions}")
    if fractions["train"] == 0 or fractions["test"] == 0:
        raise SplitError("the train and test fractions must be above 0")
    return {part: float(fractions[part]) for part in PARTS}


def assign_parts(cases: list[SplitCase], seed: int, fractions: dict[str, float]) -> dict[str, str]:
    """case_id -> part. Groups of identical diagnosis text are placed whole; within each stratum
    (modality, site) each group goes to the part furthest below its share, in the stratum and
    overall, so small strata still spread and the totals stay on target."""
    fractions = check_fractions(fractions)
    groups: dict[str, list[SplitCase]] = defaultdict(list)
    for case in sorted(cases, key=lambda c: c.case_id):
        groups[normalised_text(case.diagnosis)].append(case)
    strata: dict[tuple[str, str], list[list[SplitCase]]] = defaultdict(list)
    for members in groups.values():
        strata[(members[0].modality, members[0].site)].append(members)
    rng = random.Random(seed)
    overall: Counter[str] = Counter()
    assignment: dict[str, str] = {}
    stratum_keys = sorted(strata)
    rng.shuffle(stratum_keys)
    for key in stratum_keys:
        stratum_groups = strata[key]
        rng.shuffle(stratum_groups)
        within: Counter[str] = Counter()
        for members in stratum_groups:
            size = len(members)

            def deficit(part: str) -> float:
                return (fractions[part] * (within.total() + size) - within[part]
                        + fractions[part] * (overall.total() + size) - overall[part])

            part = max((p for p in PARTS if fractions[p] > 0), key=deficit)
            within[part] += size
            overall[part] += size
            assignment.update((case.case_id, part) for case in members)
    return assignment


def _site(row: sqlite3.Row) -> str:
    """The stated site, or the ICD-10-CM category, which names the site of a neoplasm."""
    return (row["site"] or "").strip().lower() or row["icd10"][:3]


def create_split(conn: sqlite3.Connection, name: str, seed: int = 0, fractions: dict[str, float] | None = None,
                 actor: str = "cli", client: str | None = None) -> int:
    """Split every stored case and store the split under `name`, audited as `actor`; return its id."""
    fractions = check_fractions(fractions or DEFAULT_FRACTIONS)
    with transaction(conn):
        if conn.execute("SELECT 1 FROM splits WHERE name = ?", (name,)).fetchone():
            raise SplitError(f"a split named '{name}' already exists; choose another name")
        rows = conn.execute("SELECT case_id, diagnosis, modality, site, icd10 FROM cases").fetchall()
        if not rows:
            raise SplitError("there are no cases to split; import cases first")
        cases = [SplitCase(r["case_id"], r["diagnosis"], r["modality"], _site(r)) for r in rows]
        assignment = assign_parts(cases, seed, fractions)
        split_id = conn.execute(
            "INSERT INTO splits (name, seed, fractions, strata, n_cases) VALUES (?, ?, ?, ?, ?)",
            (name, seed, json.dumps(fractions), STRATA, len(assignment)),
        ).lastrowid
        conn.executemany(
            "INSERT INTO split_cases (split_id, case_id, part) VALUES (?, ?, ?)",
            [(split_id, case_id, part) for case_id, part in sorted(assignment.items())],
        )
        leaks = find_leaks(conn, split_id)
        if leaks:
            raise SplitError(f"internal error: {len(leaks)} diagnosis texts fall in two parts")
        sizes = Counter(assignment.values())
        audit(conn, actor, "create-split", "splits", split_id,
              {"name": name, "seed": seed, "fractions": fractions, "strata": STRATA, "n_cases": len(assignment),
               "parts": {part: sizes[part] for part in PARTS}}, client)
    return split_id


def split_id_by_name(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute("SELECT split_id FROM splits WHERE name = ?", (name,)).fetchone()
    if row is None:
        known = [r[0] for r in conn.execute("SELECT name FROM splits ORDER BY split_id")]
        raise SplitError(f"no split named '{name}' (splits: {', '.join(known) or 'none yet'})")
    return row[0]


def split_by_name_or_newest(conn: sqlite3.Connection, name: str | None) -> tuple[int, str]:
    """(id, name) of the split named, or of the newest one when no name is given, as training and
    generation default to."""
    if name:
        return split_id_by_name(conn, name), name
    newest = conn.execute("SELECT split_id, name FROM splits ORDER BY split_id DESC LIMIT 1").fetchone()
    if newest is None:
        raise SplitError("there is no split yet; create one on the Data page or with 'python -m rocore split create'")
    return newest[0], newest[1]


def find_leaks(conn: sqlite3.Connection, split_id: int) -> list[tuple[list[str], list[str]]]:
    """(case ids, parts) for every diagnosis text that appears in more than one part of a split.
    Re-run it after cases are updated: a changed diagnosis can collide with another part's."""
    parts_by_text: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for row in conn.execute(
        "SELECT c.case_id, c.diagnosis, s.part FROM split_cases s JOIN cases c USING (case_id) "
        "WHERE s.split_id = ?", (split_id,)
    ):
        parts_by_text[normalised_text(row["diagnosis"])][row["part"]].append(row["case_id"])
    return [
        (sorted(cid for ids in parts.values() for cid in ids), sorted(parts))
        for parts in parts_by_text.values() if len(parts) > 1
    ]


def split_case_ids(conn: sqlite3.Connection, split_id: int, part: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT case_id FROM split_cases WHERE split_id = ? AND part = ? ORDER BY case_id", (split_id, part)
    )]


def split_cases(conn: sqlite3.Connection, split_id: int, part: str) -> list[dict]:
    """The stored cases of one part of a split, whole, in case id order."""
    return [dict(r) for r in conn.execute(
        "SELECT c.* FROM split_cases s JOIN cases c USING (case_id) WHERE s.split_id = ? AND s.part = ? "
        "ORDER BY c.case_id", (split_id, part))]


def split_counts(conn: sqlite3.Connection, split_id: int) -> list[sqlite3.Row]:
    """Cases per part and modality: what a researcher checks before training."""
    return conn.execute(
        "SELECT s.part, c.modality, count(*) AS n FROM split_cases s JOIN cases c USING (case_id) "
        "WHERE s.split_id = ? GROUP BY s.part, c.modality ORDER BY s.part, c.modality", (split_id,)
    ).fetchall()


def list_splits(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM splits ORDER BY split_id").fetchall()
