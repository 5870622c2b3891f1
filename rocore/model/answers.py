"""Reading a model's answer out of its text.

Chat models do not answer in the product's plain layout: they open with "Sure!" or "The ICD-10-CM
code for this diagnosis is", wrap the answer in markdown, explain it afterwards, name the
modalities they rule out and list codes for comorbidities. Generation stores what is read here as
`generations.answer` (NULL when nothing can be read, so scoring falls back to the raw text, a wrong
answer), and `evaluate FILE` reads raw outputs the same way, so an output scores the same from a
file and from the database. The flags say why a reading is doubtful; they are derived from the raw
text, which is always stored, so they can be counted for any stored run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rocore.data.labels import LabelError, icd10_status, modalities_mentioned, normalise_icd10
from rocore.data.regimen import parse_regimen

AMBIGUOUS = "ambiguous"  # modality: several modalities named positively; read as no answer
SEVERAL_CODES = "several_codes"  # icd10: more than one valid code; the first billable one is read
FLAGS = (AMBIGUOUS, SEVERAL_CODES)


@dataclass(frozen=True)
class Answer:
    """What was read (None: nothing readable) and the flags that qualify it."""

    value: str | None
    flags: tuple[str, ...] = ()


# --- cleaning shared by the tasks ---------------------------------------------------------------

# Where the answer ends: the plain layout's next section or a chat turn marker.
_END = re.compile(
    r"\n\s*###|<\||\[/?INST\]|<start_of_turn>|<end_of_turn>|</s>|<eos>|<\|im_end\|>"
    r"|\n\s*(?:User|Human)\s*:",
    re.IGNORECASE,
)
_EMPHASIS = re.compile(r"\*\*|__|`+|(?<![\w*])\*(?=\S)|(?<=\S)\*(?![\w*])")
_LINE_MARK = re.compile(r"^[ \t]*(?:>[ \t]*|[-*•+][ \t]+|\d{1,2}[.)][ \t]+)", re.MULTILINE)
# A markdown heading becomes a "Heading:" line, which the tasks read as a label, not as an answer.
_MARKDOWN_HEADING = re.compile(r"^[ \t]*#{1,6}[ \t]+([^\n]*?)[ \t:]*$", re.MULTILINE)


def _cleaned(raw: str) -> str:
    """The answer part of the text without markdown emphasis, heading marks, quotes and bullets."""
    text = _END.split(raw, maxsplit=1)[0]
    text = _LINE_MARK.sub("", _EMPHASIS.sub("", text))
    text = _MARKDOWN_HEADING.sub(r"\1:", text)
    return text.strip()


# --- modality -----------------------------------------------------------------------------------

# The instruction's option list echoed back ("photon, proton, electron or brachytherapy") is no answer.
_BASE_WORD = r"(?:photons?|protons?|electrons?|brachy(?:therapy)?)"
_OPTION_LIST = re.compile(rf"{_BASE_WORD}(?:\s*(?:,|/|\bor\b|\band\b|,\s*or\b)\s*{_BASE_WORD}){{2,}}", re.IGNORECASE)
_LABELLED = re.compile(
    r"(?:^|\n)[ \t]*(?:final\s+|my\s+)?(?:answer|recommended\s+modality|modality|recommendation)[ \t]*[:\-][ \t]*([^\n]+)",
    re.IGNORECASE,
)
_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")
# A clause starts at punctuation or at a connective; the connective decides what the clause is.
_CLAUSES = re.compile(
    r"[,;:()\[\]]|\s[-–—]\s"
    r"|(?=\b(?:but|although|though|while|whereas|rather\s+than|instead\s+of|as\s+opposed\s+to|over|versus|vs\.?"
    r"|because|since|as|given|due\s+to|if|unless|compared|alternatively|or\s+possibly)\b"
    r"|\bnot\s+(?:the\s+|an?\s+)?(?:photons?|protons?|electrons?|brachy\w*|imrt|vmat|impt|hdr|ldr|sbrt)\b)",
    re.IGNORECASE,
)
_NEGATIVE = re.compile(
    r"\b(?:not|no|never|without|against|avoid(?:ed)?|unnecessary|neither|nor|unlikely|contraindicated|inappropriate"
    r"|rather\s+than|instead\s+of|as\s+opposed\s+to|over|versus|vs|inferior|unsuitable|excluded)\b|n't\b",
    re.IGNORECASE,
)
# "Protons are not indicated", "Electron beam therapy would not reach it": the mention's own predicate.
_NEGATED_AFTER = re.compile(
    r"^[\w-]*(?:\s+[\w-]+){0,3}?\s+(?:(?:is|are|was|were|would|will|should|could|can|do|does|did|may|might|must)"
    r"\s+(?:not|never)|\w+n't|cannot|not|never|unnecessary|contraindicated|inappropriate|unsuitable|unlikely"
    r"|excluded)\b",
    re.IGNORECASE,
)
_SECONDARY = re.compile(
    r"^\s*(?:although|though|while|whereas|because|since|as|given|due\s+to|if|unless|compared)\b"
    r"|\b(?:alternative(?:ly)?|also|option|may|could|might|possibly)\b",
    re.IGNORECASE,
)


def _mentions(sentence: str) -> tuple[list[str], list[str]]:
    """(modalities a sentence names as its answer, those it names only in passing); ruled-out ones in neither."""
    primary: list[str] = []
    secondary: list[str] = []
    for clause in _CLAUSES.split(sentence):
        found = modalities_mentioned(clause) if clause else []
        if not found or _ruled_out(clause):
            continue
        (secondary if _SECONDARY.search(clause) else primary).extend(found)
    return list(dict.fromkeys(primary)), list(dict.fromkeys(secondary))


def _ruled_out(clause: str) -> bool:
    """Whether a clause names its modality to rule it out: a negation before the first mention
    ("not a candidate for protons", "rather than electrons") or in the mention's predicate."""
    low, high = 1, len(clause)
    while low < high:  # the shortest prefix that names a modality ends inside the first mention
        middle = (low + high) // 2
        low, high = (low, middle) if modalities_mentioned(clause[:middle]) else (middle + 1, high)
    start = clause.rfind(clause[:high].split()[-1], 0, high)
    return bool(_NEGATIVE.search(clause[:start]) or _NEGATED_AFTER.match(clause[start:]))


