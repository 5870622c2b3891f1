"""The audit log: one append-only row per change (enforced by the schema's triggers), holding ids and
counts, never case text. Every stage that changes the store writes here."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, datetime


def now() -> float:
    """The clock of audit rows, and of sign-in throttling that reads them back (tests move it)."""
    return time.time()


def timestamp(seconds: float) -> str:
    """Seconds since the epoch in the schema's timestamp format, 2025-01-31T12:00:00.000Z."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def audit(conn: sqlite3.Connection, actor: str, action: str, entity: str, entity_id: object = None,
          detail: dict | None = None, client: str | None = None) -> None:
    """Append one audit row. `detail` holds ids and values, never case text."""
    conn.execute(
        "INSERT INTO audit_log (at, actor, action, entity, entity_id, detail, client) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (timestamp(now()), actor, action, entity, None if entity_id is None else str(entity_id),
         json.dumps(detail or {}), client))
