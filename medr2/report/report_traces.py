"""Med-R2 training targets of a real study, read from its reference report: perception region by region from the
report's sentences (the labeler's mentions and the location reader's side / zone / severity words), reasoning from
the knowledge rule of each labelled finding, the reference as draft and report and every finding kept — or, with a
`draft_error_rate`, a draft carrying one error made from the reference's own findings (`draft_errors`) that the
reflection fixes (`report_trace` says which).

Hands on: `build_report_trace` / `report_trace` (a `MedR2Output`), `report_target` (its tagged text),
`report_findings`, `draft_errors`, `split_at_draft`; `medr2 traces` and `medr2 train-sft --dataset_dir` use them.
The phantom traces (from image ground truth) are `medr2.report.traces`.
"""
from __future__ import annotations

import dataclasses
import random
import re
from typing import NamedTuple

from medr2.report.schema import MedR2Output, PerceptionItem, ReasoningStep, ReflectionItem, Report, render
from medr2.report.traces import ERROR_KINDS, SIGNS

# ---------------------------------------------------------------- traces from real reports
# A real dataset (IU X-Ray, MIMIC-CXR) has a reference report but no image ground truth, so its Med-R2 trace is read
# from the report text: the labeler's mentions (`medr2.labeler.findings`) and the side / zone / severity words the
# evaluation's location reader takes from the same sentences (`medr2.evaluation.evaluate.stated_location`). Perception
# states what the reference says region by region; reasoning cites the knowledge rule of each labelled finding; the
# draft and the final report are the reference, and reflection keeps every finding — unless the study draws a taught
# error (`draft_error_rate`): then the draft is the reference with one error in it (see "taught errors" below), and
# perception, reasoning and reflection follow that draft. Such traces teach the format and the report, not what the
# film shows: a model card says so (`medr2.training.export.REPORT_TRACES`).
REPORT_REGION_ORDER = ("heart", "mediastinum", "both lungs", "lungs", "right lung", "left lung", "hila", "pleura",
                       "bones", "devices", "other findings")
# observation -> the phantom kind whose sign, noun and knowledge rule it takes (Lung Lesion: nodule or mass by wording;
# Support Devices: the device as the report names it).
OBSERVATION_KIND = {"Cardiomegaly": "cardiomegaly", "Enlarged Cardiomediastinum": "widened_mediastinum",
                    "Lung Opacity": "opacity", "Edema": "edema", "Consolidation": "consolidation", "Pneumonia": "pneumonia",
                    "Atelectasis": "atelectasis", "Pneumothorax": "pneumothorax", "Pleural Effusion": "effusion",
                    "Pleural Other": "pleural_thickening", "Fracture": "fracture", "Lung Lesion": "nodule",
                    "Support Devices": "pacemaker"}
LUNG_OBSERVATIONS = ("Lung Opacity", "Consolidation", "Pneumonia", "Atelectasis", "Lung Lesion")
PLEURAL_OBSERVATIONS = ("Pleural Effusion", "Pneumothorax", "Pleural Other")
# Sentences with no labelled mention ("The lungs are clear.", "Mild degenerative changes of the spine.") are placed
# by the anatomy they name, first match wins.
_REGION_WORDS = (("devices", r"\b(?:tube|(?<!pleural )(?<!septal )(?<!kerley )line|catheter|pacemaker|pacer|wires?|clips?|stent|port|device|hardware)s?\b"),
                 ("bones", r"\b(?:bon[ey]|bony|osseous|skelet\w*|spine|spinal|vertebra\w*|rib|ribs|clavicle\w*|sternum|thoracic spine|osteo\w*|degenerative|scoliosis)\b"),
                 ("pleura", r"\b(?:pleura\w*|costophrenic|effusions?)\b"),
                 ("hila", r"\b(?:hila|hilar|hilum|perihilar|pulmonary vascula\w*)\b"),
                 ("heart", r"\b(?:heart|cardiac|cardio\w*)\b"),
                 ("mediastinum", r"\b(?:mediastin\w*|aort\w*|trachea)\b"),
                 ("lungs", r"\b(?:lungs?|pulmonary|airspace|parenchym\w*|interstiti\w*|granulom\w*|emphysem\w*|hyperinflat\w*|nodul\w*)\b"))
