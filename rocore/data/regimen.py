"""Parse free-text radiotherapy prescriptions into components (dose, fractions, modality, ...).

Gold regimens and model outputs are written by people and models in many surface forms
("70 Gy in 35 fx", "5 x 10 Gy", "7000 cGy/35", "45 Gy/25 then HDR 7 Gy x 4"). Scoring a generated
regimen by total dose and fraction count needs them as numbers, so this module reads the forms
listed in the clinical reference with compiled regular expressions, never raises on a string,
and reports implausible values as warnings instead of dropping them.

How it works: the text is first masked (isotope names, beam energies, percent isodose lines and
chemotherapy phrases are blanked so their numbers and words cannot be read as doses, fraction
counts or radiation frequencies). Dose "facts" (a total, a dose per fraction, a fraction count,
or a combination) are then found pattern by pattern, most specific first, and grouped into
components: ";", "then", "followed by", "plus" and "+" always start a new course; ",", "and",
"&" and line breaks start one only when the next fact does not fit the current course.

A component's modality is the first one its own text names (through rocore.data.labels); one that
names none inherits the modality of the whole text when the text names exactly one and no other
component's own text names it, so an electron boost does not make the main course electron.

A dose reached "to" after a first course ("CSI 23.4 Gy/13 followed by a boost to 54 Gy") is
kept as written, as that component's total: the parser reports what the text states and does
not subtract the earlier course, because the text does not say whether the figure is cumulative.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, fields

from rocore.data.labels import modalities_mentioned

__all__ = ["Component", "ParsedRegimen", "parse_regimen"]


@dataclass(frozen=True)
class Component:
    """One course of a prescription, as stated or derived from what is stated."""

    total_dose_gy: float | None
    fractions: int | None
    dose_per_fraction_gy: float | None
    modality: str | None
    technique: str | None
    frequency: str | None
    isotope: str | None
    energy: str | None
    dose_levels_gy: tuple[float, ...]
    text: str


@dataclass(frozen=True)
class ParsedRegimen:
    """All courses found in a text, and the sanity problems found in them."""

    components: tuple[Component, ...]
    warnings: tuple[str, ...]

    def as_dict(self) -> dict:
        """A JSON-ready dict (tuples become lists) for the CLI and for storage."""
        return {
            "components": [
                {f.name: _jsonable(getattr(c, f.name)) for f in fields(Component)}
                for c in self.components
            ],
            "warnings": list(self.warnings),
        }


def _jsonable(value):
    """Tuples as lists, so that the dict round-trips through JSON unchanged."""
    return list(value) if isinstance(value, tuple) else value


# --- vocabulary -------------------------------------------------------------------------------

def _number_words() -> dict[str, int]:
    """Fraction counts written as words: "one" to "forty-five", and "single"."""
    units = "one two three four five six seven eight nine".split()
    teens = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
    words = {word: n for n, word in enumerate(units + teens, start=1)}
    for tens, value in (("twenty", 20), ("thirty", 30), ("forty", 40)):
        words[tens] = value
        for n, unit in enumerate(units, start=1):
            if value + n <= 45:
                words[f"{tens}-{unit}"] = value + n
    words["single"] = 1
    return words


_NUMBER_WORDS = _number_words()
_COUNT_WORDS = "|".join(
    w.replace("-", r"[\s-]") for w in sorted(_NUMBER_WORDS, key=len, reverse=True)
)

# A dose: one number, or several joined by "/" for a simultaneous integrated boost, and a unit.
_NUM = r"\d{1,5}(?:\.\d+)?"
_UNIT = (
    r"(?P<unit>cGy|Gy\s*\(\s*(?:RBE|IsoE)\s*\)|Gy\s*\[\s*RBE\s*\]|Gy[\s-]?RBE|GyE|CGE|Gy|Gray)"
    r"(?![a-wyz])"
)
_DOSE = rf"(?P<levels>{_NUM}(?:\s*/\s*{_NUM})*)\s*{_UNIT}"
_DOSE_START = r"(?<![\w./])"

# A fraction count: digits, or a number word ("five", "twenty-eight", "a single").
_COUNT = rf"(?P<count>\d{{1,3}}(?!\.?\d)|(?:a\s+)?(?:{_COUNT_WORDS})(?![\w-]))"
_COUNT_DIGITS = r"(?P<count>\d{1,3}(?!\.?\d))"
_FX = r"(?:fractions?|fracs?|fxs?|frs?|treatments?|sessions?|#)(?![a-z])"
_FX_AFTER_SLASH = rf"(?:{_FX}|F(?![a-z]))"
_FX_ADJECTIVE = r"(?:daily|once[\s-]daily|twice[\s-]daily|weekly|consecutive|equal|hdr|ldr|boost)"
_PER_FRACTION = (
    r"(?:per\s+(?:fraction|fx|treatment|session)|/\s*(?:fx|fraction|#)(?![a-z])"
    r"|(?:daily\s+|each\s+)?fractions?(?![a-z])|each(?![a-z])|daily(?=\s+(?:to|x|for)\b))"
)
_TIMES = r"(?:[x×*]|times)"
_FREQUENCY_WORD = (
    r"(?:(?:once|twice)[\s-])?(?:daily|weekly)|b\.?i\.?d\.?|t\.?i\.?d\.?|q\.?d\.?|three\s+times\s+daily"
)
# After "/20": a duration or a percentage, not a fraction count.
_NOT_A_COUNT_UNIT = (
    r"(?!\s*(?:%|w(?:ee)?ks?\b|d(?:ays?)?\b|mo(?:nths?)?\b|y(?:ea)?rs?\b|h(?:(?:ou)?rs?)?\b"
    r"|min|cm|mm|cc|ml))"
)
_FLAGS = re.IGNORECASE


def _pattern(body: str) -> re.Pattern[str]:
    return re.compile(body, _FLAGS)


# Dose facts, most specific first: an earlier pattern's match blocks later ones that overlap it.
# Each names its dose "total" or "per_fraction" (the number carrying the unit in "5 x 10 Gy" is
# the dose per fraction).
_FACT_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("single", _pattern(rf"(?<![a-z])(?:a\s+)?single\s+{_DOSE}\s+(?:fraction|fx|dose|treatment)")),
    ("single", _pattern(
        rf"(?<![a-z])(?:a\s+)?single\s+(?:fraction|fx|dose|treatment)\s+of\s+{_DOSE}")),
    ("single", _pattern(
        rf"{_DOSE_START}{_DOSE}\s+(?:in\s+|as\s+)?(?:a\s+)?single\s+(?:fraction|fx|dose|treatment)")),
    ("per_fraction", _pattern(
        rf"(?<![\w.]){_COUNT}\s*(?:{_TIMES}|{_FX}\s+(?:of|at))\s*{_DOSE}")),
    ("per_fraction", _pattern(
        rf"{_DOSE_START}{_DOSE}(?:\s*{_PER_FRACTION})?(?:\s*{_FREQUENCY_WORD})?\s*{_TIMES}\s*{_COUNT_DIGITS}"
        rf"(?:\s*{_FX})?")),
    ("total", _pattern(
        rf"{_DOSE_START}{_DOSE}\s*/\s*{_COUNT_DIGITS}(?:\s*{_FX_AFTER_SLASH})?{_NOT_A_COUNT_UNIT}")),
    ("total", _pattern(
        rf"{_DOSE_START}{_DOSE}\s*(?:in|over)\s+{_COUNT}\s*(?:{_FX_ADJECTIVE}\s+)?{_FX}")),
    ("per_fraction", _pattern(rf"{_DOSE_START}{_DOSE}\s*{_PER_FRACTION}")),
    ("per_fraction", _pattern(rf"(?:(?<![a-z])at|@)\s*{_DOSE}")),
    ("total", _pattern(rf"{_DOSE_START}{_DOSE}")),
    ("count", _pattern(rf"(?<![\w.]){_COUNT}\s*(?:{_FX_ADJECTIVE}\s+)?{_FX}")),
)

# A dose right after these words is a limit (an organ constraint), not a prescription.
_CONSTRAINT_BEFORE = _pattern(
    r"(?:[<>≤≥]=?|\bmax(?:imum|\.)?(?:\s+(?:point\s+)?dose)?|\bmean(?:\s+dose)?|\bd(?:max|mean)"
    r"|\bconstraints?|\blimit(?:ed)?\s+to|\bless\s+than|\bbelow|\bunder)\s*(?:of|:|=|to|is|was)?\s*$"
)

_SEPARATORS = _pattern(
    r"(?P<strong>;|\bthen\b|\bfollowed\s+by\b|\bplus\b|(?<=\s)\+|\+(?=\s))"
    r"|(?P<weak>,|\band\b|&|\n)"
)

_ISOTOPE = _pattern(
    r"(?<![a-z])(?:(?P<I125>(?:i|iodine)[\s-]?125)|(?P<Pd103>(?:pd|palladium)[\s-]?103)"
    r"|(?P<Ir192>(?:ir|iridium)[\s-]?192)|(?P<Cs131>(?:cs|cesium|caesium)[\s-]?131))(?!\d)"
)
_ISOTOPE_NAMES = {"I125": "I-125", "Pd103": "Pd-103", "Ir192": "Ir-192", "Cs131": "Cs-131"}
_LDR_ISOTOPES = {"I-125", "Pd-103", "Cs-131"}

# "6X" (attached X, a usual photon energy) and "10FFF" are energies; "5 x 10 Gy" is not.
_ENERGY = re.compile(
    r"(?<![\w.])(?:\d{1,2}(?:\.\d)?\s?(?i:MeV|MV|kVp?)(?:\s?FFF)?"
    r"|(?:4|6|8|10|15|16|18|20|23)[Xx](?:\s?FFF)?|\d{1,2}\s?FFF)(?![A-Za-z\d])"
)

_PERCENT = _pattern(r"(?<![\d.])\d+(?:\.\d+)?\s*%")

_DRUG = (
    r"(?<!\w)(?:[a-z]*(?:platin|taxel|mab|mide|abine|mycin|rubicin|tecan|nib|xifen|relin|lide"
    r"|poside|trexate)|vin[a-z]+|5-?fu|fluorouracil|chemo(?:therapy)?|cis|carbo|tmz|adt|abvd"
    r"|r-?chop|folfox|folfirinox|capox|pcv|platinum)(?![a-z])"
)
_DRUG_ADJECTIVE = (
    r"(?:concurrent|concomitant|oral|iv|intravenous|low-dose|high-dose|single-agent|adjuvant"
    r"|neoadjuvant|radiosensitizing)"
)
_DRUG_QUANTITY = (
    r"\(?\s*(?:auc\s*=?\s*\d+(?:\.\d+)?|\d+(?:\.\d+)?\s*(?:mg|mcg|µg|g|units?|iu)"
    r"(?:\s*/\s*(?:m2|m²|kg|day|d|dose|week))*)\s*\)?"
)
# "weekly cisplatin", "cisplatin 40 mg/m2 weekly", "capecitabine 825 mg/m2 BID": chemotherapy
# schedules, which must not become the radiation frequency.
_CHEMO_PHRASES = (
    _pattern(rf"(?<![a-z])(?:{_FREQUENCY_WORD})\s+(?:{_DRUG_ADJECTIVE}\s+){{0,2}}{_DRUG}"),
    _pattern(rf"{_DRUG}(?:\s*/\s*{_DRUG})*(?:\s*{_DRUG_QUANTITY})*\s*(?:{_FREQUENCY_WORD})(?![a-z])"),
)

_FREQUENCY = _pattern(
    r"(?<![a-z])(?:"
    r"(?P<BID>b\.?i\.?d\b\.?|twice[\s-](?:a[\s-])?daily|twice\s+(?:a|per)\s+day"
    r"|two\s+fractions\s+(?:a|per)\s+day)"
    r"|(?P<TID>t\.?i\.?d\b\.?|three\s+times\s+(?:a\s+)?daily|three\s+times\s+(?:a|per)\s+day"
    r"|thrice\s+daily)"
    r"|(?P<twice_weekly>twice[\s-](?:a[\s-])?weekly|twice\s+(?:a|per)\s+week)"
    r"|(?P<every_other_day>every\s+other\s+day|q\.?o\.?d\b\.?|alternate\s+days)"
    r"|(?P<weekly>(?:once[\s-])?weekly|once\s+(?:a|per)\s+week)"
    r"|(?P<daily>(?:once[\s-])?daily(?!\s+(?:cbct|cone|imag|igrt|kv|ct\b|portal))"
    r"|once\s+(?:a|per)\s+day|q\.?d\b\.?|(?:five|5)\s+(?:days|fractions)\s+(?:a|per)\s+week))"
    r"(?![a-z])"
)
_FREQUENCY_NAMES = {
    "BID": "BID", "TID": "TID", "twice_weekly": "twice weekly",
    "every_other_day": "every other day", "weekly": "weekly", "daily": "daily",
}

# Canonical technique names in order of precedence (the most specific first): a component gets
# the first one its text names, so "SBRT with VMAT" is SBRT and "HDR brachytherapy" is HDR.
_TECHNIQUES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, _pattern(rf"(?<![a-z])(?:{terms})(?![a-z])"))
    for name, terms in (
        ("SRS", r"srs|stereotactic\s+radiosurgery|radiosurgery|gamma\s*knife"),
        ("SBRT", r"sbrt|sabr|stereotactic\s+(?:body|ablative)"),
        ("SRT", r"f?srt|fractionated\s+stereotactic"),
        ("HDR", r"hdr|high[\s-]dose[\s-]rate"),
        ("PDR", r"pdr|pulsed[\s-]dose[\s-]rate"),
        ("LDR", r"ldr|low[\s-]dose[\s-]rate|seed\s+implants?|seeds|permanent\s+seeds?"),
        ("CSI", r"csi|craniospinal"),
        ("TBI", r"tbi|total[\s-]body\s+irradiation"),
        ("TSEB", r"tseb|total[\s-]skin\s+electrons?"),
        ("HA-WBRT", r"ha[\s-]?wbrt|hippocampal[\s-]avoidance\s+(?:wbrt|whole[\s-]brain)"),
        ("WBRT", r"wbrt|whole[\s-]brain(?:\s+radiation|\s+radiotherapy|\s+irradiation)?"),
        ("ISRT", r"isrt|involved[\s-]site"),
        ("IFRT", r"ifrt|involved[\s-]field"),
        ("IMPT", r"impt|intensity[\s-]modulated\s+proton"),
        ("PBS", r"pbs|pencil[\s-]beam(?:\s+scanning)?"),
        ("VMAT", r"vmat|rapidarc|volumetric[\s-]modulated"),
        ("IMRT", r"imrt|intensity[\s-]modulated|tomotherapy"),
        ("3DCRT", r"3d[\s-]?crt|3d[\s-]conformal|three[\s-]dimensional\s+conformal"),
        ("electron", r"electrons?|e-?beam|en[\s-]face"),
    )
)

# Sanity bounds from the clinical reference.
_MAX_FRACTIONS = 45
_DOSE_PER_FRACTION_RANGE = (1.0, 25.0)
_MAX_DOSE_PER_FRACTION_BY_TECHNIQUE = {"HDR": 15.0, "SRS": 24.0}
_CONSISTENCY_TOLERANCE = 0.02  # relative: "3.33 Gy x 15 = 50 Gy" is rounding, "2.1 Gy x 35 = 70 Gy" is not


# --- facts ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Fact:
    """What one matched phrase states: dose levels with their role, and/or a fraction count."""

    start: int
    end: int
    total: tuple[float, ...] = ()
    per_fraction: tuple[float, ...] = ()
    fractions: int | None = None


@dataclass(frozen=True)
class _Course:
    """The facts grouped so far for one component."""

    total: tuple[float, ...] = ()
    per_fraction: tuple[float, ...] = ()
    fractions: int | None = None


def _mask(text: str) -> str:
    """The text with isotopes, energies, percentages and chemotherapy schedules blanked out.

    Blanking keeps every other character at its index, so spans found in the masked text are
    spans of the original.
    """
    chars = list(text)
    for pattern in (_ISOTOPE, _ENERGY, _PERCENT, *_CHEMO_PHRASES):
        for match in pattern.finditer(text):
            chars[match.start():match.end()] = " " * (match.end() - match.start())
    return "".join(chars)


def _levels_gy(match: re.Match[str]) -> tuple[float, ...]:
    """The dose levels of a match in Gy (cGy divided by 100), highest first."""
    scale = 0.01 if match.group("unit").lower() == "cgy" else 1.0
    values = (float(v) * scale for v in re.split(r"\s*/\s*", match.group("levels")))
    return tuple(sorted((round(v, 4) for v in values), reverse=True))


def _count(match: re.Match[str]) -> int:
    """The fraction count of a match, written in digits or words ("a single", "twenty five")."""
    word = re.sub(r"^a\s+", "", match.group("count").lower())
    word = re.sub(r"[\s-]+", "-", word)
    return int(word) if word.isdigit() else _NUMBER_WORDS[word]


def _is_constraint(scan: str, start: int) -> bool:
    """Whether the dose starting here is an organ limit ("cord max 45 Gy", "Dmax < 45 Gy")."""
    return bool(_CONSTRAINT_BEFORE.search(scan[max(0, start - 30):start]))


def _fact(role: str, match: re.Match[str], scan: str) -> _Fact | None:
    """The fact a pattern match states, or None when it is an organ-at-risk limit."""
    groups = match.groupdict()
    if groups.get("levels") is not None and _is_constraint(scan, match.start()):
        return None
    levels = _levels_gy(match) if groups.get("levels") is not None else ()
    count = _count(match) if groups.get("count") is not None else None
    if role == "single":
        return _Fact(match.start(), match.end(), total=levels, per_fraction=levels, fractions=1)
    if role == "per_fraction":
        return _Fact(match.start(), match.end(), per_fraction=levels, fractions=count)
    if role == "total":
        return _Fact(match.start(), match.end(), total=levels, fractions=count)
    return _Fact(match.start(), match.end(), fractions=count)


def _find_facts(scan: str) -> list[_Fact]:
    """Every dose fact in the masked text, in reading order, without overlaps."""
    found: list[_Fact] = []
    taken = bytearray(len(scan))
    for role, pattern in _FACT_PATTERNS:
        for match in pattern.finditer(scan):
            if any(taken[match.start():match.end()]):
                continue
            fact = _fact(role, match, scan)
            if fact is not None:
                found.append(fact)
                taken[fact.start:fact.end] = b"\x01" * (fact.end - fact.start)
    return sorted(found, key=lambda f: f.start)


# --- grouping facts into courses -------------------------------------------------------------

def _derived(course: _Course) -> tuple[float | None, int | None, float | None]:
    """(total, fractions, dose per fraction) of a course, filling in what follows from the rest."""
    fractions = course.fractions
    per_fraction = course.per_fraction[0] if course.per_fraction else None
    if course.total:
        total = course.total[0]
    elif per_fraction is not None and fractions:
        total = round(per_fraction * fractions, 4)
    else:
        total = None
    if per_fraction is None and total is not None and fractions:
        per_fraction = round(total / fractions, 4)
    if fractions is None and total is not None and per_fraction:
        ratio = total / per_fraction
        if abs(ratio - round(ratio)) < 0.05:
            fractions = round(ratio)
    return total, fractions, per_fraction


def _stated(course: _Course) -> tuple[float | None, int | None, float | None]:
    """(total, fractions, dose per fraction) as the text states them, highest levels first."""
    return (
        course.total[0] if course.total else None,
        course.fractions,
        course.per_fraction[0] if course.per_fraction else None,
    )


def _agrees(total: float | None, fractions: int | None, per_fraction: float | None) -> bool:
    """Whether total = fractions x dose per fraction within rounding; true when one is unknown."""
    if not (total and fractions and per_fraction):
        return True
    return abs(per_fraction * fractions - total) <= _CONSISTENCY_TOLERANCE * total


def _merged(course: _Course, fact: _Fact, strict: bool) -> _Course | None:
    """The course with the fact added, or None when the fact must start a new course.

    A fact that restates a slot with another value always starts a new course; across a
    comma-like separator (strict) so does one that would make the course inconsistent.
    """
    for mine, theirs in (
        (course.total, fact.total),
        (course.per_fraction, fact.per_fraction),
        (course.fractions, fact.fractions),
    ):
        if mine and theirs and mine != theirs:
            return None
    merged = _Course(
        total=course.total or fact.total,
        per_fraction=course.per_fraction or fact.per_fraction,
        fractions=course.fractions or fact.fractions,
    )
    if strict and not _agrees(*_derived(merged)):
        return None
    return merged


def _separators(scan: str) -> list[tuple[int, int, int]]:
    """(start, end, strength) of every separator: 2 for a new course, 1 for a list item."""
    return [(m.start(), m.end(), 2 if m.group("strong") else 1) for m in _SEPARATORS.finditer(scan)]


def _group(facts: list[_Fact], scan: str) -> list[tuple[_Course, int, int]]:
    """Facts grouped into courses, each with the (start, end) span of text it owns.

    Text before the first fact and after the last one of a course belongs to it up to the
    nearest course separator, so "HDR 7 Gy x 4" and "7 Gy x 3 HDR" both own their "HDR".
    """
    if not facts:
        return []
    separators = _separators(scan)
    separator_starts = [s[0] for s in separators]
    strong = [s for s in separators if s[2] == 2]
    strong_starts, strong_ends = [s[0] for s in strong], [s[1] for s in strong]

    def between(start: int, end: int) -> list[tuple[int, int, int]]:
        window = separators[bisect_left(separator_starts, start):bisect_left(separator_starts, end)]
        return [s for s in window if s[1] <= end]

    first = bisect_right(strong_ends, facts[0].start)
    courses = [_Course(facts[0].total, facts[0].per_fraction, facts[0].fractions)]
    spans = [[strong_ends[first - 1] if first else 0, len(scan)]]
    last = facts[0]
    for fact in facts[1:]:
        gap = between(last.end, fact.start)
        strength = max((s[2] for s in gap), default=0)
        merged = None if strength == 2 else _merged(courses[-1], fact, strict=strength == 1)
        if merged is not None:
            courses[-1] = merged
        else:
            boundary = max((s for s in gap if s[2] == strength), default=(last.end, last.end, 0))
            spans[-1][1] = boundary[0]
            spans.append([boundary[1], len(scan)])
            courses.append(_Course(fact.total, fact.per_fraction, fact.fractions))
        last = fact
    after = bisect_left(strong_starts, last.end)
    if after < len(strong_starts):
        spans[-1][1] = strong_starts[after]
    return [(course, start, end) for course, (start, end) in zip(courses, spans)]


# --- component attributes --------------------------------------------------------------------

def _technique(span: str, isotope: str | None) -> str | None:
    """The technique a span names; a permanent-seed isotope alone means LDR."""
    for name, pattern in _TECHNIQUES:
        if pattern.search(span):
            return name
    return "LDR" if isotope in _LDR_ISOTOPES else None


def _isotope(span: str) -> str | None:
    match = _ISOTOPE.search(span)
    return _ISOTOPE_NAMES[match.lastgroup] if match else None


def _energy(span: str) -> str | None:
    match = _ENERGY.search(span)
    return match.group(0).strip() if match else None


def _frequency(scan_span: str) -> str | None:
    """The radiation frequency in a masked span (chemotherapy schedules are already blanked)."""
    match = _FREQUENCY.search(scan_span)
    return _FREQUENCY_NAMES[match.lastgroup] if match else None


def _modalities(text: str, spans: list[str]) -> list[str | None]:
    """The modality of each component: the first its own span names, else the whole text's.

    A component inherits only when the whole text names exactly one modality and no other
    component's own span names it: in "40 Gy in 15 fractions followed by an electron boost of
    10 Gy in 5 fractions" the electrons belong to the boost, not to the whole-breast course.
    """
    own = [modalities_mentioned(span) for span in spans]
    named_by_components = {modality for found in own for modality in found}
    whole = modalities_mentioned(text) if not all(own) else []
    inherited = whole[0] if len(whole) == 1 and whole[0] not in named_by_components else None
    return [found[0] if found else inherited for found in own]


def _number(value: float) -> str:
    """A dose as people write it in a warning: 30, 1.8, 7.25."""
    return f"{value:g}"


def _warnings(index: int, course: _Course, component: Component) -> list[str]:
    """Sanity problems of one component against the reference's bounds."""
    label = f"component {index}"
    problems = []
    per_fraction, fractions = component.dose_per_fraction_gy, component.fractions
    if per_fraction is not None:
        low, high = _DOSE_PER_FRACTION_RANGE
        high = _MAX_DOSE_PER_FRACTION_BY_TECHNIQUE.get(component.technique, high)
        if not low <= per_fraction <= high:
            where = f" for {component.technique}" if high != _DOSE_PER_FRACTION_RANGE[1] else ""
            problems.append(
                f"{label}: {_number(per_fraction)} Gy per fraction is outside "
                f"{_number(low)}-{_number(high)} Gy{where}"
            )
    if fractions is not None and not 1 <= fractions <= _MAX_FRACTIONS:
        problems.append(f"{label}: {fractions} fractions is outside 1-{_MAX_FRACTIONS}")
    stated_total, stated_fractions, stated_per_fraction = _stated(course)
    if not _agrees(stated_total, stated_fractions, stated_per_fraction):
        product = round(stated_per_fraction * stated_fractions, 4)
        problems.append(
            f"{label}: {stated_fractions} x {_number(stated_per_fraction)} Gy = "
            f"{_number(product)} Gy, not the stated {_number(stated_total)} Gy"
        )
    if fractions is None and stated_total and stated_per_fraction:
        problems.append(
            f"{label}: {_number(stated_total)} Gy is not a whole number of "
            f"{_number(stated_per_fraction)} Gy fractions"
        )
    return problems


