"""Can the reflection correct a draft? Hand the model a draft with a known error and read what it does next.

The embedded model's reflection nearly always keeps its own draft (draft and final CE-F1 agree to 0.001), though
20 % of its training traces teach a correction. Either it never learned to correct, or its own drafts rarely carry
an error it can see: its perception wrote the draft, and a reflection that re-reads the film with the same eyes
finds the same. This probe separates the two on held-out phantoms, with three answer starts per study:

- `error`: the training construction of a wrong draft (`medr2.report.traces.build_trace` with every draft wrong: a
  missed, hallucinated, wrong-side or wrong-severity finding; perception and reasoning follow the wrong draft,
  as in training), forced up to `</draft>`; the model writes the reflection and the report.
- `control`: the same studies' right traces up to `</draft>`: does the reflection leave a right draft alone?
- `own`: the model's own full trace, as `medr2 evaluate` runs it.

Each report is compared with the reference on what a reader states per observation (found or not, hedged =
found; side, lung zone and severity where both name it). Per start: how often the draft disagrees, how often the
reflection acts (anything but "kept"), how often the final report fixes every disagreement of its draft, and
how often it breaks what the draft had right. For `error` drafts it also asks: is a taught error fixed more often
where the model's own run got that observation right (so it can see it) than where it got it wrong?

  python benchmarks/reflection_probe.py [--model assets/model] [--n 400] [--seed 3]
-> table on stdout, JSON in benchmarks/results/reflection_probe.json
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STARTS = ("error", "control", "own")


def report_state(report: str) -> dict[tuple[str, str], object]:
    """What a report states per observation: found (positive or hedged), and side / zone / severity if found."""
    from medr2.evaluation.evaluate import stated_details
    from medr2.labeler.findings import label_report

    details = stated_details(report)
    state: dict[tuple[str, str], object] = {}
    for observation, value in label_report(report or "").items():
        found = value in (1, -1)
        state[(observation, "found")] = found
        if found:
            sides, zones, severity = details.get(observation, (frozenset(), frozenset(), frozenset()))
            state[(observation, "side")], state[(observation, "zone")], state[(observation, "severity")] = sides, zones, severity
    return state


def _disagree(ref: dict, gen: dict) -> set[tuple[str, str]]:
    out = set()
    for key, value in ref.items():
        if key[1] == "found":
            if value != gen.get(key, False):
                out.add(key)
        elif value and key in gen and gen[key] != value:
            out.add(key)
    return out


def disagreements(reference: str, report: str) -> set[tuple[str, str]]:
    """(observation, aspect) pairs where `report` states something other than `reference`.

    Found / not found counts everywhere; side, zone and severity only where both reports name the observation
    and the reference states one (as `medr2.evaluation.evaluate.location_scores` scores them)."""
    return _disagree(report_state(reference), report_state(report))


def score_study(reference: str, draft: str | None, final: str | None, reflection: list) -> dict:
    """One study's draft and final report against the reference, and whether the reflection acted."""
    ref = report_state(reference)  # read once for both comparisons
    wrong_draft = _disagree(ref, report_state(draft or ""))
    wrong_final = _disagree(ref, report_state(final or ""))
    return {"draft_wrong": sorted(map(list, wrong_draft)), "final_wrong": sorted(map(list, wrong_final)),
            "fixed": sorted(map(list, wrong_draft - wrong_final)), "broken": sorted(map(list, wrong_final - wrong_draft)),
            "acted": any(item.action != "kept" for item in reflection), "has_report": final is not None}


def summarize(rows: list[dict]) -> dict:
    """Rates over one start (or one error kind): how often the draft is wrong, the reflection acts, the final fixes."""
    n = len(rows)
    wrong = [r for r in rows if r["draft_wrong"]]
    right = [r for r in rows if not r["draft_wrong"]]

    def share(part: int, whole: int) -> float | None:
        return round(part / whole, 3) if whole else None

    return {
        "n": n,
        "draft_wrong": share(len(wrong), n),
        "acted": share(sum(r["acted"] for r in rows), n),
        "acted_when_draft_wrong": share(sum(r["acted"] for r in wrong), len(wrong)),
        "acted_when_draft_right": share(sum(r["acted"] for r in right), len(right)),
        "all_fixed_when_draft_wrong": share(sum(not (set(map(tuple, r["draft_wrong"])) & set(map(tuple, r["final_wrong"])))
                                                for r in wrong), len(wrong)),
        "broke_something": share(sum(bool(r["broken"]) for r in rows), n),
        "final_wrong": share(sum(bool(r["final_wrong"]) for r in rows), n),
        "no_report": share(sum(not r["has_report"] for r in rows), n),
    }