_DEFAULT_LINES = {"heart": "no abnormality described.", "mediastinum": "no abnormality described.",
                  "lungs": "no abnormality described.", "hila": "no abnormality described.",
                  "pleura": "no abnormality described.", "bones": "no abnormality described.", "devices": "none described."}
_NO_ABNORMALITY = "normal study"


def _side_word(sides: frozenset[str]) -> str | None:
    return next(iter(sides)) if len(sides) == 1 else None


def _zone_phrase(zones: frozenset[str]) -> str:
    ordered = [z for z in ("upper", "mid", "lower") if z in zones]
    if not ordered:
        return ""
    return f"{ordered[0]} zone" if len(ordered) == 1 else f"{', '.join(ordered[:-1])} and {ordered[-1]} zones"


def _observation_region(observation: str, sides: frozenset[str], zones: frozenset[str]) -> str:
    """The perception region (with side and zone when stated) where the reference places an observation."""
    side = _side_word(sides)
    if observation == "Cardiomegaly":
        return "heart"
    if observation == "Enlarged Cardiomediastinum":
        return "mediastinum"
    if observation == "Edema":
        return "hila"
    if observation == "Fracture":
        return "bones"
    if observation == "Support Devices":
        return "devices"
    if observation in PLEURAL_OBSERVATIONS:
        return f"{side} pleura" if side in ("right", "left") else "pleura"
    lung = {"right": "right lung", "left": "left lung", "bilateral": "both lungs"}.get(side or "", "lungs")
    zone = _zone_phrase(zones)
    return f"{lung}, {zone}" if zone else lung


def _region_order(region: str) -> int:
    head = region.split(",")[0]
    head = "pleura" if head.endswith("pleura") else head
    return REPORT_REGION_ORDER.index(head) if head in REPORT_REGION_ORDER else len(REPORT_REGION_ORDER)


def _sentence_regions(sentence: str, mentions: list) -> tuple[str, set[str]]:
    """The region of one report sentence and every region it speaks of. Its region is that of its first abnormal
    mention, else of its first mention (in reading order), else the anatomy it names; a sentence that names several
    regions ("Heart size and mediastinum are normal.") speaks for all of them, so none gets a default line."""
    from medr2.evaluation.evaluate import stated_location

    known = [m for m in mentions if m.observation in OBSERVATION_KIND]
    regions = {}
    for m in known:
        sides, zones = stated_location(sentence, m.observation) if m.value != 0 else (frozenset(), frozenset())
        regions.setdefault(_observation_region(m.observation, sides, zones), m.value != 0)
    low = sentence.lower()
    named = {region for region, words in _REGION_WORDS if re.search(words, low)}
    if regions:
        abnormal = [r for r, stated in regions.items() if stated] or list(regions)
        region = min(abnormal, key=_region_order)
    else:
        region = next((region for region, words in _REGION_WORDS if re.search(words, low)), "other findings")
    return region, {_region_head(r) for r in regions} | named | {_region_head(region)}


def _region_head(region: str) -> str:
    """'right lung, lower zone' -> 'lungs', 'left pleura' -> 'pleura': the slot a default line fills."""
    head = region.split(",")[0]
    return "pleura" if head.endswith("pleura") else "lungs" if head.endswith(("lung", "lungs")) else head