def _read_modality(text: str) -> Answer:
    text = _OPTION_LIST.sub(" ", text)
    labelled = [_SENTENCES.split(m.group(1), maxsplit=1)[0] for m in _LABELLED.finditer(text)]
    sentences = [s for s in _SENTENCES.split(text) if s.strip()]
    passing: list[str] = []
    for sentence in labelled + sentences:
        primary, secondary = _mentions(sentence)
        if len(primary) == 1:
            return Answer(primary[0])
        if primary:
            return Answer(None, (AMBIGUOUS,))
        passing = passing or secondary
    if len(passing) > 1:
        return Answer(None, (AMBIGUOUS,))
    return Answer(passing[0] if passing else None)


# --- ICD-10-CM ----------------------------------------------------------------------------------

_CODE = re.compile(r"(?<![A-Za-z0-9.\-])([A-Za-z][0-9][0-9A-Za-z](?:\.?[0-9A-Za-z]{1,4})?)(?![A-Za-z0-9])")
_STAGING = re.compile(r"^[TtNnMm][0-4Xx][a-dA-D]?(?:[Nn][0-3Xx]|[Mm][01Xx])")
_RULED_OUT = re.compile(r"\b(?:not|rather\s+than|instead\s+of|excluding)\s*$", re.IGNORECASE)