def _component(course: _Course, text: str, scan: str, start: int, end: int,
               modality: str | None) -> Component:
    """The component a course states, with the attributes its span of text names."""
    span = text[start:end]
    total, fractions, per_fraction = _derived(course)
    if course.total:
        levels = course.total
    elif course.per_fraction and fractions:
        levels = tuple(round(level * fractions, 4) for level in course.per_fraction)
    else:
        levels = () if total is None else (total,)
    isotope = _isotope(span)
    return Component(
        total_dose_gy=total,
        fractions=fractions,
        dose_per_fraction_gy=per_fraction,
        modality=modality,
        technique=_technique(span, isotope),
        frequency=_frequency(scan[start:end]),
        isotope=isotope,
        energy=_energy(span),
        dose_levels_gy=levels,
        text=span.strip(" \t\r\n,;:."),
    )


def parse_regimen(text: str) -> ParsedRegimen:
    """The components of a free-text prescription; empty when it states no radiation dose."""
    if not isinstance(text, str):
        raise TypeError(f"parse_regimen expects a str, not {type(text).__name__}")
    scan = _mask(text)
    courses = [
        group for group in _group(_find_facts(scan), scan)
        if group[0].total or group[0].per_fraction
    ]
    modalities = _modalities(text, [text[start:end] for _, start, end in courses])
    components: list[Component] = []
    warnings: list[str] = []
    for index, ((course, start, end), modality) in enumerate(zip(courses, modalities), start=1):
        component = _component(course, text, scan, start, end, modality)
        components.append(component)
        warnings.extend(_warnings(index, course, component))
    return ParsedRegimen(tuple(components), tuple(warnings))
