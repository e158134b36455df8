"""Presentation for the reviewer app: pure functions from pipeline results to what the panels show.

Nothing here imports gradio or touches the model, so every function is unit-tested on plain data:
- the perception checklist (regions of `medr2.report.knowledge.perception_tree` in reading order, ticked when
  the model described them), reasoning steps with the statement of the knowledge rule they cite, and
  reflection items, as small HTML fragments (text is always HTML-escaped: model output is untrusted);
- the draft -> final word diff in `gr.HighlightedText`'s format;
- the 14-observation findings table (draft / final / reviewer, plus ground truth for phantom examples);
- provenance text, overlay choices and the curated one-line error messages users see.
Hands on: strings, lists and rows that `medr2.app.service` passes to the gradio components.
"""
from __future__ import annotations

import difflib
import html
import re
from typing import Any, Iterable, Sequence

from medr2.labeler.findings import OBSERVATIONS, split_sentences
from medr2.report.knowledge import perception_tree, rule
from medr2.report.schema import PerceptionItem, ReasoningStep, ReflectionItem

NOTICE = "Research demo — not for clinical use; upload de-identified images only."
DEMO_NOTICE = ("The demo model was trained on synthetic films only (drawn phantoms, projections of one public CT with "
               "synthetic findings): its reports on real radiographs are not meaningful.")
# Said when the input gate (medr2.trust.gate) flags a film: the report is folded behind REPORT_ANYWAY.
OUT_OF_DISTRIBUTION = "outside what the model learned: read its report, if at all, as a demonstration only."
REPORT_ANYWAY = "Show the model's report anyway"
REPORT_FOLD = "Report and findings"
DISTRIBUTION_UNKNOWN = ("Distribution unknown: this model carries no statistics of its training films, so only the "
                        "DICOM tags were checked.")
NO_REPORT = ("The model produced no report (generation ended before a closed <report> section). "
             "Write the correct report here if you want to teach the model.")
REPORT_PLACEHOLDER = "The final report appears here; edit it to correct the model."
BUSY = "The server is busy with other studies. Please try again in a minute."
GENERIC_ERROR = "Something went wrong while analysing this image; nothing was stored. Please try again or use another file."
STAGES = ("image", "perception", "reasoning", "draft", "reflection", "report", "findings", "saliency")
VALUE_WORDS = {1: "+", 0: "−", -1: "?", None: ""}  # present / absent / uncertain / not mentioned
FINDINGS_LEGEND = ("+ present · − absent · ? uncertain · blank = not mentioned · confidence: calibrated probability that "
                   "a stated finding is right, ⚠ = check it first")
FINDINGS_HEADERS = ["Observation", "Draft", "Final", "Reviewer"]
# The per-sentence table: the verdict cannot be typed (gradio's Dataframe has no drop-down cell; its datatypes are
# str, number, bool, date, markdown): a Delete tick box (bool column) means reject, an edited text means edit,
# neither means accept. Only those two cells are editable.
VERDICT_HEADERS = ["Model sentence", "Delete", "Edited text (empty: keep the sentence)"]
VERDICT_DATATYPES = ["str", "bool", "str"]
VERDICT_STATIC_COLUMNS = [0]
DIFF_COLORS = {"added": "#1a7f37", "removed": "#cf222e"}
COLORMAPS = ("inferno", "jet", "viridis", "hot")
NO_OVERLAY = "none"

APP_CSS = """
.medr2-notice {background:#fff4e5;border:1px solid #f0a020;border-radius:6px;padding:6px 12px;font-weight:600;color:#5a3b00}
.medr2-notice small {font-weight:400;display:block}
.medr2-stages {display:flex;flex-wrap:wrap;gap:4px;font-size:0.85em}
.medr2-stage {padding:2px 8px;border-radius:10px;background:#eceff3;color:#57606a}
.medr2-stage.done {background:#dafbe1;color:#1a7f37}
.medr2-stage.active {background:#ddf4ff;color:#0969da;font-weight:600}
.medr2-stage.failed {background:#ffebe9;color:#cf222e}
.medr2-list {width:100%;border-collapse:collapse;font-size:0.92em}
.medr2-list td {border-bottom:1px solid #eaeef2;padding:3px 6px;vertical-align:top}
.medr2-list td.k {white-space:nowrap;font-weight:600;width:1%}
.medr2-muted {color:#8c959f;font-style:italic}
.medr2-rule {display:block;color:#57606a;font-size:0.88em}
.medr2-badge {border-radius:8px;padding:0 6px;font-size:0.85em;font-weight:600}
.medr2-badge.kept {background:#dafbe1;color:#1a7f37}
.medr2-badge.revised {background:#fff8c5;color:#7d4e00}
.medr2-badge.removed {background:#ffebe9;color:#cf222e}
.medr2-badge.added {background:#ddf4ff;color:#0969da}
.medr2-badge.free {background:#eceff3;color:#57606a}
.medr2-look {display:flex;gap:8px;align-items:flex-start;margin-top:4px}
.medr2-look img {border:1px solid #d0d7de;border-radius:4px;max-width:280px}
.medr2-warn {background:#fff8c5;border-left:3px solid #bf8700;padding:4px 8px;margin-top:6px}
#findings table {font-size:0.85em}
"""

