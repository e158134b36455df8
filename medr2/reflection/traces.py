"""Training rows whose reflection looks again: phantom ground truth -> a chat with the film, the draft, a magnified
crop per look (with the look heads' reading of it) and the reflection items, then the report.

The crops and the heads' words (their whole-film reading of the looked-at region) are computed exactly as the
pipeline computes them at inference, so the
model learns to trust the heads as much as they deserve (their false alarms and misses are in the traces too). Which
regions are looked at follows the pipeline's rule: every draft finding, the region of a finding the draft missed, and
in a share of studies one region the draft calls normal — the one the heads flag most, when they flag one — so a look
does not mean a finding.

With a model's own drafts of the training films (`read_drafts`: a `medr2 evaluate` run on them), each trace is built
on that draft instead of an injected error, and its looks are the ones the pipeline proposes for it
(`look_row_on_draft`): draft errors, evidence and looks then come together as they do at inference.
With `corrections_need_evidence` a look corrects only what its words show (`shown_by_words`): the model is taught
the corrections a reader of the evidence line can make, not those only the phantom's truth knows.

Hands on: `look_rows(n, seed, ...)` -> rows for TRL's SFTTrainer (`messages` + `images`, loss on assistant turns).
"""
from __future__ import annotations

import random

import numpy as np
from PIL import Image

from medr2.reflection.heads import OBSERVATIONS, LookHeads, region_max, to_input
from medr2.reflection.looks import evidence_text, evidence_words, look_conversation, propose_looks, split_at_looks, stated_here
from medr2.reflection.regions import LOOK_REGIONS, crop_region, regions_for
from medr2.report.schema import section_body


def _study(args):
    from medr2.phantom.generator import generate_study

    seed, films = args
    return generate_study(seed, films)


def _normal_look(study, film_probs: np.ndarray | None, heads: LookHeads | None, rng: random.Random) -> str:
    """A region with no true finding: the one the heads flag most strongly, else a random one."""
    busy = {r for f in study.findings for r in regions_for(f.observation, [f.side or ""], [f.zone or ""])}
    free = [r for r in LOOK_REGIONS if r not in busy]
    if not free:
        return ""
    if film_probs is not None and heads is not None:
        strength = [(float((region_max(film_probs, r) / heads.thresholds)[:-1].max()), r) for r in free]
        best = max(strength)
        if best[0] >= 1.0:
            return best[1]
    return rng.choice(free)


def look_row(study, heads: LookHeads | None, tower, trace_config, normal_look_rate: float, max_looks: int,
             evidence_names_draft: bool = False) -> dict:
    from medr2.report.look_traces import build_look_trace

    rng = random.Random(f"normal-look:{trace_config.seed}:{study.study_id}")
    film_probs = heads.read(tower, [study.image])[0] if heads is not None else None
    normal = _normal_look(study, film_probs, heads, rng) if rng.random() < normal_look_rate else ""
    output, error_kind = build_look_trace(study, trace_config, normal_look=normal or None, max_looks=max_looks)
    looks = [item.look for item in output.reflection if item.look]
    return _row(study, output, looks, film_probs, heads, tower, context_draft=error_kind is not None,
                names_draft=evidence_names_draft)


def look_row_on_draft(study, draft_text: str, heads: LookHeads | None, tower, max_looks: int,
                      evidence_names_draft: bool = False, corrections_need_evidence: bool = False) -> tuple[dict, dict[str, int]]:
    """The row of `study` whose draft is a model's own (`draft_text`, its `<draft>` section) and whose looks are the
    ones the pipeline proposes for it (`propose_looks`, the heads' reading of this film), with the trace's counts of
    draft errors and of those its looks correct (`build_look_trace_on_draft`). `corrections_need_evidence`: a look
    corrects only what its evidence line shows (`shown_by_words`)."""
    from medr2.report.look_traces import build_look_trace_on_draft, draft_from_text

    film_probs = heads.read(tower, [study.image])[0] if heads is not None else None
    draft = draft_from_text(study, draft_text)
    thresholds = heads.thresholds if heads is not None else None
    looks = propose_looks(draft.report.text, film_probs, thresholds, OBSERVATIONS, max_looks)
    readings = {r: heads.region_reading(tower, study.image, film_probs, r) for r in looks} if heads is not None else {}
    shown = None
    if corrections_need_evidence:
        named = draft.report.text if evidence_names_draft else ""
        shown = {r: shown_by_words(*readings[r], stated_here(named, r) if named else ()) if r in readings else (set(), set())
                 for r in looks}
    output, counts = build_look_trace_on_draft(study, draft, looks, shown=shown)
    row = _row(study, output, looks, film_probs, heads, tower, context_draft=bool(draft.errors),
               names_draft=evidence_names_draft, readings=readings)
    return row, counts


def shown_by_words(region_probs: np.ndarray, thresholds: np.ndarray, stated) -> tuple[set[str], set[str]]:
    """What a look's evidence line shows a reader of its words: (observations it calls likely — a missed one may be
    added there; observations it names as not seen here — a stated one may be removed or moved from there). "Possible"
    shows neither: on the model's own drafts, adding at half the threshold breaks as many cells as it fixes
    (research/results/look_signal_probe_p16_drr_own.json)."""
    likely, _, unseen = evidence_words(region_probs, thresholds, OBSERVATIONS, stated)
    return set(likely), set(unseen)


