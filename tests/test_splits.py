import random
from collections import Counter

import pytest

from conftest import csv_bytes, row
from rocore.data.case_import import import_cases
from rocore.data.splits import (
    PARTS,
    SplitCase,
    SplitError,
    assign_parts,
    create_split,
    find_leaks,
    split_case_ids,
    split_counts,
    split_id_by_name,
)

FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def population(n: int = 2000, seed: int = 1) -> list[SplitCase]:
    rng = random.Random(seed)
    modalities = ["photon"] * 78 + ["proton"] * 12 + ["brachytherapy"] * 6 + ["electron"] * 4
    sites = ["breast", "prostate", "lung", "cns", "skin", "gyn"]
    return [SplitCase(f"C{i:05d}", f"diagnosis text number {i}", rng.choice(modalities), rng.choice(sites))
            for i in range(n)]


def test_parts_have_the_requested_sizes_and_the_same_modality_mix():
    cases = population()
    parts = assign_parts(cases, seed=0, fractions=FRACTIONS)
    sizes = Counter(parts.values())
    for part in PARTS:
        assert abs(sizes[part] / len(cases) - FRACTIONS[part]) < 0.01
    overall = Counter(c.modality for c in cases)
    for part in ("train", "test"):
        mix = Counter(c.modality for c in cases if parts[c.case_id] == part)
        for modality, n in overall.items():
            assert abs(mix[modality] / sizes[part] - n / len(cases)) < 0.02, (part, modality)


def test_every_stratum_with_enough_cases_reaches_the_test_part():
    cases = population()
    parts = assign_parts(cases, seed=0, fractions=FRACTIONS)
    strata = Counter((c.modality, c.site) for c in cases)
    in_test = Counter((c.modality, c.site) for c in cases if parts[c.case_id] == "test")
    for stratum, n in strata.items():
        if n >= 20:
            assert in_test[stratum] >= 1, stratum


def test_same_seed_same_split_regardless_of_input_order_and_other_seed_differs():
    cases = population(500)
    first = assign_parts(cases, 7, FRACTIONS)
    shuffled = cases[:]
    random.Random(3).shuffle(shuffled)
    assert assign_parts(shuffled, 7, FRACTIONS) == first
    assert assign_parts(cases, 8, FRACTIONS) != first


def test_identical_diagnosis_texts_land_in_one_part():
    cases = [SplitCase(f"D{i}", "  Prostate ADENOCARCINOMA,\nGleason 7 " if i % 3 else "prostate adenocarcinoma, gleason 7",
                       "photon", "prostate") for i in range(30)]
    cases += population(300)
    parts = assign_parts(cases, 0, FRACTIONS)
    assert len({parts[f"D{i}"] for i in range(30)}) == 1


@pytest.mark.parametrize("fractions, message", [
    ({"train": 0.8, "test": 0.2}, "exactly train, validation, test"),
    ({"train": 0.8, "validation": 0.3, "test": 0.1}, "add up to 1"),
    ({"train": 1.0, "validation": 0.0, "test": 0.0}, "above 0"),
])
def test_bad_fractions(fractions, message):
    with pytest.raises(SplitError, match=message):
        assign_parts(population(10), 0, fractions)


def test_create_split_stores_a_leak_free_split(conn):
    rows = [row(f"P{i}", diagnosis=f"Patient {i % 40} with prostate cancer") for i in range(200)]
    import_cases(conn, csv_bytes(*rows), "f.csv")
    split_id = create_split(conn, "main", seed=3)
    assert split_id_by_name(conn, "main") == split_id
    assert find_leaks(conn, split_id) == []
    ids = [split_case_ids(conn, split_id, part) for part in PARTS]
    assert sum(map(len, ids)) == 200 and all(ids)
    assert sum(r["n"] for r in split_counts(conn, split_id)) == 200
    with pytest.raises(SplitError, match="already exists"):
        create_split(conn, "main")


def test_find_leaks_catches_a_diagnosis_changed_after_the_split(conn):
    import_cases(conn, csv_bytes(*[row(f"P{i}", diagnosis=f"case {i}") for i in range(100)]), "f.csv")
    split_id = create_split(conn, "s")
    train, test = split_case_ids(conn, split_id, "train")[0], split_case_ids(conn, split_id, "test")[0]
    conn.execute("UPDATE cases SET diagnosis = (SELECT upper(diagnosis) FROM cases WHERE case_id = ?) "
                 "WHERE case_id = ?", (train, test))
    assert find_leaks(conn, split_id) == [(sorted([train, test]), ["test", "train"])]


def test_split_of_an_empty_store_and_unknown_names(conn):
    with pytest.raises(SplitError, match="no cases to split"):
        create_split(conn, "empty")
    with pytest.raises(SplitError, match="no split named 'nope'"):
        split_id_by_name(conn, "nope")


def test_a_created_split_is_audited_in_its_transaction_without_case_text(conn):
    import json

    rows = [row(f"P{i}", diagnosis=f"Patient {i} with prostate cancer") for i in range(50)]
    import_cases(conn, csv_bytes(*rows), "f.csv")
    split_id = create_split(conn, "main", seed=3, actor="alice", client="web 10.0.0.5")
    with pytest.raises(SplitError, match="already exists"):
        create_split(conn, "main", actor="bob")
    entries = conn.execute("SELECT actor, action, entity_id, detail, client FROM audit_log WHERE entity = 'splits'"
                           ).fetchall()
    assert [(e["actor"], e["action"], e["entity_id"], e["client"]) for e in entries] == [
        ("alice", "create-split", str(split_id), "web 10.0.0.5")]
    detail = json.loads(entries[0]["detail"])
    sizes = {part: len(split_case_ids(conn, split_id, part)) for part in PARTS}
    assert detail == {"name": "main", "seed": 3, "fractions": FRACTIONS, "strata": "modality+site", "n_cases": 50,
                      "parts": sizes}
    assert "prostate" not in entries[0]["detail"]