def report_perception(report: Report) -> list[PerceptionItem]:
    """What the reference report says, region by region in reading order: each sentence of its findings (and each
    impression sentence that adds an abnormal observation the findings do not state) under the region of its first
    mention; a region the report does not describe gets "no abnormality described." (or "none described." for
    devices)."""
    from medr2.labeler.findings import find_mentions, split_sentences

    findings_text = report.findings or report.impression
    sentences = [(findings_text, s) for s in split_sentences(findings_text)]
    stated = {m.observation for m in find_mentions(findings_text) if m.value != 0}
    if report.findings and report.impression:
        for s in split_sentences(report.impression):
            if {m.observation for m in find_mentions(report.impression[s[0]:s[1]]) if m.value != 0} - stated:
                sentences.append((report.impression, s))
    by_region: dict[str, list[str]] = {}
    covered: set[str] = set()
    for text, (start, end) in sentences:
        sentence = " ".join(text[start:end].split())
        if not any(c.isalnum() for c in sentence):
            continue
        region, spoken_of = _sentence_regions(sentence, find_mentions(sentence))
        by_region.setdefault(region, []).append(sentence)
        covered |= spoken_of
    for region, line in _DEFAULT_LINES.items():
        if region not in covered:
            by_region[region] = [line]
    return [PerceptionItem(region, " ".join(lines)) for region, lines in sorted(by_region.items(), key=lambda kv: _region_order(kv[0]))]


def _report_noun(observation: str, sentences_text: str, mention_text: str) -> str:
    if observation == "Lung Lesion":
        return SIGNS["mass" if "mass" in sentences_text else "nodule"][2]
    if observation == "Support Devices":
        return " ".join(mention_text.lower().split())  # the device as the report names it
    if observation == "Fracture":
        return "rib fracture" if re.search(r"\bribs?\b", sentences_text) else "fracture"
    return SIGNS[OBSERVATION_KIND[observation]][2]


class ReportFinding(NamedTuple):
    """One abnormal observation of a reference report, as the report states it."""

    observation: str
    value: int  # 1 positive, -1 hedged (the labeler's value)
    region: str  # perception region with the stated side and zone: "left lung, lower zone"
    phrase: str  # finding with the stated severity, side and zone: "small right pleural effusion"
    noun: str  # the finding alone: "pleural effusion"


def report_findings(report: Report) -> list[ReportFinding]:
    """The reference's abnormal observations (the labeler's positive and hedged ones), in reading order."""
    from medr2.evaluation.evaluate import stated_details
    from medr2.labeler.findings import find_mentions, label_report, split_sentences

    text = report.text
    labels = label_report(text)
    details = stated_details(text)
    spans = split_sentences(text)
    out = []
    for observation, value in labels.items():
        if value not in (1, -1) or observation not in OBSERVATION_KIND:
            continue
        sides, zones, severities = details.get(observation, (frozenset(), frozenset(), frozenset()))
        mentions = [m for m in find_mentions(text) if m.observation == observation and m.value == value]
        sentences = " ".join(text[spans[m.sentence_index][0]:spans[m.sentence_index][1]] for m in mentions
                             if m.sentence_index < len(spans)).lower()
        noun = _report_noun(observation, sentences, text[mentions[0].start:mentions[0].end] if mentions else observation)
        severity = next(iter(severities)) if len(severities) == 1 else None
        # the heart, the mediastinum and edema have no side: a side word in their sentences belongs to another finding
        side = None if observation in ("Cardiomegaly", "Enlarged Cardiomediastinum", "Edema") else _side_word(sides)
        if observation in LUNG_OBSERVATIONS:
            where = " ".join(p for p in (side, _zone_phrase(zones)) if p)
            phrase = f"{severity + ' ' if severity else ''}{noun}" + (f", {where}" if where else "")
        elif observation == "Support Devices":
            phrase = noun
        else:
            phrase = " ".join(p for p in (severity, side, noun) if p)
        out.append(ReportFinding(observation, value, _observation_region(observation, sides, zones), phrase, noun))
    return sorted(out, key=lambda f: _region_order(f.region))


def report_reasoning(findings: list[ReportFinding]) -> list[ReasoningStep]:
    """One step per abnormal observation: the knowledge rule's sign -> the finding as the reference states it (hedged
    with "possible" where the report hedges) [rule]; a report with none gets the normal-study step."""
    if not findings:
        return [ReasoningStep("no abnormal sign described in any region", "no acute cardiopulmonary abnormality", "normal_study")]
    steps = []
    for f in findings:
        kind = "mass" if f.noun == SIGNS["mass"][2] else OBSERVATION_KIND[f.observation]
        sign = "tubular or metallic density" if f.observation == "Support Devices" else SIGNS[kind][1]
        if f.observation == "Fracture" and f.noun != "rib fracture":
            sign = "cortical break"
        steps.append(ReasoningStep(sign, f"possible {f.phrase}" if f.value == -1 else f.phrase, SIGNS[kind][3]))
    return steps


