"""Tests for rocore.data.regimen: the surface forms of the clinical reference, and robustness."""

from __future__ import annotations

import json
import random
import time

import pytest

from rocore.data.labels import MODALITIES
from rocore.data.regimen import Component, ParsedRegimen, parse_regimen

# (text, expected components): each expected component lists only the fields it checks.
CASES = [
    # total in fractions
    ("70 Gy in 35 fx", [dict(total_dose_gy=70.0, fractions=35, dose_per_fraction_gy=2.0)]),
    ("60 Gy/20", [dict(total_dose_gy=60.0, fractions=20, dose_per_fraction_gy=3.0)]),
    ("30Gy/10#", [dict(total_dose_gy=30.0, fractions=10, dose_per_fraction_gy=3.0)]),
    ("25Gy/5F", [dict(total_dose_gy=25.0, fractions=5, dose_per_fraction_gy=5.0)]),
    ("60 Gy in 30 fractions", [dict(total_dose_gy=60.0, fractions=30)]),
    ("36.25 Gy/5 fractions", [dict(total_dose_gy=36.25, fractions=5, dose_per_fraction_gy=7.25)]),
    ("40 Gy/15", [dict(total_dose_gy=40.0, fractions=15, dose_per_fraction_gy=2.6667)]),
    ("60 Gy in 30 daily fractions", [dict(total_dose_gy=60.0, fractions=30, frequency="daily")]),
    ("66 gy over 33 fractions", [dict(total_dose_gy=66.0, fractions=33)]),
    # centigray
    ("7000 cGy/35", [dict(total_dose_gy=70.0, fractions=35, dose_per_fraction_gy=2.0)]),
    ("600 cGy x 5", [dict(total_dose_gy=30.0, fractions=5, dose_per_fraction_gy=6.0)]),
    ("5040 cGy in 28 fx", [dict(total_dose_gy=50.4, fractions=28, dose_per_fraction_gy=1.8)]),
    # count x dose, dose x count: the number carrying the unit is the dose per fraction
    ("5 x 10 Gy", [dict(total_dose_gy=50.0, fractions=5, dose_per_fraction_gy=10.0)]),
    ("5x5 Gy", [dict(total_dose_gy=25.0, fractions=5, dose_per_fraction_gy=5.0)]),
    ("2 Gy x 35", [dict(total_dose_gy=70.0, fractions=35, dose_per_fraction_gy=2.0)]),
    ("18 Gy × 3", [dict(total_dose_gy=54.0, fractions=3, dose_per_fraction_gy=18.0)]),
    ("8 Gy x1", [dict(total_dose_gy=8.0, fractions=1, dose_per_fraction_gy=8.0)]),
    ("35 fractions of 2 Gy", [dict(total_dose_gy=70.0, fractions=35, dose_per_fraction_gy=2.0)]),
    ("60 Gy in 30 fractions of 2 Gy", [dict(total_dose_gy=60.0, fractions=30, dose_per_fraction_gy=2.0)]),
    # per fraction
    ("1.8 Gy per fraction to 50.4 Gy", [dict(total_dose_gy=50.4, fractions=28, dose_per_fraction_gy=1.8)]),
    ("50.4 Gy at 1.8 Gy/fx", [dict(total_dose_gy=50.4, fractions=28, dose_per_fraction_gy=1.8)]),
    ("54 Gy in 1.8 Gy fractions", [dict(total_dose_gy=54.0, fractions=30, dose_per_fraction_gy=1.8)]),
    ("70 Gy in 35 fractions, 2 Gy per fraction, daily, IMRT",
     [dict(total_dose_gy=70.0, fractions=35, dose_per_fraction_gy=2.0, frequency="daily",
           technique="IMRT", modality="photon")]),
    # number words and single fractions
    ("20 Gy in five fractions", [dict(total_dose_gy=20.0, fractions=5, dose_per_fraction_gy=4.0)]),
    ("45 Gy in twenty-five fractions", [dict(total_dose_gy=45.0, fractions=25)]),
    ("40 Gy in Fifteen fractions", [dict(total_dose_gy=40.0, fractions=15)]),
    ("8 Gy single fraction", [dict(total_dose_gy=8.0, fractions=1, dose_per_fraction_gy=8.0)]),
    ("8 Gy in a single fraction", [dict(total_dose_gy=8.0, fractions=1)]),
    ("a single 8 Gy fraction", [dict(total_dose_gy=8.0, fractions=1, dose_per_fraction_gy=8.0)]),
    ("8 Gy in one fraction", [dict(total_dose_gy=8.0, fractions=1)]),
    # frequency
    ("45 Gy/30 fx BID", [dict(total_dose_gy=45.0, fractions=30, dose_per_fraction_gy=1.5, frequency="BID")]),
    ("45 Gy in 30 fractions twice daily", [dict(fractions=30, frequency="BID")]),
    ("TBI 12 Gy in 6 fractions b.i.d.", [dict(fractions=6, frequency="BID", technique="TBI")]),
    ("HDR 7 Gy weekly x 3", [dict(total_dose_gy=21.0, fractions=3, frequency="weekly", technique="HDR")]),
    ("SBRT 50 Gy/5 every other day", [dict(fractions=5, frequency="every other day")]),
    ("60 Gy/30", [dict(frequency=None)]),
    # several courses
    ("45 Gy/25 then HDR 7 Gy x 4",
     [dict(total_dose_gy=45.0, fractions=25, technique=None, text="45 Gy/25"),
      dict(total_dose_gy=28.0, fractions=4, dose_per_fraction_gy=7.0, technique="HDR",
           modality="brachytherapy", text="HDR 7 Gy x 4")]),
    ("40 Gy/15 followed by a 10 Gy boost in 4 fractions",
     [dict(total_dose_gy=40.0, fractions=15),
      dict(total_dose_gy=10.0, fractions=4, dose_per_fraction_gy=2.5,
           text="a 10 Gy boost in 4 fractions")]),
    ("45 Gy in 25 fractions to the pelvis with IMRT and weekly cisplatin, followed by HDR "
     "brachytherapy 28 Gy in 4 fractions",
     [dict(total_dose_gy=45.0, fractions=25, modality="photon", technique="IMRT", frequency=None),
      dict(total_dose_gy=28.0, fractions=4, dose_per_fraction_gy=7.0, modality="brachytherapy",
           technique="HDR")]),
    ("50 Gy/25 to the chest wall, 10 Gy/5 boost to the scar",
     [dict(total_dose_gy=50.0, fractions=25, text="50 Gy/25 to the chest wall"),
      dict(total_dose_gy=10.0, fractions=5, text="10 Gy/5 boost to the scar")]),
    ("8 Gy/1; 20 Gy/5", [dict(total_dose_gy=8.0, fractions=1), dict(total_dose_gy=20.0, fractions=5)]),
    ("EBRT 45 Gy/25 + HDR 15 Gy x1",
     [dict(total_dose_gy=45.0, modality="photon"),
      dict(total_dose_gy=15.0, fractions=1, technique="HDR", modality="brachytherapy")]),
    ("30 Gy to the hip and 8 Gy to the rib", [dict(total_dose_gy=30.0), dict(total_dose_gy=8.0)]),
    ("CSI 23.4 Gy/13 followed by a boost to 54 Gy",
     [dict(total_dose_gy=23.4, fractions=13, dose_per_fraction_gy=1.8, technique="CSI"),
      dict(total_dose_gy=54.0, fractions=None, dose_per_fraction_gy=None, text="a boost to 54 Gy")]),
    ("2 x ABVD followed by 20 Gy ISRT in 10 fractions",
     [dict(total_dose_gy=20.0, fractions=10, technique="ISRT", modality="photon")]),
    # simultaneous integrated boost
    ("70/63/56 Gy in 35 fx",
     [dict(total_dose_gy=70.0, fractions=35, dose_per_fraction_gy=2.0, dose_levels_gy=(70.0, 63.0, 56.0))]),
    ("56/70 Gy in 35 fractions", [dict(total_dose_gy=70.0, dose_levels_gy=(70.0, 56.0))]),
    ("70 Gy/35", [dict(dose_levels_gy=(70.0,))]),
    # protons
    ("70 GyRBE in 35 fractions with IMPT",
     [dict(total_dose_gy=70.0, fractions=35, modality="proton", technique="IMPT")]),
    ("74 Gy(RBE)", [dict(total_dose_gy=74.0, fractions=None, modality="proton")]),
    ("79.2 Gy (RBE) in 44 fractions", [dict(total_dose_gy=79.2, fractions=44, dose_per_fraction_gy=1.8)]),
    ("70 GyE/35", [dict(total_dose_gy=70.0, fractions=35)]),
    ("70 CGE", [dict(total_dose_gy=70.0, modality="proton")]),
    ("PBS 54 Gy/30", [dict(total_dose_gy=54.0, fractions=30, modality="proton", technique="PBS")]),
    # electrons
    ("electrons 9 MeV en face 50 Gy in 20 fx",
     [dict(total_dose_gy=50.0, fractions=20, modality="electron", technique="electron", energy="9 MeV")]),
    # brachytherapy
    ("HDR vaginal cuff 21 Gy in 3 fractions",
     [dict(total_dose_gy=21.0, fractions=3, dose_per_fraction_gy=7.0, modality="brachytherapy",
           technique="HDR")]),
    ("7 Gy x 3 HDR", [dict(total_dose_gy=21.0, fractions=3, technique="HDR", modality="brachytherapy")]),
    ("I-125 seed implant to 145 Gy",
     [dict(total_dose_gy=145.0, fractions=None, dose_per_fraction_gy=None, isotope="I-125",
           technique="LDR", modality="brachytherapy")]),
    ("Pd-103 125 Gy", [dict(total_dose_gy=125.0, fractions=None, isotope="Pd-103", technique="LDR",
                            modality="brachytherapy")]),
    ("Cs131 115 Gy", [dict(total_dose_gy=115.0, isotope="Cs-131")]),
    ("Ir-192 HDR 7 Gy x 3", [dict(fractions=3, isotope="Ir-192", technique="HDR")]),
    # photons
    ("6X IMRT 70 Gy/35",
     [dict(total_dose_gy=70.0, fractions=35, energy="6X", technique="IMRT", modality="photon")]),
    ("10FFF VMAT 54 Gy/3",
     [dict(total_dose_gy=54.0, fractions=3, energy="10FFF", technique="VMAT", modality="photon")]),
    ("6 MV 3D-CRT 30 Gy/10", [dict(energy="6 MV", technique="3DCRT", modality="photon")]),
    ("SBRT 54 Gy/3", [dict(total_dose_gy=54.0, fractions=3, dose_per_fraction_gy=18.0, technique="SBRT",
                           modality="photon")]),
    ("SRS 24 Gy x 1", [dict(total_dose_gy=24.0, fractions=1, technique="SRS", modality="photon")]),
    ("Gamma Knife 20 Gy to the 50% isodose line",
     [dict(total_dose_gy=20.0, fractions=None, technique="SRS", modality="photon")]),
    ("HA-WBRT 30 Gy in 10 fractions with memantine", [dict(fractions=10, technique="HA-WBRT")]),
    # chemotherapy and hormone therapy are not components, and their schedules are not frequencies
    ("60 Gy/30 with concurrent temozolomide 75 mg/m2 daily", [dict(total_dose_gy=60.0, frequency=None)]),
    ("capecitabine 825 mg/m2 BID with 50.4 Gy/28", [dict(total_dose_gy=50.4, frequency=None)]),
    ("78 Gy/39 with 6 months of ADT", [dict(total_dose_gy=78.0, fractions=39)]),
    ("70 Gy in 35 fx with weekly cisplatin 40 mg/m2", [dict(fractions=35, frequency=None)]),
    # percentages, durations and organ constraints are not doses or counts
    ("20 Gy/5 to the 80% isodose", [dict(total_dose_gy=20.0, fractions=5)]),
    ("30 Gy in 2 weeks", [dict(total_dose_gy=30.0, fractions=None)]),
    ("70 Gy/35, cord max 45 Gy", [dict(total_dose_gy=70.0, fractions=35)]),
]


