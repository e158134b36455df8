"""Training rows whose reflection looks again: phantom ground truth -> a chat with the film, the draft, a magnified
crop per look (with the look heads' reading of it) and the reflection items, then the report.

The crops and the heads' words (their whole-film reading of the looked-at region) are computed exactly as the
pipeline computes them at inference, so the
model learns to trust the heads as much as they deserve (their false alarms and misses are in the traces too). Which
regions are looked at follows the pipeline's rule: every draft finding, the region of a finding the draft missed, and
in a share of studies one region the draft calls normal — the one the heads flag most, when they flag one — so a look
does not mean a finding.

Hands on: `look_rows(n, seed, ...)` -> rows for TRL's SFTTrainer (`messages` + `images`, loss on assistant turns).
"""
from __future__ import annotations

import random

import numpy as np
from PIL import Image

from medr2.reflection.heads import OBSERVATIONS, LookHeads, region_max, to_input
from medr2.reflection.looks import evidence_text, look_conversation, split_at_looks
from medr2.reflection.regions import LOOK_REGIONS, crop_region, regions_for


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


def look_row(study, heads: LookHeads | None, tower, trace_config, normal_look_rate: float, max_looks: int) -> dict:
    from medr2.modeling.model import build_chat
    from medr2.report.schema import render
    from medr2.report.traces import MEDR2_PROMPT, build_look_trace

    rng = random.Random(f"normal-look:{trace_config.seed}:{study.study_id}")
    film_probs = heads.read(tower, [study.image])[0] if heads is not None else None
    normal = _normal_look(study, film_probs, heads, rng) if rng.random() < normal_look_rate else ""
    output, error_kind = build_look_trace(study, trace_config, normal_look=normal or None, max_looks=max_looks)
    looks = [item.look for item in output.reflection if item.look]
    crops = [crop_region(study.image, r) for r in looks]
    if film_probs is not None:
        evidences = [evidence_text(r, *heads.region_reading(tower, study.image, film_probs, r), OBSERVATIONS) for r in looks]
    else:
        evidences = [evidence_text(r) for r in looks]
    turns = split_at_looks(render(output))
    messages = look_conversation(build_chat(MEDR2_PROMPT), turns, evidences)
    if error_kind is not None:
        # the draft carries the injected error: context for the reflection, no loss (the model must not learn to
        # write it); every message gets the key so the rows share one schema
        first = next(m for m in messages if m["role"] == "assistant")
        first["context_only"] = True
    for message in messages:
        message.setdefault("context_only", False)
    # Stored at the model's input size: the processor would resize them to exactly this anyway.
    images = [Image.fromarray(to_input(im)) for im in (study.image, *crops)]
    return {"messages": messages, "images": images}


def look_rows(n: int, seed: int, heads: LookHeads | None, tower, trace_config, films=None,
              normal_look_rate: float = 0.5, max_looks: int = 4, workers: int = 2) -> list[tuple[dict, object]]:
    """(row, study) for `n` phantom studies of `seed` drawn with `films` (a `PhantomConfig`: renderer and size; default
    drawn films at 512 px, whose detail the crops magnify). The study is kept for oversampling decisions."""
    from tqdm import tqdm

    from medr2.phantom.generator import PhantomConfig, map_in_workers, study_seeds

    films = films or PhantomConfig(size=512)
    out = []
    jobs = [(s, films) for s in study_seeds(n, seed)]
    for study in tqdm(map_in_workers(_study, jobs, workers), total=n, desc="look traces", mininterval=10):
        out.append((look_row(study, heads, tower, trace_config, normal_look_rate, max_looks), study))
    return out
