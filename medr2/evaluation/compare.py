"""Is model B really better than model A? A paired bootstrap over the studies of two `medr2 evaluate` runs.

Differences between demo-model variants are often 0.01-0.03 in macro-F1, and rare findings have 20-50 positives in
a 300-500-study set, so a difference can flip sign between validation and test. This resamples the studies of
one evaluation set (the same resample for both models: a paired bootstrap) and reports, for example-based CE-F1
and macro-F1 over the 14 observations (hedged = found), the difference B - A with its 95 % interval and the share
of resamples where B wins.

Each folder holds `predictions.jsonl` and `eval.json` from `medr2 evaluate`; both runs must share the set. The
references are those the evaluation stored beside each prediction; for an older evaluation that did not store them
they are regenerated from its phantom seed (then the set must have been drawn by the current film generator) or read
from its `--dataset_dir` folder.

Run: `medr2 compare runs/eval/A runs/eval/B [--n_boot 2000] [--out FILE.json | --out -]`
Hands on: a table on stdout and the result, keyed "B vs A", added to a JSON file (default `compare.json` beside
the folder of B; `--out -` prints the JSON to stdout instead).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medr2.evaluation import metrics

SET_KEYS = ("dataset_dir", "split", "n", "seed", "phantom_generator_version")
# Film options an eval.json may record from older evaluations; the current films use these values.
CURRENT_FILMS = {"hedging": "visibility", "opacity_placement": "clear"}


@dataclass
class CompareConfig:
    """`medr2 compare` options (flags or a `--config` YAML file)."""

    run_a: str | None = field(default=None, metadata={"help": "evaluation folder of model A (the reference)"})
    run_b: str | None = field(default=None, metadata={"help": "evaluation folder of model B"})
    n_boot: int = field(default=2000, metadata={"help": "paired bootstrap resamples"})
    seed: int = field(default=0, metadata={"help": "bootstrap seed"})
    out: str | None = field(default=None, metadata={"help": "JSON file the result is added to (default: compare.json beside RUN_B's folder; '-' = stdout)"})


def _dataset_dir(config: dict) -> str | None:
    """The dataset folder of an eval.json config; older files call it `data_dir` or `data`."""
    return config.get("dataset_dir", config.get("data_dir", config.get("data")))


def _set_of(config: dict) -> dict:
    """The keys that name an evaluation set."""
    config = {**config, "dataset_dir": _dataset_dir(config)}
    return {k: config.get(k) for k in SET_KEYS}


def same_evaluation_set(config_a: dict, config_b: dict) -> bool:
    """Were two `medr2 evaluate` runs (their eval.json "config") made on the same studies? A phantom seed draws
    different films under another generator version, so the version must match too."""
    return _set_of(config_a) == _set_of(config_b)


def check_reproducible(config: dict) -> None:
    """Raise ValueError unless the references of this evaluation can be regenerated: a dataset on disk, or
    phantoms of the current film generator with the current film options."""
    if _dataset_dir(config):
        return
    from medr2.phantom.generator import GENERATOR_VERSION

    version = config.get("phantom_generator_version")
    old_options = {k: config[k] for k, v in CURRENT_FILMS.items() if k in config and config[k] != v}
    if version != GENERATOR_VERSION or old_options:
        raise ValueError(f"the evaluation ran on phantom generator v{version} films"
                         f"{' with ' + str(old_options) if old_options else ''}; the current generator is "
                         f"v{GENERATOR_VERSION}: re-run `medr2 evaluate` on both models")


def read_predictions(run: Path) -> list[dict]:
    """The rows of one evaluation run's `predictions.jsonl`, in its order."""
    return [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]


def stored_references(rows: list[dict]) -> tuple[list[str], list[str]] | None:
    """(study ids, reference reports) as `medr2 evaluate` stored them in its prediction rows; None for an older run
    that did not."""
    if not rows or any("reference" not in row for row in rows):
        return None
    return [row["id"] for row in rows], [row["reference"] for row in rows]


def final_reports(rows: list[dict]) -> tuple[list[str], list[str]]:
    """(study ids, final report texts) of one evaluation run's prediction rows, in its order."""
    from medr2.report.schema import parse

    reports = [parse(row["text"]).output.report for row in rows]
    return [row["id"] for row in rows], [report.text if report else "" for report in reports]


def reference_reports(config: dict) -> tuple[list[str], list[str]]:
    """(ids, reference reports) of the set an evaluation ran on, from its saved config."""
    from medr2.evaluation.evaluate import EvalConfig, load_eval_set

    check_reproducible(config)
    config = {**config, "dataset_dir": _dataset_dir(config)}
    known = set(EvalConfig.__dataclass_fields__)
    ids, _, refs = load_eval_set(EvalConfig(**{k: v for k, v in config.items() if k in known}))
    return ids, refs


