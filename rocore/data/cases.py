"""Reading stored cases: counts and listings for the Data page and the CLI."""

from __future__ import annotations

import sqlite3

import pandas as pd


def case_counts(conn: sqlite3.Connection) -> pd.DataFrame:
    """Cases per site and modality (site falls back to the ICD-10-CM category)."""
    return pd.read_sql_query(
        "SELECT coalesce(site, substr(icd10, 1, 3)) AS site, modality, count(*) AS cases "
        "FROM cases GROUP BY 1, 2 ORDER BY 1, 2", conn)


def list_cases(conn: sqlite3.Connection, limit: int = 1000, search: str = "") -> pd.DataFrame:
    """The newest cases first; `search` matches case id, code, site or diagnosis text."""
    pattern = f"%{search.strip()}%"
    return pd.read_sql_query(
        "SELECT case_id, site, modality, icd10, diagnosis, regimen, source_file, imported_at "
        "FROM cases WHERE ? = '%%' OR case_id LIKE ? OR icd10 LIKE ? OR site LIKE ? OR diagnosis LIKE ? "
        "ORDER BY imported_at DESC, case_id LIMIT ?",
        conn, params=(pattern, pattern, pattern, pattern, pattern, limit))


def list_imports(conn: sqlite3.Connection) -> pd.DataFrame:
    return pd.read_sql_query(
        "SELECT import_id, source_file, n_rows, n_inserted, n_updated, n_rejected, imported_at "
        "FROM imports ORDER BY import_id DESC", conn)
