import pytest

from rocore.data.labels import (
    MODALITIES,
    LabelError,
    icd10_billable_examples,
    icd10_status,
    modalities_mentioned,
    normalise_icd10,
    normalise_modality,
)


@pytest.mark.parametrize("raw, expected", [
    ("photon", "photon"), ("Photons", "photon"), ("  PHOTON ", "photon"), ("IMRT", "photon"),
    ("VMAT", "photon"), ("3D-CRT", "photon"), ("x-rays", "photon"), ("SBRT", "photon"),
    ("Gamma Knife", "photon"), ("Photon (VMAT)", "photon"), ("6X", "photon"),
    ("proton", "proton"), ("Protons", "proton"), ("IMPT", "proton"), ("PBS", "proton"),
    ("pencil beam scanning", "proton"), ("proton beam therapy", "proton"),
    ("electron", "electron"), ("Electrons", "electron"), ("e-beam", "electron"), ("en face 9 MeV", "electron"),
    ("brachytherapy", "brachytherapy"), ("Brachy", "brachytherapy"), ("HDR", "brachytherapy"),
    ("LDR", "brachytherapy"), ("seed implant", "brachytherapy"), ("I-125 seeds", "brachytherapy"),
    ("HDR brachytherapy", "brachytherapy"), ("tandem and ovoid", "brachytherapy"),
])
def test_normalise_modality(raw, expected):
    assert normalise_modality(raw) == expected
    assert expected in MODALITIES


@pytest.mark.parametrize("raw, message", [
    ("", "is empty"), ("laser", "is not a treatment modality"), ("carbon ions", "is not a treatment modality"),
    ("photon + HDR boost", "more than one modality"),
])
def test_normalise_modality_refuses(raw, message):
    with pytest.raises(LabelError, match=message):
        normalise_modality(raw)


def test_modalities_mentioned_in_order_and_whole_words_only():
    assert modalities_mentioned("45 Gy/25 IMRT then HDR 7 Gy x 4") == ["photon", "brachytherapy"]
    assert modalities_mentioned("70GyRBE in 35 fractions") == ["proton"]
    assert modalities_mentioned("10 x 2 Gy") == []
    assert modalities_mentioned("photonics, seedsman, protonated, imrtx") == []


@pytest.mark.parametrize("raw, expected", [
    ("C50.412", "C50.412"), ("c50412", "C50.412"), (" c50.412 ", "C50.412"), ("C61", "C61"),
    ("c 34.11", "C34.11"), ("C4A9", "C4A.9"), ("d0511", "D05.11"),
])
def test_normalise_icd10(raw, expected):
    assert normalise_icd10(raw) == expected


@pytest.mark.parametrize("raw", ["", "21", "C5", "50.412", "C50.41234", "breast"])
def test_normalise_icd10_refuses_malformed(raw):
    with pytest.raises(LabelError):
        normalise_icd10(raw)


@pytest.mark.parametrize("code, status", [
    ("C50.412", "billable"), ("C61", "billable"), ("C34.2", "billable"), ("L91.0", "billable"),
    ("C50", "category"), ("C50.41", "category"), ("C99.9", "invalid"), ("C34.2X", "invalid"),
    ("21", "invalid"),
])
def test_icd10_status_uses_the_cdc_code_set(code, status):
    assert icd10_status(code) == status


def test_billable_examples_are_billable_children():
    examples = icd10_billable_examples("C50")
    assert examples and all(e.startswith("C50.") and icd10_status(e) == "billable" for e in examples)


def test_code_table_is_cached_per_package_version_and_rebuilt_when_corrupt(tmp_path, monkeypatch):
    from rocore.data import labels

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    labels._icd10_codes.cache_clear()
    try:
        assert icd10_status("C61") == "billable"
        (cached,) = (tmp_path / "rocore").glob("icd10cm-codes-*.json")
        cached.write_text("{not json")
        labels._icd10_codes.cache_clear()
        assert icd10_status("C50") == "category"
        assert cached.read_text().startswith("{\"")
    finally:
        labels._icd10_codes.cache_clear()