_esc = html.escape


# ---------------------------------------------------------------- progress
def stage_html(done: Iterable[str], active: str | None = None, failed: str | None = None, note: str = "") -> str:
    """A one-line stepper of the analysis stages (image → … → saliency) with an optional note."""
    done = set(done)
    chips = []
    for name in STAGES:
        cls = "failed" if name == failed else "done" if name in done else "active" if name == active else ""
        mark = "✓ " if cls == "done" else "… " if cls == "active" else "✗ " if cls == "failed" else ""
        chips.append(f'<span class="medr2-stage {cls}">{mark}{name}</span>')
    tail = f' <span class="medr2-muted">{_esc(note)}</span>' if note else ""
    return f'<div class="medr2-stages">{"".join(chips)}{tail}</div>'


# ---------------------------------------------------------------- middle column
def _region_key(region: str | None) -> str:
    """'right lung, lower zone' / 'Right Lung upper' -> 'right lung'; 'left pleura' -> 'pleura'."""
    low = (region or "").lower().split(",")[0].strip()
    for r in perception_tree():
        if low == r.name or low.startswith(r.name):
            return r.name
    return "pleura" if "pleura" in low else low


def perception_html(items: Sequence[PerceptionItem], streaming: bool = False) -> str:
    """The region checklist in reading order: ✓ region + what the model saw there, ○ not (yet) described."""
    by_region: dict[str, list[PerceptionItem]] = {}
    other: list[PerceptionItem] = []
    names = [r.name for r in perception_tree()]
    for item in items:
        key = _region_key(item.region)
        (by_region.setdefault(key, []) if key in names else other).append(item)
    missing = "not described yet" if streaming else "not described by the model"
    rows = []
    for name in names:
        found = by_region.get(name, [])
        if not found:
            rows.append(f'<tr><td class="k">○ {_esc(name)}</td><td class="medr2-muted">{missing}</td></tr>')
            continue
        text = "<br>".join(_esc(i.text if (i.region or "").lower() == name else i.line()) for i in found)
        rows.append(f'<tr><td class="k">✓ {_esc(name)}</td><td>{text}</td></tr>')
    for item in other:  # free-text lines and regions the knowledge base does not know: kept, never dropped
        label = _esc(item.region) if item.region else "note"
        rows.append(f'<tr><td class="k">• {label}</td><td>{_esc(item.text)}</td></tr>')
    return f'<table class="medr2-list">{"".join(rows)}</table>'


def reasoning_html(steps: Sequence[ReasoningStep]) -> str:
    """Each step as sign → conclusion, with the cited knowledge rule's statement beneath it."""
    if not steps:
        return '<p class="medr2-muted">No reasoning steps.</p>'
    rows = []
    for i, step in enumerate(steps, 1):
        if step.conclusion is None:
            rows.append(f'<tr><td class="k">{i}</td><td>{_esc(step.sign)}</td></tr>')
            continue
        body = f"{_esc(step.sign)} → <b>{_esc(step.conclusion)}</b>"
        if step.rule_id:
            known = rule(step.rule_id)
            statement = (f"rule <code>{_esc(step.rule_id)}</code>: {_esc(known.statement)}" if known else
                         f"rule <code>{_esc(step.rule_id)}</code> is not in the knowledge base (the model invented it)")
            body += f'<span class="medr2-rule">{statement}</span>'
        else:
            body += '<span class="medr2-rule medr2-muted">no knowledge rule cited</span>'
        rows.append(f'<tr><td class="k">{i}</td><td>{body}</td></tr>')
    return f'<table class="medr2-list">{"".join(rows)}</table>'