def build_report_trace(report: Report | str, draft_error_rate: float = 0.0, seed: int = 0, study_id: str = "") -> MedR2Output:
    """The Med-R2 output for a real study, read from its reference report (a `Report`, or text with or without
    "Findings:" / "Impression:" headers): perception per region from the report's sentences, reasoning from the
    knowledge rules of its labelled findings, draft = report = the reference, reflection keeps every finding. With
    `draft_error_rate` > 0 a share of drafts carry a taught error that the reflection fixes (`report_trace`)."""
    return report_trace(report, draft_error_rate, seed, study_id)[0]


def report_trace(report: Report | str, draft_error_rate: float = 0.0, seed: int = 0,
                 study_id: str = "") -> tuple[MedR2Output, DraftError | None]:
    """`build_report_trace` with the error its draft carries (None: the draft is the reference).

    In a `draft_error_rate` share of studies (drawn from `seed` and `study_id`, so the same study always gets the same
    draft) the draft carries one error read off the reference's own labelled findings (`draft_errors`); perception
    and reasoning follow that draft, as on phantoms, and the reflection item that fixes it comes after the findings it
    keeps. The final report is the reference either way."""
    if not 0.0 <= draft_error_rate <= 1.0:
        raise ValueError(f"draft_error_rate must be in [0, 1], got {draft_error_rate}")
    # the reference as the schema carries it: a section holding a second "FINDINGS:" header (a few IU reports repeat
    # the whole report inside IMPRESSION) reads back split at that header, so the target is written that way
    final = Report.parse(report.text if isinstance(report, Report) else report)
    if not (final.findings or final.impression).strip():
        raise ValueError("an empty reference report gives no Med-R2 trace")
    findings = report_findings(final)
    if draft_error_rate > 0:
        rng = random.Random(f"report:{seed}:{study_id}")
        if rng.random() < draft_error_rate:
            options = draft_errors(final, rng)
            if options:
                kind = rng.choice(sorted(options, key=ERROR_KINDS.index))
                draft, error, item = rng.choice(options[kind])
                kept = [_kept_item(f) for f in report_findings(draft) if f.observation != error.observation]
                return MedR2Output(perception=report_perception(draft), reasoning=report_reasoning(report_findings(draft)),
                                   draft=draft, reflection=[*kept, item], report=final), error
    reflection = [_kept_item(f) for f in findings]
    return MedR2Output(
        perception=report_perception(final),
        reasoning=report_reasoning(findings),
        draft=final,
        reflection=reflection or [ReflectionItem("kept", _NO_ABNORMALITY, "re-checked every region; no abnormality described.")],
        report=final,
    ), None


def report_target(report: Report | str, draft_error_rate: float = 0.0, seed: int = 0, study_id: str = "") -> str:
    """Tagged Med-R2 target text for SFT on a real study (`build_report_trace`, rendered)."""
    return render(build_report_trace(report, draft_error_rate, seed, study_id))


def _kept_item(f: ReportFinding) -> ReflectionItem:
    return ReflectionItem("kept", f.noun, f"re-checked the {f.region}, as described.")


# ---------------------------------------------------------------- taught errors in report traces
# A real study has one report, so an erroneous draft is written from the reference itself: one of the phantom error
# kinds (ERROR_KINDS), made only where the report's own structure supports it — a finding dropped (its sentences
# state nothing else abnormal), its side swapped (it states one side), its severity word changed (it states one), or
# a finding the report does not mention at all added, of the kinds a reader imagines in overlapping normal structures
# (the phantom's HALLUCINATION_KINDS). Every candidate draft is read back by the labeler and the location reader: it
# must differ from the reference in exactly that observation, in exactly that way, or it is not offered.
class DraftError(NamedTuple):
    """The error a taught draft carries: its kind (one of ERROR_KINDS) and the observation it concerns."""

    kind: str
    observation: str


