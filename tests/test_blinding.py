"""The blinding scan: raw outputs that run on give the base model away; what reviewers now see does not."""

from __future__ import annotations

import random
import re

import pytest
from conftest import ROOT
from streamlit.testing.v1 import AppTest
from test_page_review import everything_sent
from test_review_studies import RUN_1, SECRETS, good_rating, make_review_db

from rocore.review import auth, blinding
from rocore.review import studies as review
from rocore.store.db import opened

# Prescriptions both demo models write; the base model goes on into the other tasks' answers.
REGIMENS = ("50 Gy in 25 fractions with IMRT before resection", "8 Gy in 1 fraction",
            "60 Gy in 20 fractions to the prostate with IMRT", "26 Gy in 5 fractions to the whole breast",
            ("45 Gy in 25 fractions to the pelvis with IMRT and weekly cisplatin, followed by HDR brachytherapy "
             "28 Gy in 4 fractions"), "40 Gy in 15 fractions with concurrent and adjuvant temozolomide",
            "I-125 seed implant to 145 Gy", "12 Gy in 1 fraction with SRS",
            "50.4 Gy in 28 fractions with IMRT and concurrent 5-FU and mitomycin",
            "30 Gy in 10 fractions with hippocampal-avoidance WBRT and memantine",
            "74 GyRBE in 37 fractions with protons", "20 Gy in 5 fractions with IMRT, followed by durvalumab")
N_CASES = 80


def demo_like_outputs(i: int) -> tuple[str, str]:
    """Case i's raw base and fine-tuned outputs as the demo's models write them: each run draws its
    prescription, or breaks off after a number (a quarter of the time), and the base runs on."""
    rng = random.Random(i)
    base, finetuned = (rng.choice(REGIMENS) if rng.random() > 0.25 else "50" for _ in range(2))
    return f" {base}. Modality: photon. ICD-10-CM C61.", f" {finetuned}"


@pytest.fixture
def study(db_path):
    return make_review_db(db_path, n_cases=N_CASES, reviewers=("ada", "ben"), overlap=1,
                          raw_outputs=demo_like_outputs)


def seen_by_reviewers(conn, info: dict) -> list[tuple[str, str]]:
    """Every (run 1 text, run 2 text) a reviewer's page receives, put back in run order."""
    pairs = []
    for name in ("ada", "ben"):
        item = review.open_item(conn, info["ids"][name], info["study_id"], 1)
        for position in range(1, item.total + 1):
            item = review.open_item(conn, info["ids"][name], info["study_id"], position)
            run_a = conn.execute("SELECT run_a_id FROM assignments WHERE assignment_id = ?",
                                 (item.assignment_id,)).fetchone()[0]
            pairs.append((item.text_a, item.text_b) if run_a == RUN_1 else (item.text_b, item.text_a))
    return pairs


def test_raw_outputs_give_the_base_away_and_what_reviewers_see_does_not(db_path, study):
    with opened(db_path) as conn:
        pairs = seen_by_reviewers(conn, study)
        check = blinding.study_blinding(conn, study["study_id"], actor_id=study["admin_id"])
    assert len(pairs) == N_CASES
    assert not [text for pair in pairs for text in pair if "icd" in text.casefold() or "modality" in text.casefold()]

    raw = check["raw"]
    assert raw["given_away"] and raw["classifier"]["accuracy"] == 1.0 and raw["classifier"]["p_above_chance"] < 0.01
    assert raw["best_rule"]["feature"] in ("icd10", "modality")
    assert raw["best_rule"]["hits"] == raw["best_rule"]["n"] == N_CASES

    shown = blinding.scan_pairs(pairs)
    assert check["shown"] == shown, "the Admin page scans exactly what reviewers see"
    classifier, rule = shown["classifier"], shown["best_rule"]
    assert not shown["given_away"]
    assert classifier["p_above_chance"] > 0.05 and 0.35 <= classifier["accuracy"] <= 0.65, classifier
    assert rule["p_above_chance"] > 0.05, rule
    assert shown["alike"] > 0, "the same prescription from both runs cannot be told apart"


