"""The command line as a user runs it: a real process, real files, exit codes and messages."""

import json
import subprocess
import sys

from conftest import ROOT, csv_bytes, row


def rocore(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rocore", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=120)


def count(db, table="cases") -> int:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_import_then_refuse_a_bad_file_leaving_the_database_unchanged(tmp_path):
    db = tmp_path / "r.db"
    good = tmp_path / "good.csv"
    good.write_bytes(csv_bytes(row("P1"), row("P2", icd10="c50412", modality="Photons")))
    done = rocore("import", good, "--db", db)
    assert done.returncode == 0, done.stderr
    assert "imported 2 new and 0 updated cases" in done.stdout

    bad = tmp_path / "bad.csv"
    bad.write_bytes(csv_bytes(row("P3"), row("P4", icd10="C99.9")))
    refused = rocore("import", bad, "--db", db)
    assert refused.returncode == 1
    assert f"{bad}: row 2: column 'icd10': 'C99.9' is not a valid ICD-10-CM code" in refused.stderr.splitlines()
    assert "the database is unchanged" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert count(db) == 2 and count(db, "imports") == 1


def test_map_update_and_skip_invalid(tmp_path):
    db = tmp_path / "r.db"
    first = tmp_path / "first.csv"
    first.write_bytes(b"key,text,plan,beam,code\nK1,d,r,proton,C61\n")
    assert rocore("import", first, "--db", db, "--map", "case_id=key", "--map", "diagnosis=text",
                  "--map", "regimen=plan", "--map", "modality=beam", "--map", "icd10=code").returncode == 0
    again = rocore("import", first, "--db", db, "--map", "case_id=key", "--map", "diagnosis=text",
                   "--map", "regimen=plan", "--map", "modality=beam", "--map", "icd10=code", "--update")
    assert "imported 0 new and 1 updated" in again.stdout

    mixed = tmp_path / "mixed.csv"
    mixed.write_bytes(csv_bytes(row("P1"), row("P2", modality="laser")))
    skipped = rocore("import", mixed, "--db", db, "--skip-invalid")
    assert skipped.returncode == 0
    rejected = tmp_path / "mixed.rejected.csv"
    assert f"skipped 1 invalid rows; they and their reasons are in {rejected}" in skipped.stdout
    assert "'laser' is not a treatment modality" in rejected.read_text()
    assert count(db) == 2


def test_bad_usage_and_unreadable_paths(tmp_path):
    assert rocore("import", tmp_path / "missing.csv", "--db", tmp_path / "r.db").stderr.startswith(
        f"{tmp_path / 'missing.csv'}: cannot be read")
    bad_map = rocore("import", tmp_path / "x.csv", "--db", tmp_path / "r.db", "--map", "nonsense")
    assert bad_map.returncode != 0 and "expected FIELD=COLUMN" in bad_map.stderr


def test_split_create_show_list(tmp_path):
    db = tmp_path / "r.db"
    cases = tmp_path / "c.csv"
    cases.write_bytes(csv_bytes(*[row(f"P{i}", diagnosis=f"case {i}") for i in range(100)]))
    rocore("import", cases, "--db", db)
    created = rocore("split", "create", "--db", db, "--name", "s1", "--seed", "4", "--fractions", "0.7,0.15,0.15")
    assert created.returncode == 0, created.stderr
    assert "created split 's1'" in created.stdout
    assert sum(int(line.split()[-1]) for line in created.stdout.splitlines()[1:]) == 100
    assert "s1" in rocore("split", "list", "--db", db).stdout
    assert rocore("split", "create", "--db", db, "--name", "s1").returncode == 1
    assert "no split named" in rocore("split", "show", "--db", db, "--name", "zz").stderr
    assert rocore("split", "create", "--db", db, "--fractions", "1,2").returncode == 2
