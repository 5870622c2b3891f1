"""Shared fixtures: a real SQLite file per test, and small case files written the way exports are."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rocore.db import connect  # noqa: E402

HEADER = "case_id,diagnosis,regimen,modality,icd10"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store" / "reviews.db"


@pytest.fixture
def conn(db_path: Path):
    connection = connect(db_path)
    yield connection
    connection.close()


def csv_bytes(*rows: str, header: str = HEADER, newline: str = "\n") -> bytes:
    return (newline.join([header, *rows]) + newline).encode("utf-8")


def row(case_id: str = "P1", diagnosis: str = "67-year-old man with prostate adenocarcinoma",
        regimen: str = "60 Gy in 20 fractions", modality: str = "photon", icd10: str = "C61") -> str:
    return ",".join(f'"{v}"' if ("," in v or "\n" in v) else v for v in (case_id, diagnosis, regimen, modality, icd10))
