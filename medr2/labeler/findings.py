"""Findings: a fast, pure-Python, CheXpert-style rule labeler for chest X-ray reports.

One labeler serves the CE metric, the MCCS reward, the UI findings table and draft-vs-final analysis, so
they can never drift apart. Per report it returns a value for each of the 14 CheXpert observations:
1 positive, 0 negative, -1 uncertain, None not mentioned (blank).

Stages (after Irvin et al. 2019, with regular expressions in place of a dependency parse):
1. split sentences (character spans of the original text);
2. find mentions: one precompiled regex of every phrase in `phrases.json`, longest phrase
   first at each position, so an "unmention" ("pericardial effusion") hides the mention inside it;
3. classify each mention inside its sentence: pre-negation uncertainty ("cannot exclude"), then negation
   ("no", "without", "free of", "... is not seen"), then uncertainty ("may represent", "versus",
   "atelectasis or scarring"); structure words ("heart size", "mediastinum") carry a label only with a
   descriptor ("normal" -> 0, "enlarged" -> 1, "borderline"/"stable" -> -1);
4. aggregate per report: any positive -> 1, else any uncertain -> -1, else 0; "No Finding" = 1 only when
   nothing but Support Devices is positive/uncertain and no other abnormality (emphysema, granuloma,
   scoliosis, ...) is mentioned positively or uncertainly; otherwise blank (never 0, as in CheXpert).

Hands on `Labels` dicts and `Mention`s (char spans, for saliency targets and UI highlighting); the
`medr2 label` CSV command around it lives in `medr2.labeler.cli`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, NamedTuple

OBSERVATIONS: tuple[str, ...] = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Lung Opacity", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)
POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1
Labels = dict[str, int | None]
# Mentions of abnormalities outside the 14 (emphysema, granuloma, ...): they only veto "No Finding".
OTHER_ABNORMALITY = "Other abnormality"
PHRASES_PATH = Path(__file__).parent / "phrases.json"

_RANK = {POSITIVE: 2, UNCERTAIN: 1, NEGATIVE: 0}  # aggregation: positive > uncertain > negative
_NO_FINDING_EXEMPT = {"No Finding", "Support Devices"}
# Scope limits in characters: long enough for IU lists ("without focal airspace disease, pleural effusion
# or pneumothorax" is ~65), short enough that a cue does not reach across a long sentence.
_NEG_SCOPE, _UNC_SCOPE, _POST_SCOPE, _DESC_PRE, _DESC_POST = 120, 80, 60, 50, 80

_VERBS = (r"is|are|was|were|be|been|being|has|have|had|seen|noted|present|identified|demonstrated|visualized|"
          r"appears?|appearing|remains?|shows?|showing|reveals?|revealing|represents?|measures?|obscur\w*|there")
_CLAUSE = r"but|however|although|though|except|whereas|while|which|who|aside|apart"
# A cue reaches a mention only if no verb or clause break lies between them ("No effusion; there is ...").
# "previously seen" is an adjective; so is a participle right after "no" or a few words before the mention
# ("no visualized pneumothorax or large effusion", "no suspicious appearing nodules"; `$` is the search's endpos,
# the mention's start).
_ATTRIBUTIVE = r"(?:visualized|appearing|demonstrated|identified)"
_PRE_BLOCK = re.compile(rf"\b(?<!previously )(?!(?<=\bno ){_ATTRIBUTIVE}\b)(?!(?<!, ){_ATTRIBUTIVE}(?:\s+[\w-]+){{0,3}}\s*$)"
                        rf"(?:{_VERBS}|{_CLAUSE}|with)\b|[;:]")
# Uncertainty cues run on through their own verbs ("may represent", "could be"): only a new clause stops them.
_UNC_BLOCK = re.compile(rf"\b(?:{_CLAUSE}|is|are|was|were|there)\b|[;:]")
# After a mention, a preposition of time also starts a new thought ("pneumothorax following tube removal").
_POST_BLOCK = re.compile(rf"\b(?:{_VERBS}|{_CLAUSE}|with|without|following|after|since|post)\b|[;:]")
# Between a pre-descriptor and its structure only structure words may stand ("normal heart size and mediastinal").
_DESC_PRE_GAP = re.compile(r"\s*(?:(?:the|and|of|in|heart|size|cardiac|cardio|\w*mediastin\w*|hilar|hila|"
                           r"contours?|silhouettes?|pulmonary|vascula\w*|appearance|xxxx)\s*)*")
# Between chained post-descriptors: "is stable and within normal limits", "normal in size and contour".
_DESC_JOIN = re.compile(r"(?:[\s,]|\b(?:and|in|of|for|size|contour|appearance|configuration|both)\b)*")
_NEAR_GAP = re.compile(r"\s*(?:[\w-]+\s+){0,2}")  # "no acute cardiomediastinal ..." (at most two words)
# "atelectasis or scarring", "atelectasis/scarring", "atelectasis in the right base versus scarring"
_OR_AFTER = re.compile(r"\s*,?\s*(?:or|versus|vs\.?|and/or)(?!\w)|\s?/\s?(?=[a-z])"
                       r"|(?:\s+(?!(?:and|with|without|but|no|is|are)\b)[a-z-]+){1,5}?\s*,?\s*(?:versus|vs\.?)(?!\w)")
_OR_BEFORE = re.compile(r"(?:(?<!\w)(?:or|versus|vs\.?|and/or)\s+|(?<=[a-z])\s?/\s?)(?:[a-z-]+\s+){0,3}$")
# Sentence ends: '.'/'!' before a space (not after 'vs', 'e.g', 'Dr' or a list number: "1. Chest." stays
# whole), a blank line, 'word.Word', and the space before a list number ("... thickening 2. Streaky").
_SENTENCE_END = re.compile(  # each alternative starts with a character (class): fast to reject
    r"[.!](?<!\b[vV][sS]\.)(?<!\b[eE]\.[gG]\.)(?<!\b[iI]\.[eE]\.)(?<!\b[dD][rR]\.)(?<!\b[cC][fF]\.)"
    r"(?<!\b[aA]pprox\.)(?<!(?<!\S)\d\.)(?<!(?<!\S)\d\d\.)[.!]*(?=\s|$)"
    r"|\n\s*\n|\.(?=[A-Z][a-z])|\s(?<=[A-Za-z,;)]\s)\s*(?=\d{1,2}\.\s+[A-Za-z])")


@dataclass(frozen=True)
class Mention:
    """One mention of an observation: its value before aggregation and its char span in the original text."""

    observation: str
    value: int
    sentence_index: int
    start: int
    end: int
    phrase: str


class _Entry(NamedTuple):
    observations: tuple[str, ...]
    kind: str  # disease | anatomy | hedged | other | ignore
    also_uncertain: tuple[str, ...] = ()


class _Tables(NamedTuple):
    mention_re: re.Pattern  # finds mention spans (no groups: see `_dispatch`)
    forms: dict[str, list[tuple[re.Pattern, _Entry, bool]]]  # first char -> (form, entry, cacheable) in order
    cues: dict[str, re.Pattern]
    descriptor_re: re.Pattern
    entry_of: dict[str, _Entry]  # cache: matched text -> entry (texts whose forms have no lookaround)


def _fragment(phrase: str) -> str:
    """A literal space matches any run of whitespace/hyphens ('ground glass' = 'ground-glass'); ' ?' an optional one."""
    pattern = phrase.replace(" ?", "\0").replace(" ", r"[\s-]+").replace("\0", r"[\s-]?")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"bad labeler phrase {phrase!r} in {PHRASES_PATH}: {exc}; fix the regex") from exc
    if compiled.groups and "(?P<hedge>" not in pattern:
        raise ValueError(f"labeler phrase {phrase!r} has a capturing group: write (?:...) instead")
    return pattern


def _group(frag: str) -> tuple[int, list[str]]:
    """For a fragment opening with '(?:': the index of its closing ')' and its top-level alternatives."""
    depth, start, alts, j = 0, 3, [], 0
    while j < len(frag):
        ch = frag[j]
        if ch == "\\":
            j += 2
            continue
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return j, alts + [frag[start:j]]
        if ch == "|" and depth == 1:
            alts.append(frag[start:j])
            start = j + 1
        j += 1
    raise ValueError(f"unbalanced parentheses in labeler phrase {frag!r}")


def _expand(frag: str) -> list[str]:
    """Equivalent forms that each start with a literal: 'o?edema' -> 'oedema', 'edema';
    '(?:the )?heart' -> 'the[\\s-]+heart', 'heart'."""
    if frag[:1].isalnum() and frag[1:2] not in ("*", "+", "{"):
        return _expand(frag[0] + frag[2:]) + _expand(frag[2:]) if frag[1:2] == "?" else [frag]
    if frag.startswith("(?:"):
        j, alts = _group(frag)
        quantifier = frag[j + 1:j + 2]
        if quantifier not in ("*", "+", "{"):
            rest = frag[j + 2:] if quantifier == "?" else frag[j + 1:]
            return [f for alt in alts for f in _expand(alt + rest)] + (_expand(rest) if quantifier == "?" else [])
    raise ValueError(f"labeler phrase {frag!r} must start with a letter or a (?:...) group, so that it can be "
                     "indexed by its first character; rewrite it")


def _dispatch(fragments: list[str]) -> tuple[str, list[tuple[str, int]]]:
    """One alternation of `fragments` (in priority order), bucketed by first character.

    Python's `re` tries every alternative at every position, but skips at once one that starts with a
    literal other than the next character (not one that starts with a group). So each fragment is expanded
    to forms that start with a literal, grouped as `h(?:eart|ilar ...)` without capturing groups: ~250
    phrases then cost ~20 us a report instead of ~2.5 ms. Returns the pattern and the (form, fragment
    index) pairs in the order the pattern tries them.
    """
    buckets: dict[str, list[tuple[str, int]]] = {}
    for i, frag in enumerate(fragments):
        for form in _expand(frag):
            buckets.setdefault(form[0], []).append((form, i))
    ordered = sorted(buckets.items())
    pattern = "|".join(re.escape(c) + "(?:" + "|".join(f[1:] for f, _ in forms) + ")" for c, forms in ordered)
    return pattern, [pair for _, forms in ordered for pair in forms]


def _bounded(phrase: str) -> str:
    return f"(?<!\\w){_fragment(phrase)}(?!\\w)"


def _cue_regex(phrases: list[str]) -> re.Pattern:
    words = sorted((p for p in phrases if p != "\\?"), key=len, reverse=True)
    pattern = rf"(?<!\w)(?:{_dispatch([_fragment(p) for p in words])[0]})(?!\w)"
    return re.compile(pattern + (r"|\?" if "\\?" in phrases else ""))


@lru_cache(maxsize=1)
def phrase_tables() -> _Tables:
    """Compile the phrase tables once per process (~30 ms)."""
    spec = json.loads(PHRASES_PATH.read_text(encoding="utf-8"))
    items: list[tuple[str, _Entry]] = []
    for group in spec["mentions"]:
        unknown = set(group["observations"]) - set(OBSERVATIONS)
        if unknown:
            raise ValueError(f"{PHRASES_PATH}: unknown observation(s) {sorted(unknown)}; use one of {OBSERVATIONS}")
        entry = _Entry(tuple(group["observations"]), group["kind"], tuple(group.get("also_uncertain", ())))
        items += [(p, entry) for p in group["phrases"]]
    items += [(p, _Entry((OTHER_ABNORMALITY,), "other")) for p in spec["other_abnormalities"]]
    items += [(p, _Entry((), "ignore")) for p in spec["unmentions"]]
    # Longest pattern first, unmentions first on ties: at one position the longer phrase wins.
    items.sort(key=lambda it: (-len(it[0]), it[1].kind != "ignore"))
    pattern, forms = _dispatch([_fragment(p) for p, _ in items])
    by_char: dict[str, list[tuple[re.Pattern, _Entry, bool]]] = {}
    for form, i in forms:  # a form with a lookaround ('lines?(?= tip)') depends on more than its text
        by_char.setdefault(form[0], []).append(
            (re.compile(form + r"(?!\w)"), items[i][1], re.search(r"\(\?<?[=!]", form) is None))
    cues = {name: _cue_regex(phrases) for name, phrases in spec["cues"].items() if not name.startswith("descriptor_")}
    copula = (r"(?:(?:is|are|was|were|appears?|appearing|remains?|looks?|seems?|measures?|has been|have been|"
              r"(?:has|have) become|becomes?|became)\s+)?"
              r"(?:(?:now|otherwise|again|still|grossly|overall|also|probably|likely|currently|essentially|near|\w+ly)\s+)*")
    descriptor_re = re.compile(copula + "(?:" + "|".join(
        f"(?P<{k}>" + "|".join(_bounded(p) for p in spec["cues"]["descriptor_" + k]) + ")"
        for k in ("negative", "positive", "uncertain", "stable")) + ")")
    return _Tables(re.compile(rf"(?<!\w)(?:{pattern})(?!\w)"), by_char, cues, descriptor_re, {})


def _entry(tables: _Tables, low: str, m: re.Match) -> _Entry:
    """Which phrase a mention match came from: the first form, in pattern order, that matches there."""
    entry = tables.entry_of.get(m.group())
    if entry is None:
        form, entry, cacheable = next(f for f in tables.forms[low[m.start()]] if f[0].match(low, m.start()))
        if cacheable and len(tables.entry_of) < 100_000:
            tables.entry_of[m.group()] = entry
    return entry


def _lower(text: str) -> str:
    """Lowercase without changing length, so spans found in the lowercase text index the original."""
    low = text.lower()
    return low if len(low) == len(text) else "".join(c.lower()[0] for c in text)


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of `text` (terminal '.'/'!' included, surrounding space excluded).

    Splits at '.'/'!' before whitespace, blank lines, 'word.Word' and before a list number ('... 2. Xyz');
    not after a list number ('1. Chest.') or 'vs.'/'e.g.'. '?' does not split: "? pneumonia" is an
    uncertainty cue of its own sentence.
    """
    out, start = [], 0
    for end in [m.end() for m in _SENTENCE_END.finditer(text)] + [len(text)]:
        segment = text[start:end]
        left, right = start + len(segment) - len(segment.lstrip()), start + len(segment.rstrip())
        if right > left:
            out.append((left, right))
        start = end
    return out


