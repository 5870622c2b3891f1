"""The label vocabulary: treatment modalities and ICD-10-CM codes, and how raw values map onto them.

Every place that reads a modality or a code (import, the regimen parser, answer extraction,
metrics) goes through these functions, so that "IMPT", "Protons " and "proton" are one label
everywhere and a code is written one way everywhere.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import re
import warnings
from pathlib import Path

MODALITIES = ("photon", "proton", "electron", "brachytherapy")

# Term -> canonical modality. Terms are matched whole-word, case-insensitively, with any run of
# spaces, hyphens or underscores standing for a separator; a term must not start inside a word,
# so short ones such as "6x" cannot fire inside other words, but may follow a number ("70GyRBE").
MODALITY_SYNONYMS: dict[str, str] = {
    **{t: "photon" for t in (
        "photon", "photons", "x-ray", "x-rays", "xray", "xrays", "ebrt", "external beam",
        "external beam radiotherapy", "imrt", "vmat", "rapidarc", "3dcrt", "3d-crt", "3d crt",
        "3d conformal", "conformal", "sbrt", "sabr", "srs", "srt", "stereotactic", "tomotherapy",
        "gamma knife", "cyberknife", "megavoltage", "linac", "fff",
        "4x", "6x", "10x", "15x", "18x", "6fff", "10fff", "cobalt-60", "co-60", "tbi", "isrt",
        "wbrt", "ha-wbrt", "orthovoltage", "superficial x-ray", "superficial x-rays",
    )},
    **{t: "proton" for t in (
        "proton", "protons", "proton beam", "proton therapy", "protontherapy", "impt", "pbs",
        "pencil beam", "pencil beam scanning", "pencil-beam scanning", "gyrbe", "gy (rbe)",
        "gy rbe", "gy [rbe]", "gye", "gy (isoe)", "cge", "cobalt gray equivalent", "passive scatter",
        "passive scattering", "double scatter", "double scattering",
    )},
    **{t: "electron" for t in (
        "electron", "electrons", "electron beam", "e-beam", "ebeam", "en face", "en-face",
        "total skin electron", "tseb",
    )},
    **{t: "brachytherapy" for t in (
        "brachytherapy", "brachy", "hdr", "ldr", "pdr", "hdr brachytherapy", "ldr brachytherapy",
        "seed implant", "seed implants", "seeds", "permanent seed", "i-125", "i125",
        "iodine-125", "pd-103", "pd103", "palladium-103", "ir-192", "ir192", "iridium-192",
        "cs-131", "cesium-131", "caesium-131", "interstitial", "intracavitary", "tandem and ovoid", "tandem and ring",
        "tandem/ovoid", "tandem/ring", "vaginal cuff", "vaginal cylinder", "cylinder",
        "surface mould", "surface mold", "plaque", "electronic brachytherapy",
    )},
}

# MeV energies ("9 MeV") mark electrons; photon energies are written "6 MV", "6X" or "100 kV".
_ENERGY = re.compile(r"\b\d+(?:\.\d+)?\s*(mev|mv|kv)\b", re.IGNORECASE)


def _separator_free(term: str) -> str:
    return re.sub(r"[\s_-]+", "", term.lower())


_MODALITY_BY_KEY = {_separator_free(term): modality for term, modality in MODALITY_SYNONYMS.items()}
_TERMS = re.compile(
    r"(?<![A-Za-z-])("
    + "|".join(
        r"[\s_-]*".join(re.escape(part) for part in re.split(r"[\s_-]+", term))
        for term in sorted(MODALITY_SYNONYMS, key=len, reverse=True)
    )
    + r")(?!\w)",
    re.IGNORECASE,
)


class LabelError(ValueError):
    """A raw value that cannot be read as a label; the message says what would be right."""


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def modalities_mentioned(text: str) -> list[str]:
    """Canonical modalities named in free text, in order of first mention, without repeats."""
    hits = [(m.start(), _MODALITY_BY_KEY[_separator_free(m.group(1))]) for m in _TERMS.finditer(text)]
    hits += [
        (m.start(), "electron" if m.group(1).lower() == "mev" else "photon")
        for m in _ENERGY.finditer(text)
    ]
    found: list[str] = []
    for _, modality in sorted(hits):
        if modality not in found:
            found.append(modality)
    return found


def normalise_modality(value: object) -> str:
    """One of MODALITIES for a cell such as "Protons", " IMPT", "HDR brachy" or "Photon (VMAT)"."""
    text = _squash(str(value if value is not None else ""))
    if not text:
        raise LabelError("is empty; expected one of photon, proton, electron, brachytherapy")
    if _separator_free(text) in _MODALITY_BY_KEY:
        return _MODALITY_BY_KEY[_separator_free(text)]
    found = modalities_mentioned(text)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise LabelError(
            f"names more than one modality ({', '.join(found)}); "
            "give the single modality of the treatment"
        )
    raise LabelError(
        "is not a treatment modality; expected one of photon, proton, electron, brachytherapy "
        "(or a synonym such as IMRT, IMPT, electrons, HDR)"
    )


# A letter, a digit, a digit or letter, then up to four more after an optional dot.
_ICD10_SHAPE = re.compile(r"^([A-Z][0-9][0-9A-Z])\.?([0-9A-Z]{0,4})$")


def normalise_icd10(value: object) -> str:
    """The dotted upper-case form of an ICD-10-CM code written as "c50412", "C50.412" or "c 50.412"."""
    text = re.sub(r"\s+", "", str(value if value is not None else "")).upper()
    if not text:
        raise LabelError("is empty; expected an ICD-10-CM code such as C50.412")
    match = _ICD10_SHAPE.match(text)
    if not match:
        raise LabelError(
            "is not shaped like an ICD-10-CM code; expected a letter and two characters, "
            "optionally a dot and up to four more (e.g. C61, C50.412)"
        )
    category, rest = match.groups()
    return f"{category}.{rest}" if rest else category


@functools.cache
def _icd10_module():
    # simple_icd_10_cm loads its code table with a deprecated importlib call; the warning is
    # theirs, not ours, and would otherwise show on every import.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import simple_icd_10_cm

    return simple_icd_10_cm


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rocore"


@functools.cache
def _icd10_codes() -> dict[str, bool]:
    """Every code of the CDC set -> whether it is billable. simple_icd_10_cm takes seconds to parse
    its XML on each start, so the table is kept as JSON per package version after the first use."""
    version = importlib.metadata.version("simple-icd-10-cm")
    cached = _cache_dir() / f"icd10cm-codes-{version}.json"
    try:
        return json.loads(cached.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    cm = _icd10_module()
    codes = {c: cm.is_leaf(c) for c in cm.get_all_codes(True) if _ICD10_SHAPE.match(c)}
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps(codes), encoding="utf-8")
        os.replace(partial, cached)
    except OSError:
        pass
    return codes


def icd10_status(code: str) -> str:
    """'billable' (a leaf code), 'category' (valid but not billable) or 'invalid' for a normalised code."""
    billable = _icd10_codes().get(code)
    return "invalid" if billable is None else "billable" if billable else "category"


def icd10_billable_examples(code: str, limit: int = 3) -> list[str]:
    """A few billable codes under a category, to suggest in place of a non-billable one."""
    return [c for c, billable in _icd10_codes().items() if billable and c.startswith(code)][:limit]