def test_one_telling_feature_is_found_and_named():
    pairs = [(f"Sure! {first}", second) for first, second in zip(REGIMENS, REGIMENS[6:] + REGIMENS[:6])]
    pairs.append(("8 Gy in 1 fraction", "8 Gy in 1 fraction"))
    scan = blinding.scan_pairs(pairs)
    assert (scan["cases"], scan["alike"]) == (13, 1)
    assert scan["given_away"] and scan["classifier"]["accuracy"] == 1.0
    assert scan["best_rule"]["rule"] == "the text that opens with 'Sure' or the like is run 1"
    assert (scan["best_rule"]["hits"], scan["best_rule"]["n"]) == (12, 12)
    given_away, text = blinding.describe({"shown": scan, "raw": scan})
    assert given_away and "pick run 1 in 100% of 12 cases" in text
    assert blinding.scan_pairs(pairs[:3])["classifier"] is None


def test_a_reviewer_added_to_a_running_study_is_blinded_like_the_others(db_path, monkeypatch):
    """Everything the Review page sends a reviewer who joined late, case by case and once the study is
    closed, holds no run id, model name or side; their texts are the extracted answers, as everyone's."""
    monkeypatch.setenv("ROCORE_DB", str(db_path))
    monkeypatch.chdir(ROOT)
    info = make_review_db(db_path, n_cases=20, reviewers=("ada", "ben"), overlap=1, raw_outputs=demo_like_outputs)
    with opened(db_path) as conn:
        item = review.open_item(conn, info["ids"]["ada"], info["study_id"])
        review.submit_rating(conn, info["ids"]["ada"], item.assignment_id, good_rating(), 0)
        dora = auth.add_user(conn, "dora", actor_id=info["admin_id"])[0].id
        added = review.add_reviewer_to_study(conn, actor_id=info["admin_id"], study_id=info["study_id"],
                                             reviewer_id=dora)
    at = AppTest.from_file(str(ROOT / "app_pages" / "review.py"), default_timeout=30)
    at.session_state["user"] = {"id": dora, "name": "dora", "role": "reviewer"}
    at.run()
    pages, texts = [], []
    for position in range(1, added["n_assignments"] + 1):
        assert not at.exception and at.subheader[0].value == f"Case {position} of {added['n_assignments']}"
        pages.append(everything_sent(at))
        texts += [t.value for t in at.text[-2:]]
        if position < added["n_assignments"]:
            next(b for b in at.button if b.label == "Next case").click().run()
    with opened(db_path) as conn:
        review.close_study(conn, actor_id=info["admin_id"], study_id=info["study_id"])
    at.run()
    assert at.info[0].value.startswith("This study was closed on ")
    pages.append(everything_sent(at))
    sent = "\n".join(pages).casefold()
    assert "regimen a" in sent and [secret for secret in SECRETS if secret.casefold() in sent] == []
    assert len(texts) == 2 * added["n_assignments"]
    assert not [t for t in texts if "icd" in t.casefold() or "modality" in t.casefold()]


def test_nothing_sent_to_the_adjudicator_reveals_runs_models_sides_or_raters(db_path, monkeypatch):
    """The adjudication section, case by case, after a refused and a stored verdict and once the queue is
    empty, holds no run id, model name, side mapping or rater name; its texts are the extracted answers."""
    from test_adjudication import RATERS, rated_study
    from test_page_review import adjudicate_on_page

    monkeypatch.setenv("ROCORE_DB", str(db_path))
    monkeypatch.chdir(ROOT)
    info = rated_study(db_path)
    at = AppTest.from_file(str(ROOT / "app_pages" / "review.py"), default_timeout=30)
    at.session_state["user"] = {"id": info["ids"]["eve"], "name": "eve", "role": "reviewer"}
    at.run()
    pages = [everything_sent(at)]
    next(b for b in at.button if b.label == "Submit verdict").click()
    at.run()
    pages.append(everything_sent(at))  # the refusal
    while at.radio:
        at = adjudicate_on_page(at, "Acceptable", "Not acceptable")
        pages.append(everything_sent(at))
    assert at.success[-1].value.startswith("No case waits for adjudication")
    sent = "\n".join(pages).casefold()
    assert "regimen a" in sent and "of 3 raters found" in sent and "gy in" in sent
    assert [secret for secret in SECRETS if secret.casefold() in sent] == []
    assert [name for name in RATERS if re.search(rf"\b{name}\b", sent)] == []