def label_arrays(reports: list[str]) -> np.ndarray:
    """[N, 14] hedged-as-found labels."""
    from medr2.labeler.findings import label_reports

    return metrics.label_matrix(label_reports(reports), uncertain_as_positive=True)


def paired_bootstrap(pred_a: np.ndarray, pred_b: np.ndarray, ref: np.ndarray, n_boot: int = 2000,
                     seed: int = 0) -> dict[str, dict[str, float]]:
    """Difference B - A of example-based and macro F1: point estimate, 95 % percentile interval, P(B > A)."""
    rng = np.random.default_rng(seed)
    n = len(ref)
    example_f1, macro_f1 = metrics.example_f1_matrix, metrics.macro_f1_matrix
    ex_a, ex_b = example_f1(pred_a, ref), example_f1(pred_b, ref)
    diffs: dict[str, list[float]] = {"example_f1": [], "macro_f1": []}
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


def compare(run_a: str | Path, run_b: str | Path, n_boot: int = 2000, seed: int = 0) -> dict:
    """The paired bootstrap of two evaluation folders; raises ValueError when they cannot be compared."""
    run_a, run_b = Path(run_a), Path(run_b)
    configs = []
    for run in (run_a, run_b):
        if not (run / "eval.json").is_file() or not (run / "predictions.jsonl").is_file():
            raise ValueError(f"{run} is not a `medr2 evaluate` folder (eval.json and predictions.jsonl)")
        configs.append(json.loads((run / "eval.json").read_text())["config"])
    if not same_evaluation_set(*configs):
        raise ValueError("the two runs were evaluated on different sets: compare runs of the same "
                         "--dataset_dir/--split/--seed/--n and phantom generator version")
    rows_a, rows_b = read_predictions(run_a), read_predictions(run_b)
    (ids_a, reports_a), (ids_b, reports_b) = final_reports(rows_a), final_reports(rows_b)
    stored = [s for s in (stored_references(rows_a), stored_references(rows_b)) if s is not None]
    if len(stored) == 2 and stored[0] != stored[1]:
        raise ValueError("the two runs stored different references for the same set: they were drawn by different "
                         "film generators; re-run `medr2 evaluate` on both models")
    ref_ids, refs = stored[0] if stored else reference_reports(configs[0])
    if not ids_a == ids_b == ref_ids:
        raise ValueError("study ids of the runs and of the reference set differ")
    ref = label_arrays(refs)
    result = paired_bootstrap(label_arrays(reports_a), label_arrays(reports_b), ref, n_boot, seed)
    return {"a": str(run_a), "b": str(run_b), "set": _set_of(configs[0]), "n_boot": n_boot, **result}


def format_table(payload: dict) -> str:
    lines = [f"B = {payload['b']}  vs  A = {payload['a']}  ({payload['set']['n']} studies, {payload['n_boot']} paired "
             "resamples, hedged = found)",
             f"{'metric':12s} {'B - A':>8s} {'95 % interval':>18s} {'P(B > A)':>9s}"]
    for name in ("example_f1", "macro_f1"):
        r = payload[name]
        lines.append(f"{name:12s} {r['difference']:+8.3f} [{r['ci95_low']:+.3f}, {r['ci95_high']:+.3f}] {r['p_b_better']:9.2f}")
    return "\n".join(lines)


def write_result(payload: dict, out: Path) -> None:
    """Add the result to the JSON mapping in `out` under "B vs A" (a file may collect several comparisons)."""
    existing = json.loads(out.read_text()) if out.is_file() else {}
    existing[f"{payload['b']} vs {payload['a']}"] = payload
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(existing, indent=2) + "\n")


def cli_compare(argv: list[str]) -> int:
    from medr2.cli import UsageError, fail, parse_config

    prog = "medr2 compare"
    try:
        config = parse_config(prog, CompareConfig, argv, description=__doc__.splitlines()[0],
                              positionals=(("run_a", "evaluation folder of model A (the reference)"),
                                           ("run_b", "evaluation folder of model B")))
        if not (config.run_a and config.run_b):
            raise UsageError(f"two evaluation folders are needed: RUN_A RUN_B (see `{prog} --help`)")
        if config.n_boot < 1:
            raise UsageError(f"--n_boot must be >= 1, got {config.n_boot}")
        payload = compare(config.run_a, config.run_b, config.n_boot, config.seed)
    except (UsageError, ValueError, OSError, KeyError) as exc:
        return fail(prog, exc)
    if config.out == "-":
        print(json.dumps(payload, indent=2))
        return 0
    print(format_table(payload))
    out = Path(config.out) if config.out else Path(config.run_b).resolve().parent / "compare.json"
    try:
        write_result(payload, out)
    except (OSError, ValueError) as exc:
        return fail(prog, f"cannot write {out}: {exc}")
    print(f"wrote {out}", file=sys.stderr)
    return 0