def _row(study, output, looks: list[str], film_probs, heads: LookHeads | None, tower, context_draft: bool,
         names_draft: bool = False, readings: dict | None = None) -> dict:
    """The chat of a trace with looks: a crop and the heads' words per look (`names_draft`: with the draft's findings
    there that the heads do not see, as the pipeline words them for such a model); a wrong draft is context only.
    `readings`: the heads' reading of each looked-at region when already computed."""
    from medr2.modeling.model import build_chat
    from medr2.report.schema import render
    from medr2.report.traces import MEDR2_PROMPT

    crops = [crop_region(study.image, r) for r in looks]
    if film_probs is not None:
        readings = readings or {}
        draft = output.draft.text if names_draft and output.draft is not None else ""
        evidences = [evidence_text(r, *(readings.get(r) or heads.region_reading(tower, study.image, film_probs, r)),
                                   OBSERVATIONS, stated_here(draft, r) if draft else ()) for r in looks]
    else:
        evidences = [evidence_text(r) for r in looks]
    messages = look_conversation(build_chat(MEDR2_PROMPT), split_at_looks(render(output)), evidences)
    if context_draft:
        # the draft carries an error: context for the reflection, no loss (the model must not learn to write it);
        # every message gets the key so the rows share one schema
        first = next(m for m in messages if m["role"] == "assistant")
        first["context_only"] = True
    for message in messages:
        message.setdefault("context_only", False)
    # Stored at the model's input size: the processor would resize them to exactly this anyway.
    images = [Image.fromarray(to_input(im)) for im in (study.image, *crops)]
    return {"messages": messages, "images": images}


def read_drafts(predictions: str, n: int, seed: int) -> dict[str, str]:
    """study id -> the `<draft>` section a model wrote for it, from a `medr2 evaluate` folder or its
    `predictions.jsonl`; ValueError (one line) unless every study of the set (`n`, `seed`) has a draft."""
    import json
    from pathlib import Path

    from medr2.phantom.generator import study_seeds

    path = Path(predictions)
    path = path / "predictions.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise ValueError(f"look_drafts: no predictions file at {path} (a `medr2 evaluate` output folder)")
    drafts = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        draft = section_body(row.get("text") or "", "draft")
        if draft is not None:
            drafts[row["id"]] = draft
    wanted = {f"{prefix}-{s}" for s in study_seeds(n, seed) for prefix in ("phantom", "drr")}
    found = len(wanted & drafts.keys())
    if found < n:
        raise ValueError(f"look_drafts: {path} has drafts for {found} of the {n} training studies (seed {seed}): "
                         f"evaluate the parent with --seed {seed} --n {n} and the training films' renderer and size")
    return drafts


def look_rows(n: int, seed: int, heads: LookHeads | None, tower, trace_config, films=None,
              normal_look_rate: float = 0.5, max_looks: int = 4, workers: int = 2,
              drafts: dict[str, str] | None = None, evidence_names_draft: bool = False,
              corrections_need_evidence: bool = False) -> list[tuple[dict, object, int]]:
    """(row, study, corrections) for `n` phantom studies of `seed` drawn with `films` (a `PhantomConfig`: renderer and size; default
    drawn films at 512 px, whose detail the crops magnify). The study and the number of draft errors the trace's
reflection corrects are kept for oversampling decisions. With
    `drafts` (`read_drafts`) each trace is built on the model's own draft of the study (`look_row_on_draft`)
    instead of an injected error."""
    import logging

    from tqdm import tqdm

    from medr2.phantom.generator import PhantomConfig, map_in_workers, study_seeds

    films = films or PhantomConfig(size=512)
    out, totals = [], {"errors": 0, "corrected": 0, "studies_with_errors": 0}
    jobs = [(s, films) for s in study_seeds(n, seed)]
    for study in tqdm(map_in_workers(_study, jobs, workers), total=n, desc="look traces", mininterval=10):
        if drafts is None:
            row = look_row(study, heads, tower, trace_config, normal_look_rate, max_looks, evidence_names_draft)
            injected = any(m["context_only"] for m in row["messages"])  # the draft holds an error its reflection fixes
            out.append((row, study, int(injected)))
            continue
        if study.study_id not in drafts:
            raise ValueError(f"look_drafts: no draft for study {study.study_id} (drafts of other films?)")
        row, counts = look_row_on_draft(study, drafts[study.study_id], heads, tower, max_looks, evidence_names_draft,
                                        corrections_need_evidence)
        totals["errors"] += counts["errors"]
        totals["corrected"] += counts["corrected"]
        totals["studies_with_errors"] += counts["errors"] > 0
        out.append((row, study, counts["corrected"]))
    if drafts is not None:
        logging.getLogger(__name__).info("own-draft look traces: %d studies, %d with draft errors, %d errors, %d of them "
                                         "corrected by a proposed look", n, totals["studies_with_errors"],
                                         totals["errors"], totals["corrected"])
    return out
