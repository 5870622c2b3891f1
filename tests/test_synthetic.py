"""The synthetic dataset: valid codes, a realistic modality mix, answers that follow from the
note by the stated clinical rules, and no answer written into the note."""

from __future__ import annotations

import json
import re
import time
from collections import Counter

import pytest

from rocore.data import synthetic
from rocore.data.labels import MODALITIES, icd10_status, modalities_mentioned, normalise_icd10
from rocore.data.synthetic import FIELDS, generate_cases, write_jsonl

N = 3000
PAEDIATRIC = {"medulloblastoma", "ependymoma", "craniopharyngioma"}


@pytest.fixture(scope="module")
def cases() -> list[dict]:
    return generate_cases(N, 0)


def of(cases: list[dict], *scenarios: str) -> list[dict]:
    """The cases of these scenarios; there must be some, or the rule tested would pass vacuously."""
    chosen = [c for c in cases if c["scenario"] in scenarios]
    assert chosen, f"no {scenarios} cases to check"
    return chosen


def sizes_mm(text: str) -> list[float]:
    """Every size in the note, in mm, including lists such as "17, 15 and 10 mm"."""
    sizes = []
    for numbers, unit in re.findall(r"((?:\d+(?:\.\d+)?(?:, | and ))*\d+(?:\.\d+)?) (cm|mm)\b", text):
        sizes += [float(x) * (10 if unit == "cm" else 1) for x in re.findall(r"\d+(?:\.\d+)?", numbers)]
    return sizes


def stated_ecog(text: str) -> int | None:
    """The ECOG grade the note states, read from ECOG, KPS or Lansky; None if it states none."""
    if m := re.search(r"ECOG(?: PS| performance status)? (\d)", text):
        return int(m.group(1))
    if m := re.search(r"KPS (\d+)", text):
        return {100: 0, 80: 1, 60: 2, 40: 3}[int(m.group(1))]
    if m := re.search(r"Lansky(?: play-performance score)? (\d+)", text):
        return {100: 0, 80: 1}[int(m.group(1))]
    return 0 if "Fully active" in text else None


def side_in_code(code: str) -> str | None:
    """The side an ICD-10-CM code encodes, or None where it encodes none."""
    digit_sides = {"1": "right", "2": "left"}
    if re.fullmatch(r"C50\.\d[12][12]", code):
        return digit_sides[code[6]]
    if code == "C34.2":  # the middle lobe is right-sided
        return "right"
    if re.fullmatch(r"(C34\.[013]|C49\.[12]|C62\.[0-9]|C69\.[0-9]|D05\.[0-9])[12]", code):
        return digit_sides[code[5]]
    if re.fullmatch(r"C44\.[267][12][29]", code):  # ear and limbs: 2 right, 9 left
        return "right" if code[6] == "2" else "left"
    if re.fullmatch(r"C4A\.[267][12]", code):
        return digit_sides[code[5]]
    return None


def test_shape_ids_and_metadata(cases):
    assert len(cases) == N
    assert [c["case_id"] for c in cases] == [f"SYN-{i:05d}" for i in range(1, N + 1)]
    for c in cases:
        assert tuple(c) == FIELDS
        assert c["modality"] in MODALITIES
        assert c["sex"] in ("female", "male") and c["laterality"] in ("left", "right", None)
        assert type(c["age"]) is int and type(c["ecog"]) is int and 0 <= c["ecog"] <= 3
        assert c["case_id"] not in c["diagnosis"]


def test_every_code_is_billable_and_normalised(cases):
    for c in cases:
        assert normalise_icd10(c["icd10"]) == c["icd10"], c
        assert icd10_status(c["icd10"]) == "billable", c


def test_modality_mix_is_that_of_an_academic_centre(cases):
    share = {m: n / N for m, n in Counter(c["modality"] for c in cases).items()}
    assert set(share) == set(MODALITIES)
    assert 0.73 <= share["photon"] <= 0.82
    assert 0.09 <= share["proton"] <= 0.16
    assert 0.045 <= share["brachytherapy"] <= 0.085
    assert 0.025 <= share["electron"] <= 0.075


