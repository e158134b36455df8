"""Which tokens and which image region a saliency map explains: targets in a generated report.

For the decoded generation of one study this module finds what `medr2.saliency.maps` explains:
- `locate_targets`: each positive/uncertain finding of the final report (its sentences, found with the
  same labeler as the findings table), each abnormal perception line, and the whole report, as char spans;
- `token_char_spans` + `token_weights`: those char spans mapped to [K, T] 0/1 masks over generated tokens;
- `plausible_region` + `evidence_share`: where on a frontal film a finding can be seen, and the share of a
  map's energy there (below `EVIDENCE_MIN` the app shows "weak visual evidence").

Hands on `Target`s, token masks and region masks (numpy/torch arrays only) to `medr2.saliency.maps.explain`,
which re-exports every public name here.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from medr2.labeler.findings import find_mentions, split_sentences

_HEADER = re.compile(r"^\s*(findings|impression)\s*:\s*", re.IGNORECASE)
_NORMAL_CUE = re.compile(r"\b(normal|clear|sharp|none|no|not|midline|unremarkable)\b", re.IGNORECASE)
EVIDENCE_MIN = 0.5  # below this share of energy in the plausible region a finding gets "weak visual evidence"
# Evidence check geometry, as fractions of a frontal (PA/AP) film: patient right = image left. Loose on
# purpose (checked against the phantom masks in tests): it flags maps that look elsewhere, not borderline ones.
_LUNGS = (0.06, 0.94, 0.08, 0.94)  # x0, x1, y0, y1
_ZONES = {"upper": (0.06, 0.45), "mid": (0.28, 0.68), "lower": (0.45, 0.94)}
_HEART = (0.22, 0.88, 0.28, 0.9)
_MEDIASTINUM = (0.25, 0.8, 0.04, 0.9)
# Pneumonia is checked by side only: it is often multifocal (bronchopneumonia; the phantoms draw 2-3 foci) and
# real reports often name one focus, or none.
# Perception regions that hold a single finding type, so a line there is that finding's evidence.
_SINGLE_FINDING_REGION = {"Cardiomegaly": "heart", "Enlarged Cardiomediastinum": "mediastinum", "Edema": "hila",
                          "Fracture": "bones", "Support Devices": "devices"}
_PLAUSIBLE = {"Pleural Effusion": "base", "Pneumothorax": "lung", "Edema": "lung", "Pleural Other": "lung",
              "Cardiomegaly": "heart", "Enlarged Cardiomediastinum": "mediastinum", "Consolidation": "zone",
              "Pneumonia": "lung", "Lung Opacity": "zone", "Lung Lesion": "zone", "Atelectasis": "zone"}


@dataclass
class Target:
    """What to explain: char spans of the decoded generated text whose tokens' log-probs are summed."""

    name: str
    kind: str
    text: str
    value: int | None
    spans: list[tuple[int, int]] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ targets
def _sections(text: str) -> dict[str, tuple[int, int]]:
    """Body span of each `<name> … </name>` section (an unclosed last section runs to the end)."""
    out = {}
    for m in re.finditer(r"<(perception|reasoning|draft|reflection|report)>", text):
        end = text.find(f"</{m.group(1)}>", m.end())
        out.setdefault(m.group(1), (m.end(), len(text) if end < 0 else end))
    if "report" not in out and "<think>" not in text:  # a direct (report-only) model without tags
        out["report"] = (0, len(text))
    return out


def _units(text: str, span: tuple[int, int]) -> list[tuple[int, int]]:
    """Sentence spans inside `span`, split at line breaks first (perception/reasoning lines have no '.')."""
    out, pos = [], span[0]
    for line in text[span[0]:span[1]].split("\n"):
        out += [(pos + a, pos + b) for a, b in split_sentences(line)]
        pos += len(line) + 1
    return out


def _strip_header(text: str, span: tuple[int, int]) -> tuple[int, int]:
    m = _HEADER.match(text[span[0]:span[1]])
    return (span[0] + m.end(), span[1]) if m else span