def _read_icd10(text: str) -> Answer:
    codes: list[str] = []
    ruled_out: set[str] = set()
    lower_case: set[str] = set()
    for match in _CODE.finditer(text):
        if _STAGING.match(match.group(1)):
            continue
        try:
            code = normalise_icd10(match.group(1))
        except LabelError:
            continue
        if match.group(1)[0].islower():
            lower_case.add(code)
        if _RULED_OUT.search(text[max(0, match.start() - 20):match.start()]):
            ruled_out.add(code)
        if code not in codes:
            codes.append(code)
    status = {code: icd10_status(code) for code in codes}
    candidates = [code for code in codes if code not in ruled_out]
    valid = [code for code in candidates if status[code] != "invalid"]
    billable = [code for code in valid if status[code] == "billable"]
    # An invented code is still the model's answer (a wrong one) when it gives no real code; "p16" is not.
    invented = [code for code in candidates if code not in lower_case]
    value = (billable or valid or invented or [None])[0]
    # "C50.412 (C50.4: upper-outer quadrant)" explains one code: its parts after it are not other codes.
    after = codes[codes.index(value) + 1:] if value else []
    others = [code for code in codes if status[code] != "invalid" and code != value
              and not (code in after and value.replace(".", "").startswith(code.replace(".", "")))]
    several = len(others) + (value is not None and status.get(value) != "invalid") > 1
    return Answer(value, (SEVERAL_CODES,) if several else ())


# --- regimen ------------------------------------------------------------------------------------

_PARAGRAPHS = re.compile(r"\n[ \t]*\n\s*")
_REFUSAL = re.compile(
    r"^(?:i'?m\s+sorry|i\s+am\s+sorry|i\s+can(?:not|'t)|as\s+an\s+ai|i'?m\s+(?:not\s+able|unable)"
    r"|i\s+am\s+(?:not\s+able|unable))", re.IGNORECASE)
# Openings to drop from the start of the regimen, tried in turn while they hold no dose.
_OPENINGS = tuple(re.compile(p, re.IGNORECASE) for p in (
    r"^(?:sure|certainly|of\s+course|okay|ok|absolutely|yes|great\s+question)\b[!.,]*\s*",
    r"^option\s*(?:1|a|i|one)\s*[:.)-]\s*",
    r"^here(?:'s|\s+is|\s+are)\b[^:\n]*:\s*",
    r"^(?:based\s+on|given|considering|in\s+this\s+case|for\s+this\s+patient)\b[^,:\n]{0,200}[,:]\s*",
    r"^i\s+(?:would\s+)?(?:recommend|suggest|propose)(?:\s+the\s+following)?\s*:?\s*",
    (r"^(?:[\w',-]+\s+){0,10}?(?:regimen|plan|recommendation|prescription|approach|answer|option)"
     r"(?:\s+(?:for|in)\s+[\w' -]{0,40}?)?(?:\s+(?:would\s+be|is|includes|consists\s+of)\b|\s*:)\s*:?\s*"),
    (r"^(?:the\s+patient|this\s+patient|they|he|she)\s+(?:should|would|will)\s+"
     r"(?:receive|be\s+treated\s+with|undergo)\s*:?\s*"),
))
# Sentences or lines that end the regimen: the rest is explanation, an alternative or run-on of other tasks.
_STOP = re.compile(
    r"(?:^|(?<=[.!?])\s+|\n)(?=(?:modality|icd[\s-]*10|code|diagnosis|rationale|explanation|reasoning|justification"
    r"|note|notes|references?|disclaimer|summary|alternative(?:ly)?|another\s+option|other\s+options"
    r"|option\s*(?:2|b|ii|two)"
    r"|this\s+(?:regimen|approach|treatment|plan|is|schedule|dose|fractionation)|these|i\s+hope|please"
    r"|let\s+me\s+know|it\s+is\s+important|it'?s\s+important|always\s+consult|consult)\b)",
    re.IGNORECASE,
)
_SENTENCE_ENDS = re.compile(r"(?<=[.!?])\s+")
_HEADING = re.compile(r"^[^.!?\n]{0,80}:$")
_PREAMBLE = re.compile(
    r"^(?:to\s+(?:determine|recommend|decide|choose)|let'?s|let\s+me|first|in\s+order\s+to|when\s+(?:considering|choosing)"
    r"|the\s+(?:choice|selection|decision)|this\s+patient|the\s+patient\s+(?:has|is|presents))\b",
    re.IGNORECASE,
)
# Lines that restate the case ("Patient: 67-year-old man ...") before the regimen.
_CASE_LINE = re.compile(
    r"^(?:patient|case|summary|history|presentation|age|stage|histology|findings|diagnosis)\s*:", re.IGNORECASE)
