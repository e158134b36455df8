"""What a generated trace becomes, for every backend (the local `Pipeline`, the served `RemotePipeline`): the
stream's `Event`s while it grows, then one `StudyResult` with the parsed sections, the labeler's findings of draft and
final report, the draft -> final consistency check, timings and `Provenance`.

Hands on: `result_of_text` (text -> StudyResult), `text_events` (text so far -> events), `StudyResult.to_json`
(what `medr2 generate --json`, the app and feedback read).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Generator

from medr2.labeler.findings import Labels, label_report
from medr2.report.schema import MedR2Output, ParseResult, parse


@dataclass
class Provenance:
    """What produced a report: shown beside every report and stored with feedback."""

    model: str
    weights_sha256: str
    demo: bool
    training_data: str
    medr2_version: str
    # How the text was decoded: greedy decoding of the same file gives the same text; a sampled one is reproduced
    # by the same seed, temperature and top-p.
    decoding: dict = field(default_factory=dict)
    # views per study the model was trained on (its card's `images_per_study`); 1 for single-image models
    images_per_study: int = 1

    def stamp(self) -> str:
        """One line that lets anyone reproduce a report: medr2 version, weights hash, decoding settings."""
        d = self.decoding
        how = ("greedy" if d.get("greedy", True) else
               f"sampled (temperature {d.get('temperature')}, top-p {d.get('top_p')}, seed {d.get('seed')})")
        return (f"medr2 {self.medr2_version} · weights {self.weights_sha256[:12]} · {how} · "
                f"max {d.get('max_new_tokens')} new tokens")

    def line(self) -> str:
        flag = " — DEMO MODEL trained on synthetic films, not for clinical use" if self.demo else ""
        return f"{self.model} (weights {self.weights_sha256[:12]}){flag}"


@dataclass
class Event:
    """One streamed step: kind is 'token' (text so far grew), 'section' (a section closed) or 'done'."""

    kind: str
    text: str
    section: str | None = None
    parsed: ParseResult | None = None


@dataclass
class StudyResult:
    raw_text: str
    parsed: ParseResult
    draft_labels: Labels | None
    final_labels: Labels | None
    timings: dict[str, float]
    provenance: Provenance
    n_tokens: int
    image: Any = None  # the LoadedImage that was read (pixels + allow-listed metadata), kept for saliency/UI
    # what saliency needs to re-run the model on this answer: {"inputs": model inputs, "new_ids": [1, T] ids}
    saliency_inputs: dict | None = field(default=None, repr=False)
    # the input gate's verdict (medr2.trust.gate.InputCheck), taken before generation
    input_check: Any = None
    # observation -> calibrated probability that the stated finding is right (models with a calibration file),
    # and the findings below the model's low-confidence line, which the reviewer should check first
    confidence: dict[str, float] | None = None
    low_confidence: list[str] = field(default_factory=list)
    # the reflection's looks (medr2.reflection.loop.Look: region, box, crop, heads' reading) and the draft -> final
    # consistency check (medr2.reflection.consistency.Consistency); empty / None for models without looks
    looks: list = field(default_factory=list)
    consistency: Any = None
    # every LoadedImage of the study, frontal first (`image` is the first), and one line per part of the pipeline
    # that read fewer of them than the model did (shown with the warnings)
    images: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def output(self) -> MedR2Output:
        return self.parsed.output

    @property
    def warnings(self) -> list[str]:
        """The images' warnings, what read the frontal image only, then the input gate's verdict when it flags."""
        warnings = list(getattr(self.image, "warnings", []) or [])
        for k, other in enumerate(self.images[1:], start=2):
            warnings += [f"image {k}: {w}" for w in getattr(other, "warnings", []) or []]
        warnings += self.notes
        if self.input_check is not None and self.input_check.flagged:
            warnings.append("input outside the model's training distribution: " + "; ".join(self.input_check.reasons))
        if self.consistency is not None and not self.consistency.holds:
            warnings += ["reflection inconsistent with the draft -> final change: " + m for m in self.consistency.messages]
        return warnings

    def to_json(self) -> dict:
        out = self.parsed.output
        return {
            "report": out.report.text if out.report else None,
            "draft": out.draft.text if out.draft else None,
            "perception": [asdict(p) for p in out.perception],
            "reasoning": [asdict(r) for r in out.reasoning],
            "reflection": [asdict(r) for r in out.reflection],
            "missing_sections": list(self.parsed.missing),
            "problems": list(self.parsed.problems),
            "draft_labels": self.draft_labels, "final_labels": self.final_labels,
            "timings": self.timings, "tokens": self.n_tokens, "provenance": asdict(self.provenance),
            "warnings": self.warnings,
            "input_check": self.input_check.to_json() if self.input_check is not None else None,
            "confidence": self.confidence, "low_confidence": list(self.low_confidence),
            "looks": [look.to_json() for look in self.looks],
            "consistency": self.consistency.to_json() if self.consistency is not None else None,
        }


# What a result of a study with several images says about the parts that read its frontal image only (one line).
FRONTAL_ONLY = ("this study has {n} images: the model read all {n}; saliency and confidence read the first "
                "(frontal) only")
FRONTAL_ONLY_LOOKS = ("this study has {n} images: the look loop reads the first (frontal) only, so its report, "
                      "saliency and confidence come from that image alone")


def note_frontal_only_looks(result, study: list) -> None:
    """A look-loop result of a study with several images: it read the frontal alone, which its warnings say."""
    if len(study) > 1:
        result.images = study
        result.notes = [FRONTAL_ONLY_LOOKS.format(n=len(study))]


def merge_checks(checks: list):
    """One input-gate verdict for a study from its images' verdicts: flagged when any image is, unknown when any is
    unknown, the largest distance; reasons of the second and later images are prefixed with their number."""
    from medr2.trust.gate import InputCheck

    if len(checks) == 1:
        return checks[0]
    verdicts = [c.in_distribution for c in checks]
    verdict = False if False in verdicts else None if None in verdicts else True
    scores = [c.score for c in checks if c.score is not None]
    reasons: list[str] = []
    for k, check in enumerate(checks, start=1):
        for reason in check.reasons:
            line = reason if k == 1 or reason in checks[0].reasons else f"image {k}: {reason}"
            if line not in reasons:
                reasons.append(line)
    return InputCheck(verdict, max(scores) if scores else None, checks[0].threshold, reasons)


def clean_text(text: str, special: list[str]) -> str:
    """Generated text without chat and padding markers (the schema tags stay)."""
    for token in special:
        text = text.replace(token, "")
    return text.strip()


def text_events(text: str, seen_sections: int) -> Generator[Event, None, int]:
    """The events of a trace that grew to `text`: a token event, then one per section that closed since the
    `seen_sections` already announced; returns the new count (`seen = yield from text_events(text, seen)`)."""
    yield Event("token", text)
    parsed = parse(text)
    for name in parsed.complete_sections[seen_sections:]:
        yield Event("section", text, section=name, parsed=parsed)
    return max(seen_sections, len(parsed.complete_sections))


def result_of_text(text: str, study: list, n_tokens: int, timings: dict, provenance: Provenance,
                   saliency_inputs: dict | None = None) -> StudyResult:
    """One study's generated text as its StudyResult, the same for every backend: the parsed sections, the labeler's
    findings of draft and final, and the draft -> final consistency check (a reflection must explain the diff it
    makes). `study`: its LoadedImages, frontal first."""
    from medr2.reflection.consistency import check_consistency

    t0 = time.perf_counter()
    parsed = parse(text)
    out = parsed.output
    draft_labels = label_report(out.draft.text) if out.draft else None
    final_labels = label_report(out.report.text) if out.report else None
    timings["labels_s"] = time.perf_counter() - t0
    result = StudyResult(text, parsed, draft_labels, final_labels, timings, provenance, n_tokens, study[0],
                         saliency_inputs)
    result.consistency = check_consistency(out)
    result.images = study
    return result