def _assert_known_modality(component: Component) -> None:
    assert component.modality is None or component.modality in MODALITIES


@pytest.mark.parametrize("text, expected", CASES, ids=[c[0][:50] for c in CASES])
def test_surface_forms(text, expected):
    parsed = parse_regimen(text)
    assert len(parsed.components) == len(expected), parsed.as_dict()
    for component, fields in zip(parsed.components, expected):
        _assert_known_modality(component)
        got = {name: getattr(component, name) for name in fields}
        assert got == fields, parsed.as_dict()


@pytest.mark.parametrize("text", [
    "", "   ", "Patient declined treatment", "PSA 12 ng/mL, Gleason 7", "cisplatin 40 mg/m2 weekly",
    "temozolomide 75 mg/m2 daily", "Observation; no radiation", "Gleason 4+3, T2 N0 M0",
    "prescribed to the 50% isodose line", "Dmax < 45 Gy", "treated in 5 fractions",
])
def test_no_prescription_gives_no_components(text):
    assert parse_regimen(text) == ParsedRegimen((), ())


# Spellings the parser reads as doses but rocore.data.labels does not yet map to a modality.
@pytest.mark.parametrize("text, modality", [
    ("79.2 Gy (RBE) in 44 fractions", "proton"), ("70 GyE/35", "proton"), ("70 Gy(IsoE)/35", "proton"),
    ("cesium-131 115 Gy", "brachytherapy"), ("35 Gy in 5 fractions with orthovoltage", "photon"),
])
def test_modality_of_less_common_spellings(text, modality):
    assert parse_regimen(text).components[0].modality == modality


