"""Is model B really better than model A? Paired bootstrap over studies of two `medr2 evaluate` runs.

The ablation rows differ by 0.01-0.03 in macro-F1, and rare findings have 20-50 positives in a 300-500-study
set, so a difference can flip sign between validation and test (session 6: Med-R2 phase 5 vs phase 4 macro-F1
hedged = found +0.011 on validation, -0.024 on test). This script resamples the studies of one evaluation set
(the same resample for both models: a paired bootstrap) and reports, for example-based CE-F1 and macro-F1
over the 14 observations (hedged = found), the difference B - A with its 95 % interval and the share of
resamples where B wins.

  python benchmarks/compare_models.py runs/eval_v5/sft_medr2_v5 runs/eval_v5/sft_medr2_v6
-> table on stdout, JSON in benchmarks/results/compare_models.json (`--out` to change)
Each folder holds `predictions.jsonl` and `eval.json` from `medr2 evaluate`; references are regenerated from
the phantom seed the evaluation used (or read from its `--data` folder), so both runs must share the set.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from medr2.evaluation import metrics
from medr2.labeler.findings import label_reports
from medr2.report.schema import parse

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "compare_models.json"


def final_reports(run: Path) -> tuple[list[str], list[str]]:
    """(study ids, final report texts) of one evaluation run, in its order."""
    ids, reports = [], []
    for line in (run / "predictions.jsonl").read_text().splitlines():
        row = json.loads(line)
        report = parse(row["text"]).output.report
        ids.append(row["id"])
        reports.append(report.text if report else "")
    return ids, reports


def reference_reports(config: dict) -> tuple[list[str], list[str]]:
    """(ids, reference reports) of the set an evaluation ran on, from its saved config."""
    from medr2.evaluation.evaluate import EvalConfig, load_eval_set

    known = set(EvalConfig.__dataclass_fields__)
    if not config.get("data") and "hedging" not in config:
        config = {**config, "hedging": "random"}  # evaluations before generator v8 scored v7's randomly hedged labels
    if not config.get("data") and "opacity_placement" not in config:
        config = {**config, "opacity_placement": "free"}  # evaluations before generator v9 ran on v8's films
    ids, _, refs = load_eval_set(EvalConfig(**{k: v for k, v in config.items() if k in known}))
    return ids, refs


def label_arrays(reports: list[str]) -> np.ndarray:
    """[N, 14] hedged-as-found labels."""
    return metrics.label_matrix(label_reports(reports), uncertain_as_positive=True)


def paired_bootstrap(pred_a: np.ndarray, pred_b: np.ndarray, ref: np.ndarray, n_boot: int = 2000,
                     seed: int = 0) -> dict[str, dict[str, float]]:
    """Difference B - A of example-based and macro F1: point estimate, 95 % percentile interval, P(B > A)."""
    rng = np.random.default_rng(seed)
    n = len(ref)
    example_f1, macro_f1 = metrics.example_f1_matrix, metrics.macro_f1_matrix
    ex_a, ex_b = example_f1(pred_a, ref), example_f1(pred_b, ref)
    diffs = {"example_f1": [], "macro_f1": []}
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        diffs["example_f1"].append(ex_b[idx].mean() - ex_a[idx].mean())
        diffs["macro_f1"].append(macro_f1(pred_b[idx], ref[idx]) - macro_f1(pred_a[idx], ref[idx]))
    point = {"example_f1": float(ex_b.mean() - ex_a.mean()),
             "macro_f1": macro_f1(pred_b, ref) - macro_f1(pred_a, ref)}
    out = {}
    for name, values in diffs.items():
        v = np.asarray(values)
        out[name] = {"difference": point[name], "ci95_low": float(np.percentile(v, 2.5)),
                     "ci95_high": float(np.percentile(v, 97.5)), "p_b_better": float((v > 0).mean())}
    return out


def same_evaluation_set(config_a: dict, config_b: dict) -> bool:
    """Were two `medr2 evaluate` runs (their eval.json "config") made on the same studies? A phantom seed draws
    different films under another generator version; runs from before session 8 do not record the version (they
    are all v5 films), so a missing version matches only a missing one; from v9 `opacity_placement` picks the films."""
    keys = ("data", "split", "n", "seed", "phantom_generator_version", "opacity_placement")
    return all(config_a.get(k) == config_b.get(k) for k in keys)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", type=Path, help="evaluation folder of model A (the reference)")
    parser.add_argument("run_b", type=Path, help="evaluation folder of model B")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    configs = [json.loads((run / "eval.json").read_text())["config"] for run in (args.run_a, args.run_b)]
    if not same_evaluation_set(*configs):
        raise SystemExit("the two runs were evaluated on different sets: compare runs of the same --data/--seed/--n "
                         "and phantom generator version")
    (ids_a, reports_a), (ids_b, reports_b) = final_reports(args.run_a), final_reports(args.run_b)
    ref_ids, refs = reference_reports(configs[0])
    if not (ids_a == ids_b == ref_ids[:len(ids_a)]) or len(ids_a) != len(ref_ids):
        raise SystemExit("study ids of the runs and of the regenerated set differ")
    ref = label_arrays(refs)
    result = paired_bootstrap(label_arrays(reports_a), label_arrays(reports_b), ref, args.n_boot)
    print(f"B = {args.run_b}  vs  A = {args.run_a}  ({len(ref)} studies, {args.n_boot} paired resamples, hedged = found)")
    print(f"{'metric':12s} {'B - A':>8s} {'95 % interval':>18s} {'P(B > A)':>9s}")
    for name, r in result.items():
        print(f"{name:12s} {r['difference']:+8.3f} [{r['ci95_low']:+.3f}, {r['ci95_high']:+.3f}] {r['p_b_better']:9.2f}")
    payload = {"a": str(args.run_a), "b": str(args.run_b), "set": {k: configs[0].get(k) for k in ("data", "split", "n", "seed")},
               "n_boot": args.n_boot, **result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(args.out.read_text()) if args.out.is_file() else {}
    existing[f"{args.run_b} vs {args.run_a}"] = payload
    args.out.write_text(json.dumps(existing, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