def look_thumbnail(film, look, side: int = 132) -> str:
    """A data-URI PNG of one look: the film with the look's region outlined, beside the magnified crop the model saw."""
    import base64
    import io

    import numpy as np
    from PIL import Image, ImageDraw

    film_img = Image.fromarray(np.asarray(film)).convert("RGB")
    scale = side / max(film_img.size)
    small = film_img.resize((max(1, round(film_img.width * scale)), max(1, round(film_img.height * scale))))
    top, left, bottom, right = look.box
    ImageDraw.Draw(small).rectangle([left * scale, top * scale, right * scale, bottom * scale], outline=(255, 200, 0), width=2)
    crop = Image.fromarray(np.asarray(look.crop)).convert("RGB").resize((side, side))
    sheet = Image.new("RGB", (small.width + side + 6, max(small.height, side)), (255, 255, 255))
    sheet.paste(small, (0, 0))
    sheet.paste(crop, (small.width + 6, 0))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def reflection_html(items: Sequence[ReflectionItem], looks: Sequence[Any] = (), film=None,
                    consistency_messages: Sequence[str] | None = None) -> str:
    """What was re-checked and what changed: kept / revised / removed / added badges with the reason; an item that
    followed a look shows the film with the region outlined, the magnified crop and what the finding heads read there;
    the draft -> final consistency verdict closes the panel."""
    if not items:
        return '<p class="medr2-muted">No reflection.</p>'
    by_region = {look.region: look for look in looks}
    rows = []
    for n, item in enumerate(items, 1):
        look = by_region.get(item.look) if item.look else None
        seen = ""
        if look is not None and film is not None:
            seen = (f'<div class="medr2-look"><img alt="look at the {_esc(look.region)}" src="{look_thumbnail(film, look)}"/>'
                    f'<div class="medr2-muted">looked at the <b>{_esc(look.region)}</b> (chosen by the {_esc(look.chosen_by)}); '
                    f'{_esc(look.evidence)}</div></div>')
        elif item.look:
            seen = f'<div class="medr2-muted">looked at the {_esc(item.look)}</div>'
        if item.action is None:
            rows.append(f'<tr id="reflection-item-{n}"><td class="k"><span class="medr2-badge free">note</span></td><td>{_esc(item.text)}{seen}</td></tr>')
            continue
        reason = f" — {_esc(item.text)}" if item.text else ""
        rows.append(f'<tr id="reflection-item-{n}"><td class="k"><span class="medr2-badge {item.action}">{item.action}</span></td>'
                    f'<td><b>{_esc(item.target or "")}</b>{reason}{seen}</td></tr>')
    verdict = ""
    if consistency_messages is not None:
        verdict = ('<p class="medr2-muted">Every draft → final change is explained by a reflection item.</p>' if not consistency_messages else
                   '<div class="medr2-warn"><b>The reflection does not explain the draft → final change:</b><ul>'
                   + "".join(f"<li>{_esc(m)}</li>" for m in consistency_messages) + "</ul></div>")
    return f'<table class="medr2-list">{"".join(rows)}</table>{verdict}'