def _abnormal_perception_lines(text: str, where: dict[str, tuple[int, int]]) -> list[tuple[str, str, tuple[int, int]]]:
    """(region, body, char span) of each perception line that describes something abnormal."""
    if "perception" not in where:
        return []
    a, b = where["perception"]
    out, pos = [], a
    for line in text[a:b].split("\n"):
        region, sep, body = line.partition(":")
        span = (pos, pos + len(line.rstrip()))
        pos += len(line) + 1
        if not sep or not body.strip():
            continue
        # a sign of the perception tree is abnormal even when worded with "no" ("pleural line with no markings")
        abnormal = any(sign in body.lower() for sign in _signs_of(None)) or any(
            m.value in (1, -1) for m in find_mentions(body, include_other=True))
        if abnormal or not _NORMAL_CUE.search(body):
            out.append((region.strip(), body, span))
    return out


@functools.lru_cache(maxsize=None)  # called per perception line and target: the sign table never changes
def _signs_of(observation: str | None) -> tuple[str, ...]:
    """The perception-tree signs (medr2.report.traces.SIGNS) that indicate `observation` (None: all), lower case."""
    from medr2.phantom.generator import OBSERVATION_OF
    from medr2.report.traces import SIGNS

    return tuple(sign[0].lower() for kind, sign in SIGNS.items() if observation in (None, OBSERVATION_OF[kind]))


def _perceives(region: str, body: str, observation: str, sentence: str) -> bool:
    """Whether an abnormal perception line is where `observation` (reported in `sentence`) was read.

    Regions that hold one finding (heart, mediastinum, hila, bones, devices) match by name; lung and pleura
    lines must name one of the observation's signs; a line of one side only matches a sentence naming that side."""
    region, body = region.lower(), body.lower()
    root = _SINGLE_FINDING_REGION.get(observation)
    if root is not None:
        return region.startswith(root)
    if not any(sign in body for sign in _signs_of(observation)):
        return False
    low = sentence.lower()
    named = {side for side in ("right", "left") if side in low} if "bilateral" not in low else set()
    line_side = next((side for side in ("right", "left") if region.startswith(side)), None)
    return not named or line_side is None or line_side in named


def locate_targets(text: str, labels: dict | None = None, *, include_perception: bool = True,
                   sections: Sequence[str] = ("report",), with_perception_evidence: bool = True) -> list[Target]:
    """Targets in a decoded generation: findings (positive/uncertain), abnormal perception lines, the report.

    A finding's target is its report sentences plus, in a Med-R2 trace, the perception line(s) where its
    sign was read: the report restates the reasoning (its tokens depend on the text before them more than on
    the film), while the perception line is where the model looked. Measured on 60 held-out phantoms with
    the session-2 model, pointing game 0.33 -> 0.73 for effusion, 0.46 -> 0.92 for cardiomegaly
    (benchmarks/saliency_faithfulness.py has the full comparison).

    Args:
        text: the generated text, schema tags included.
        labels: the final report's labels; when given, only observations labelled 1/-1 get a target, with
            that value (a labelled finding whose sentence is not found gets none).
        sections: where finding sentences are looked for; ("report",) by default, ("draft", "report") adds
            the draft's sentences.
        with_perception_evidence: add each finding's perception line(s) to its target (see above).
    """
    where = _sections(text)
    findings: dict[str, Target] = {}
    for section in sections:
        for unit in _units(text, where[section]) if section in where else []:
            unit = _strip_header(text, unit)
            for m in find_mentions(text[unit[0]:unit[1]]):
                if m.value not in (1, -1) or (labels is not None and labels.get(m.observation) not in (1, -1)):
                    continue
                value = labels[m.observation] if labels is not None else m.value
                t = findings.setdefault(m.observation, Target(m.observation, "finding", "", value))
                if unit not in t.spans:
                    t.spans.append(unit)
                    t.text = f"{t.text} {text[unit[0]:unit[1]]}".strip()
    targets = list(findings.values())
    lines = _abnormal_perception_lines(text, where)
    if with_perception_evidence:
        for t in targets:
            t.spans += [span for region, body, span in lines if _perceives(region, body, t.name, t.text)]
    if include_perception:
        targets += [Target(region, "perception", text[a:b].strip(), None, [(a, b)]) for region, _, (a, b) in lines]
    if "report" in where:
        units = [_strip_header(text, u) for u in _units(text, where["report"])]
        units = [u for u in units if u[1] > u[0]]
        if units:
            targets.append(Target("report", "report", text[where["report"][0]:where["report"][1]].strip(), None, units))
    return targets