class _Cues:
    """Spans of each cue type in one sentence, found on first use (most sentences need only a few types)."""

    def __init__(self, low: str, cues: dict[str, re.Pattern]):
        self.low = low
        self._regexes = cues
        self._found: dict[str, list[tuple[int, int]]] = {}

    def _get(self, name: str) -> list[tuple[int, int]]:
        found = self._found.get(name)
        if found is None:
            found = self._found[name] = [m.span() for m in self._regexes[name].finditer(self.low)]
        return found

    def before(self, name: str, ms: int, scope: int, near: bool = False, block: re.Pattern = _PRE_BLOCK) -> bool:
        """The last cue of `name` ending before `ms` lies within `scope` with a clean gap (`near`: <= 2 words)."""
        last = -1
        for _, end in self._get(name):  # a handful of spans at most: a scan beats bisect
            if end > ms:
                break
            last = end
        if last < 0 or last < ms - scope:
            return False
        if near:
            return _NEAR_GAP.fullmatch(self.low, last, ms) is not None
        return block.search(self.low, last, ms) is None

    def after(self, name: str, me: int, scope: int, adjacent: bool = False) -> bool:
        """The first cue of `name` starting after `me` lies within `scope` with a clean (`adjacent`: empty) gap."""
        for start, _ in self._get(name):
            if start >= me:
                if start > me + scope:
                    return False
                if adjacent:
                    return not self.low[me:start].strip()
                return _POST_BLOCK.search(self.low, me, start) is None
        return False