_CONTINUES = re.compile(
    r"\b(?:concurrent|concomitant|adjuvant|neoadjuvant|chemo\w*|cisplatin|carboplatin|paclitaxel|temozolomide|"
    r"capecitabine|5-?fu|mitomycin|cetuximab|durvalumab|adt|androgen|boost|brachytherapy|hdr|ldr|followed\s+by|then"
    r"|technique|imrt|vmat|3d-?crt|sbrt|srs|impt|electrons?|fractions?)\b",
    re.IGNORECASE,
)


def _has_dose(text: str) -> bool:
    return bool(parse_regimen(text).components)


def _without_openings(text: str) -> str:
    """The text without its lead-in ("Sure! Based on ..., the recommended regimen is:")."""
    changed = True
    while changed:
        changed = False
        for opening in _OPENINGS:
            match = opening.match(text)
            if match and match.end() and not _has_dose(match.group(0)):
                text, changed = text[match.end():].lstrip(), True
    return text


def _joined(lines: list[str]) -> str:
    """Lines as one line: a comma between items, a space where a sentence runs on."""
    out = ""
    for line in lines:
        if not out:
            out = line
        elif out[-1] in ".,;:" or line[:1].islower():
            out = f"{out} {line}"
        else:
            out = f"{out}, {line}"
    return " ".join(out.split()).rstrip(" .,;:")


def _read_regimen(text: str) -> Answer:
    """The paragraphs that hold the prescription (the first with a dose, and those continuing it)."""
    paragraphs = []
    for block in _PARAGRAPHS.split(text):
        lines = [line.strip() for line in block.splitlines()]
        lines = [line for line in lines if line and not (_HEADING.match(line) and not _has_dose(line))]
        if lines:
            paragraphs.append(lines)
    first = next((i for i, lines in enumerate(paragraphs) if _has_dose("\n".join(lines))), None)
    if first is None:
        chosen = next((lines for lines in paragraphs if not _not_regimen(lines[0])), [])
    else:
        chosen = list(paragraphs[first])
        while chosen and not _has_dose(chosen[0]) and _not_regimen(chosen[0]):
            chosen.pop(0)
        for lines in paragraphs[first + 1:]:
            block = "\n".join(lines)
            if not (_has_dose(block) or _CONTINUES.search(block)) or _STOP.match(block):
                break
            chosen += lines
    kept: list[str] = []
    for line in chosen:
        if not kept and _has_dose(line):
            sentences = _SENTENCE_ENDS.split(line)
            line = " ".join(sentences[next((i for i, part in enumerate(sentences) if _has_dose(part)), 0):])
        line = _without_openings(line) if not kept else line
        if kept and _STOP.match(line):
            break
        head = _STOP.split(line, maxsplit=1)
        kept.append(head[0].strip() if len(head) > 1 and head[0].strip() else line)
        if len(head) > 1 and head[0].strip():
            break
    return Answer(_joined([line for line in kept if line]) or None)


def _not_regimen(line: str) -> bool:
    """Whether a line is a lead-in, a refusal, the case restated or an explanation, not part of a regimen."""
    return bool(_PREAMBLE.match(line) or _REFUSAL.match(line) or _STOP.match(line) or _CASE_LINE.match(line))


# --- entry points -------------------------------------------------------------------------------

def read_answer(task: str, raw: str) -> Answer:
    """The answer in a model's raw output with its flags; Answer(None) when there is none to read."""
    text = _cleaned(raw or "")
    if task == "modality":
        return _read_modality(text)
    if task == "icd10":
        return _read_icd10(text)
    if task == "regimen":
        return _read_regimen(text)
    raise ValueError(f"unknown task {task!r}")


def extract_answer(task: str, raw: str) -> str | None:
    """The normalised answer in a model's raw output, or None when there is none to read."""
    return read_answer(task, raw).value
