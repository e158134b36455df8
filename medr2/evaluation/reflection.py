"""Does the reflection improve the draft? Draft vs final against the reference, per study and per finding.

- the paired difference of example-based CE-F1 (final - draft) with a bootstrap 95 % interval over studies;
- the fix / break table: every (study, observation) cell where the draft is wrong — a missed finding, a
  hallucinated one, a wrong side or a wrong zone (on a true positive) — and whether the final report fixes it; every
  cell where the draft is right and whether the final report breaks it; the same at study level (a draft is right
  when all its cells are);
- the reflection's action counts, looks per study and the draft -> final consistency rate.

A hedged finding counts as found (the detection view); sides and zones are read by the evaluation's location reader.
Hands on: `reflection_summary(results, references)` for `medr2 evaluate` and the benchmarks.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from medr2.evaluation.metrics import example_prf


def _cells(report: str, reference: str, ref_details: dict, labels) -> dict[str, bool]:
    """(kind -> right?) cells of one report against its reference: presence per observation, side and zone per
    true positive."""
    from medr2.evaluation.evaluate import stated_details
    from medr2.labeler.findings import label_report

    ref_labels = label_report(reference)
    details = stated_details(report)
    cells = {}
    for obs, ref_value in ref_labels.items():
        if obs == "No Finding":
            continue
        ref_pos, pos = ref_value in (1, -1), labels.get(obs) in (1, -1)
        cells[f"presence:{obs}"] = (pos == ref_pos, "missed" if ref_pos else "hallucinated")
        if ref_pos and pos and obs in ref_details:
            ref_sides, ref_zones, _ = ref_details[obs]
            sides, zones, _ = details.get(obs, (frozenset(), frozenset(), frozenset()))
            if ref_sides:
                cells[f"side:{obs}"] = (sides == ref_sides, "wrong side")
            if ref_zones:
                cells[f"zone:{obs}"] = (zones == ref_zones, "wrong zone")
    return cells


def paired_bootstrap(diff: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
    return {"mean": float(diff.mean()), "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]}


def reflection_summary(results, references: list[str]) -> dict:
    from medr2.evaluation.evaluate import stated_details
    from medr2.labeler.findings import label_report

    f1_draft, f1_final = [], []
    wrong_cells, fixed_cells = Counter(), Counter()
    right_cells = broken_cells = 0
    studies = {"wrong_drafts": 0, "fixed": 0, "right_drafts": 0, "broken": 0}
    actions, looks, consistent, checked = Counter(), [], 0, 0
    for result, reference in zip(results, references):
        out = result.output
        if out.draft is None or out.report is None:
            continue
        ref = label_report(reference)
        f1_draft.append(example_prf(result.draft_labels, ref, uncertain_as_positive=True)[2])
        f1_final.append(example_prf(result.final_labels, ref, uncertain_as_positive=True)[2])
        ref_details = stated_details(reference)
        draft_cells = _cells(out.draft.text, reference, ref_details, result.draft_labels)
        final_cells = _cells(out.report.text, reference, ref_details, result.final_labels)
        draft_wrong = False
        for key, (right, kind) in draft_cells.items():
            final_right = final_cells.get(key, (False, kind))[0]
            if right:
                if key not in final_cells:  # a side / zone cell of a finding the final dropped: its presence cell counts it
                    continue
                right_cells += 1
                broken_cells += not final_right
            else:
                draft_wrong = True
                wrong_cells[kind] += 1
                fixed_cells[kind] += final_right
        final_wrong = any(not final_cells.get(k, (False, ""))[0] for k in draft_cells)
        if draft_wrong:
            studies["wrong_drafts"] += 1
            studies["fixed"] += not final_wrong
        else:
            studies["right_drafts"] += 1
            studies["broken"] += final_wrong
        for item in out.reflection:
            actions[item.action or "free text"] += 1
        looks.append(len(getattr(result, "looks", []) or []))
        if result.consistency is not None:
            checked += 1
            consistent += result.consistency.holds
    diff = np.array(f1_final) - np.array(f1_draft)
    return {
        "n": len(f1_draft),
        "draft_example_f1": float(np.mean(f1_draft)) if f1_draft else None,
        "final_example_f1": float(np.mean(f1_final)) if f1_final else None,
        "final_minus_draft": paired_bootstrap(diff) if len(diff) else None,
        "cells": {"wrong": dict(wrong_cells), "fixed": dict(fixed_cells), "right": right_cells, "broken": broken_cells,
                  "fixed_share": sum(fixed_cells.values()) / max(sum(wrong_cells.values()), 1),
                  "broken_share": broken_cells / max(right_cells, 1)},
        "studies": {**studies, "fixed_share": studies["fixed"] / max(studies["wrong_drafts"], 1),
                    "broken_share": studies["broken"] / max(studies["right_drafts"], 1)},
        "actions": dict(actions),
        "looks_per_study": float(np.mean(looks)) if looks else 0.0,
        "consistency": {"checked": checked, "holds": consistent, "share": consistent / max(checked, 1)},
    }


def format_reflection(summary: dict) -> list[str]:
    r = summary
    if not r.get("n"):
        return []
    d = r["final_minus_draft"]
    lines = [f"reflection: draft example F1 {r['draft_example_f1']:.3f} -> final {r['final_example_f1']:.3f} "
             f"(final - draft {d['mean']:+.4f}, 95 % CI {d['ci95'][0]:+.4f} .. {d['ci95'][1]:+.4f}); "
             f"{r['looks_per_study']:.2f} looks per study; consistent in {r['consistency']['holds']} of {r['consistency']['checked']}",
             "  actions: " + ", ".join(f"{k} {v}" for k, v in sorted(r["actions"].items())),
             f"  wrong draft cells fixed: {sum(r['cells']['fixed'].values())} of {sum(r['cells']['wrong'].values())} "
             f"({r['cells']['fixed_share']:.1%}); right cells broken: {r['cells']['broken']} of {r['cells']['right']} "
             f"({r['cells']['broken_share']:.2%})",
             "  by kind: " + ", ".join(f"{k} {r['cells']['fixed'].get(k, 0)}/{v}" for k, v in sorted(r["cells"]["wrong"].items())),
             f"  studies: {r['studies']['fixed']} of {r['studies']['wrong_drafts']} wrong drafts fixed, "
             f"{r['studies']['broken']} of {r['studies']['right_drafts']} right drafts broken"]
    return lines