@pytest.mark.parametrize("text, modalities", [
    ("Proton therapy; CSI 36 Gy/20 followed by a boost to 54 Gy", ["proton", "proton"]),
    ("IMRT to the prostate; 78 Gy/39 and HDR 15 Gy x 1", [None, "brachytherapy"]),
    # a modality named by another component's own span is that component's, not the text's
    ("40 Gy in 15 fractions to the whole breast followed by an electron boost of 10 Gy in 5 fractions",
     [None, "electron"]),
    ("45 Gy/25 then HDR 7 Gy x 4", [None, "brachytherapy"]),
])
def test_modality_is_inherited_only_from_a_text_that_names_one(text, modalities):
    assert [c.modality for c in parse_regimen(text).components] == modalities


def test_own_modality_wins_over_the_text():
    parsed = parse_regimen("50 Gy/25 with photons, then electron boost 10 Gy/5 with 9 MeV")
    assert [c.modality for c in parsed.components] == ["photon", "electron"]
    assert parsed.components[1].energy == "9 MeV"


@pytest.mark.parametrize("text, warning", [
    ("60 Gy/2", "component 1: 30 Gy per fraction is outside 1-25 Gy"),
    ("20 Gy in 40 fractions", "component 1: 0.5 Gy per fraction is outside 1-25 Gy"),
    ("HDR 18 Gy x 1", "component 1: 18 Gy per fraction is outside 1-15 Gy for HDR"),
    ("SRS 25 Gy x 1", "component 1: 25 Gy per fraction is outside 1-24 Gy for SRS"),
    ("50 Gy in 50 fractions", "component 1: 50 fractions is outside 1-45"),
    ("70 Gy in 35 fx at 3 Gy/fx", "component 1: 35 x 3 Gy = 105 Gy, not the stated 70 Gy"),
    ("50 Gy at 1.8 Gy per fraction", "component 1: 50 Gy is not a whole number of 1.8 Gy fractions"),
    ("45 Gy/25 then 60 Gy/2", "component 2: 30 Gy per fraction is outside 1-25 Gy"),
])
def test_sanity_warnings_keep_the_component(text, warning):
    parsed = parse_regimen(text)
    assert warning in parsed.warnings
    assert parsed.components


