"""Synthetic radiation-oncology cases: the embedded default dataset.

The study's real cases are private, so the app ships with synthetic ones to fine-tune and score
models on. Each scenario draws clinical facts, writes them as a short note, and derives the
prescription, the modality and the ICD-10-CM code from those facts alone, the way a clinic
would: everything a model must answer follows from what the note says. Doses, indications and
codes follow the team's clinical reference (shared/clinical-reference.md). Sentence order,
synonyms, units and performance-status scales vary so that a model has to read the note.

Modality is the modality of the main course: external-beam photons followed by a brachytherapy
boost (cervix, high-risk prostate) or by an electron boost (breast) count as photon;
brachytherapy alone (prostate seeds, vaginal cuff, eye plaque) counts as brachytherapy. Protons
are chosen only for a reason the note states: a child, a chordoma, re-irradiation, a liver
tumour over 5 cm, left-sided breast cancer with internal mammary nodes, a young adult with
mediastinal Hodgkin lymphoma or with low-grade glioma, a choroidal melanoma near the optic disc.

Only `random.Random(seed)` is used, so the same (n, seed) always gives the same cases.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable
from pathlib import Path

FIELDS = ("case_id", "diagnosis", "regimen", "modality", "icd10", "site", "age", "sex",
          "laterality", "stage", "histology", "ecog", "scenario")

PHOTON, PROTON, ELECTRON, BRACHY = "photon", "proton", "electron", "brachytherapy"

# KPS values that convert to a single ECOG grade on every published conversion table.
_KPS = {0: 100, 1: 80, 2: 60, 3: 40}

_COMORBIDITIES = ("hypertension", "type 2 diabetes", "hyperlipidemia", "hypothyroidism",
                  "atrial fibrillation", "obesity", "GERD", "osteoarthritis", "depression", "gout",
                  "prior MI")

# Sentences that change no decision and fit any patient.
_BOILERPLATE = ("No known drug allergies.", "Referred for radiation oncology consultation.",
                "Seen in clinic with family.", "Discussed at the multidisciplinary conference.",
                "Lives with family.", "Here to discuss treatment options.",
                "Imaging reviewed in clinic.", "Pathology reviewed at our institution.")


# --- text helpers ------------------------------------------------------------------------------

def _case(scenario: str, site: str, diagnosis: str, regimen: str, modality: str, icd10: str, *,
          age: int, sex: str, laterality: str | None = None, stage: str | None = None,
          histology: str | None = None, ecog: int = 0) -> dict:
    return {"diagnosis": diagnosis, "regimen": regimen, "modality": modality, "icd10": icd10,
            "site": site, "age": age, "sex": sex, "laterality": laterality, "stage": stage,
            "histology": histology, "ecog": ecog, "scenario": scenario}


def _who(rng: random.Random, age: int, sex: str) -> str:
    """The patient as notes open: "A 67-year-old man", "67-year-old female", "67M"."""
    male = sex == "male"
    if age < 18:
        noun = "boy" if male else "girl"
    else:
        noun = rng.choice(("man", "male") if male else ("woman", "female"))
    form = rng.randrange(3 if age >= 18 else 2)
    if form == 0:
        article = "An" if str(age).startswith("8") or age in (11, 18) else "A"
        return f"{article} {age}-year-old {noun}"
    if form == 1:
        return f"{age}-year-old {noun}"
    return f"{age}{'M' if male else 'F'}"


def _ps(rng: random.Random, ecog: int) -> str:
    """A performance-status sentence, as ECOG or as the equivalent KPS."""
    if ecog <= 1 and rng.random() < 0.1:
        return "Fully active." if ecog == 0 else "ECOG 1, working part-time."
    if rng.random() < 0.3:
        return f"KPS {_KPS[ecog]}."
    return rng.choice(("ECOG {}.", "ECOG PS {}.", "ECOG performance status {}.")).format(ecog)


def _maybe_ps(rng: random.Random, ecog: int) -> str:
    """Performance status where it changes nothing: stated in about half of the notes."""
    return _ps(rng, ecog) if rng.random() < 0.5 else ""


def _lansky(rng: random.Random, ecog: int) -> str:
    """Performance status of a child (ECOG 0 or 1 only)."""
    score = 100 if ecog == 0 else 80
    return rng.choice((f"Lansky {score}.", f"Lansky play-performance score {score}."))


def _history(rng: random.Random) -> str:
    """An optional past-history sentence: realistic noise that changes no decision."""
    if rng.random() < 0.55:
        return ""
    items = " and ".join(rng.sample(_COMORBIDITIES, rng.randint(1, 2)))
    return rng.choice(("History of {}.", "PMH: {}.", "Comorbidities: {}.")).format(items)


def _size(rng: random.Random, mm: int) -> str:
    """A size in cm or in mm, as reports vary."""
    return f"{mm / 10:.1f} cm" if rng.random() < 0.7 else f"{mm} mm"


def _side(rng: random.Random) -> str:
    return rng.choice(("left", "right"))


def _text(rng: random.Random, first: str, *rest: str) -> str:
    """The opening sentence, then the other findings (empty ones dropped) in random order, topped
    up with clinic boilerplate to a drawn length, as real notes carry some."""
    sentences = [s for s in rest if s]
    target, noise = rng.randint(27, 36), rng.sample(_BOILERPLATE, len(_BOILERPLATE))
    while noise and sum(len(s.split()) for s in (first, *sentences)) < target:
        sentences.append(noise.pop())
    rng.shuffle(sentences)
    return " ".join([first, *sentences])


def _weighted(rng: random.Random, options: tuple) -> tuple:
    """One row of a table whose last column is its weight."""
    return rng.choices(options, weights=[row[-1] for row in options])[0]


# --- prostate ----------------------------------------------------------------------------------

_GLEASON = {1: ("3+3=6",), 2: ("3+4=7",), 3: ("4+3=7",), 4: ("4+4=8", "3+5=8"),
            5: ("4+5=9", "5+4=9", "5+5=10")}


def _grade_group(rng: random.Random, gg: int) -> str:
    gleason = rng.choice(_GLEASON[gg])
    return rng.choice((f"Gleason {gleason} (Grade Group {gg})", f"Gleason {gleason}",
                       f"Grade Group {gg}", f"GG{gg} (Gleason {gleason})"))


def _psa(rng: random.Random, tenths: int) -> str:
    value = f"{tenths / 10:.1f}"
    return rng.choice((f"PSA {value} ng/mL.", f"PSA of {value}.", f"Presenting PSA {value} ng/mL."))


def _shim(rng: random.Random) -> str:
    return rng.choice((f"SHIM {rng.randint(6, 25)}.", "Good erectile function.",
                       "Family history of prostate cancer.", ""))


def _prostate_low_risk(rng: random.Random) -> dict:
    """NCCN low risk in a man who declines surveillance: a seed implant."""
    age, t, cores = rng.randint(50, 76), rng.choice(("cT1c", "cT1c", "cT2a")), rng.choice((12, 12, 14))
    first = rng.choice((
        "{who} with {gg} adenocarcinoma of the prostate, {t}.",
        "{who}, newly diagnosed {gg} prostate cancer, clinical stage {t}.",
        "{who} with low-volume {gg} prostate adenocarcinoma ({t}) on biopsy.",
    )).format(who=_who(rng, age, "male"), gg=_grade_group(rng, 1), t=t)
    text = _text(rng, first, _psa(rng, rng.randint(25, 99)),
                 f"{rng.randint(1, 4)} of {cores} cores positive.",
                 f"Gland volume {rng.randint(18, 48)} cc, IPSS {rng.randint(2, 11)}.", _shim(rng),
                 rng.choice(("Declines active surveillance.",
                             "Prefers definitive treatment to active surveillance.",
                             "Does not wish to remain on surveillance.")),
                 _history(rng))
    return _case("prostate_ldr", "prostate", text, "I-125 seed implant to 145 Gy", BRACHY, "C61",
                 age=age, sex="male", stage=t, histology="adenocarcinoma")


def _prostate_intermediate(rng: random.Random) -> dict:
    """Intermediate risk. Unfavourable (Grade Group 3, >= 50% cores, or PSA 10-20 with GG2):
    CHHiP with 6 months of ADT. Favourable: SBRT (PACE-B) unless urinary symptoms (IPSS >= 15)."""
    age, cores, kind = rng.randint(52, 82), rng.choice((12, 12, 14)), rng.random()
    t = rng.choice(("cT1c", "cT1c", "cT2a"))
    if kind < 0.55:
        gg, psa, pos = 2, rng.randint(30, 99), rng.randint(1, cores // 2 - 1)
    elif kind < 0.8:
        gg, psa, pos = 3, rng.randint(30, 199), rng.randint(2, 8)
        t = rng.choice(("cT1c", "cT2a", "cT2b"))
    elif kind < 0.9:
        gg, psa, pos = 2, rng.randint(100, 199), rng.randint(1, 5)
    else:
        gg, psa, pos = 2, rng.randint(30, 99), rng.randint(cores // 2, cores - 2)
    ipss, ecog = rng.randint(2, 24), rng.choice((0, 0, 1))
    first = rng.choice((
        "{who} with {gg} adenocarcinoma of the prostate, {t}N0M0.",
        "{who} with intermediate-risk prostate cancer: {gg}, {t}.",
        "{who}, biopsy showing {gg} prostate adenocarcinoma, clinical {t}.",
    )).format(who=_who(rng, age, "male"), gg=_grade_group(rng, gg), t=t)
    text = _text(rng, first, _psa(rng, psa), f"{pos}/{cores} cores involved.",
                 rng.choice((f"IPSS {ipss}.", f"IPSS {ipss}, prostate volume {rng.randint(25, 75)} cc.")),
                 rng.choice(("MRI shows no extraprostatic extension.", "", "Bone scan negative.")),
                 _shim(rng), _maybe_ps(rng, ecog), _history(rng))
    scenario, regimen = "prostate_intermediate", "60 Gy in 20 fractions to the prostate with IMRT"
    if gg == 3 or psa >= 100 or 2 * pos >= cores:
        regimen += ", with 6 months of ADT"
    elif ipss < 15:
        scenario, regimen = "prostate_sbrt", "36.25 Gy in 5 fractions to the prostate with SBRT"
    return _case(scenario, "prostate", text, regimen, PHOTON, "C61", age=age, sex="male", stage=t,
                 histology="adenocarcinoma", ecog=ecog)


def _prostate_high_risk(rng: random.Random) -> dict:
    """High risk: pelvic IMRT with an HDR boost when the gland allows an implant (<= 60 cc, no
    prior TURP), else dose-escalated IMRT; long-term ADT either way."""
    age, gg = rng.randint(55, 80), rng.choice((2, 3, 4, 4, 5, 5))
    psa = rng.randint(40, 400) if gg >= 4 else rng.randint(201, 600)
    t = rng.choice(("cT1c", "cT2a", "cT2b", "cT2c", "cT3a"))
    volume, turp, ecog = rng.randint(25, 90), rng.random() < 0.15, rng.choice((0, 0, 1))
    first = rng.choice((
        "{who} with high-risk prostate adenocarcinoma, {gg}, {t}.",
        "{who} with {gg} prostate cancer, clinical stage {t}N0M0.",
    )).format(who=_who(rng, age, "male"), gg=_grade_group(rng, gg), t=t)
    text = _text(rng, first, _psa(rng, psa),
                 rng.choice(("PSMA PET shows no nodal or distant disease.", "Staging PSMA PET negative.")),
                 rng.choice((f"Prostate volume {volume} cc.", f"Gland volume {volume} cc on MRI.")),
                 rng.choice(("Prior TURP for retention.", "Status post TURP.")) if turp
                 else rng.choice(("No prior TURP.", "No history of TURP.")),
                 _shim(rng), _maybe_ps(rng, ecog), _history(rng))
    if volume <= 60 and not turp:
        scenario = "prostate_high_risk_boost"
        regimen = ("45 Gy in 25 fractions to the pelvis with IMRT, followed by HDR 15 Gy in 1 fraction, "
                   "with 18 months of ADT")
    else:
        scenario = "prostate_high_risk"
        regimen = "78 Gy in 39 fractions to the prostate and pelvic nodes with IMRT, with 18 months of ADT"
    return _case(scenario, "prostate", text, regimen, PHOTON, "C61", age=age, sex="male", stage=t,
                 histology="adenocarcinoma", ecog=ecog)


def _prostate_salvage(rng: random.Random) -> dict:
    """Biochemical recurrence after prostatectomy: prostate-bed IMRT, with ADT when PSA >= 0.6."""
    age, pt, psa = rng.randint(55, 78), rng.choice(("pT2", "pT3a", "pT3a")), rng.randint(20, 150)
    first = rng.choice((
        "{who}, {y} years after radical prostatectomy for {gg} {pt} adenocarcinoma, "
        "now with a rising PSA of {psa} ng/mL.",
        "{who} with biochemical recurrence after radical prostatectomy ({pt}, {gg}) {y} years ago; "
        "PSA {psa}.",
    )).format(who=_who(rng, age, "male"), y=rng.randint(1, 8), pt=pt, psa=f"{psa / 100:.2f}",
              gg=_grade_group(rng, rng.choice((2, 3, 4))))
    text = _text(rng, first, rng.choice(("PSMA PET negative.", "PSMA PET shows no uptake.")),
                 rng.choice(("Positive margin at the apex.", "Margins were negative.",
                             "Focal positive margin.")),
                 f"PSA doubling time {rng.randint(4, 18)} months.", _history(rng))
    regimen = "66 Gy in 33 fractions to the prostate bed with IMRT"
    if psa >= 60:
        regimen += ", with 6 months of ADT"
    return _case("prostate_salvage", "prostate", text, regimen, PHOTON, "C61", age=age, sex="male",
                 stage=pt, histology="adenocarcinoma")


# --- breast ------------------------------------------------------------------------------------

# (phrase, 4th character of C50, weight)
_QUADRANTS = (("upper-outer quadrant", "4", 40), ("upper outer quadrant", "4", 8),
              ("upper-inner quadrant", "2", 15), ("lower-outer quadrant", "5", 12),
              ("lower-inner quadrant", "3", 8), ("central portion", "1", 8), ("axillary tail", "6", 5))
_RECEPTORS = ("ER+/PR+/HER2-", "ER-positive, PR-negative, HER2-negative", "ER+/PR+, HER2-positive",
              "triple-negative", "ER-positive, HER2-negative")
_ELECTRON_BOOST = " followed by an electron boost of 10 Gy in 5 fractions"


def _breast_code(quadrant: str, sex: str, side: str) -> str:
    return f"C50.{quadrant}{1 if sex == 'female' else 2}{1 if side == 'right' else 2}"


def _pt(mm: int) -> str:
    return "1b" if mm <= 10 else "1c" if mm <= 20 else "2" if mm <= 50 else "3"


def _breast_lumpectomy(rng: random.Random) -> dict:
    """Whole breast after lumpectomy: FAST-Forward 26 Gy/5 when node negative, 40 Gy/15 with the
    regional nodes when node positive; an electron boost when under 50 or grade 3."""
    age, side, grade, mm = rng.randint(32, 85), _side(rng), rng.choice((1, 2, 2, 3)), rng.randint(6, 45)
    quadrant, q, _ = _weighted(rng, _QUADRANTS)
    hist = _weighted(rng, (("invasive ductal carcinoma", 6), ("invasive carcinoma of no special type", 2),
                           ("invasive lobular carcinoma", 2)))[0]
    nodes, sentinels, ecog = rng.random() < 0.25, rng.randint(1, 4), rng.choice((0, 0, 1))
    first = rng.choice((
        "{who}, status post {side} lumpectomy and sentinel node biopsy for a {size} grade {g} {hist} "
        "of the {quad}.",
        "{who} with {hist} of the {side} breast, {quad}, {size}, grade {g}, after breast-conserving surgery.",
        "{who} after {side} partial mastectomy: {size} {hist}, Nottingham grade {g}, {quad}.",
    )).format(who=_who(rng, age, "female"), side=side, size=_size(rng, mm), g=grade, hist=hist,
              quad=quadrant)
    text = _text(rng, first, f"{rng.choice(_RECEPTORS)}.",
                 rng.choice((f"Margins negative, closest {rng.randint(2, 10)} mm.", "Margins clear.")),
                 f"{rng.randint(1, sentinels)} of {sentinels} sentinel nodes positive." if nodes
                 else rng.choice((f"Sentinel nodes negative (0/{sentinels}).", "Node negative.")),
                 _maybe_ps(rng, ecog), _history(rng))
    boost = age < 50 or grade == 3
    if nodes:
        regimen = "40 Gy in 15 fractions to the breast and regional nodes"
    else:
        regimen = f"{'40 Gy in 15' if boost else '26 Gy in 5'} fractions to the whole breast"
    regimen += _ELECTRON_BOOST if boost else ""
    return _case("breast_lumpectomy_boost" if boost else "breast_lumpectomy", "breast", text, regimen,
                 PHOTON, _breast_code(q, "female", side), age=age, sex="female", laterality=side,
                 stage=f"pT{_pt(mm)}N{'1a' if nodes else '0'}", histology=hist, ecog=ecog)


def _breast_pmrt(rng: random.Random) -> dict:
    """Post-mastectomy RT to chest wall and nodes: 50 Gy/25 with reconstruction, 40 Gy/15 without;
    protons for left-sided disease with internal mammary nodes, to spare the heart."""
    sex = "male" if rng.random() < 0.03 else "female"
    age = rng.randint(50, 80) if sex == "male" else rng.randint(28, 78)
    side, mm = _side(rng), rng.randint(12, 70)
    quadrant, q, _ = _weighted(rng, _QUADRANTS)
    pos, total, imn = rng.randint(1, 9), rng.randint(12, 22), rng.random() < 0.3
    recon = "" if sex == "male" or rng.random() < 0.45 else rng.choice(("implant", "flap"))
    first = rng.choice((
        "{who}, status post {side} mastectomy and axillary dissection for a {size} grade {g} invasive "
        "ductal carcinoma of the {quad}, {pos} of {total} nodes positive.",
        "{who} with {side} breast cancer ({quad}), {size}, grade {g}, after mastectomy; "
        "{pos}/{total} axillary nodes involved.",
    )).format(who=_who(rng, age, sex), side=side, size=_size(rng, mm), g=rng.choice((2, 3)),
              quad=quadrant, pos=pos, total=total)
    if recon == "implant":
        reconstruction = rng.choice(("Immediate implant reconstruction.", "Tissue expander in place."))
    elif recon == "flap":
        reconstruction = "Immediate DIEP flap reconstruction."
    else:
        reconstruction = rng.choice(("No reconstruction.", "No reconstruction planned."))
    if imn:
        mammary = rng.choice(("PET/CT shows an FDG-avid internal mammary node.",
                              "Enlarged internal mammary node on staging CT."))
    else:
        mammary = rng.choice(("No internal mammary adenopathy on PET/CT.",
                              "Internal mammary nodes not involved."))
    text = _text(rng, first, f"{rng.choice(_RECEPTORS)}.", reconstruction, mammary,
                 rng.choice(("Completed adjuvant chemotherapy.", "Completed AC-T.", "")), _history(rng))
    target = "the chest wall and regional nodes" + (", including internal mammary nodes" if imn else "")
    if side == "left" and imn:
        scenario, modality = "breast_pmrt_proton", PROTON
        regimen = f"50 GyRBE in 25 fractions to {target}, with IMPT"
    else:
        scenario, modality = "breast_pmrt", PHOTON
        regimen = f"{'50 Gy in 25' if recon else '40 Gy in 15'} fractions to {target}"
    n = "3b" if imn else "1a" if pos <= 3 else "2a"
    return _case(scenario, "breast", text, regimen, modality, _breast_code(q, sex, side), age=age, sex=sex,
                 laterality=side, stage=f"pT{_pt(mm)}N{n}", histology="invasive ductal carcinoma")


def _dcis(rng: random.Random) -> dict:
    """DCIS after lumpectomy: 40 Gy/15 to the whole breast, with a boost under 50 (BIG 3-07)."""
    age, side, mm = rng.randint(38, 80), _side(rng), rng.randint(5, 40)
    grade = rng.choice(("low-grade", "intermediate-grade", "high-grade"))
    first = rng.choice((
        "{who}, status post {side} lumpectomy for {size} {grade} DCIS.",
        "{who} with {grade} ductal carcinoma in situ of the {side} breast, {size}, excised.",
    )).format(who=_who(rng, age, "female"), side=side, size=_size(rng, mm), grade=grade)
    text = _text(rng, first, rng.choice(("ER-positive.", "ER-negative.", "")),
                 f"Margins negative, closest {rng.randint(2, 8)} mm.",
                 rng.choice(("Screen-detected calcifications.",
                             "Comedonecrosis present." if grade == "high-grade" else "")),
                 _maybe_ps(rng, 0), _history(rng))
    regimen = "40 Gy in 15 fractions to the whole breast" + (_ELECTRON_BOOST if age < 50 else "")
    return _case("dcis", "breast", text, regimen, PHOTON, "D05.11" if side == "right" else "D05.12",
                 age=age, sex="female", laterality=side, stage="pTis", histology="ductal carcinoma in situ")


# --- lung --------------------------------------------------------------------------------------

# (phrase, side, code, weight); the lingula belongs to the left upper lobe.
_LOBES = (("right upper lobe", "right", "C34.11", 30), ("right middle lobe", "right", "C34.2", 8),
          ("right lower lobe", "right", "C34.31", 17), ("left upper lobe", "left", "C34.12", 25),
          ("left lower lobe", "left", "C34.32", 15), ("lingula of the left lung", "left", "C34.12", 5))
_NSCLC = ("adenocarcinoma", "squamous cell carcinoma")


def _nsclc_stage3(rng: random.Random) -> dict:
    """Unresectable stage III NSCLC: concurrent chemoradiation then durvalumab (PACIFIC) when
    ECOG 0-1; sequential chemotherapy and 55 Gy/20 when ECOG 2."""
    age, sex = rng.randint(45, 82), rng.choice(("male", "female"))
    lobe, side, code, _ = _weighted(rng, _LOBES)
    hist = rng.choice(_NSCLC)
    tn, stage = rng.choice((("cT1cN2", "IIIA"), ("cT2aN2", "IIIA"), ("cT4N1", "IIIA"), ("cT3N2", "IIIB"),
                            ("cT4N2", "IIIB"), ("cT2bN3", "IIIB"), ("cT4N3", "IIIC")))
    ecog = rng.choices((0, 1, 2), weights=(35, 45, 20))[0]
    first = rng.choice((
        "{who} with stage {stage} {hist} of the {lobe}, {tn}.",
        "{who} with unresectable stage {stage} NSCLC ({hist}) of the {lobe}, {tn}.",
        "{who}, {lobe} {hist}, {tn} (stage {stage}), deemed unresectable at tumor board.",
    )).format(who=_who(rng, age, sex), stage=stage, hist=hist, lobe=lobe, tn=tn)
    text = _text(rng, first, _ps(rng, ecog),
                 f"EGFR and ALK negative; PD-L1 {rng.randint(0, 90)}%.",
                 f"{rng.randint(20, 80)} pack-year smoker." if rng.random() < 0.7 else "Never smoker.",
                 rng.choice(("MRI brain negative.", "PET/CT shows no distant disease.", "")),
                 _history(rng))
    if ecog <= 1:
        regimen = ("60 Gy in 30 fractions with IMRT and weekly carboplatin and paclitaxel, "
                   "followed by durvalumab")
    else:
        regimen = "sequential chemotherapy followed by 55 Gy in 20 fractions with IMRT"
    return _case("nsclc_stage3", "lung", text, regimen, PHOTON, code, age=age, sex=sex, laterality=side,
                 stage=stage, histology=hist, ecog=ecog)


def _nsclc_sbrt(rng: random.Random) -> dict:
    """Early, inoperable NSCLC: peripheral 54 Gy/3, or 48 Gy/4 against the chest wall (RTOG 0236);
    central 50 Gy/5, ultracentral (abutting the proximal bronchial tree) 60 Gy/8 (RTOG 0813)."""
    age, sex = rng.randint(60, 90), rng.choice(("male", "female"))
    lobe, side, code, _ = _weighted(rng, _LOBES)
    location = rng.choices(("peripheral", "central", "ultracentral"), weights=(60, 25, 15))[0]
    peripheral = location == "peripheral"
    mm, ecog = rng.randint(8, 45) if peripheral else rng.randint(12, 40), rng.choice((0, 1, 1, 2))
    t = "1a" if mm <= 10 else "1b" if mm <= 20 else "1c" if mm <= 30 else "2a"
    first = rng.choice((
        "{who} with a biopsy-proven {size} {where} {hist} of the {lobe}, cT{t}N0.",
        "{who}: {where} {lobe} nodule, {size}, biopsy {hist}, cT{t}N0M0.",
    )).format(who=_who(rng, age, sex), size=_size(rng, mm), where="peripheral" if peripheral else "central",
              hist=rng.choice(_NSCLC), lobe=lobe, t=t)
    wall = peripheral and rng.random() < 0.35
    if wall:
        detail = rng.choice(("Abuts the chest wall.", "Tumor contacts the chest wall."))
    elif peripheral:
        detail = rng.choice((f"Located {rng.randint(10, 30) / 10:.1f} cm from the chest wall.",
                             "Surrounded by lung parenchyma, away from the chest wall."))
    elif location == "central":
        detail = f"Lies {rng.randint(5, 19) / 10:.1f} cm from the proximal bronchial tree."
    else:
        detail = rng.choice(("Directly abuts the proximal bronchial tree.",
                             f"Abuts the {side} main bronchus."))
    text = _text(rng, first, detail, _ps(rng, ecog),
                 rng.choice((f"Medically inoperable: COPD with FEV1 {rng.randint(28, 45)}% predicted.",
                             "Declined lobectomy.", "Inoperable due to severe coronary artery disease.",
                             f"DLCO {rng.randint(25, 40)}%, not a surgical candidate.")),
                 rng.choice(("PET/CT and EBUS negative for nodal disease.", "No nodal uptake on PET.")),
                 _history(rng))
    regimen = {"central": "50 Gy in 5", "ultracentral": "60 Gy in 8"}.get(
        location, "48 Gy in 4" if wall else "54 Gy in 3") + " fractions with SBRT"
    return _case("nsclc_sbrt_peripheral" if peripheral else "nsclc_sbrt_central", "lung", text, regimen,
                 PHOTON, code, age=age, sex=sex, laterality=side, stage=f"cT{t}N0",
                 histology="non-small cell lung cancer", ecog=ecog)


def _sclc(rng: random.Random) -> dict:
    """Limited-stage SCLC: twice-daily 45 Gy/30 with cisplatin and etoposide (Turrisi, CONVERT)."""
    age, sex, ecog = rng.randint(48, 80), rng.choice(("male", "female")), rng.choice((0, 1, 1))
    lobe, side, code, _ = _weighted(rng, _LOBES)
    first = rng.choice((
        "{who} with limited-stage small cell lung cancer: {lobe} mass with ipsilateral hilar and "
        "mediastinal adenopathy.",
        "{who} with limited-stage SCLC of the {lobe}, ipsilateral mediastinal nodes positive.",
    )).format(who=_who(rng, age, sex), lobe=lobe)
    text = _text(rng, first, _ps(rng, ecog),
                 rng.choice(("MRI brain negative.", "No brain metastases on MRI.")),
                 rng.choice(("PET/CT shows no distant disease.", "")),
                 f"{rng.randint(25, 90)} pack-years.", _history(rng))
    regimen = "45 Gy in 30 twice-daily fractions with cisplatin and etoposide"
    return _case("sclc_limited", "lung", text, regimen, PHOTON, code, age=age, sex=sex, laterality=side,
                 stage="limited", histology="small cell carcinoma", ecog=ecog)


# --- head and neck -----------------------------------------------------------------------------

def _oropharynx(rng: random.Random) -> dict:
    """Oropharynx SCC: 70 Gy/35, with cisplatin unless T1-2 N0."""
    age, sex, side = rng.randint(40, 78), "male" if rng.random() < 0.8 else "female", _side(rng)
    subsite, code = rng.choice((("tonsil", "C09.9"), ("tonsil", "C09.9"), ("base of tongue", "C01")))
    p16 = "p16-positive" if rng.random() < 0.8 else "p16-negative"
    t, n, ecog = rng.choice((1, 2, 2, 3, 4)), rng.choice((0, 1, 1, 2, 3)), rng.choice((0, 0, 1))
    first = rng.choice((
        "{who} with {p16} squamous cell carcinoma of the {side} {subsite}, cT{t}N{n}.",
        "{who} presenting with {symptom}; biopsy of the {side} {subsite} shows {p16} SCC, cT{t}N{n}.",
    )).format(who=_who(rng, age, sex), p16=p16, side=side, subsite=subsite, t=t, n=n,
              symptom=rng.choice(("a neck mass", "sore throat", "otalgia", "dysphagia")))
    text = _text(rng, first, _ps(rng, ecog),
                 rng.choice((f"{rng.randint(5, 50)} pack-year smoking history.", "Never smoker.")),
                 rng.choice(("PET/CT shows no distant disease.", "Dental evaluation completed.", "")),
                 _history(rng))
    regimen = "70 Gy in 35 fractions with IMRT" + ("" if t <= 2 and n == 0 else " and concurrent cisplatin")
    return _case("oropharynx", "head and neck", text, regimen, PHOTON, code, age=age, sex=sex,
                 laterality=side, stage=f"cT{t}N{n}", histology="squamous cell carcinoma", ecog=ecog)


def _larynx(rng: random.Random) -> dict:
    """Early glottic cancer at 2.25 Gy per fraction: T1 63 Gy/28, T2 65.25 Gy/29."""
    age, sex = rng.randint(50, 85), "male" if rng.random() < 0.85 else "female"
    stage, ecog = rng.choice(("T1a", "T1a", "T1b", "T2")), rng.choice((0, 1))
    side = None if stage == "T1b" else _side(rng)
    if stage == "T1a":
        extent = f"limited to the {side} true vocal cord"
    elif stage == "T1b":
        extent = "involving both true vocal cords with normal mobility"
    else:
        extent = f"of the {side} vocal cord " + rng.choice(("with impaired mobility",
                                                            "extending to the supraglottis"))
    first = rng.choice((
        "{who} with {m} months of hoarseness; glottic squamous cell carcinoma {extent}, c{stage}N0.",
        "{who} with c{stage}N0 glottic SCC {extent}.",
    )).format(who=_who(rng, age, sex), m=rng.randint(2, 9), extent=extent, stage=stage)
    text = _text(rng, first, f"{rng.randint(20, 60)} pack-year smoker.",
                 rng.choice(("Anterior commissure spared.", "CT neck shows no adenopathy.", "")),
                 _maybe_ps(rng, ecog), _history(rng))
    regimen = ("65.25 Gy in 29" if stage == "T2" else "63 Gy in 28") + " fractions to the larynx"
    return _case("larynx_glottic", "head and neck", text, regimen, PHOTON, "C32.0", age=age, sex=sex,
                 laterality=side, stage=f"c{stage}N0", histology="squamous cell carcinoma", ecog=ecog)


def _nasopharynx(rng: random.Random) -> dict:
    """Nasopharynx: 70 Gy/33 with cisplatin; induction gemcitabine-cisplatin first when T3-4 or N2-3."""
    age, sex = rng.randint(25, 70), "male" if rng.random() < 0.7 else "female"
    t, n = rng.choice(((1, 1), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2), (1, 2), (2, 2), (4, 1), (4, 2),
                       (2, 3)))
    ecog = rng.choice((0, 1))
    first = rng.choice((
        "{who} with non-keratinizing nasopharyngeal carcinoma, cT{t}N{n}.",
        "{who} presenting with {symptom}; nasopharyngeal biopsy shows undifferentiated carcinoma, "
        "cT{t}N{n}.",
    )).format(who=_who(rng, age, sex), t=t, n=n,
              symptom=rng.choice(("neck nodes", "epistaxis", "nasal obstruction", "hearing loss")))
    text = _text(rng, first, f"Plasma EBV DNA {rng.randint(0, 9000)} copies/mL.",
                 rng.choice(("PET/CT without distant metastases.", "MRI shows skull-base erosion.", ""))
                 if t >= 3 else "PET/CT without distant metastases.",
                 _maybe_ps(rng, ecog), _history(rng))
    regimen = "70 Gy in 33 fractions with IMRT and concurrent cisplatin"
    if t >= 3 or n >= 2:
        regimen = "induction gemcitabine and cisplatin, followed by " + regimen
    return _case("nasopharynx", "head and neck", text, regimen, PHOTON, "C11.9", age=age, sex=sex,
                 stage=f"cT{t}N{n}", histology="non-keratinizing carcinoma", ecog=ecog)


_ORAL_SUBSITES = (("lateral border of the {side} oral tongue", "C02.1", True),
                  ("{side} lateral tongue", "C02.1", True), ("anterior floor of mouth", "C04.0", False),
                  ("{side} lower gum", "C03.1", True), ("{side} buccal mucosa", "C06.0", True))


def _oral_cavity(rng: random.Random) -> dict:
    """Oral cavity after resection: 60 Gy/30; 66 Gy/33 with cisplatin for a positive margin or
    extranodal extension (EORTC 22931 / RTOG 9501)."""
    age, sex, ecog = rng.randint(35, 82), rng.choice(("male", "male", "female")), rng.choice((0, 1))
    template, code, lateral = rng.choice(_ORAL_SUBSITES)
    side = _side(rng) if lateral else None
    t = rng.choice((1, 2, 2, 3, 4))
    n, ene = rng.choice((("0", False), ("1", False), ("2a", True), ("2b", False), ("3b", True)))
    margin = rng.choice(("positive", "close", "negative", "negative"))
    if t <= 2 and n == "0" and margin == "negative":
        t = 3  # a reason for adjuvant treatment
    first = rng.choice((
        "{who}, status post resection and neck dissection for squamous cell carcinoma of the {where}, "
        "pT{t}N{n}.",
        "{who} with pT{t}N{n} SCC of the {where} after surgery.",
    )).format(who=_who(rng, age, sex), where=template.format(side=side), t=t, n=n)
    margins = {"positive": "Deep margin positive.", "close": f"Closest margin {rng.randint(1, 4)} mm.",
               "negative": "Margins negative."}[margin]
    nodes = "" if n == "0" else "Extranodal extension present." if ene else "No extranodal extension."
    text = _text(rng, first, margins, nodes, f"Depth of invasion {rng.randint(4, 18)} mm.",
                 rng.choice(("Perineural invasion present.", "No perineural invasion.",
                             "Lymphovascular invasion present.")),
                 _maybe_ps(rng, ecog), _history(rng))
    regimen = ("66 Gy in 33 fractions with IMRT and concurrent cisplatin" if margin == "positive" or ene
               else "60 Gy in 30 fractions with IMRT")
    return _case("oral_cavity_postop", "head and neck", text, regimen, PHOTON, code, age=age, sex=sex,
                 laterality=side, stage=f"pT{t}N{n}", histology="squamous cell carcinoma", ecog=ecog)


def _hn_reirradiation(rng: random.Random) -> dict:
    """Recurrence inside a previously irradiated head and neck field: proton re-irradiation."""
    age, sex, ecog = rng.randint(40, 80), rng.choice(("male", "male", "female")), rng.choice((0, 1))
    disease, code, lateral = rng.choice((("nasopharyngeal carcinoma", "C11.9", False),
                                         ("squamous cell carcinoma of the {side} tonsil", "C09.9", True),
                                         ("squamous cell carcinoma of the base of tongue", "C01", False)))
    side = _side(rng) if lateral else None
    first = rng.choice((
        "{who} with recurrent {disease}, {y} years after definitive chemoradiation.",
        "{who}: local recurrence of {disease} {y} years after prior chemoradiation.",
    )).format(who=_who(rng, age, sex), disease=disease.format(side=side), y=rng.randint(2, 9))
    text = _text(rng, first, rng.choice(("Recurrence lies within the previously irradiated volume.",
                                         "The recurrence is in-field.")),
                 rng.choice(("Unresectable per head and neck surgery.", "Declines salvage surgery.")),
                 "No distant metastases on PET/CT.", _ps(rng, ecog), _history(rng))
    histology = "nasopharyngeal carcinoma" if code == "C11.9" else "squamous cell carcinoma"
    return _case("hn_reirradiation", "head and neck", text, "60 GyRBE in 30 fractions with IMPT", PROTON,
                 code, age=age, sex=sex, laterality=side, stage=f"rT{rng.randint(1, 4)}N0",
                 histology=histology, ecog=ecog)


# --- central nervous system --------------------------------------------------------------------

_BRAIN_LOBES = (("frontal", "C71.1"), ("temporal", "C71.2"), ("parietal", "C71.3"), ("occipital", "C71.4"))


def _gbm(rng: random.Random) -> dict:
    """Glioblastoma: Stupp 60 Gy/30 with temozolomide; 40 Gy/15 from age 65 or at ECOG 2 (Perry)."""
    age, sex, side = rng.randint(35, 85), rng.choice(("male", "female")), _side(rng)
    lobe, code = rng.choice(_BRAIN_LOBES)
    ecog = rng.choices((0, 1, 2), weights=(25, 50, 25))[0]
    first = rng.choice((
        "{who} with a {side} {lobe} glioblastoma, IDH-wildtype, status post {surgery}.",
        "{who} presenting with {symptom}; MRI showed a {side} {lobe} lobe mass, {surgery} revealed "
        "glioblastoma, IDH-wildtype.",
        "{who}, glioblastoma (IDH-wildtype) of the {side} {lobe} lobe after {surgery}.",
    )).format(who=_who(rng, age, sex), side=side, lobe=lobe,
              surgery=rng.choice(("gross total resection", "subtotal resection", "biopsy")),
              symptom=rng.choice(("a seizure", "headaches", "confusion", "word-finding difficulty")))
    text = _text(rng, first, _ps(rng, ecog), f"MGMT promoter {rng.choice(('methylated', 'unmethylated'))}.",
                 rng.choice(("Started on levetiracetam.",
                             f"On dexamethasone {rng.choice((2, 4, 8))} mg daily.", "")),
                 _history(rng))
    if age >= 65 or ecog == 2:
        scenario, regimen = "gbm_hypofractionated", "40 Gy in 15 fractions"
    else:
        scenario, regimen = "gbm_standard", "60 Gy in 30 fractions"
    return _case(scenario, "cns", text, regimen + " with concurrent and adjuvant temozolomide", PHOTON, code,
                 age=age, sex=sex, laterality=side, histology="glioblastoma, IDH-wildtype", ecog=ecog)


def _lgg(rng: random.Random) -> dict:
    """Grade 2 glioma with residual disease: 54 Gy/30 then PCV (oligodendroglioma) or temozolomide
    (astrocytoma); protons under 40, to spare cognition over a long survival."""
    age, sex, side, ecog = rng.randint(20, 65), rng.choice(("male", "female")), _side(rng), rng.choice((0, 1))
    lobe, code = rng.choice(_BRAIN_LOBES)
    oligo = rng.random() < 0.45
    tumor = ("oligodendroglioma, IDH-mutant and 1p/19q-codeleted, CNS WHO grade 2" if oligo
             else "astrocytoma, IDH-mutant, CNS WHO grade 2")
    first = rng.choice((
        "{who} with a {side} {lobe} {tumor}, status post {surgery}.",
        "{who} presenting with seizures; {surgery} of a {side} {lobe} lesion showed {tumor}.",
    )).format(who=_who(rng, age, sex), side=side, lobe=lobe, tumor=tumor,
              surgery=rng.choice(("subtotal resection", "biopsy")))
    text = _text(rng, first, rng.choice(("Residual T2/FLAIR abnormality on postoperative MRI.",
                                         "Residual non-enhancing disease.")),
                 rng.choice(("Seizures controlled on levetiracetam.", "Neurologically intact.", "")),
                 _maybe_ps(rng, ecog), _history(rng))
    chemo = "PCV" if oligo else "temozolomide"
    if age < 40:
        scenario, modality, course = "lgg_proton", PROTON, "54 GyRBE in 30 fractions with IMPT"
    else:
        scenario, modality, course = "lgg", PHOTON, "54 Gy in 30 fractions with IMRT"
    return _case(scenario, "cns", text, f"{course}, followed by {chemo}", modality, code, age=age, sex=sex,
                 laterality=side, histology="oligodendroglioma" if oligo else "astrocytoma", ecog=ecog)


# (as the note names the primary, histology)
_PRIMARIES = (("non-small cell lung cancer", "non-small cell lung cancer"),
              ("lung adenocarcinoma", "lung adenocarcinoma"),
              ("HER2-positive breast cancer", "breast carcinoma"), ("metastatic melanoma", "melanoma"),
              ("renal cell carcinoma", "renal cell carcinoma"))


def _srs_dose(mm: int) -> int:
    """RTOG 90-05 single-fraction dose by maximum diameter."""
    return 24 if mm <= 20 else 18 if mm <= 30 else 15


def _brain_mets_srs(rng: random.Random) -> dict:
    """One to four brain metastases: SRS, dose by lesion size (RTOG 90-05); several lesions are
    treated only when all are small enough for 24 Gy."""
    age, ecog = rng.randint(40, 85), rng.choice((0, 1, 1, 2))
    primary, histology = rng.choice(_PRIMARIES)
    sex = "female" if primary.startswith("HER2") else rng.choice(("male", "female"))
    count, in_mm, who = rng.choice((1, 1, 1, 2, 3, 4)), rng.random() < 0.3, _who(rng, age, sex)
    if count == 1:
        mm, side = rng.randint(5, 40), _side(rng)
        where = f"{side} {rng.choice(('frontal', 'parietal', 'temporal', 'occipital', 'cerebellar'))}"
        size = f"{mm} mm" if in_mm else f"{mm / 10:.1f} cm"
        first = rng.choice((f"{who} with {primary} and a solitary {size} {where} brain metastasis.",
                            f"{who} with {primary}; MRI shows a single {where} metastasis measuring {size}."))
        regimen = f"{_srs_dose(mm)} Gy in 1 fraction with SRS"
    else:
        sizes, side = sorted((rng.randint(3, 20) for _ in range(count)), reverse=True), None
        shown = [str(s) if in_mm else f"{s / 10:.1f}" for s in sizes]
        listed = f"{', '.join(shown[:-1])} and {shown[-1]} {'mm' if in_mm else 'cm'}"
        first = rng.choice((f"{who} with {primary} and {count} brain metastases measuring {listed}.",
                            f"{who} with {primary}; MRI shows {count} brain metastases ({listed})."))
        regimen = "24 Gy in 1 fraction with SRS to each lesion"
    text = _text(rng, first, _ps(rng, ecog),
                 rng.choice(("Extracranial disease controlled on systemic therapy.",
                             "Stable extracranial disease.", "")),
                 rng.choice(("Presented with headaches.", "No neurological deficit.",
                             "Mild gait imbalance.", "")),
                 _history(rng))
    return _case("brain_mets_srs", "brain metastasis", text, regimen, PHOTON, "C79.31", age=age, sex=sex,
                 laterality=side, stage="IV", histology=histology, ecog=ecog)


def _brain_mets_wbrt(rng: random.Random) -> dict:
    """Five or more brain metastases: hippocampal-avoidance whole brain with memantine (NRG CC001)."""
    age, ecog = rng.randint(40, 85), rng.choice((0, 1, 1, 2))
    primary, histology = rng.choice(_PRIMARIES)
    sex = "female" if primary.startswith("HER2") else rng.choice(("male", "female"))
    first = rng.choice((
        "{who} with {primary} and {count} brain metastases, the largest {size}.",
        "{who} with {primary}; MRI brain shows {count} enhancing metastases up to {size}.",
    )).format(who=_who(rng, age, sex), primary=primary, count=rng.randint(5, 15),
              size=_size(rng, rng.randint(6, 25)))
    text = _text(rng, first, _ps(rng, ecog),
                 rng.choice(("No lesions within 5 mm of the hippocampi.", "Hippocampi uninvolved.", "")),
                 rng.choice(("Extracranial disease stable.", "Presented with ataxia.", "")), _history(rng))
    return _case("brain_mets_whole_brain", "brain metastasis", text,
                 "30 Gy in 10 fractions with hippocampal-avoidance WBRT and memantine", PHOTON, "C79.31",
                 age=age, sex=sex, stage="IV", histology=histology, ecog=ecog)


def _meningioma(rng: random.Random) -> dict:
    """Growing grade 1 meningioma: SRS 13 Gy when <= 3 cm and >= 3 mm from the optic apparatus,
    else fractionated 54 Gy/30."""
    age, sex, ecog = rng.randint(35, 85), "female" if rng.random() < 0.7 else "male", rng.choice((0, 1))
    where, near_optic = rng.choice((("{side} convexity", False), ("{side} parasagittal", False),
                                    ("{side} sphenoid wing", True), ("{side} cavernous sinus", True),
                                    ("tuberculum sellae", True), ("falcine", False)))
    side = _side(rng) if "{side}" in where else None
    mm, distance = rng.randint(12, 50), rng.randint(0, 12) if near_optic else rng.randint(25, 60)
    first = rng.choice((
        "{who} with an enlarging {size} {where} meningioma, presumed WHO grade 1.",
        "{who} with a {where} meningioma measuring {size}, grown on serial MRI.",
    )).format(who=_who(rng, age, sex), size=_size(rng, mm), where=where.format(side=side))
    text = _text(rng, first,
                 f"{distance} mm from the optic apparatus." if distance else "Abuts the optic apparatus.",
                 rng.choice(("Presented with headaches.", "Found incidentally.",
                             "Presented with a seizure.")),
                 _maybe_ps(rng, ecog), _history(rng))
    if mm <= 30 and distance >= 3:
        regimen = "13 Gy in 1 fraction with SRS"
    else:
        regimen = "54 Gy in 30 fractions with IMRT"
    return _case("meningioma", "benign", text, regimen, PHOTON, "D32.0", age=age, sex=sex, laterality=side,
                 histology="meningioma", ecog=ecog)


def _vestibular_schwannoma(rng: random.Random) -> dict:
    """Growing vestibular schwannoma up to 2.5 cm: SRS 12 Gy."""
    age, sex, side = rng.randint(35, 80), rng.choice(("male", "female")), _side(rng)
    first = rng.choice((
        "{who} with a {size} {side} vestibular schwannoma, growing on serial MRI.",
        "{who} with {side} acoustic neuroma, {size}, enlarged by {g} mm over a year.",
    )).format(who=_who(rng, age, sex), size=_size(rng, rng.randint(8, 25)), side=side, g=rng.randint(2, 4))
    text = _text(rng, first, rng.choice(("Serviceable hearing on audiogram.", "Hearing already reduced.")),
                 rng.choice(("Tinnitus and imbalance.", "Presented with unilateral hearing loss.", "")),
                 rng.choice(("Declines microsurgery.", "Prefers non-surgical treatment.")),
                 rng.choice(("Facial nerve function normal.", "House-Brackmann grade I.", "")), _history(rng))
    return _case("vestibular_schwannoma", "benign", text, "12 Gy in 1 fraction with SRS", PHOTON, "D33.3",
                 age=age, sex=sex, laterality=side, histology="schwannoma")


# --- paediatric and skull base (protons) -------------------------------------------------------

def _medulloblastoma(rng: random.Random) -> dict:
    """Childhood medulloblastoma: proton craniospinal irradiation, 23.4 GyRBE for standard risk
    (M0, residual <= 1.5 cm2), 36 GyRBE for high risk, then a boost to 54 GyRBE (ACNS0331/0332)."""
    age, sex, ecog = rng.randint(3, 17), rng.choice(("male", "female")), rng.choice((0, 1))
    residual = 0 if rng.random() < 0.6 else rng.randint(2, 30)
    m = rng.choices((0, 1, 3), weights=(70, 10, 20))[0]
    first = rng.choice((
        "{who} with medulloblastoma of the cerebellar vermis, {surgery}.",
        "{who} presenting with {symptom}; resection of a posterior fossa mass showed medulloblastoma, "
        "{surgery}.",
    )).format(who=_who(rng, age, sex),
              surgery=f"residual {residual / 10:.1f} cm2" if residual else "gross total resection",
              symptom=rng.choice(("headaches and vomiting", "ataxia", "morning vomiting")))
    staging = {0: "Spine MRI and CSF cytology negative (M0).", 1: "CSF cytology positive (M1).",
               3: "Spine MRI shows drop metastases (M3)."}[m]
    text = _text(rng, first, staging, _lansky(rng, ecog),
                 rng.choice(("Presented with obstructive hydrocephalus.", "Baseline audiology normal.", "")),
                 rng.choice(("Classic histology.", "Desmoplastic/nodular histology.")))
    if m == 0 and residual <= 15:
        regimen = ("craniospinal 23.4 GyRBE in 13 fractions followed by a tumor bed boost of 30.6 GyRBE "
                   "in 17 fractions, with protons")
    else:
        regimen = ("craniospinal 36 GyRBE in 20 fractions followed by a tumor bed boost of 18 GyRBE "
                   "in 10 fractions, with protons")
    return _case("medulloblastoma", "cns", text, regimen, PROTON, "C71.6", age=age, sex=sex, stage=f"M{m}",
                 histology="medulloblastoma", ecog=ecog)


def _ependymoma(rng: random.Random) -> dict:
    """Childhood posterior fossa ependymoma after resection: 59.4 GyRBE/33 (ACNS0831)."""
    age, sex, ecog = rng.randint(2, 17), rng.choice(("male", "female")), rng.choice((0, 1))
    first = rng.choice((
        "{who} with a fourth ventricle ependymoma, CNS WHO grade {g}, after {surgery}.",
        "{who} presenting with {symptom}; {surgery} of a fourth ventricular mass showed ependymoma "
        "(grade {g}).",
    )).format(who=_who(rng, age, sex), g=rng.choice((2, 3)),
              surgery=rng.choice(("gross total resection", "near-total resection")),
              symptom=rng.choice(("vomiting", "head tilt", "unsteady gait")))
    text = _text(rng, first, rng.choice(("Spine MRI and CSF negative.", "No leptomeningeal spread.")),
                 _lansky(rng, ecog), rng.choice(("Posterior fossa group A.", "")),
                 rng.choice(("Presented with obstructive hydrocephalus.", "Mild residual ataxia.", "")))
    return _case("ependymoma", "cns", text, "59.4 GyRBE in 33 fractions to the tumor bed with protons",
                 PROTON, "C71.7", age=age, sex=sex, histology="ependymoma", ecog=ecog)


def _craniopharyngioma(rng: random.Random) -> dict:
    """Childhood craniopharyngioma after limited surgery: 54 GyRBE/30."""
    age, sex, ecog = rng.randint(5, 17), rng.choice(("male", "female")), rng.choice((0, 1))
    first = rng.choice((
        "{who} with adamantinomatous craniopharyngioma after {surgery}.",
        "{who} presenting with {symptom}; craniopharyngioma treated with {surgery}.",
    )).format(who=_who(rng, age, sex), surgery=rng.choice(("subtotal resection", "cyst drainage and biopsy")),
              symptom=rng.choice(("visual field loss", "headaches", "growth failure")))
    text = _text(rng, first,
                 rng.choice(("Residual solid component on MRI.", "Residual cyst wall and calcification.")),
                 rng.choice(("On desmopressin for diabetes insipidus.", "Endocrine function intact.", "")),
                 rng.choice(("Bitemporal hemianopia on visual field testing.", "Visual fields full.", "")),
                 _lansky(rng, ecog))
    return _case("craniopharyngioma", "cns", text, "54 GyRBE in 30 fractions with protons", PROTON, "D44.4",
                 age=age, sex=sex, histology="craniopharyngioma", ecog=ecog)


def _chordoma(rng: random.Random) -> dict:
    """Chordoma after resection: protons to 74 GyRBE/37 (ASTRO model policy, group 1)."""
    age, sex, ecog = rng.randint(25, 80), rng.choice(("male", "female")), rng.choice((0, 1))
    where, code = rng.choice((("clivus", "C41.0"), ("skull base (clivus)", "C41.0"),
                              ("C2 vertebra", "C41.2"), ("L3 vertebral body", "C41.2"),
                              ("sacrum", "C41.4"), ("sacrum (S2-S3)", "C41.4")))
    first = rng.choice((
        "{who} with a chordoma of the {where}, status post {surgery}.",
        "{who} presenting with {symptom}; {surgery} of a {where} mass showed chordoma.",
    )).format(who=_who(rng, age, sex), where=where,
              surgery=rng.choice(("subtotal resection", "gross total resection")),
              symptom=rng.choice(("diplopia", "headaches", "pain")))
    text = _text(rng, first, rng.choice(("Brachyury-positive.", "")),
                 rng.choice(("Residual tumor on MRI.", "Margins positive.", "No residual on MRI.")),
                 _maybe_ps(rng, ecog), _history(rng))
    return _case("chordoma", "sarcoma", text, "74 GyRBE in 37 fractions with protons", PROTON, code, age=age,
                 sex=sex, histology="chordoma", ecog=ecog)


# --- bone metastases and cord compression ------------------------------------------------------

_BONE_PRIMARIES = ("breast cancer", "prostate cancer", "lung adenocarcinoma", "renal cell carcinoma")
_SPINE = tuple(f"T{i}" for i in range(4, 13)) + tuple(f"L{i}" for i in range(1, 6))


def _sex_for(rng: random.Random, primary: str) -> str:
    if primary == "breast cancer":
        return "female"
    return "male" if primary == "prostate cancer" else rng.choice(("male", "female"))


def _bone_regimen(ecog: int, spine: bool, oligo: bool, fixed: bool) -> str:
    """ASTRO bone metastases: one fraction by default and when frail, SBRT for an oligometastatic
    spine in a fit patient, five fractions after fixation."""
    if ecog == 3:
        return "8 Gy in 1 fraction"
    if spine and oligo and ecog <= 1:
        return "24 Gy in 2 fractions with SBRT"
    return "20 Gy in 5 fractions" if fixed else "8 Gy in 1 fraction"


def _bone_mets(rng: random.Random) -> dict:
    """Painful bone metastasis; the prescription follows from the facts by _bone_regimen."""
    age, primary = rng.randint(40, 88), rng.choice(_BONE_PRIMARIES)
    sex = _sex_for(rng, primary)
    kind = rng.choices(("spine_sbrt", "frail", "fixed", "simple"), weights=(20, 22, 13, 45))[0]
    spine = kind == "spine_sbrt" or (kind in ("frail", "simple") and rng.random() < 0.4)
    ecog = 3 if kind == "frail" else rng.choice((0, 1)) if kind == "spine_sbrt" else rng.choice((0, 1, 2))
    oligo = (kind == "spine_sbrt" or (kind == "frail" and rng.random() < 0.3)
             or (kind == "simple" and ecog == 2 and rng.random() < 0.5))
    fixed, side = kind == "fixed", None
    if spine:
        where = f"the {rng.choice(_SPINE)} vertebral body"
    elif fixed:
        side = _side(rng)
        where = f"the {side} {rng.choice(('proximal femur', 'femoral shaft', 'proximal humerus'))}"
    else:
        bone = rng.choice(("{side} femoral neck", "{side} iliac wing", "{side} acetabulum",
                           "{side} sixth rib", "sacrum", "sternum"))
        side = _side(rng) if "{side}" in bone else None
        where = "the " + bone.format(side=side)
    first = rng.choice((
        "{who} with metastatic {primary} and a painful metastasis in {where}.",
        "{who} with {primary}, presenting with pain from a lytic lesion of {where}.",
        "{who}: {primary} with painful osseous metastasis at {where}, pain {pain}/10.",
    )).format(who=_who(rng, age, sex), primary=primary, where=where, pain=rng.randint(4, 9))
    if oligo:
        extent = rng.choice((f"Oligometastatic: {rng.randint(1, 3)} sites in total, primary controlled.",
                             "Oligometastatic disease, primary treated."))
    else:
        extent = rng.choice(("Widespread osseous metastases.", "Multiple bone and liver metastases."))
    if fixed:
        surgery = rng.choice(("Status post intramedullary nailing.", "Underwent prophylactic fixation."))
    else:
        surgery = rng.choice(("No spinal cord compression.", "No impending fracture.", ""))
    text = _text(rng, first, _ps(rng, ecog), extent if spine or rng.random() < 0.5 else "", surgery,
                 _history(rng))
    regimen = _bone_regimen(ecog, spine, oligo, fixed)
    scenario = "bone_mets_spine_sbrt" if "SBRT" in regimen else "bone_mets_postop" if fixed else "bone_mets"
    return _case(scenario, "bone metastasis", text, regimen, PHOTON, "C79.51", age=age, sex=sex,
                 laterality=side, stage="IV", histology=primary, ecog=ecog)


def _cord_compression(rng: random.Random) -> dict:
    """Metastatic cord compression: 30 Gy/10 after decompressive surgery (Patchell), otherwise
    20 Gy/5, or 8 Gy once when frail (SCORAD)."""
    age, primary = rng.randint(45, 88), rng.choice(_BONE_PRIMARIES)
    sex = _sex_for(rng, primary)
    ecog = rng.choices((1, 2, 3), weights=(30, 40, 30))[0]
    surgery = ecog <= 2 and rng.random() < 0.35
    first = rng.choice((
        "{who} with {primary} presenting with back pain and leg weakness; MRI shows epidural cord "
        "compression at {level}.",
        "{who} with metastatic {primary} and metastatic spinal cord compression at {level}.",
    )).format(who=_who(rng, age, sex), primary=primary, level=rng.choice(_SPINE[:-4]))
    if surgery:
        operated = rng.choice(("Underwent decompressive laminectomy and stabilization.",
                               "Status post posterior decompression and fixation."))
    else:
        operated = rng.choice(("Not a surgical candidate.", "Spine surgery not recommended."))
    walking = {1: ("Still ambulatory.",), 2: ("Still ambulatory.", "Walks with a frame."),
               3: ("Walks with a frame.", "Unable to walk.")}[ecog]
    text = _text(rng, first, _ps(rng, ecog), "Started on dexamethasone.", operated, rng.choice(walking),
                 _history(rng))
    if surgery:
        regimen = "30 Gy in 10 fractions"
    else:
        regimen = "8 Gy in 1 fraction" if ecog == 3 else "20 Gy in 5 fractions"
    return _case("cord_compression", "bone metastasis", text, regimen, PHOTON, "C79.51", age=age, sex=sex,
                 stage="IV", histology=primary, ecog=ecog)


# --- gastrointestinal --------------------------------------------------------------------------

def _rectum(rng: random.Random) -> dict:
    """High-risk rectal cancer: short course then chemotherapy (RAPIDO), or long-course
    chemoradiation for organ preservation within 5 cm of the anal verge (OPRA)."""
    age, sex, distance = rng.randint(35, 82), rng.choice(("male", "female")), rng.randint(2, 14)
    t, n, ecog = rng.choice(("cT3", "cT3", "cT4a")), rng.choice(("N0", "N1", "N2")), rng.choice((0, 1))
    first = rng.choice((
        "{who} with {t}{n} adenocarcinoma of the rectum, lower edge {d} cm from the anal verge.",
        "{who} with rectal adenocarcinoma {d} cm from the anal verge, MRI stage {t}{n}.",
    )).format(who=_who(rng, age, sex), t=t, n=n, d=distance)
    text = _text(rng, first,
                 rng.choice(("Mesorectal fascia threatened.", "EMVI positive.",
                             "Mesorectal fascia involved.")),
                 "CT chest, abdomen and pelvis without metastases.", f"CEA {rng.randint(1, 40)}.",
                 _maybe_ps(rng, ecog), _history(rng))
    if distance <= 5:
        regimen = ("50.4 Gy in 28 fractions with concurrent capecitabine, "
                   "followed by consolidation chemotherapy")
    else:
        regimen = "25 Gy in 5 fractions followed by consolidation chemotherapy"
    return _case("rectum", "gi", text, regimen, PHOTON, "C20", age=age, sex=sex, stage=f"{t}{n}",
                 histology="adenocarcinoma", ecog=ecog)


def _anal(rng: random.Random) -> dict:
    """Anal canal SCC with 5-FU and mitomycin: 50.4 Gy/28 for T2N0, 54 Gy/30 for T3-4 or node
    positive (RTOG 0529)."""
    age, sex, ecog = rng.randint(40, 82), "female" if rng.random() < 0.65 else "male", rng.choice((0, 1))
    t, n = rng.choice(((2, "0"), (2, "0"), (2, "1a"), (3, "0"), (3, "1a"), (4, "1a"), (3, "1c")))
    first = rng.choice((
        "{who} with squamous cell carcinoma of the anal canal, cT{t}N{n}.",
        "{who} presenting with rectal bleeding; biopsy shows anal canal SCC, cT{t}N{n}M0.",
    )).format(who=_who(rng, age, sex), t=t, n=n)
    text = _text(rng, first, rng.choice(("HIV-negative.", "HIV-positive, undetectable viral load.", "")),
                 "PET/CT shows an FDG-avid inguinal node." if n != "0" else "No nodal disease on PET/CT.",
                 _maybe_ps(rng, ecog), _history(rng))
    dose = "50.4 Gy in 28" if t == 2 and n == "0" else "54 Gy in 30"
    return _case("anal", "gi", text, f"{dose} fractions with IMRT and concurrent 5-FU and mitomycin", PHOTON,
                 "C21.1", age=age, sex=sex, stage=f"cT{t}N{n}", histology="squamous cell carcinoma",
                 ecog=ecog)


# (phrase, code, upper third)
_ESOPHAGUS = (("upper thoracic esophagus", "C15.3", True), ("upper third of the esophagus", "C15.3", True),
              ("mid-thoracic esophagus", "C15.4", False), ("middle third of the esophagus", "C15.4", False),
              ("distal esophagus", "C15.5", False), ("lower third of the esophagus", "C15.5", False),
              ("gastroesophageal junction (Siewert II)", "C16.0", False))


def _esophagus(rng: random.Random) -> dict:
    """Esophagus: CROSS 41.4 Gy/23 then surgery when operable; definitive 50.4 Gy/28 when not,
    and always for the upper third."""
    age, sex = rng.randint(45, 82), "male" if rng.random() < 0.75 else "female"
    where, code, upper = rng.choice(_ESOPHAGUS)
    if code == "C16.0":
        hist = "adenocarcinoma"
    elif upper or (code == "C15.4" and rng.random() < 0.7):
        hist = "squamous cell carcinoma"
    else:
        hist = rng.choice(("adenocarcinoma", "adenocarcinoma", "squamous cell carcinoma"))
    operable = not upper and rng.random() < 0.6
    ecog = rng.choice((0, 1)) if operable else rng.choice((1, 2))
    first = rng.choice((
        "{who} with {hist} of the {where}, cT{t}N{n}.",
        "{who} presenting with dysphagia and weight loss; EGD shows {hist} of the {where}, cT{t}N{n}M0.",
    )).format(who=_who(rng, age, sex), hist=hist, where=where, t=rng.choice((2, 3, 3)),
              n=rng.choice((0, 1, 2)))
    if upper:
        surgical = ""
    elif operable:
        surgical = rng.choice(("Surgical candidate per thoracic surgery.", "Fit for esophagectomy."))
    else:
        surgical = rng.choice(("Medically inoperable.", "Declines esophagectomy.", "Not fit for surgery."))
    text = _text(rng, first, surgical, _ps(rng, ecog), rng.choice(("PET/CT without distant disease.", "")),
                 _history(rng))
    chemo = "fractions with weekly carboplatin and paclitaxel"
    regimen = f"41.4 Gy in 23 {chemo}, followed by esophagectomy" if operable else f"50.4 Gy in 28 {chemo}"
    return _case("esophagus", "gi", text, regimen, PHOTON, code, age=age, sex=sex, histology=hist, ecog=ecog)


def _pancreas(rng: random.Random) -> dict:
    """Locally advanced pancreas after induction chemotherapy: SBRT 40 Gy/5 unless bowel abuts the
    tumour, then 50.4 Gy/28 with capecitabine."""
    age, sex, ecog = rng.randint(45, 82), rng.choice(("male", "female")), rng.choice((0, 1))
    part, code = rng.choice((("head", "C25.0"), ("head", "C25.0"), ("body", "C25.1"), ("tail", "C25.2")))
    bowel = rng.random() < (0.65 if part == "head" else 0.2)
    first = rng.choice((
        "{who} with locally advanced adenocarcinoma of the pancreatic {part}, {vessel}, stable after "
        "{k} cycles of {chemo}.",
        "{who}: unresectable pancreatic {part} adenocarcinoma with {vessel}; {k} cycles of {chemo} "
        "completed.",
    )).format(who=_who(rng, age, sex), part=part, k=rng.choice((4, 6, 8)),
              vessel=rng.choice(("SMA encasement", "celiac axis involvement", "SMV occlusion")),
              chemo=rng.choice(("FOLFIRINOX", "gemcitabine and nab-paclitaxel")))
    if bowel:
        contact = rng.choice(("Tumor abuts the duodenum.", "Tumor abuts the stomach."))
    else:
        contact = rng.choice(("No bowel in contact with the tumor.",
                              "Duodenum and stomach clear of the tumor."))
    text = _text(rng, first, contact, f"CA 19-9 {rng.randint(20, 900)} U/mL.", _ps(rng, ecog), _history(rng))
    if bowel:
        regimen = "50.4 Gy in 28 fractions with concurrent capecitabine"
    else:
        regimen = "40 Gy in 5 fractions with SBRT"
    return _case("pancreas", "gi", text, regimen, PHOTON, code, age=age, sex=sex, histology="adenocarcinoma",
                 ecog=ecog)


def _hcc(rng: random.Random) -> dict:
    """Inoperable hepatocellular carcinoma: SBRT 50 Gy/5 up to 5 cm; protons 67.5 GyRBE/15 above
    5 cm, to spare the rest of the liver."""
    age, sex, ecog = rng.randint(45, 85), "male" if rng.random() < 0.75 else "female", rng.choice((0, 1))
    mm = rng.randint(15, 95)
    first = rng.choice((
        "{who} with {cause} cirrhosis, Child-Pugh {cp}, and a {size} hepatocellular carcinoma in "
        "segment {seg}.",
        "{who}: {size} HCC, segment {seg}, on a background of {cause} cirrhosis (Child-Pugh {cp}).",
    )).format(who=_who(rng, age, sex),
              cause=rng.choice(("hepatitis C", "hepatitis B", "alcohol-related", "MASH")),
              cp=rng.choice(("A5", "A6")), size=_size(rng, mm),
              seg=rng.choice(("II", "III", "IV", "V", "VI", "VII", "VIII")))
    text = _text(rng, first, f"AFP {rng.randint(3, 2000)} ng/mL.",
                 rng.choice(("Not a candidate for resection or transplant.", "Progressed after TACE.",
                             "Declined resection.")),
                 rng.choice(("No portal vein thrombus.", "")), _ps(rng, ecog), _history(rng))
    if mm > 50:
        scenario, modality, regimen = "hcc_proton", PROTON, "67.5 GyRBE in 15 fractions with protons"
    else:
        scenario, modality, regimen = "hcc_sbrt", PHOTON, "50 Gy in 5 fractions with SBRT"
    return _case(scenario, "gi", text, regimen, modality, "C22.0", age=age, sex=sex,
                 histology="hepatocellular carcinoma", ecog=ecog)


# --- gynaecological and genitourinary ----------------------------------------------------------

# (FIGO 2018 stage, local extent, nodal staging)
_CERVIX_STAGES = (
    ("IB3", "confined to the cervix", "PET/CT negative for nodes."),
    ("IIA2", "extending to the upper vagina", "PET/CT negative for nodes."),
    ("IIB", "with parametrial invasion on MRI", "No nodal uptake on PET/CT."),
    ("IIIA", "involving the lower third of the vagina", "No nodal uptake on PET/CT."),
    ("IIIB", "extending to the pelvic sidewall", "PET/CT negative for nodes."),
    ("IIIC1", "with parametrial invasion", "PET/CT shows FDG-avid pelvic nodes, para-aortic nodes negative."),
    ("IIIC2", "with parametrial invasion", "PET/CT shows FDG-avid pelvic and para-aortic nodes."),
    ("IVA", "invading the bladder mucosa on cystoscopy", "PET/CT negative for nodes."),
)


def _cervix(rng: random.Random) -> dict:
    """Locally advanced cervix: 45 Gy/25 with weekly cisplatin then HDR 28 Gy/4, with the
    para-aortic nodes when involved (FIGO IIIC2). Photon, the main course (see module docstring)."""
    age, ecog = rng.randint(25, 78), rng.choice((0, 1))
    stage, extent, nodes = rng.choice(_CERVIX_STAGES)
    hist = "squamous cell carcinoma" if rng.random() < 0.8 else "adenocarcinoma"
    where, code = rng.choice((("cervix", "C53.9"), ("cervix", "C53.9"), ("endocervix", "C53.0"),
                              ("exocervix", "C53.1")))
    first = rng.choice((
        "{who} with FIGO {stage} {hist} of the {where}, {size}, {extent}.",
        "{who} presenting with postcoital bleeding; {size} {hist} of the {where} {extent}, FIGO {stage}.",
    )).format(who=_who(rng, age, "female"), stage=stage, hist=hist, where=where, extent=extent,
              size=_size(rng, rng.randint(41, 75) if stage == "IB3" else rng.randint(25, 80)))
    text = _text(rng, first, nodes, _maybe_ps(rng, ecog), _history(rng))
    target = "the pelvis and para-aortic nodes" if stage == "IIIC2" else "the pelvis"
    regimen = (f"45 Gy in 25 fractions to {target} with IMRT and weekly cisplatin, "
               "followed by HDR brachytherapy 28 Gy in 4 fractions")
    return _case("cervix", "gyn", text, regimen, PHOTON, code, age=age, sex="female", stage=f"FIGO {stage}",
                 histology=hist, ecog=ecog)


def _endometrium(rng: random.Random) -> dict:
    """Endometrial cancer after hysterectomy: vaginal cuff HDR 21 Gy/3 for high-intermediate risk
    stage I (PORTEC-2); pelvic 45 Gy/25 for stage II (cervical stromal invasion)."""
    stage = rng.choices(("IA", "IB", "II"), weights=(30, 45, 25))[0]
    grade = 3 if stage == "IA" else rng.choice((1, 2)) if stage == "IB" else rng.choice((1, 2, 3))
    age = rng.randint(61, 85) if stage != "II" else rng.randint(45, 82)
    invasion, ecog = rng.randint(10, 49) if stage == "IA" else rng.randint(50, 95), rng.choice((0, 1))
    first = rng.choice((
        "{who}, status post {surgery} for FIGO {stage} grade {g} endometrioid adenocarcinoma of the "
        "endometrium.",
        "{who} with grade {g} endometrioid endometrial cancer, FIGO {stage}, after {surgery}.",
    )).format(who=_who(rng, age, "female"), stage=stage, g=grade,
              surgery=rng.choice(("TLH/BSO and sentinel node biopsy", "total hysterectomy and BSO",
                                  "robotic hysterectomy with BSO and sentinel nodes")))
    text = _text(rng, first, f"Myometrial invasion {invasion}%.",
                 "Cervical stromal invasion present." if stage == "II" else "No cervical stromal invasion.",
                 rng.choice(("Sentinel nodes negative.", "Nodes negative.")),
                 rng.choice(("LVSI absent.", "Focal LVSI.")), _maybe_ps(rng, ecog), _history(rng))
    if stage == "II":
        scenario, modality = "endometrium_pelvis", PHOTON
        regimen = "45 Gy in 25 fractions to the pelvis with IMRT"
    else:
        scenario, modality = "endometrium_cuff", BRACHY
        regimen = "21 Gy in 3 fractions to the vaginal cuff with HDR brachytherapy"
    return _case(scenario, "gyn", text, regimen, modality, "C54.1", age=age, sex="female",
                 stage=f"FIGO {stage}", histology="endometrioid adenocarcinoma", ecog=ecog)


def _bladder(rng: random.Random) -> dict:
    """Bladder preservation: 64 Gy/32 with cisplatin when fit for it (eGFR >= 60, ECOG 0-1),
    otherwise 55 Gy/20 with 5-FU and mitomycin (BC2001)."""
    age, sex = rng.randint(58, 88), "male" if rng.random() < 0.75 else "female"
    where, code = rng.choice((("trigone", "C67.0"), ("dome", "C67.1"), ("lateral wall", "C67.2"),
                              ("anterior wall", "C67.3"), ("posterior wall", "C67.4")))
    egfr, t, ecog = rng.randint(30, 95), rng.choice(("cT2", "cT2", "cT3a")), rng.choice((0, 1, 1, 2))
    first = rng.choice((
        "{who} with muscle-invasive urothelial carcinoma of the bladder {where}, {t}N0, after maximal TURBT.",
        "{who}: {t}N0 urothelial carcinoma arising from the {where} of the bladder, completely resected "
        "at TURBT.",
    )).format(who=_who(rng, age, sex), where=where, t=t)
    text = _text(rng, first, rng.choice((f"eGFR {egfr} mL/min.", f"Creatinine clearance {egfr} mL/min.")),
                 rng.choice(("Declines cystectomy.", "Opts for bladder preservation.",
                             "Not a cystectomy candidate.")),
                 rng.choice(("No hydronephrosis.", "")), _ps(rng, ecog), _history(rng))
    regimen = ("64 Gy in 32 fractions with weekly cisplatin" if egfr >= 60 and ecog <= 1
               else "55 Gy in 20 fractions with concurrent 5-FU and mitomycin")
    return _case("bladder", "gu", text, regimen, PHOTON, code, age=age, sex=sex, stage=f"{t}N0",
                 histology="urothelial carcinoma", ecog=ecog)


def _seminoma(rng: random.Random) -> dict:
    """Seminoma after orchiectomy: para-aortic 20 Gy/10 for stage I when surveillance and
    carboplatin are declined; para-aortic and pelvic 30 Gy/15 (IIA) or 36 Gy/18 (IIB)."""
    age, side = rng.randint(20, 55), _side(rng)
    stage = rng.choices(("I", "IIA", "IIB"), weights=(30, 45, 25))[0]
    first = rng.choice((
        "{who}, status post {side} radical inguinal orchiectomy for a {size} pure seminoma.",
        "{who} with pure seminoma of the {side} testis, {size}, after radical orchiectomy.",
    )).format(who=_who(rng, age, "male"), side=side, size=_size(rng, rng.randint(15, 70)))
    if stage == "I":
        nodes = "CT abdomen and pelvis negative; declines surveillance and carboplatin."
    else:
        node_mm = rng.randint(8, 20) if stage == "IIA" else rng.randint(21, 50)
        nodes = f"CT shows a {_size(rng, node_mm)} para-aortic node."
    text = _text(rng, first, nodes, rng.choice(("AFP normal.", "Markers normalized after orchiectomy.")),
                 rng.choice(("Serum LDH normal.", "")), _history(rng))
    regimen = {"I": "20 Gy in 10 fractions to the para-aortic nodes",
               "IIA": "30 Gy in 15 fractions to the para-aortic and ipsilateral pelvic nodes",
               "IIB": "36 Gy in 18 fractions to the para-aortic and ipsilateral pelvic nodes"}[stage]
    return _case("seminoma", "gu", text, regimen, PHOTON, "C62.11" if side == "right" else "C62.12", age=age,
                 sex="male", laterality=side, stage=stage, histology="seminoma")


# --- lymphoma ----------------------------------------------------------------------------------

# region -> (nodes named in the note, code, lateral)
_HODGKIN_REGIONS = {"neck": ("{side} cervical nodes", "C81.11", True),
                    "mediastinum": ("mediastinal nodes", "C81.12", False),
                    "neck and mediastinum": ("{side} supraclavicular and mediastinal nodes", "C81.18", True),
                    "axilla": ("{side} axillary nodes", "C81.14", True)}


def _hodgkin(rng: random.Random) -> dict:
    """Early Hodgkin lymphoma after ABVD: 20 Gy when favourable, 30 Gy when unfavourable (bulky
    mediastinum or ESR >= 50; GHSG HD10/HD11); protons when the mediastinum is involved at age <= 30."""
    age = rng.randint(18, 30) if rng.random() < 0.5 else rng.randint(18, 60)
    sex, region = rng.choice(("male", "female")), rng.choice(tuple(_HODGKIN_REGIONS))
    involved, code, lateral = _HODGKIN_REGIONS[region]
    side = _side(rng) if lateral else None
    mediastinal = "mediastinum" in region
    bulky = mediastinal and rng.random() < 0.3
    esr = rng.randint(50, 90) if rng.random() < 0.25 else rng.randint(5, 45)
    unfavourable = bulky or esr >= 50
    stage = "IIA" if region == "neck and mediastinum" else "IA"
    first = rng.choice((
        "{who} with stage {stage} nodular sclerosis classical Hodgkin lymphoma involving {involved}.",
        "{who} with classical Hodgkin lymphoma (nodular sclerosis), stage {stage}, of the {involved}.",
    )).format(who=_who(rng, age, sex), stage=stage, involved=involved.format(side=side))
    if mediastinal:
        bulk = (f"Bulky mediastinal mass, ratio {rng.randint(36, 50) / 100:.2f}." if bulky
                else "No bulky disease.")
    else:
        bulk = ""
    text = _text(rng, first, f"ESR {esr} mm/h, no B symptoms.", bulk,
                 f"Complete metabolic response (Deauville {rng.choice((1, 2, 3))}) after "
                 f"{4 if unfavourable else 2} cycles of ABVD.",
                 rng.choice(("Presented with painless lymphadenopathy.",
                             "Presented with a persistent cough.", "")),
                 _history(rng))
    dose = "30 {} in 15" if unfavourable else "20 {} in 10"
    if mediastinal and age <= 30:
        scenario, modality = "hodgkin_proton", PROTON
        regimen = dose.format("GyRBE") + " fractions with involved-site proton therapy"
    else:
        scenario, modality, regimen = "hodgkin", PHOTON, dose.format("Gy") + " fractions with ISRT"
    return _case(scenario, "lymphoma", text, regimen, modality, code, age=age, sex=sex, laterality=side,
                 stage=stage, histology="classical Hodgkin lymphoma, nodular sclerosis")


def _dlbcl(rng: random.Random) -> dict:
    """Bulky early DLBCL after R-CHOP: 30 Gy/15 after a complete response, 36 Gy/18 after a
    partial one (Deauville 4)."""
    age, sex, ecog = rng.randint(30, 82), rng.choice(("male", "female")), rng.choice((0, 1))
    region, code, lateral = rng.choice((("cervical nodes", "C83.31", True),
                                        ("axillary nodes", "C83.34", True),
                                        ("inguinal nodes", "C83.35", True),
                                        ("mesenteric nodes", "C83.33", False)))
    side = _side(rng) if lateral else None
    deauville = rng.choices((1, 2, 3, 4), weights=(15, 25, 25, 35))[0]
    first = rng.choice((
        "{who} with stage {stage} diffuse large B-cell lymphoma of the {where}, bulky {size} at diagnosis.",
        "{who}: DLBCL involving the {where}, stage {stage}, {size} bulky mass.",
    )).format(who=_who(rng, age, sex), stage=rng.choice(("IA", "IIA")), size=_size(rng, rng.randint(75, 120)),
              where=f"{side} {region}" if side else region)
    text = _text(rng, first, f"After {rng.choice((4, 6))} cycles of R-CHOP, PET shows Deauville {deauville}.",
                 _maybe_ps(rng, ecog), rng.choice(("LDH normal.", "LDH elevated.", "")),
                 rng.choice((f"IPI {rng.randint(0, 2)}.", "")), _history(rng))
    regimen = f"{'30 Gy in 15' if deauville <= 3 else '36 Gy in 18'} fractions with ISRT"
    return _case("dlbcl", "lymphoma", text, regimen, PHOTON, code, age=age, sex=sex, laterality=side,
                 histology="diffuse large B-cell lymphoma", ecog=ecog)


# --- skin --------------------------------------------------------------------------------------

# (phrase, BCC code, SCC code); a pair is (right, left).
_SKIN_SITES = (("{side} nasal ala", "C44.311", "C44.321"), ("nasal tip", "C44.311", "C44.321"),
               ("{side} helix", ("C44.212", "C44.219"), ("C44.222", "C44.229")),
               ("{side} cheek", "C44.319", "C44.329"), ("forehead", "C44.319", "C44.329"),
               ("scalp vertex", "C44.41", "C44.42"),
               ("dorsum of the {side} hand", ("C44.612", "C44.619"), ("C44.622", "C44.629")),
               ("{side} shin", ("C44.712", "C44.719"), ("C44.722", "C44.729")))


def _skin(rng: random.Random, scc: bool) -> dict:
    """Keratinocyte skin cancer treated with electrons instead of surgery, fractionated by age as
    in the ASTRO guideline: 50 Gy/20 under 70, 40 Gy/10 at 70-84, 35 Gy/5 from 85."""
    age, sex = rng.randint(55, 95), rng.choice(("male", "female"))
    template, bcc_code, scc_code = rng.choice(_SKIN_SITES)
    side = _side(rng) if "{side}" in template else None
    code = scc_code if scc else bcc_code
    if isinstance(code, tuple):
        code = code[0] if side == "right" else code[1]
    if scc:
        hist = rng.choice(("well-differentiated squamous cell carcinoma",
                           "cutaneous squamous cell carcinoma"))
    else:
        hist = rng.choice(("nodular basal cell carcinoma", "basal cell carcinoma"))
    first = rng.choice((
        "{who} with a {size} biopsy-proven {hist} of the {where}.",
        "{who} with {hist} of the {where}, {size}.",
    )).format(who=_who(rng, age, sex), size=_size(rng, rng.randint(5, 30)), hist=hist,
              where=template.format(side=side))
    ecog = rng.choices((0, 1, 2, 3), weights=(30, 35, 25, 10))[0]
    text = _text(rng, first,
                 rng.choice(("Declines Mohs surgery.", "Poor surgical candidate on anticoagulation.",
                             "Excision would be disfiguring.")),
                 rng.choice((f"Slowly enlarging over {rng.randint(3, 24)} months.",
                             "Intermittent bleeding.", "")),
                 rng.choice(("No palpable adenopathy.", "")), _ps(rng, ecog), _history(rng))
    dose = "50 Gy in 20" if age < 70 else "40 Gy in 10" if age < 85 else "35 Gy in 5"
    regimen = f"{dose} fractions with electrons"
    return _case("skin_scc" if scc else "skin_bcc", "skin", text, regimen, ELECTRON, code, age=age, sex=sex,
                 laterality=side, histology="squamous cell carcinoma" if scc else "basal cell carcinoma",
                 ecog=ecog)


def _skin_bcc(rng: random.Random) -> dict:
    return _skin(rng, scc=False)


def _skin_scc(rng: random.Random) -> dict:
    return _skin(rng, scc=True)


# (phrase, code on the right or unsided, code on the left)
_MERKEL_SITES = (("{side} cheek", "C4A.39", "C4A.39"), ("scalp", "C4A.4", "C4A.4"),
                 ("posterior neck", "C4A.4", "C4A.4"), ("{side} forearm", "C4A.61", "C4A.62"),
                 ("{side} upper arm", "C4A.61", "C4A.62"), ("{side} thigh", "C4A.71", "C4A.72"),
                 ("{side} lower leg", "C4A.71", "C4A.72"))


def _merkel(rng: random.Random) -> dict:
    """Merkel cell carcinoma after wide excision, node negative: electrons to the bed, 50 Gy/25,
    or 56 Gy/28 with a positive margin."""
    age, sex, ecog = rng.randint(58, 92), rng.choice(("male", "female")), rng.choice((0, 1, 2))
    template, right, left = rng.choice(_MERKEL_SITES)
    side = _side(rng) if "{side}" in template else None
    positive = rng.random() < 0.35
    first = rng.choice((
        "{who}, status post wide local excision of a {size} Merkel cell carcinoma of the {where}, "
        "sentinel node negative.",
        "{who} with Merkel cell carcinoma of the {where}, {size}, excised; sentinel lymph node biopsy "
        "negative.",
    )).format(who=_who(rng, age, sex), size=_size(rng, rng.randint(6, 30)), where=template.format(side=side))
    if positive:
        margin = rng.choice(("Deep margin microscopically positive.",
                             "Positive margin; re-excision not feasible."))
    else:
        margin = rng.choice(("Margins negative.", f"Margins clear by {rng.randint(3, 15)} mm."))
    text = _text(rng, first, margin, rng.choice(("PET/CT negative.", "")), _maybe_ps(rng, ecog),
                 _history(rng))
    regimen = f"{'56 Gy in 28' if positive else '50 Gy in 25'} fractions to the tumor bed with electrons"
    code = left if side == "left" else right
    return _case("merkel", "skin", text, regimen, ELECTRON, code, age=age, sex=sex, laterality=side,
                 histology="Merkel cell carcinoma", ecog=ecog)


def _keloid(rng: random.Random) -> dict:
    """Recurrent keloid irradiated within a day of excision: 12 Gy/3 on the earlobe, 20 Gy/5 at
    high-tension sites."""
    age, sex = rng.randint(15, 55), rng.choice(("male", "female"))
    where = rng.choice(("{side} earlobe", "{side} earlobe", "presternal chest", "{side} shoulder",
                        "upper back"))
    side = _side(rng) if "{side}" in where else None
    first = rng.choice((
        "{who} with a recurrent keloid of the {where}, excised {when}.",
        "{who}: keloid of the {where}, recurred after prior excision; re-excised {when}.",
    )).format(who=_who(rng, age, sex), where=where.format(side=side),
              when=rng.choice(("today", "this morning")))
    text = _text(rng, first, rng.choice(("Failed intralesional triamcinolone injections.",
                                         f"{rng.randint(2, 6)} prior steroid injections.", "")),
                 rng.choice(("Symptomatic with itching.", "Cosmetically distressing.", "")),
                 rng.choice((f"Measured {_size(rng, rng.randint(10, 60))} before excision.", "")),
                 _history(rng))
    regimen = f"{'12 Gy in 3' if 'earlobe' in where else '20 Gy in 5'} fractions with electrons"
    return _case("keloid", "benign", text, regimen, ELECTRON, "L91.0", age=age, sex=sex, laterality=side,
                 histology="keloid")


# --- sarcoma and eye ---------------------------------------------------------------------------

_LIMB_CODES = {("lower", "right"): "C49.21", ("lower", "left"): "C49.22",
               ("upper", "right"): "C49.11", ("upper", "left"): "C49.12"}


def _sarcoma(rng: random.Random) -> dict:
    """Extremity soft tissue sarcoma before resection: 50 Gy/25; 30 Gy/5 from age 75, to spare frail
    patients weeks of daily travel."""
    age, sex, side = rng.randint(25, 88), rng.choice(("male", "female")), _side(rng)
    ecog = rng.choice((0, 1, 2))
    where, limb = rng.choice((("thigh", "lower"), ("thigh", "lower"), ("calf", "lower"),
                              ("upper arm", "upper"), ("forearm", "upper")))
    hist = rng.choice(("undifferentiated pleomorphic sarcoma", "myxofibrosarcoma", "synovial sarcoma",
                       "leiomyosarcoma", "pleomorphic liposarcoma"))
    first = rng.choice((
        "{who} with a {size} high-grade {hist} of the {side} {where}, deep to the fascia.",
        "{who} presenting with an enlarging {side} {where} mass; core biopsy shows grade {g} {hist}, {size}.",
    )).format(who=_who(rng, age, sex), size=_size(rng, rng.randint(50, 180)), hist=hist, side=side,
              where=where, g=rng.choice((2, 3)))
    text = _text(rng, first, rng.choice(("CT chest negative.", "No pulmonary metastases on staging CT.")),
                 rng.choice(("Planned for wide resection.", "Resectable per sarcoma surgery.")),
                 _maybe_ps(rng, ecog), _history(rng))
    regimen = f"{'30 Gy in 5' if age >= 75 else '50 Gy in 25'} fractions with IMRT before resection"
    return _case("sarcoma_extremity", "sarcoma", text, regimen, PHOTON, _LIMB_CODES[limb, side], age=age,
                 sex=sex, laterality=side, histology=hist, ecog=ecog)


def _uveal_melanoma(rng: random.Random) -> dict:
    """Medium choroidal melanoma: an I-125 plaque to 85 Gy at the apex (COMS), or protons when it
    lies within 3 mm of the optic disc, where a plaque cannot cover it."""
    age, sex, side = rng.randint(40, 85), rng.choice(("male", "female")), _side(rng)
    disc_tenths = rng.randint(0, 29) if rng.random() < 0.45 else rng.randint(30, 90)
    first = rng.choice((
        "{who} with a choroidal melanoma of the {side} eye, apical height {h} mm, largest basal "
        "diameter {d} mm.",
        "{who} with {side} uveal melanoma of the choroid, {d} mm basal diameter and {h} mm thick.",
    )).format(who=_who(rng, age, sex), side=side, h=f"{rng.randint(25, 95) / 10:.1f}", d=rng.randint(6, 16))
    text = _text(rng, first,
                 f"Posterior margin {disc_tenths / 10:.1f} mm from the optic disc." if disc_tenths
                 else "Tumor abuts the optic disc.",
                 rng.choice(("No extrascleral extension.", "Liver imaging negative.", "")), _history(rng))
    if disc_tenths < 30:
        scenario, modality, regimen = "uveal_melanoma_proton", PROTON, "60 GyRBE in 4 fractions with protons"
    else:
        scenario, modality = "uveal_melanoma_plaque", BRACHY
        regimen = "I-125 plaque brachytherapy, 85 Gy to the tumor apex"
    return _case(scenario, "eye", text, regimen, modality, "C69.31" if side == "right" else "C69.32", age=age,
                 sex=sex, laterality=side, histology="uveal melanoma")


# --- the dataset -------------------------------------------------------------------------------

# (scenario, relative weight): an academic case mix at a centre with protons, tuned so that
# 3,000 cases give about 77% photon, 11-12% proton, 6-7% brachytherapy and 5% electron.
_SCENARIOS: tuple[tuple[Callable[[random.Random], dict], float], ...] = (
    (_prostate_low_risk, 4), (_prostate_intermediate, 6), (_prostate_high_risk, 3), (_prostate_salvage, 2.5),
    (_breast_lumpectomy, 10), (_breast_pmrt, 4.5), (_dcis, 2),
    (_nsclc_stage3, 5), (_nsclc_sbrt, 5), (_sclc, 1.5),
    (_oropharynx, 3.5), (_larynx, 1.5), (_nasopharynx, 1.2), (_oral_cavity, 2), (_hn_reirradiation, 1.5),
    (_gbm, 3.5), (_lgg, 1.5), (_brain_mets_srs, 4), (_brain_mets_wbrt, 2.5), (_meningioma, 1.5),
    (_vestibular_schwannoma, 1),
    (_medulloblastoma, 2.5), (_ependymoma, 1.8), (_craniopharyngioma, 1.5), (_chordoma, 2),
    (_bone_mets, 7), (_cord_compression, 2),
    (_rectum, 3), (_anal, 1.2), (_esophagus, 2), (_pancreas, 1.5), (_hcc, 1.8),
    (_cervix, 2.5), (_endometrium, 3.5), (_bladder, 1.8), (_seminoma, 1),
    (_hodgkin, 2), (_dlbcl, 1.8),
    (_skin_bcc, 2.2), (_skin_scc, 1.8), (_merkel, 0.6), (_keloid, 1),
    (_sarcoma, 1.5), (_uveal_melanoma, 1.8),
)
_CUMULATIVE = tuple(itertools.accumulate(weight for _, weight in _SCENARIOS))


def generate_cases(n: int, seed: int) -> list[dict]:
    """`n` synthetic cases, the same for the same (n, seed), with no two diagnosis texts alike:
    a case whose text was already drawn is drawn again."""
    rng = random.Random(seed)
    width = max(5, len(str(n)))
    seen: set[str] = set()
    cases = []
    for index in range(1, n + 1):
        while True:
            scenario = rng.choices(_SCENARIOS, cum_weights=_CUMULATIVE)[0][0]
            case = scenario(rng)
            if case["diagnosis"] not in seen:
                break
        seen.add(case["diagnosis"])
        cases.append({"case_id": f"SYN-{index:0{width}d}", **case})
    return cases


def write_jsonl(cases: list[dict], path: str | Path) -> None:
    """One JSON object per line, UTF-8, keys in FIELDS order, so equal cases give equal bytes."""
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        for case in cases:
            out.write(json.dumps({key: case[key] for key in FIELDS}, ensure_ascii=False) + "\n")