def seen_vs_unseen(error_rows: list[dict], own_rows: list[dict]) -> dict:
    """Fix rate of taught errors where the model's own run stated that observation right vs wrong."""
    counts = Counter()
    for taught, own in zip(error_rows, own_rows):
        own_wrong = set(map(tuple, own["final_wrong"]))
        fixed = set(map(tuple, taught["fixed"]))
        for key in map(tuple, taught["draft_wrong"]):
            group = "own_run_wrong" if key in own_wrong else "own_run_right"
            counts[group, "n"] += 1
            counts[group, "fixed"] += key in fixed
    return {group: {"n": counts[group, "n"], "fixed": counts[group, "fixed"],
                    "rate": round(counts[group, "fixed"] / counts[group, "n"], 3) if counts[group, "n"] else None}
            for group in ("own_run_right", "own_run_wrong")}


def forced_prefix(trace: str) -> str:
    """The answer start up to and including the draft (the model writes reflection and report from there)."""
    end = trace.index("</draft>") + len("</draft>\n")
    return trace[:end]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--seed", type=int, default=3, help="phantom seed (3 = the held-out test set)")
    parser.add_argument("--trace_seed", "--trace-seed", type=int, default=1234, help="seed of the taught errors (training used 0)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reflection_probe.json"))
    args = parser.parse_args()

    from PIL import Image
    from tqdm import tqdm

    from medr2.inference.pipeline import Pipeline, PipelineConfig, default_model
    from medr2.phantom.generator import generate_studies
    from medr2.report.schema import render
    from medr2.report.traces import TraceConfig, build_trace

    t0 = time.perf_counter()
    pipe = Pipeline(PipelineConfig(model=args.model or default_model(), threads=args.threads))
    studies = list(generate_studies(args.n, args.seed))
    images = [Image.fromarray(s.image) for s in studies]
    taught = [build_trace(s, TraceConfig(error_rate=1.0, seed=args.trace_seed)) for s in studies]
    prefixes = {"error": [forced_prefix(render(output)) for output, _ in taught],
                "control": [forced_prefix(render(build_trace(s, TraceConfig(error_rate=0.0))[0])) for s in studies],
                "own": None}
    rows: dict[str, list[dict]] = {}
    for start in tqdm(STARTS, desc="starts", unit="start"):
        results = []
        for i in tqdm(range(0, len(studies), 16), desc=start, unit="batch", leave=False):
            chunk_prefixes = prefixes[start][i:i + 16] if prefixes[start] is not None else None
            results += pipe.run_batch(images[i:i + 16], batch_size=16, prefixes=chunk_prefixes)
        rows[start] = []
        for study, result in zip(studies, results):
            out = result.output
            row = score_study(study.report, out.draft.text if out.draft else None,
                              out.report.text if out.report else None, out.reflection)
            row["id"] = study.study_id
            rows[start].append(row)
    for row, (_, kind) in zip(rows["error"], taught):
        row["error_kind"] = kind
    summary = {
        "model": pipe.provenance.model, "weights": pipe.provenance.weights_sha256[:12], "seed": args.seed,
        "n": args.n, "trace_seed": args.trace_seed, "minutes": round((time.perf_counter() - t0) / 60, 1),
        "starts": {start: summarize(rows[start]) for start in STARTS},
        "error_by_kind": {kind: summarize([r for r in rows["error"] if r["error_kind"] == kind])
                          for kind in sorted({r["error_kind"] for r in rows["error"]})},
        "taught_errors_fixed_by_own_run": seen_vs_unseen(rows["error"], rows["own"]),
        "rows": rows,
    }
    columns = ("n", "draft_wrong", "acted", "acted_when_draft_wrong", "acted_when_draft_right",
               "all_fixed_when_draft_wrong", "broke_something", "final_wrong")
    widths = [len(c) + 2 for c in columns]
    print(f"{'start':<24}" + "".join(f"{c:>{w}}" for c, w in zip(columns, widths)))
    table = {**summary["starts"], **{f"error: {k}": v for k, v in summary["error_by_kind"].items()}}
    for name, s in table.items():
        print(f"{name:<24}" + "".join(f"{'-' if s[c] is None else s[c]:>{w}}" for c, w in zip(columns, widths)))
    print("taught errors fixed, by whether the model's own run stated that observation right:",
          json.dumps(summary["taught_errors_fixed_by_own_run"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