def test_laterality_agrees_between_text_metadata_and_code(cases):
    lateral_codes = 0
    for c in cases:
        words = set(re.findall(r"\b(left|right)\b", c["diagnosis"].lower()))
        assert words == ({c["laterality"]} if c["laterality"] else set()), c
        coded = side_in_code(c["icd10"])
        if coded:
            lateral_codes += 1
            assert coded == c["laterality"], c
    assert lateral_codes > N / 5


def test_codes_follow_subsite_and_sex(cases):
    quadrants = {"upper-outer": "4", "upper outer": "4", "upper-inner": "2", "lower-outer": "5",
                 "lower-inner": "3", "central portion": "1", "axillary tail": "6"}
    for c in of(cases, "breast_lumpectomy", "breast_lumpectomy_boost", "breast_pmrt", "breast_pmrt_proton"):
        [digit] = [d for phrase, d in quadrants.items() if phrase in c["diagnosis"]]
        assert c["icd10"][4] == digit and c["icd10"][5] == ("1" if c["sex"] == "female" else "2"), c
    lobes = {"upper lobe": ("C34.11", "C34.12"), "lingula": ("C34.12",), "middle lobe": ("C34.2",),
             "lower lobe": ("C34.31", "C34.32")}
    for c in of(cases, "nsclc_stage3", "nsclc_sbrt_peripheral", "nsclc_sbrt_central", "sclc_limited"):
        [codes] = [codes for phrase, codes in lobes.items() if phrase in c["diagnosis"]]
        assert c["icd10"] in codes, c
    for c in of(cases, "oropharynx"):
        assert c["icd10"] == ("C09.9" if "tonsil" in c["diagnosis"] else "C01"), c


def test_text_states_age_sex_and_performance_status(cases):
    for c in cases:
        text = c["diagnosis"]
        assert re.search(rf"\b{c['age']}(?:-year-old|[MF]\b)", text), c
        male = bool(re.search(r"\b(man|male|boy)\b|\b\d+M\b", text))
        female = bool(re.search(r"\b(woman|female|girl)\b|\b\d+F\b", text))
        assert (male, female) == (c["sex"] == "male", c["sex"] == "female"), c
        stated = stated_ecog(text)
        assert stated is None or stated == c["ecog"], c


def test_ages_and_sexes_are_plausible(cases):
    for c in cases:
        if c["scenario"] in PAEDIATRIC:
            assert 2 <= c["age"] <= 17, c
        else:
            assert 15 <= c["age"] <= 95, c
        if c["site"] in ("prostate", "gyn") or c["scenario"] == "seminoma":
            assert c["sex"] == ("male" if c["site"] != "gyn" else "female"), c


