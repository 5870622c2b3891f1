"""The model registry: every base model and adapter a run used, by resolved path, so that runs name
their models by id and an adapter row points at its base."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from rocore.store.db import transaction


def register_model(conn: sqlite3.Connection, path: str | Path, kind: str, base_model_id: int | None = None,
                   details: dict | None = None) -> int:
    """The id of a base model or adapter by its resolved path, added on first use."""
    with transaction(conn):  # looked up and added under one lock: two jobs may start at once
        return register_model_in_transaction(conn, path, kind, base_model_id, details)


def register_model_in_transaction(conn: sqlite3.Connection, path: str | Path, kind: str,
                                  base_model_id: int | None = None, details: dict | None = None) -> int:
    """register_model inside the caller's write transaction, for a model that must be registered
    together with other changes or not at all (an adapter with the end of the run that trained it)."""
    path = str(Path(path).resolve())
    row = conn.execute("SELECT model_id FROM models WHERE path = ? AND kind = ?", (path, kind)).fetchone()
    if row:
        return row[0]
    return conn.execute(
        "INSERT INTO models (name, kind, path, base_model_id, details) VALUES (?, ?, ?, ?, ?)",
        (path, kind, path, base_model_id, json.dumps(details or {})),
    ).lastrowid