# observation -> the sentence a hallucinated finding is written as (side, zone, size drawn per study)
HALLUCINATED_SENTENCES = {"Lung Lesion": "{size} mm nodule in the {side} {zone} lung zone.",
                          "Pleural Effusion": "Small {side} pleural effusion.",
                          "Lung Opacity": "Patchy opacity in the {side} {zone} lung zone.",
                          "Atelectasis": "Subsegmental atelectasis in the {side} {zone} lung zone."}
# A stated severity word -> the wrong one a draft writes (the phantom's SEVERITY_SWAP, word by word; "moderate" is
# overcalled to "large" where it is a size, to "severe" elsewhere).
_SEVERITY_WORD_SWAP = {"small": "moderate", "large": "moderate", "mild": "moderate", "severe": "moderate",
                       "mildly": "moderately", "severely": "moderately", "moderately": "severely"}
_SIZED_OBSERVATIONS = ("Pleural Effusion", "Pneumothorax", "Lung Lesion")
_SIDELESS_OBSERVATIONS = ("Cardiomegaly", "Enlarged Cardiomediastinum", "Edema", "Support Devices")


def _reading(report: Report) -> dict[str, tuple]:
    """observation -> (label, sides, zones, severities) of every positive or hedged observation the report states."""
    from medr2.evaluation.evaluate import stated_details
    from medr2.labeler.findings import label_report

    empty = (frozenset(), frozenset(), frozenset())
    details = stated_details(report.text)
    return {o: (v, *details.get(o, empty)) for o, v in label_report(report.text).items()
            if o in OBSERVATION_KIND and v in (1, -1)}


class _Sentence(NamedTuple):
    section: str  # "findings" | "impression"
    start: int
    end: int
    abnormal: frozenset[str]  # observations it states positive or hedged


def _sentences(report: Report) -> list[_Sentence]:
    from medr2.labeler.findings import find_mentions, split_sentences

    out = []
    for section in ("findings", "impression"):
        text = getattr(report, section)
        spans = split_sentences(text)
        abnormal: dict[int, set[str]] = {}
        for m in find_mentions(text):
            if m.value in (1, -1):
                abnormal.setdefault(m.sentence_index, set()).add(m.observation)
        out += [_Sentence(section, a, b, frozenset(abnormal.get(i, ()))) for i, (a, b) in enumerate(spans)]
    return out


def _edit(report: Report, sentences: list[_Sentence], change) -> Report:
    """`report` with each of `sentences` replaced by `change(sentence text)` ("" drops it)."""
    sections = {"findings": report.findings, "impression": report.impression}
    for s in sorted(sentences, key=lambda s: s.start, reverse=True):
        text = sections[s.section]
        sections[s.section] = text[:s.start] + change(text[s.start:s.end]) + text[s.end:]
    return Report(*(" ".join(sections[k].split()) for k in ("findings", "impression")))


def _swap_words(text: str, swap: dict[str, str]) -> str:
    """Every whole word of `swap` replaced by its partner, its capital kept."""
    def one(m: re.Match) -> str:
        word = swap[m.group(0).lower()]
        return word.capitalize() if m.group(0)[0].isupper() else word

    return re.sub(r"\b(?:" + "|".join(swap) + r")\b", one, text, flags=re.IGNORECASE)