def test_write_jsonl_is_byte_identical_for_a_seed_and_differs_across_seeds(cases, tmp_path):
    first, again, other = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    write_jsonl(cases, first)
    write_jsonl(generate_cases(N, 0), again)
    write_jsonl(generate_cases(N, 1), other)
    data = first.read_bytes()
    assert data == again.read_bytes()
    assert data != other.read_bytes()
    lines = data.decode("utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == N + 1 and b"\r" not in data
    assert [json.loads(line) for line in lines[:-1]] == cases
    assert list(json.loads(lines[0])) == list(FIELDS)


def test_diagnosis_texts_are_unique_and_short(cases):
    assert len({c["diagnosis"] for c in cases}) == N
    for c in cases:
        assert 25 <= len(c["diagnosis"].split()) <= 70, c
        assert len(c["regimen"].split()) <= 25, c


def test_no_answer_leaks_into_the_diagnosis(cases):
    for c in cases:
        text = c["diagnosis"]
        assert modalities_mentioned(text) == [], c
        assert not re.search(r"\bc?Gy|fraction|\bMeV\b", text), c
        assert c["icd10"] not in text and c["icd10"].replace(".", "") not in text, c
        assert c["regimen"] not in text, c


def test_regimens_are_standard_prescriptions(cases):
    assert len({c["regimen"] for c in cases}) <= 120  # a fixed wording per clinical decision
    prescription = re.compile(r"\d+(\.\d+)? Gy(RBE)? in \d+ (twice-daily )?fractions?|seed implant to|plaque")
    for c in cases:
        regimen = c["regimen"]
        assert prescription.search(regimen), c
        assert ("GyRBE" in regimen) == (c["modality"] == "proton"), c


def test_enough_scenarios_and_sites(cases):
    assert len({c["scenario"] for c in cases}) >= 30
    assert len({c["site"] for c in cases}) >= 10


def test_gbm_fractionation_follows_age_and_performance_status(cases):
    for c in of(cases, "gbm_standard", "gbm_hypofractionated"):
        short = c["age"] >= 65 or c["ecog"] == 2
        assert c["regimen"].startswith("40 Gy in 15 fractions" if short else "60 Gy in 30 fractions"), c


def test_srs_dose_follows_lesion_size(cases):
    for c in of(cases, "brain_mets_srs"):
        largest = max(sizes_mm(c["diagnosis"]))
        dose = 24 if largest <= 20 else 18 if largest <= 30 else 15
        assert c["regimen"].startswith(f"{dose} Gy in 1 fraction with SRS"), c
    for c in of(cases, "brain_mets_whole_brain"):
        assert int(re.search(r"(\d+) (?:brain|enhancing) metastases", c["diagnosis"]).group(1)) >= 5, c


def test_frail_patients_get_a_single_fraction(cases):
    frail = [c for c in of(cases, "bone_mets", "bone_mets_spine_sbrt", "bone_mets_postop", "cord_compression")
             if c["ecog"] == 3]
    assert frail and all(c["regimen"] == "8 Gy in 1 fraction" for c in frail)
    for c in of(cases, "bone_mets_spine_sbrt"):
        assert c["ecog"] <= 1 and "Oligometastatic" in c["diagnosis"] and "vertebral" in c["diagnosis"], c


def test_prostate_risk_groups_drive_the_prescription(cases):
    for c in of(cases, "prostate_ldr"):
        assert re.search(r"3\+3=6|Grade Group 1|GG1", c["diagnosis"]) and c["modality"] == "brachytherapy", c
    for c in of(cases, "prostate_sbrt"):
        assert re.search(r"3\+4=7|Grade Group 2|GG2", c["diagnosis"]), c
        assert int(re.search(r"IPSS (\d+)", c["diagnosis"]).group(1)) <= 14, c
    for c in of(cases, "prostate_salvage"):
        psa = float(re.search(r"PSA(?: of)? (\d\.\d\d)", c["diagnosis"]).group(1))
        assert c["regimen"].endswith("ADT") == (psa >= 0.6), c


def test_breast_boost_when_young_or_high_grade(cases):
    for c in of(cases, "breast_lumpectomy", "breast_lumpectomy_boost"):
        grade = int(re.search(r"grade (\d)", c["diagnosis"]).group(1))
        assert ("boost" in c["regimen"]) == (c["age"] < 50 or grade == 3), c
        assert ("regional nodes" in c["regimen"]) == ("sentinel nodes positive" in c["diagnosis"]), c


def test_more_decision_rules(cases):
    for c in of(cases, "bladder"):
        egfr = int(re.search(r"(?:eGFR|clearance) (\d+)", c["diagnosis"]).group(1))
        assert ("cisplatin" in c["regimen"]) == (egfr >= 60 and c["ecog"] <= 1), c
    for c in of(cases, "rectum"):
        distance = int(re.search(r"(\d+) cm from the anal verge", c["diagnosis"]).group(1))
        assert c["regimen"].startswith("50.4 Gy" if distance <= 5 else "25 Gy"), c
    for c in of(cases, "cord_compression"):
        operated = re.search(r"laminectomy|decompression and fixation", c["diagnosis"])
        dose = "30 Gy in 10" if operated else "8 Gy in 1" if c["ecog"] == 3 else "20 Gy in 5"
        assert c["regimen"].startswith(dose), c
    for c in of(cases, "oral_cavity_postop"):
        high_risk = "margin positive" in c["diagnosis"] or "Extranodal extension present" in c["diagnosis"]
        assert c["regimen"].startswith("66 Gy" if high_risk else "60 Gy"), c
    for c in of(cases, "nasopharynx", "oropharynx"):
        t, n = map(int, re.search(r"cT(\d)N(\d)", c["diagnosis"]).groups())
        if c["scenario"] == "nasopharynx":
            assert c["regimen"].startswith("induction") == (t >= 3 or n >= 2), c
        else:
            assert ("cisplatin" in c["regimen"]) == (t > 2 or n > 0), c


def test_protons_only_for_a_reason_the_text_states(cases):
    reasons = {
        "medulloblastoma": lambda c: c["age"] < 18,
        "ependymoma": lambda c: c["age"] < 18,
        "craniopharyngioma": lambda c: c["age"] < 18,
        "chordoma": lambda c: "chordoma" in c["diagnosis"],
        "hn_reirradiation": lambda c: "chemoradiation" in c["diagnosis"],
        "lgg_proton": lambda c: c["age"] < 40,
        "hcc_proton": lambda c: sizes_mm(c["diagnosis"])[0] > 50,
        "breast_pmrt_proton": lambda c: (c["laterality"] == "left"
                                         and "internal mammary node" in c["diagnosis"]),
        "hodgkin_proton": lambda c: "mediastinal" in c["diagnosis"] and c["age"] <= 30,
        "uveal_melanoma_proton": lambda c: "optic disc" in c["diagnosis"],
    }
    for c in cases:
        if c["modality"] == "proton":
            assert c["scenario"] in reasons and reasons[c["scenario"]](c), c
    for c in of(cases, "hcc_sbrt", "hcc_proton"):
        assert (c["modality"] == "proton") == (sizes_mm(c["diagnosis"])[0] > 50), c
    for c in of(cases, "uveal_melanoma_plaque", "uveal_melanoma_proton"):
        match = re.search(r"(\d+\.\d) mm from the optic disc", c["diagnosis"])
        assert (c["modality"] == "proton") == (match is None or float(match.group(1)) < 3), c


def test_other_modalities_match_their_indication(cases):
    for c in cases:
        if c["modality"] == "electron":
            assert c["site"] == "skin" or c["scenario"] == "keloid", c
        if c["modality"] == "brachytherapy":
            assert c["scenario"] in ("prostate_ldr", "endometrium_cuff", "uveal_melanoma_plaque"), c
    for c in of(cases, "cervix"):
        assert c["modality"] == "photon", c
        assert ("para-aortic nodes with" in c["regimen"]) == ("IIIC2" in c["diagnosis"]), c
    for c in of(cases, "skin_bcc", "skin_scc"):
        dose = "50 Gy in 20" if c["age"] < 70 else "40 Gy in 10" if c["age"] < 85 else "35 Gy in 5"
        assert c["regimen"].startswith(dose), c


@pytest.mark.parametrize("n", [0, 1, 5])
def test_small_n(n):
    generated = generate_cases(n, 3)
    assert generated == generate_cases(n, 3)
    assert [c["case_id"] for c in generated] == [f"SYN-{i:05d}" for i in range(1, n + 1)]


def test_a_repeated_text_is_drawn_again(monkeypatch):
    """Real scenarios rarely collide, so a scenario with only three texts forces collisions."""
    template = {k: v for k, v in generate_cases(1, 0)[0].items() if k != "case_id"}

    def three_texts(rng):
        return {**template, "diagnosis": rng.choice("abc")}

    monkeypatch.setattr(synthetic, "_SCENARIOS", ((three_texts, 1),))
    monkeypatch.setattr(synthetic, "_CUMULATIVE", (1,))
    assert sorted(c["diagnosis"] for c in generate_cases(3, 0)) == ["a", "b", "c"]


def test_fast_enough():
    started = time.perf_counter()
    generate_cases(N, 42)
    assert time.perf_counter() - started < 2.0