def _classify(cues: _Cues, ms: int, me: int, kind: str, devices: bool = False) -> int:
    """Value of a disease/hedged/other mention at [ms, me) of the sentence `cues.low`.

    `devices`: "pacemaker/ICD" names one device two ways, so the "X or Y" rule does not make it uncertain.
    """
    if cues.before("pre_negation_uncertainty_pre", ms, _UNC_SCOPE) or \
            cues.after("pre_negation_uncertainty_post", me, _POST_SCOPE):
        return UNCERTAIN
    if cues.before("negation_pre", ms, _NEG_SCOPE) or cues.after("negation_post", me, _POST_SCOPE):
        return NEGATIVE
    if kind == "hedged" or cues.before("uncertainty_pre", ms, _UNC_SCOPE, block=_UNC_BLOCK) or \
            cues.after("uncertainty_post", me, _POST_SCOPE, adjacent=True):
        return UNCERTAIN
    low = cues.low
    if not devices and (_OR_AFTER.match(low, me) or _OR_BEFORE.search(low, max(0, ms - 40), ms)):
        return UNCERTAIN  # "atelectasis or scarring", "effusion versus thickening"
    return POSITIVE


def _descriptors(low: str, ms: int, me: int) -> tuple[set[str], bool]:
    """Descriptor kinds of a structure mention, hedge flag: a chain before it ('normal and stable heart
    size') and a predicate after it ('the heart is stable and normal in size')."""
    rx, kinds, hedge = phrase_tables().descriptor_re, set(), False
    pos = ms
    for d in reversed(list(rx.finditer(low, max(0, ms - _DESC_PRE), ms))):
        if d.end() > pos or not _DESC_PRE_GAP.fullmatch(low, d.end(), pos):
            break
        kinds.add(d.lastgroup)
        hedge |= d.group("hedge") is not None
        pos = d.start()
    limit = me + _DESC_POST
    d = rx.search(low, me, limit)
    if d is not None and _POST_BLOCK.search(low, me, d.start()) is None:
        while d is not None:
            kinds.add(d.lastgroup)
            hedge |= d.group("hedge") is not None
            end = d.end()
            d = rx.search(low, end, limit)
            if d is not None and not _DESC_JOIN.fullmatch(low, end, d.start()):
                break
    return kinds, hedge