def token_char_spans(tokenizer, ids: Sequence[int]) -> tuple[str, np.ndarray]:
    """Decoded text (special tokens kept) and each token's [start, end) char span in it: int [T, 2]."""
    ids = [int(i) for i in ids]
    full = tokenizer.decode(ids, skip_special_tokens=False)
    pieces = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False)
    if "".join(pieces) == full:  # byte-level BPE on ASCII text: pieces concatenate exactly
        ends = np.cumsum([len(p) for p in pieces])
    else:  # multi-byte characters split across tokens, or decoder clean-up: decode prefixes
        ends = np.array([len(tokenizer.decode(ids[:k + 1], skip_special_tokens=False)) for k in range(len(ids))])
    ends = np.maximum.accumulate(ends) if len(ends) else np.zeros(0, dtype=int)
    starts = np.concatenate([[0], ends[:-1]]) if len(ends) else ends
    return full, np.stack([starts, ends], 1).astype(np.int64).reshape(-1, 2)


def token_weights(targets: Sequence[Target], offsets: np.ndarray) -> torch.Tensor:
    """[K, T] 0/1 masks: token t belongs to target k when its char span overlaps one of k's spans."""
    w = np.zeros((len(targets), len(offsets)), dtype=np.float32)
    for k, t in enumerate(targets):
        for a, b in t.spans:
            w[k] = np.maximum(w[k], (offsets[:, 0] < b) & (offsets[:, 1] > a))
    return torch.from_numpy(w)


# ------------------------------------------------------------------------------------ evidence check
def plausible_region(observation: str, text: str, shape: tuple[int, int]) -> np.ndarray | None:
    """bool [H, W]: where `observation` can be seen on a frontal film, narrowed by the side and zone its
    sentence names; None when there is no check (devices, fractures, unknown observations)."""
    rule = _PLAUSIBLE.get(observation)
    if rule is None:
        return None
    h, w = shape
    low = text.lower()
    right, left = "right" in low, "left" in low
    both = "bilateral" in low or "both" in low or right == left
    x0, x1, y0, y1 = {"heart": _HEART, "mediastinum": _MEDIASTINUM}.get(rule, _LUNGS)
    if rule == "base":
        y0 = 0.25  # a large effusion rises to the mid zone
    zones = [z for z in _ZONES if z in low or (z == "upper" and "apic" in low) or (z == "lower" and "bas" in low)]
    if rule == "zone" and zones:
        y0, y1 = min(_ZONES[z][0] for z in zones), max(_ZONES[z][1] for z in zones)
    region = np.zeros(shape, dtype=bool)
    region[int(y0 * h):int(np.ceil(y1 * h)), int(x0 * w):int(np.ceil(x1 * w))] = True
    if rule in ("lung", "base", "zone") and not both:  # patient right is image left
        region[:, int(0.55 * w):] &= not right
        region[:, :int(0.45 * w)] &= not left
    return region


def evidence_share(heatmap: np.ndarray, region: np.ndarray) -> float:
    """Share of a heatmap's energy inside `region` (0 for an empty map)."""
    total = float(heatmap.sum())
    return float(heatmap[region].sum() / total) if total > 0 else 0.0
