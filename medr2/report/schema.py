"""The Med-R2 output schema: one tagged text <-> one `MedR2Output` dataclass.

The model writes (and the SFT traces teach) exactly this text:

    <think>
    <perception>
    heart: cardiothoracic ratio about 0.46, normal heart size.          one line per region
    </perception>
    <reasoning>
    blunted right costophrenic angle -> small right pleural effusion [rule: effusion_meniscus]
    </reasoning>                                                        "[rule: …]" is optional
    <draft>
    Findings: … Impression: …
    </draft>
    <reflection>
    kept: pleural effusion - re-checked the right base, meniscus confirmed.
    </reflection>                                      action in kept | revised | removed | added
    </think>
    <report>
    Findings: … Impression: …
    </report>

A reflection item may follow a *look* (`<look>right mid zone</look>` on its own line, then the magnified crop
as an image in a user turn, then the item): `ReflectionItem.look` holds the region, and reflections without
looks (older models) parse exactly as before.

`render` writes it; `parse` reads it back tolerantly (streamed prefixes, malformed or truncated text:
it never raises, it returns what it could plus `missing` and `problems`). `render(parse(render(x)))`
round-trips. Lines that do not match their section's line format are kept as *free-text* items (the
structured fields are None), never dropped. Direct-SFT targets are only the report section
(`render_direct`): one parser, and a truncated direct completion is still detectable by its missing
`</report>`. An answer with none of the think sections and no closed `<report>` (a general model in prompted mode:
a plain or markdown report, a `<report>` never closed, its own `<think>`, a `\boxed{}` answer) is read into the report
and free-text reasoning when it is a chest report (see "off-schema answers" below), still listed as missing `report`.
Hands on: `MedR2Output` to pipeline/app/traces, `extract_report` (strict) to rewards and metrics.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

THINK_SECTIONS: tuple[str, ...] = ("perception", "reasoning", "draft", "reflection")
SECTIONS: tuple[str, ...] = ("think", *THINK_SECTIONS, "report")
# Opening and closing tags of every section: the tokenizer makes each one token, the prompted mode lists them.
SCHEMA_TAGS: tuple[str, ...] = tuple(tag for name in SECTIONS for tag in (f"<{name}>", f"</{name}>"))
REFLECTION_ACTIONS: tuple[str, ...] = ("kept", "revised", "removed", "added")
# A look request inside <reflection>: not a section (it holds a region name, not lines), one token per tag as well.
LOOK_OPEN, LOOK_CLOSE = "<look>", "</look>"
LOOK_TAGS: tuple[str, ...] = (LOOK_OPEN, LOOK_CLOSE)
LOOK_RE = re.compile(r"<\s*look\s*>(?P<region>[^<\n]*?)<\s*/\s*look\s*>", re.IGNORECASE)

# Case-insensitive and tolerant of inner spaces ("< /report >") when *parsing*; `render` and the strict
# format rewards use the exact lower-case tags.
TAG_RE = re.compile(r"<\s*(/?)\s*(" + "|".join(SECTIONS) + r")\s*>", re.IGNORECASE)
_TRAILING_PARTIAL_TAG = re.compile(r"<\s*/?\s*[a-zA-Z]*$")  # "</refl" at the end of a streamed prefix
_HEADER_RE = re.compile(r"\b(findings|impression)\s*:", re.IGNORECASE)
_PERCEPTION_RE = re.compile(r"^(?P<region>[^:\n]{1,60}?)\s*:\s*(?P<text>.*)$")
_REASONING_RE = re.compile(
    r"^(?P<sign>.+?)\s*(?:->|→)\s*(?P<conclusion>.+?)(?:\s*\[rule:\s*(?P<rule>[^\]\n]+?)\s*\])?$"
)
_REFLECTION_RE = re.compile(
    r"^(?P<action>" + "|".join(REFLECTION_ACTIONS) + r")\s*:\s*(?P<target>.+?)(?:\s+[-–—]\s+(?P<text>.*))?$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class PerceptionItem:
    """One perceived region. `region=None` marks a free-text line that had no "region: " prefix."""

    region: str | None
    text: str

    def line(self) -> str:
        return self.text if self.region is None else f"{self.region}: {self.text}"


@dataclass(frozen=True)
class ReasoningStep:
    """`sign -> conclusion [rule: id]`. `conclusion=None` marks a free-text line (whole line in `sign`)."""

    sign: str
    conclusion: str | None = None
    rule_id: str | None = None

    def line(self) -> str:
        if self.conclusion is None:
            return self.sign
        rule = f" [rule: {self.rule_id}]" if self.rule_id else ""
        return f"{self.sign} -> {self.conclusion}{rule}"


@dataclass(frozen=True)
class ReflectionItem:
    """`action: target - explanation`. `action=None` marks a free-text line (whole line in `text`).
    `look` is the region of the look that preceded the item (None: the item was written without a new look)."""

    action: str | None
    target: str | None
    text: str
    look: str | None = None

    def item_line(self) -> str:
        if self.action is None:
            return self.text
        return f"{self.action}: {self.target}" + (f" - {self.text}" if self.text else "")

    def line(self) -> str:
        """The item as the model writes it, its look request first when it had one."""
        look = f"{LOOK_OPEN}{self.look}{LOOK_CLOSE}\n" if self.look else ""
        return look + self.item_line()


@dataclass(frozen=True)
class Report:
    """A report with its two conventional sections; `text` renders "Findings: … Impression: …"."""

    findings: str = ""
    impression: str = ""

    @property
    def text(self) -> str:
        parts = [f"Findings: {self.findings}" if self.findings else "",
                 f"Impression: {self.impression}" if self.impression else ""]
        return " ".join(p for p in parts if p)

    @classmethod
    def parse(cls, text: str) -> Report:
        """Split on "Findings:" / "Impression:" headers (any case); no headers → everything is findings."""
        text = (text or "").strip()
        headers = list(_HEADER_RE.finditer(text))
        if not headers:
            return cls(findings=text)
        found: dict[str, str] = {}
        # Text before the first header is kept as findings rather than dropped.
        lead = text[: headers[0].start()].strip()
        for i, match in enumerate(headers):
            end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
            name = match.group(1).lower()
            body = text[match.end():end].strip()
            found[name] = f"{found[name]} {body}".strip() if name in found else body
        findings = " ".join(p for p in (lead, found.get("findings", "")) if p)
        return cls(findings=findings, impression=found.get("impression", ""))


@dataclass
class MedR2Output:
    """One parsed Med-R2 output. Sections that were absent are empty lists / None."""

    perception: list[PerceptionItem] = field(default_factory=list)
    reasoning: list[ReasoningStep] = field(default_factory=list)
    draft: Report | None = None
    reflection: list[ReflectionItem] = field(default_factory=list)
    report: Report | None = None

    def final_report_or_draft(self) -> Report | None:
        """The final report, else the draft (e.g. generation stopped inside <reflection>), else None."""
        return self.report if self.report is not None else self.draft


@dataclass
class ParseResult:
    output: MedR2Output
    complete_sections: list[str]  # names whose closing tag was seen, in closing order
    missing: list[str]  # expected sections that are not complete
    problems: list[str]  # human-readable, for logs and the UI
    partial_section: str | None = None  # innermost section still open at the end of the text
    partial_text: str = ""  # its text so far (after the last tag), for streaming display
    tag_counts: dict[str, int] = field(default_factory=dict)  # opening tags seen per section name
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)  # body (start, end) per complete section


# ---------------------------------------------------------------- render
def _block(name: str, lines: list[str]) -> str:
    body = "\n".join(lines)
    return f"<{name}>\n{body}\n</{name}>" if body else f"<{name}>\n</{name}>"


def render(output: MedR2Output) -> str:
    """The exact tagged text of `output` (sections that are None are omitted)."""
    think = [
        _block("perception", [p.line() for p in output.perception]),
        _block("reasoning", [r.line() for r in output.reasoning]),
        *([_block("draft", [output.draft.text])] if output.draft is not None else []),
        _block("reflection", [r.line() for r in output.reflection]),
    ]
    parts = [_block("think", think)]
    if output.report is not None:
        parts.append(render_direct(output.report))
    return "\n".join(parts)


def render_direct(report: Report) -> str:
    """The direct-SFT target: only `<report>…</report>` (no <think>, so the MRG-R1 format reward is N/A)."""
    return _block("report", [report.text])


# ---------------------------------------------------------------- parse
def _lines(body: str) -> list[str]:
    return [ln.strip() for ln in body.splitlines() if ln.strip()]


def parse_perception(body: str) -> list[PerceptionItem]:
    items = []
    for ln in _lines(body):
        m = _PERCEPTION_RE.match(ln)
        items.append(PerceptionItem(m["region"], m["text"]) if m else PerceptionItem(None, ln))
    return items


def parse_reasoning(body: str) -> list[ReasoningStep]:
    steps = []
    for ln in _lines(body):
        m = _REASONING_RE.match(ln)
        steps.append(ReasoningStep(m["sign"], m["conclusion"], m["rule"]) if m else ReasoningStep(ln))
    return steps


def parse_reflection(body: str) -> list[ReflectionItem]:
    """Items in order; a look line attaches its region to the item that follows it. A look with no item after it
    (generation stopped at the look) becomes a free-text item naming the look, so it is never silently lost."""
    items, look = [], None
    for ln in _lines(body):
        looks = list(LOOK_RE.finditer(ln))
        if looks:
            if look is not None:
                items.append(ReflectionItem(None, None, f"looked at the {look}; no item followed", look))
            look = looks[-1]["region"].strip() or None
            ln = LOOK_RE.sub("", ln).strip()
            if not ln:
                continue
        m = _REFLECTION_RE.match(ln)
        if m:
            items.append(ReflectionItem(m["action"].lower(), m["target"], (m["text"] or "").strip(), look))
        else:
            items.append(ReflectionItem(None, None, ln, look))
        look = None
    if look is not None:
        items.append(ReflectionItem(None, None, f"looked at the {look}; no item followed", look))
    return items


def _scan(text: str):
    """Match tags with a stack. Returns (first complete span per name, closing order, counts, stack, problems)."""
    spans: dict[str, tuple[int, int]] = {}
    closed: list[str] = []
    counts = {name: 0 for name in SECTIONS}
    stack: list[tuple[str, int]] = []  # (name, content start)
    problems: list[str] = []
    for m in TAG_RE.finditer(text):
        name, is_close = m.group(2).lower(), bool(m.group(1))
        if not is_close:
            counts[name] += 1
            if counts[name] == 2:
                problems.append(f"<{name}> appears more than once; the first complete one is used")
            stack.append((name, m.end()))
            continue
        open_names = [n for n, _ in stack]
        if name not in open_names:
            problems.append(f"</{name}> at character {m.start()} has no matching <{name}>")
            continue
        while stack[-1][0] != name:  # inner sections left open by this close tag
            problems.append(f"<{stack.pop()[0]}> was not closed before </{name}>")
        _, start = stack.pop()
        if name not in spans:
            spans[name] = (start, m.start())
            closed.append(name)
    return spans, closed, counts, stack, problems


def section_body(text: str, name: str) -> str | None:
    """The text inside the first complete `<name>…</name>` of `text` (the one `parse` reads), stripped; None when the
    section is not closed. For callers that need one section of a trace, e.g. the draft the reflection re-checks."""
    span = _scan(text)[0].get(name)
    return text[span[0]:span[1]].strip() if span else None


def _order_problems(spans: dict[str, tuple[int, int]]) -> list[str]:
    problems = []
    think = spans.get("think")
    seen = [n for n in THINK_SECTIONS if n in spans]
    if seen != sorted(seen, key=lambda n: spans[n][0]):
        problems.append(f"think sections out of order: expected {' < '.join(seen)}")
    if think:
        for n in seen:
            if not (think[0] <= spans[n][0] and spans[n][1] <= think[1]):
                problems.append(f"<{n}> is outside <think>")
        if "report" in spans and spans["report"][0] < think[1]:
            problems.append("<report> does not come after </think>")
    return problems


def _outside_text(text: str, spans: dict[str, tuple[int, int]]) -> str:
    """Non-whitespace text outside the top-level think/report sections (tags removed)."""
    kept, pos = [], 0
    for start, end in sorted(spans[n] for n in ("think", "report") if n in spans):
        kept.append(text[pos:start])
        pos = max(pos, end)
    kept.append(text[pos:])
    return TAG_RE.sub(" ", " ".join(kept)).strip()


def parse(text: str) -> ParseResult:
    """Parse tagged (possibly partial or malformed) text; never raises for any string input."""
    text = text if isinstance(text, str) else ""
    spans, closed, counts, stack, problems = _scan(text)
    body = {name: text[a:b] for name, (a, b) in spans.items()}
    output = MedR2Output(
        perception=parse_perception(body["perception"]) if "perception" in body else [],
        reasoning=parse_reasoning(body["reasoning"]) if "reasoning" in body else [],
        draft=Report.parse(body["draft"]) if "draft" in body else None,
        reflection=parse_reflection(body["reflection"]) if "reflection" in body else [],
        report=Report.parse(body["report"]) if "report" in body else None,
    )
    partial_section, partial_text = None, ""
    if stack:
        partial_section = stack[-1][0]
        last_tag_end = max([m.end() for m in TAG_RE.finditer(text)], default=0)
        partial_text = _TRAILING_PARTIAL_TAG.sub("", text[last_tag_end:]).strip()
        problems.append("not closed (truncated or still streaming): " + ", ".join(f"<{n}>" for n, _ in stack))
    problems += _order_problems(spans)
    if any(counts.values()):
        outside = _outside_text(text, spans) if not stack else ""
        if outside:
            problems.append(f"text outside the sections: {outside[:60]!r}")
    else:
        problems.append("no Med-R2 tags found")
    for name in ("perception", "reasoning", "reflection"):
        free = sum(1 for item in getattr(output, name) if _is_free(item))
        if free:
            problems.append(f"{free} line(s) in <{name}> do not follow the line format (kept as free text)")
    if "report" not in spans and not any(counts[n] for n in THINK_SECTIONS) and "think" not in dict(stack):
        _read_off_schema(text, spans, output, problems)
    missing = [n for n in SECTIONS if n not in spans]
    return ParseResult(output, closed, missing, problems, partial_section, partial_text, counts, spans)


# ---------------------------------------------------------------- off-schema answers (prompted mode)
# Real instruct models asked for the schema often answer a plain report instead: markdown headings, bold or upper-case
# FINDINGS / IMPRESSION, numbered lists, a <report> never closed, their own <think> block, an answer in \boxed{}.
# Such an answer still fills the panels (report, findings table, its thinking as free-text reasoning); `missing` keeps
# "report" and the strict readers (`extract_report`, the format rewards) still refuse it, so rewards and the
# format-failure rate are unchanged. A Med-R2 trace (any of its think sections) is never read this way.
_REPORT_HEADERS = {"findings": "findings", "finding": "findings", "impression": "impression", "impressions": "impression",
                   "conclusion": "impression", "conclusions": "impression", "summary": "impression"}
_OTHER_HEADERS = ("technique", "comparison", "comparisons", "indication", "indications", "history", "clinical history",
                  "clinical indication", "clinical information", "examination", "exam", "procedure", "view", "views")
_LINE_HEADER_RE = re.compile(r"^(?P<name>[a-z][a-z ]{1,24}?)\s*(?::\s*(?P<rest>.*)|$)", re.IGNORECASE)
_LIST_MARKER_RE = re.compile(r"^(?:\d{1,2}[.)]|[-*\u2022])\s+")
# A recovered answer is a report only if it speaks of the chest and is not a refusal: "I cannot interpret medical
# images" read as a report would be labelled No Finding, a normal study.
_CHEST_WORDS_RE = re.compile(
    r"\b(lungs?|pulmonary|heart|cardiac|cardio\w*|pleura\w*|mediastin\w*|hil(?:a|um)\w*|thora\w*|chest|ribs?|osseous|"
    r"bon(?:e|y)\w*|diaphragm\w*|costophrenic|trachea\w*|spine|aort\w*|opacit\w*|effusions?|pneumothora\w*|"
    r"consolidation|atelecta\w*|edema|oedema|nodul\w*|mass|fractures?|pneumonia|silhouette|airspace|granuloma\w*|"
    r"emphysema\w*|hyperinfla\w*|cardiomegaly|vascula\w*)\b", re.IGNORECASE)
_REFUSAL_RE = re.compile(
    r"\b(?:I\s+(?:can ?not|can't|am (?:not able|unable|sorry))|I'm (?:sorry|unable|not able)|as an AI|"
    r"unable to (?:interpret|provide|analy[sz]e|view|see|read)|consult (?:a|your) (?:radiologist|physician|doctor))",
    re.IGNORECASE)
_TITLE_RE = re.compile(r"(\*\*|__)[^*_]+\1:?")  # a bold-only line: a title, not a sentence
_BOXED = "\\boxed{"
_ANSWER_LEAD_RE = re.compile(r"(?:\**\s*(?:the\s+)?(?:final\s+)?answer(?:\s+is)?\s*\**\s*:?\s*)?(?:\$\$?|\\\[|\\\()?\s*$",
                             re.IGNORECASE)


def _boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (braces balanced; \\text{...} unwrapped), or None."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, i = 1, start + len(_BOXED)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            inner = text[i:j]
            break
    else:
        inner = text[i:]
    inner = re.sub(r"\\text(?:bf)?\{([^{}]*)\}", r"\1", inner).replace("\\\\", "\n")
    return inner.strip()


def _plain_report(text: str) -> Report | None:
    """A report read from free text: headings and list markers dropped, sections other than findings and impression
    (technique, comparison, indication, ...) and title lines before the first section left out."""
    sections: dict[str, list[str]] = {"lead": [], "findings": [], "impression": []}
    current: str | None = "lead"
    for raw in text.splitlines():
        heading = raw.lstrip().startswith("#")
        line = raw.strip().lstrip("#").strip().replace("**", "").replace("__", "").strip()
        line = _LIST_MARKER_RE.sub("", line).strip()
        if not line:
            continue
        match = _LINE_HEADER_RE.match(line)
        name = match.group("name").strip().lower() if match else ""
        if match and (name in _REPORT_HEADERS or name in _OTHER_HEADERS):
            current = _REPORT_HEADERS.get(name)
            line = (match.group("rest") or "").strip()
            if not line:
                continue
        elif current == "lead" and (heading or _TITLE_RE.fullmatch(raw.strip()) or line.endswith(":")):
            continue  # a title ("## Chest X-ray report", "**Report**") or a lead-in ("Here is the report:")
        if current is not None:
            sections[current].append(line if line[-1] in ".!?" else line + ".")
    # headers again, so that Report.parse also splits one-line answers ("FINDINGS: ... IMPRESSION: ...")
    joined = " ".join([*sections["lead"], *(["Findings:", *sections["findings"]] if sections["findings"] else []),
                       *(["Impression:", *sections["impression"]] if sections["impression"] else [])])
    report = Report.parse(joined)
    return report if report.text else None


def _read_off_schema(text: str, spans: dict[str, tuple[int, int]], output: MedR2Output, problems: list[str]) -> None:
    rest = text
    opened = [m.start() for m in re.finditer(r"<\s*report\s*>", text, re.IGNORECASE)]
    if "think" in spans:  # another model's own thinking: the reasoning panel, as free text
        start, end = spans["think"]
        close = TAG_RE.match(text, end)
        rest = text[close.end() if close else end:]
        thinking = text[start:min([end, *[o for o in opened if o > start]])]
        if not output.reasoning:
            output.reasoning = [ReasoningStep(line) for line in _lines(TAG_RE.sub(" ", thinking))]
    if opened:  # <report> opened and never closed (or closed by </think>): read to the end
        rest = text[opened[-1]:]
    boxed = _boxed(rest)
    if boxed is not None and not output.reasoning:  # the working before the boxed answer
        working = _ANSWER_LEAD_RE.sub("", rest[:rest.rfind(_BOXED)])  # less "Final answer: $"
        output.reasoning = [ReasoningStep(line) for line in _lines(TAG_RE.sub(" ", working))]
    report = _plain_report(TAG_RE.sub("\n", boxed if boxed is not None else rest))
    if report is not None and (_REFUSAL_RE.search(report.text) or not _CHEST_WORDS_RE.search(report.text)):
        problems.append("the answer is not a chest radiograph report (no report read)")
    elif report is not None:
        output.report = report
        how = "an unclosed <report>" if opened else "\\boxed{}" if boxed is not None else "text outside the schema"
        problems.append(f"no closed <report>: the report was read from {how}")


def _is_free(item: PerceptionItem | ReasoningStep | ReflectionItem) -> bool:
    if isinstance(item, PerceptionItem):
        return item.region is None
    if isinstance(item, ReasoningStep):
        return item.conclusion is None
    return item.action is None


# ---------------------------------------------------------------- report extraction (rewards, metrics)
def extract_report(text: str, allow_untagged: bool = False) -> tuple[str | None, str]:
    """The final report text of a completion, strictly: (text, "") or (None, reason).

    Rejected (None): no closed <report>; <report> opened more than once (tag injection such as
    "<report></report><report>Pneumothorax</report>"); schema tags inside the report; empty report.
    A text with no schema tags at all is returned whole only when `allow_untagged` (plain-text policies).
    """
    text = text if isinstance(text, str) else ""
    result = parse(text)
    if not any(result.tag_counts.values()):
        if allow_untagged and text.strip():
            return text.strip(), ""
        return None, "no <report> section (untagged text)"
    if result.tag_counts["report"] > 1:
        return None, "<report> appears more than once (possible tag injection)"
    if "report" not in result.complete_sections:
        return None, "no closed <report> section (truncated?)"
    start, end = result.spans["report"]
    if TAG_RE.search(text, start, end):
        return None, "schema tags inside <report> (possible tag injection)"
    report_text = result.output.report.text if result.output.report else ""
    if not report_text.strip():
        return None, "empty report"
    return report_text, ""


def report_for_scoring(text: str) -> str:
    """Report text for evaluation: the <report> (else <draft>) of a tagged text, or the text itself."""
    result = parse(text)
    if not any(result.tag_counts.values()):
        return (text or "").strip()
    chosen = result.output.final_report_or_draft()
    return chosen.text if chosen is not None else ""