def _classify_anatomy(cues: _Cues, ms: int, me: int) -> int | None:
    """Value of a structure mention, or None when nothing is said about it ('the heart and lungs ...')."""
    low = cues.low
    kinds, hedge = _descriptors(low, ms, me)
    if "negative" in kinds:
        return NEGATIVE
    if "positive" in kinds:
        if cues.before("pre_negation_uncertainty_pre", ms, _UNC_SCOPE):
            return UNCERTAIN
        if cues.before("negation_pre", ms, _NEG_SCOPE):
            return NEGATIVE  # "no enlargement of the heart"
        return UNCERTAIN if hedge or cues.before("uncertainty_pre", ms, _UNC_SCOPE, block=_UNC_BLOCK) else POSITIVE
    if kinds:
        return UNCERTAIN  # borderline / prominent / stable (CheXpert: "stable cardiomediastinal silhouette")
    if cues.before("negation_pre", ms, 24, near=True):  # "no cardiomediastinal abnormality"
        return NEGATIVE
    return None


def _find_all(text: str) -> list[Mention]:
    """Mentions of `text`, sentence by sentence: every cue scope ends at the sentence, so a sentence's
    mentions depend on its text alone and are cached (reports repeat sentences: ~55% of IU's do)."""
    low = _lower(text)
    out: list[Mention] = []
    for si, (ss, se) in enumerate(split_sentences(text)):
        for obs, value, a, b in _sentence_mentions(low[ss:se]):
            out.append(Mention(obs, value, si, ss + a, ss + b, text[ss + a:ss + b]))
    return out