def draft_errors(final: Report, rng: random.Random) -> dict[str, list[tuple[Report, DraftError, ReflectionItem]]]:
    """Every taught error the reference supports, by kind: (erroneous draft, the error, the reflection item that fixes
    it). Each draft differs from `final`, as read by the labeler and the location reader, in its error alone."""
    truth = _reading(final)
    by_observation = {f.observation: f for f in report_findings(final)}
    sentences = _sentences(final)
    options: dict[str, list] = {}

    def offer(kind: str, observation: str, draft: Report, item: ReflectionItem, expected: tuple | None) -> None:
        reading = _reading(draft)
        want = {**truth, observation: expected} if expected is not None else {k: v for k, v in truth.items() if k != observation}
        if reading == want and (draft.findings or draft.impression):
            options.setdefault(kind, []).append((draft, DraftError(kind, observation), item))

    for observation, f in by_observation.items():
        own = [s for s in sentences if observation in s.abnormal]
        if not own or any(s.abnormal != {observation} for s in own):
            continue  # a sentence that states another finding too cannot be changed for this one alone
        value, sides, zones, severities = truth[observation]
        phrase = f"possible {f.phrase}" if value == -1 else f.phrase
        missed = _edit(final, own, lambda _: "")
        if not (missed.findings or missed.impression):  # the only finding of the report: the draft calls it normal
            missed = Report("", "No acute cardiopulmonary abnormality.")
        offer("missed", observation, missed,
              ReflectionItem("added", f.noun, f"re-inspected {_the(f.region)}: {phrase}, missed in the draft."), None)
        if observation not in _SIDELESS_OBSERVATIONS and sides in ({"right"}, {"left"}):
            side = next(iter(sides))
            wrong = "left" if side == "right" else "right"
            offer("wrong_side", observation, _edit(final, own, lambda t: _swap_words(t, {"right": "left", "left": "right"})),
                  ReflectionItem("revised", f.noun, f"re-inspected both sides: the {f.noun} is on the {side}, not the {wrong}."),
                  (value, frozenset({wrong}), zones, severities))
        if len(severities) == 1:
            severity = next(iter(severities))
            swap = {**_SEVERITY_WORD_SWAP, "moderate": "large" if observation in _SIZED_OBSERVATIONS else "severe"}
            said = {w.lower() for s in own for w in re.findall(r"[A-Za-z]+", _section_text(final, s))} & set(_severity_forms(severity))
            wrong = {_severity_of_word(swap[w]) for w in said if w in swap}
            if len(wrong) == 1:
                wrong_word = next(iter(wrong))
                offer("wrong_severity", observation, _edit(final, own, lambda t: _swap_words(t, {w: swap[w] for w in said})),
                      ReflectionItem("revised", f.noun, f"re-measured {_the(f.region)}: {severity}, not {wrong_word}."),
                      (value, sides, zones, frozenset(wrong)))
    from medr2.labeler.findings import label_report

    labels = label_report(final.text)
    for observation, sentence in HALLUCINATED_SENTENCES.items():
        if labels.get(observation) is not None:
            continue  # the report speaks of it (even to say it is absent): adding it would contradict the report
        side, zone = rng.choice(("right", "left")), rng.choice(("upper", "mid", "lower"))
        added = sentence.format(size=rng.randint(5, 18), side=side, zone=zone)
        section = "findings" if final.findings else "impression"
        text = getattr(final, section).rstrip()
        text = f"{text}{'' if text.endswith(('.', '!')) else '.'} {added}"
        draft = dataclasses.replace(final, **{section: text})
        noun = SIGNS[OBSERVATION_KIND[observation]][2]
        region = _observation_region(observation, frozenset({side}), frozenset() if observation == "Pleural Effusion" else frozenset({zone}))
        offer("hallucinated", observation, draft,
              ReflectionItem("removed", noun, f"re-inspected {_the(region)}: no {noun}, overlapping normal structures."),
              _reading(Report(added)).get(observation))
    return options


def _the(region: str) -> str:
    return region if region.startswith("both") else f"the {region}"


def _section_text(report: Report, s: _Sentence) -> str:
    return getattr(report, s.section)[s.start:s.end]


def _severity_forms(severity: str) -> tuple[str, ...]:
    from medr2.evaluation.evaluate import SEVERITY_WORDS

    return SEVERITY_WORDS[severity]


def _severity_of_word(word: str) -> str:
    from medr2.evaluation.evaluate import SEVERITY_WORDS

    return next(k for k, words in SEVERITY_WORDS.items() if word in words)


def split_at_draft(target: str) -> tuple[str, str]:
    """A rendered trace -> (the turn that ends with `</draft>`, the rest from `<reflection>`): a training draft that
    holds a taught error is context for the reflection, not an answer to imitate, so it goes in a turn of its own."""
    end = target.index("</draft>") + len("</draft>")
    return target[:end], target[end:].lstrip("\n")