@pytest.mark.parametrize("text", [
    "70 Gy in 35 fx", "36.25 Gy/5", "50 Gy in 15 fractions at 3.33 Gy", "SRS 24 Gy x 1", "HDR 7 Gy x 3",
    "I-125 seed implant to 145 Gy", "45 Gy/25 then HDR 7 Gy x 4",
])
def test_plausible_prescriptions_give_no_warnings(text):
    assert parse_regimen(text).warnings == ()


def test_as_dict_is_json_ready():
    parsed = parse_regimen("70/63/56 Gy in 35 fx; 60 Gy/2")
    data = parsed.as_dict()
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert data["components"][0]["dose_levels_gy"] == [70.0, 63.0, 56.0]
    assert set(data["components"][0]) == set(Component.__dataclass_fields__)
    assert data["warnings"] == list(parsed.warnings) != []


_FUZZ_TOKENS = [
    *"0123456789 ./xX×*#%+-,;()@\n\t", "Gy", "cGy", "GyRBE", "Gy(RBE)", "CGE", "fx", "fractions", "F",
    "in", "over", "of", "at", "to", "then", "followed by", "and", "single", "a", "five", "twenty-",
    "per fraction", "BID", "weekly", "daily", "cisplatin", "mg/m2", "MeV", "MV", "6X", "10FFF", "I-125",
    "Pd-103", "HDR", "SBRT", "IMPT", "electrons", "max", "<", "é", "Ω", "\u200b", "💥", "\x00",
]


def test_fuzz_never_raises_and_stays_json_ready():
    rng = random.Random(20240601)
    for _ in range(1500):
        if rng.random() < 0.2:
            text = "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(60)))
        else:
            text = "".join(rng.choice(_FUZZ_TOKENS) for _ in range(rng.randrange(30)))
        parsed = parse_regimen(text)
        json.dumps(parsed.as_dict(), allow_nan=False)
        for component in parsed.components:
            _assert_known_modality(component)
            assert component.total_dose_gy is not None or component.dose_per_fraction_gy is not None
            assert component.text and component.text in text


@pytest.mark.parametrize("text, components", [
    ("70 Gy in 35 fx; " * 500, 500), ("1" * 8000, 0), ("1/" * 4000 + "Gy", 0), ("1 Gy, " * 2000, 1),
])
def test_long_degenerate_output_is_parsed_in_linear_time(text, components):
    started = time.perf_counter()
    parsed = parse_regimen(text)
    assert time.perf_counter() - started < 1.0
    assert len(parsed.components) == components


def test_rejects_non_strings():
    with pytest.raises(TypeError):
        parse_regimen(None)  # type: ignore[arg-type]