@lru_cache(maxsize=1 << 16)
def _sentence_mentions(sentence: str) -> tuple[tuple[str, int, int, int], ...]:
    """(observation, value, start, end) of each mention in one lowercase sentence."""
    tables = phrase_tables()
    matches = [(m, e) for m in tables.mention_re.finditer(sentence)
               if (e := _entry(tables, sentence, m)).kind != "ignore"]
    if not matches:
        return ()
    cues = _Cues(sentence, tables.cues)
    out: list[tuple[str, int, int, int]] = []
    for m, entry in matches:
        ms, me = m.span()
        if entry.kind == "anatomy":
            value = _classify_anatomy(cues, ms, me)
            if value is None:
                continue
        else:
            value = _classify(cues, ms, me, entry.kind, devices=entry.observations == ("Support Devices",))
        out += [(obs, value, ms, me) for obs in entry.observations]
        if value != NEGATIVE:  # CheXpert: positive/uncertain heart failure -> Cardiomegaly uncertain
            out += [(obs, UNCERTAIN, ms, me) for obs in entry.also_uncertain]
    return tuple(out)


def _check_text(text: object) -> str:
    if text is None:
        return ""
    if not isinstance(text, str):
        raise TypeError(f"report must be str, got {type(text).__name__} ({text!r:.60}); convert it with str() "
                        "or drop missing reports first")
    return text


def find_mentions(text: str, include_other: bool = False) -> list[Mention]:
    """Every mention of the 14 observations in `text`, in text order, with its value before aggregation.

    `include_other=True` adds mentions of other abnormalities (observation `OTHER_ABNORMALITY`).
    """
    mentions = _find_all(_check_text(text))
    return mentions if include_other else [m for m in mentions if m.observation != OTHER_ABNORMALITY]


def aggregate(mentions: Iterable[Mention], empty: bool = False) -> Labels:
    """Per-report labels from mentions: positive > uncertain > negative; No Finding = 1 or blank."""
    labels: Labels = dict.fromkeys(OBSERVATIONS)
    finding = empty  # an empty report states nothing, not "no finding"
    for m in mentions:
        if m.observation == OTHER_ABNORMALITY:
            finding |= m.value != NEGATIVE
            continue
        current = labels[m.observation]
        if current is None or _RANK[m.value] > _RANK[current]:
            labels[m.observation] = m.value
    finding |= any(labels[o] in (POSITIVE, UNCERTAIN) for o in OBSERVATIONS if o not in _NO_FINDING_EXEMPT)
    labels["No Finding"] = None if finding else POSITIVE
    return labels


def label_report(text: str) -> Labels:
    """CheXpert-style labels of one report: every observation key, value 1 / 0 / -1 / None (blank)."""
    text = _check_text(text)
    return aggregate(_find_all(text), empty=not text.strip())


def label_reports(texts: Iterable[str]) -> list[Labels]:
    """`label_report` for each text, in order."""
    return [label_report(t) for t in texts]