def word_diff(draft: str, final: str) -> list[tuple[str, str | None]]:
    """Word-level draft → final diff for gr.HighlightedText: (text, 'added' | 'removed' | None) spans."""
    a, b = (draft or "").split(), (final or "").split()
    spans: list[tuple[str, str | None]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            spans.append((" ".join(a[i1:i2]) + " ", None))
            continue
        if op in ("delete", "replace"):
            spans.append((" ".join(a[i1:i2]) + " ", "removed"))
        if op in ("insert", "replace"):
            spans.append((" ".join(b[j1:j2]) + " ", "added"))
    if spans:
        spans[-1] = (spans[-1][0].rstrip(), spans[-1][1])
    return spans


# ---------------------------------------------------------------- right column
def findings_rows(draft: dict | None, final: dict | None, reviewer: dict | None, truth: dict | None = None,
                  confidence: dict | None = None, low: Sequence[str] = ()) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of the 14 observations; a '≠' marks observations where the columns disagree. With
    `confidence` (calibrated, per stated finding of the final report) a last column shows it, '⚠' on `low` ones."""
    headers = FINDINGS_HEADERS + (["Truth"] if truth is not None else []) + (["Confidence"] if confidence is not None else [])
    rows = []
    for obs in OBSERVATIONS:
        values = [(d or {}).get(obs) for d in (draft, final, reviewer)] + ([truth.get(obs)] if truth is not None else [])
        words = [VALUE_WORDS.get(v, str(v)) for v in values]
        label = obs + (" ≠" if len({w for w in words if w}) > 1 else "")
        if confidence is not None:
            p = confidence.get(obs)
            words.append("" if p is None else f"{p:.2f}" + (" ⚠" if obs in low else ""))
        rows.append([label, *words])
    return headers, rows


def stamp(prov: dict) -> str:
    """The reproducibility stamp of a provenance dict (as stored per study): version, weights, decoding."""
    from medr2.inference.results import Provenance

    return Provenance(**{k: prov.get(k) for k in ("model", "weights_sha256", "demo", "training_data", "medr2_version")},
                      decoding=prov.get("decoding") or {}).stamp()


def analysis_result(final: str, draft: str, labels: dict, maps: Sequence[Any] = (), provenance: dict | None = None,
                    input_check: dict | None = None, confidence: dict | None = None) -> dict:
    """What `/analyze` hands an API caller at the end (a read-only JSON output of its own): the final and draft
    report, the CheXpert labels, the saliency targets, the input gate's verdict and the model's stamp. The report
    textbox itself is not re-sent by the last update, so a reviewer's edits in the browser are never overwritten."""
    prov = provenance or {}
    return {"report": final or "", "draft": draft or "",
            "labels": {k: dict(v) for k, v in (labels or {}).items() if v is not None},
            "confidence": dict(confidence) if confidence else None,
            "saliency": [{"target": getattr(m, "target", ""), "kind": getattr(m, "kind", "")} for m in maps],
            "input_check": input_check,
            "model": {k: prov.get(k) for k in ("model", "weights_sha256", "demo", "medr2_version")}}


def input_check_markdown(check: dict | None) -> str:
    """The input gate's verdict for the top of the report column: why a film was flagged, or that the model
    cannot tell; empty when the film is inside what the model learned."""
    if not check:
        return ""
    if check.get("in_distribution") is False:
        reasons = "".join(f"\n- {html.escape(r)}" for r in check.get("reasons", []))
        return f"⚠ **This image is {OUT_OF_DISTRIBUTION}**{reasons}\n\nThe report is folded below (*{REPORT_ANYWAY}*)."
    if check.get("in_distribution") is None:
        return f"ℹ {DISTRIBUTION_UNKNOWN}"
    return ""


def provenance_markdown(prov: dict, metadata: dict | None = None, warnings: Sequence[str] = (),
                        timings: dict | None = None, n_tokens: int | None = None, in_distribution: bool | None = True) -> str:
    """Model, weights hash, demo/synthetic flag, image description and timing as a short markdown block."""
    lines = [f"**Model** `{prov.get('model', '?')}` · weights `{str(prov.get('weights_sha256', '?'))[:12]}` · "
             f"medr2 {prov.get('medr2_version', '?')}",
             f"**Training data** {prov.get('training_data', 'unknown')}"]
    if int(prov.get("images_per_study") or 1) > 1:  # a model trained on several views reads each study's views
        lines.append(f"**Views per study** {int(prov['images_per_study'])}, frontal first")
    if prov.get("decoding"):
        lines.append(f"**Reproduce** {stamp(prov)}")
    if prov.get("demo"):
        lines.append("**Demo model** trained on synthetic films only")
        if in_distribution is False:  # the input gate flagged the film
            lines.insert(0, f"⚠ **This image is {OUT_OF_DISTRIBUTION}**")
    if metadata:
        keys = ("source_format", "modality", "view_position", "body_part", "photometric_interpretation")
        desc = " · ".join(str(metadata[k]) for k in keys if metadata.get(k))
        if metadata.get("rows") and metadata.get("columns"):
            desc += f" · {metadata['columns']}×{metadata['rows']} px"
        lines.append(f"**Image** {desc.strip(' ·') or 'no description'}")
    lines += [f"⚠ {w}" for w in warnings]
    if timings:
        total = sum(v for k, v in timings.items() if k.endswith("_s") and k != "first_token_s")
        lines.append(f"**Time** {total:.1f} s" + (f" · {n_tokens} tokens" if n_tokens is not None else "")
                     + (f" · first token {timings['first_token_s']:.2f} s" if "first_token_s" in timings else ""))
    return "  \n".join(lines)


# Where a finding's map comes from: the look heads' per-patch reading of the film (first where the model has them:
# it points at the finding more often, docs/saliency.md), or the language model's gradients (gradient x activation).
MAP_SOURCES = {"look heads": "finding heads", "gradxact": "model gradients"}


def overlay_choices(maps: Sequence[Any]) -> list[tuple[str, str]]:
    """Dropdown (label, value) pairs: 'none' first, then one per saliency map (value = its index)."""
    choices = [("No overlay (image only)", NO_OVERLAY)]
    for i, m in enumerate(maps):
        text = (getattr(m, "text", "") or "").strip()
        quote = f": “{text[:60]}{'…' if len(text) > 60 else ''}”" if text else ""
        kind = getattr(m, "kind", "")
        head = ("Whole report" if kind == "report" else f"Region · {m.target}" if kind == "perception"
                else f"Finding · {m.target} ({MAP_SOURCES.get(getattr(m, 'method', ''), 'model gradients')})")
        choices.append((head + ("" if kind == "report" else quote), str(i)))
    return choices


def default_overlay(maps: Sequence[Any]) -> str:
    """The first map of a positive/uncertain finding, else the first map, else no overlay."""
    for i, m in enumerate(maps):
        if getattr(m, "kind", "finding") == "finding" and getattr(m, "value", None) in (1, -1):
            return str(i)
    return "0" if maps else NO_OVERLAY


def ground_truth_markdown(truth: dict) -> str:
    """A phantom example's known findings and report (from its JSON), for checking the model against it."""
    found = [f"{f.get('severity') or ''} {f.get('side') or ''} {f.get('observation')}".split() for f in truth.get("findings", [])]
    items = "\n".join(f"- {' '.join(words)}" for words in found) or "- no findings (normal phantom)"
    return f"**Ground truth (synthetic phantom `{truth.get('id', '?')}`)**\n{items}\n\n*Reference report:* {truth.get('report', '')}"


def example_label(truth: dict | None, name: str) -> str:
    """The caption of an example: the phantom's impression, or the real radiograph's caveat."""
    if truth is None:
        return f"Real radiograph ({name}) — outside the demo model's training distribution"
    impression = re.split(r"impression\s*:", truth.get("report", ""), flags=re.IGNORECASE)[-1].strip()
    if truth.get("renderer") == "drr":
        return f"Rendered from a real chest CT, synthetic findings — {impression or name}"
    return f"Synthetic phantom — {impression or name}"


# ---------------------------------------------------------------- per-sentence verdicts
def report_sentences(text: str) -> list[str]:
    return [text[a:b].strip() for a, b in split_sentences(text or "") if text[a:b].strip()]


def verdict_rows(final: str, edited: str) -> list[list]:
    """One table row per model sentence, prefilled from the reviewer's edit: [sentence, delete?, edited text].

    Kept → (False, ""), i.e. accept; changed → (False, new text), i.e. edit; gone → (True, ""), i.e. reject. The
    verdict is never typed: it follows from the Delete tick box and the edited text (`verdicts_from_rows`)."""
    old, new = report_sentences(final), report_sentences(edited)
    rows: list[list] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        for k, sentence in enumerate(old[i1:i2]):
            if op == "equal":
                rows.append([sentence, False, ""])
            elif op == "delete":
                rows.append([sentence, True, ""])
            else:  # replace: pair sentences in order; extra new sentences go with the last old one
                repl = new[j1 + k:j1 + k + 1] if k < i2 - i1 - 1 else new[j1 + k:j2]
                rows.append([sentence, False, " ".join(repl)] if repl else [sentence, True, ""])
    return rows


def sentence_edits(final: str, edited: str) -> list[dict]:
    """Every change the edit makes, sentence by sentence, in report order: {change, sentence, edited_text} with
    change 'edit' (a model sentence rewritten), 'reject' (deleted) or 'add' (a new sentence, e.g. an omission
    fixed). The same pairing as `verdict_rows`, plus the added sentences those rows have no place for."""
    old, new = report_sentences(final), report_sentences(edited)
    out: list[dict] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if op == "insert":
            out += [{"change": "add", "sentence": "", "edited_text": s} for s in new[j1:j2]]
            continue
        for k, sentence in enumerate(old[i1:i2]):
            if op == "delete":
                out.append({"change": "reject", "sentence": sentence, "edited_text": ""})
            elif op == "replace":
                repl = new[j1 + k:j1 + k + 1] if k < i2 - i1 - 1 else new[j1 + k:j2]
                out.append({"change": "edit", "sentence": sentence, "edited_text": " ".join(repl)} if repl else
                           {"change": "reject", "sentence": sentence, "edited_text": ""})
    return out


def edit_key(edit: dict) -> str:
    """What identifies one edit between the page and the server (the reason the reader gave is keyed by it)."""
    return f"{edit['change']}\x1f{edit['sentence']}\x1f{edit['edited_text']}"


def edit_label(n: int, edit: dict, cap: int = 90) -> str:
    """A short line naming one edit for the reader: 'Edit 2: “old” → “new”'."""
    def q(text: str) -> str:
        return "“" + (text if len(text) <= cap else text[:cap - 1] + "…") + "”"

    what = {"edit": lambda e: f"{q(e['sentence'])} → {q(e['edited_text'])}",
            "reject": lambda e: f"deleted {q(e['sentence'])}",
            "add": lambda e: f"added {q(e['edited_text'])}"}[edit["change"]](edit)
    return f"Edit {n}: {what}"


_VERDICT_ALIASES = {"a": "accept", "ok": "accept", "": "accept", "e": "edit", "r": "reject", "x": "reject"}
_TICKED = {"true": True, "false": False, "1": True, "0": False}


def _tick(value: Any) -> bool | None:
    """The Delete cell as a bool (gradio may hand a tick box over as a bool or as 'true' / 'false'); None if the
    cell is a verdict word instead (API callers may still send accept / edit / reject)."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":  # numpy bools from a pandas frame
        return bool(value)
    if value is None:
        return False
    return _TICKED.get(str(value).strip().lower())


def verdicts_from_rows(rows: Sequence[Sequence[Any]]) -> list[dict]:
    """Feedback `sentence_verdicts` from the table; ValueError naming the row and the fix.

    A row is [sentence, delete?, edited text]: ticked → reject, edited text → edit, neither → accept (both is
    refused). An API caller may send a verdict word in the second cell instead; it must be accept, edit or reject."""
    out = []
    for n, row in enumerate(rows, 1):
        sentence, verdict, edited = (list(row) + ["", "", ""])[:3]
        sentence, edited = str(sentence or "").strip(), str(edited or "").strip()
        if not sentence:
            continue
        ticked = _tick(verdict)
        if ticked is not None:
            if ticked and edited:
                raise ValueError(f"sentence {n}: tick “Delete” or write the edited text, not both")
            word = "reject" if ticked else "edit" if edited and _norm(edited) != _norm(sentence) else "accept"
        else:
            word = str(verdict).strip().lower()
            word = _VERDICT_ALIASES.get(word, word)
            if word not in ("accept", "edit", "reject"):
                raise ValueError(f"sentence {n}: verdict {str(verdict)[:20]!r} is not accept, edit or reject")
            if word == "edit" and not edited:
                raise ValueError(f"sentence {n}: 'edit' needs the edited text (or use reject to delete it)")
        out.append({"sentence": sentence, "verdict": word, **({"edited_text": edited} if word == "edit" else {})})
    return out


def _norm(text: str) -> str:
    return " ".join((text or "").split())


def reviewed_report(final: str, edited: str, table: Sequence[dict]) -> tuple[str, list[dict]]:
    """(the reviewer's report, its per-sentence verdicts), computed on the server so they never contradict.

    The edited text is authoritative whenever it differs from the model's report, however it was entered
    (typed, pasted, sent through the API): the verdicts are recomputed from it and the table's are ignored.
    With the text unchanged, the table's verdicts (edit / reject typed there) are applied to the report."""
    edited = edited or ""
    if edited.strip() and _norm(edited) != _norm(final):
        correction = edited
    elif any(v["verdict"] != "accept" for v in table):
        from medr2.feedback.store import apply_verdicts

        correction = apply_verdicts(final, list(table))
    else:
        correction = edited if edited.strip() else final
    return correction, verdicts_from_rows(verdict_rows(final, correction))


def tag_label(tag: str) -> str:
    """An error tag as reviewers read it: 'wrong_severity' -> 'wrong severity'."""
    return tag.replace("_", " ")
