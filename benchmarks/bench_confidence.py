"""Per-finding confidence: which raw score, how well calibrated, at what cost (docs/confidence.md).

    python benchmarks/bench_confidence.py --model assets/model
    python benchmarks/bench_confidence.py --model assets/model --n_val 600 --n_test 500 --n_agree 60 --k 4

Stages (each cached under --work_dir, so an interrupted run resumes where it stopped):
1. validation phantoms (seed 2) and test phantoms (seed 3): greedy reports (batched), and for every finding
   the final report states (positive or uncertain) its raw token scores (`medr2.trust.confidence.token_scores`)
   and whether the observation is really on the film (the phantom's drawn findings, `study.findings`);
2. on the first --n_agree studies of each seed, k sampled reports per study: agreement = share stating it;
3. cost on 2 threads: median single-study time (Pipeline.run), the token pass, and k sampled reports.

The rule for choosing, fixed before measuring: a candidate (raw score x calibrator) must add at most 20 % of the
median study time; among those, the lowest Brier score on validation after calibration, cross-fitted (5 folds
by study, so no finding is scored by a calibrator that saw it); ties within 0.0005 go to the cheaper score,
then to Platt scaling (two parameters, smooth), then to the lower Brier score.
Low confidence (the sentences the app marks): a calibrated probability below 1 - 2 x the validation error
rate of stated findings, i.e. at least twice the average chance of being wrong (rounded to 0.01).
The winner is refitted on all validation findings and written to the model's confidence.json; the test
seed is scored once, with the uncalibrated raw score as the baseline. Prints a table; writes
benchmarks/results/confidence.json and docs/figures/reliability.png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medr2.trust import confidence as C  # noqa: E402

VAL_SEED, TEST_SEED = 2, 3
COST_LIMIT = 0.20  # added time as a share of the median study time
TIE = 0.0005
CALIBRATORS = ("isotonic", "platt")


# ------------------------------------------------------------------------------------------ collection
def _studies(seed: int, start: int, stop: int):
    from medr2.phantom.generator import generate_study, study_seeds

    return [generate_study(s) for s in study_seeds(stop, seed)[start:stop]]


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def collect_greedy(pipe, seed: int, n: int, path: Path, batch: int = 16) -> list[dict]:
    """One row per study: truth, final labels, raw token scores of each stated finding (appended, resumable)."""
    rows = _read(path)[:n]
    while len(rows) < n:
        start, stop = len(rows), min(n, len(rows) + batch)
        studies = _studies(seed, start, stop)
        results = pipe.run_batch([s.image for s in studies], batch_size=batch, keep_saliency_inputs=True)
        new = []
        for i, (s, r) in enumerate(zip(studies, results), start):
            scores = C.token_scores(pipe.model, pipe.processor, r)
            new.append({"i": i, "truth": sorted({f.observation for f in s.findings}),
                        "labels": r.final_labels, "scores": scores, "tokens": r.n_tokens})
        with path.open("a") as f:
            f.writelines(json.dumps(row) + "\n" for row in new)
        rows += new
        print(f"  seed {seed}: {len(rows)}/{n} studies", flush=True)
    return rows


def collect_agreement(pipe, seed: int, n: int, k: int, path: Path) -> list[dict]:
    """One row per study: the final labels of k sampled reports (temperature/top-p of PipelineConfig)."""
    import torch

    rows = _read(path)[:n]
    pipe.config.greedy = False
    try:
        while len(rows) < n:
            start, stop = len(rows), min(n, len(rows) + 4)
            studies = _studies(seed, start, stop)
            torch.manual_seed(seed * 100_000 + start)  # reproducible samples
            results = pipe.run_batch([s.image for s in studies for _ in range(k)], batch_size=16)
            new = [{"i": i, "sampled": [r.final_labels for r in results[j * k:(j + 1) * k]]}
                   for j, i in enumerate(range(start, stop))]
            with path.open("a") as f:
                f.writelines(json.dumps(row) + "\n" for row in new)
            rows += new
            print(f"  seed {seed}: {len(rows)}/{n} sampled studies", flush=True)
    finally:
        pipe.config.greedy = True
    return rows


def measure_cost(pipe, n: int, k: int) -> dict:
    """Median seconds per study on this machine's threads: greedy study, token pass, k sampled reports."""
    import torch

    studies = _studies(VAL_SEED, 0, n)
    study_s, token_s, agree_s = [], [], []
    pipe.run(studies[0].image)  # warm-up
    for s in studies:
        t0 = time.perf_counter()
        r = pipe.run(s.image)
        study_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        C.finding_confidences(pipe.model, pipe.processor, r, None)
        token_s.append(time.perf_counter() - t0)
    pipe.config.greedy = False
    try:
        torch.manual_seed(0)
        for s in studies[: max(3, n // 3)]:
            t0 = time.perf_counter()
            pipe.run_batch([s.image] * k, batch_size=k)  # k samples as one batch: the cheapest way to get them
            agree_s.append(time.perf_counter() - t0)
    finally:
        pipe.config.greedy = True
    med = float(np.median(study_s))
    return {"n": n, "threads": torch.get_num_threads(), "study_median_s": med,
            "token_pass_median_s": float(np.median(token_s)), "agreement_median_s": float(np.median(agree_s)),
            "token_pass_added": float(np.median(token_s)) / med, "agreement_added": float(np.median(agree_s)) / med}


# ------------------------------------------------------------------------------------------ analysis
def findings_table(rows: list[dict], agree: list[dict] | None = None) -> dict[str, np.ndarray]:
    """Flatten studies to one entry per scored finding: raw scores, agreement (nan if not sampled), truth."""
    sampled = {a["i"]: a["sampled"] for a in agree or []}
    cols: dict[str, list] = {s: [] for s in C.SCORES} | {"agreement": [], "correct": [], "study": [], "observation": []}
    for row in rows:
        truth = set(row["truth"])
        for obs, sc in row["scores"].items():
            for s in C.SCORES:
                cols[s].append(sc[s])
            cols["agreement"].append(C.agreement_scores(sampled[row["i"]], [obs])[obs] if row["i"] in sampled else np.nan)
            cols["correct"].append(int(obs in truth))
            cols["study"].append(row["i"])
            cols["observation"].append(obs)
    return {k: np.asarray(v) for k, v in cols.items()}


def cross_fit(raw: np.ndarray, y: np.ndarray, study: np.ndarray, method: str, folds: int = 5) -> np.ndarray:
    """Out-of-fold calibrated probabilities: each study's findings calibrated by a fit on the other folds."""
    fold = study % folds
    out = np.zeros(len(raw))
    for f in range(folds):
        held = fold == f
        if held.any():
            out[held] = C.fit_calibration(raw[~held], y[~held], method=method)(raw[held])
    return out


def summarize(p: np.ndarray, y: np.ndarray) -> dict:
    return {"n": int(len(y)), "ece": C.expected_calibration_error(p, y), "brier": C.brier(p, y),
            "auroc": C.auroc(p, y), "mean_p": float(np.mean(p)), "precision": float(np.mean(y))}


def choose(val: dict[str, np.ndarray], cost: dict) -> tuple[list[dict], dict]:
    """Every candidate's validation numbers and the one the rule picks."""
    y, study = val["correct"], val["study"]
    sampled = ~np.isnan(val["agreement"])
    rows = []
    for score in (*C.SCORES, "agreement"):
        added = cost["agreement_added"] if score == "agreement" else cost["token_pass_added"]
        sel = sampled if score == "agreement" else np.ones(len(y), bool)
        for method in CALIBRATORS:
            p = cross_fit(val[score][sel], y[sel], study[sel], method)
            row = {"score": score, "calibrator": method, "added_cost": added, "eligible": added <= COST_LIMIT,
                   "raw": summarize(val[score][sel], y[sel]), "cross_fitted": summarize(p, y[sel])}
            # the same subset for both methods: what the agreement rows are compared with
            row["on_sampled_subset"] = summarize(cross_fit(val[score][sampled], y[sampled], study[sampled], method),
                                                 y[sampled]) if sampled.sum() >= 10 else None
            rows.append(row)
    eligible = [r for r in rows if r["eligible"]]
    best = min(r["cross_fitted"]["brier"] for r in eligible)
    tied = [r for r in eligible if r["cross_fitted"]["brier"] <= best + TIE]
    # ties: the cheaper score (all token scores cost the same pass), then the smoother calibrator (fewer parameters)
    winner = min(tied, key=lambda r: (r["added_cost"], r["calibrator"] != "platt", r["cross_fitted"]["brier"]))
    return rows, winner


def plot(test: dict[str, np.ndarray], raw_name: str, cal: C.Calibration, path: Path, title: str) -> None:
    """Reliability diagram of raw vs calibrated probability on the test findings, zoomed on where they lie.

    Equal-count bins (8, with a binomial standard error), since nearly every stated finding is above 0.8 and
    equal-width bins there hold a handful of findings each; the legend's ECE is the 10-bin one of the tables."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = test["correct"]
    series = [("raw " + raw_name, test[raw_name], "#888888", "s"), ("calibrated", cal(test[raw_name]), "#1f5fbf", "o")]
    lo = max(0.0, np.floor(min(p.min() for _, p, _, _ in series) * 10) / 10 - 0.05)
    fig, (ax, hx) = plt.subplots(2, 1, figsize=(5.2, 6.2), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    for name, p, colour, marker in series:
        groups = np.array_split(np.argsort(p, kind="stable"), 8)
        mp, fr = np.array([p[g].mean() for g in groups]), np.array([y[g].mean() for g in groups])
        se = np.array([np.sqrt(max(f * (1 - f), 0.25 / len(g)) / len(g)) for f, g in zip(fr, groups)])
        ece = C.expected_calibration_error(p, y)
        ax.errorbar(mp, fr, yerr=se, c=colour, marker=marker, lw=1, capsize=2, label=f"{name} (ECE {ece:.3f})")
        lo = min(lo, float((fr - se).min()) - 0.02)
    for name, p, colour, _ in series:
        hx.hist(p, bins=np.linspace(lo, 1, int(round((1 - lo) / 0.0125)) + 1), color=colour, alpha=0.5, label=name)
    ax.plot([0, 1], [0, 1], ls="--", c="k", lw=0.8, label="perfect calibration")
    ax.set_ylabel("share of stated findings really present")
    ax.set_xlim(lo, 1.0), ax.set_ylim(lo, 1.01)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    hx.set_xlabel("stated finding's probability")
    hx.set_ylabel("findings")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


MIN_FINDINGS = 20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="assets/model")
    ap.add_argument("--n_val", type=int, default=600)
    ap.add_argument("--n_test", type=int, default=500)
    ap.add_argument("--n_agree", type=int, default=60, help="studies per seed that also get k sampled reports")
    ap.add_argument("--k", type=int, default=4, help="sampled reports per study for agreement")
    ap.add_argument("--n_cost", type=int, default=12, help="studies timed one at a time")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max_new_tokens", type=int, default=None,
                    help="token budget per report (default: the app's); a smoke run of the training chain lowers it")
    ap.add_argument("--work_dir", default="/tmp/medr2_confidence", help="cache of generated rows (resumable)")
    ap.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "confidence.json"))
    ap.add_argument("--figure", default=str(ROOT / "docs" / "figures" / "reliability.png"))
    ap.add_argument("--no_write_model", action="store_true", help="do not write the model's confidence.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from medr2.inference.pipeline import Pipeline, PipelineConfig
    from medr2.modeling.model import weights_sha256

    torch.set_num_threads(args.threads)
    work = Path(args.work_dir) / weights_sha256(args.model)[:12]
    work.mkdir(parents=True, exist_ok=True)
    budget = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}
    pipe = Pipeline(PipelineConfig(model=args.model, threads=args.threads, **budget))
    val_rows = collect_greedy(pipe, VAL_SEED, args.n_val, work / "val.jsonl")
    # refused before the sampled reports and the timing are collected: they cost more than the greedy reports
    stated = len(findings_table(val_rows)["correct"])
    if stated < MIN_FINDINGS:  # five cross-fitting folds need a few findings each
        print(f"bench_confidence: too few stated findings on validation ({stated} < {MIN_FINDINGS}) to "
              "choose and fit a calibration", file=sys.stderr)
        return 2
    val_agree = collect_agreement(pipe, VAL_SEED, args.n_agree, args.k, work / f"val_agree_k{args.k}.jsonl")
    cost_path = work / f"cost_k{args.k}_n{args.n_cost}.json"
    if not cost_path.is_file():
        cost_path.write_text(json.dumps(measure_cost(pipe, args.n_cost, args.k)))
    cost = json.loads(cost_path.read_text())

    val = findings_table(val_rows, val_agree)
    candidates, winner = choose(val, cost)
    score, method = winner["score"], winner["calibrator"]
    low_below = round(1 - 2 * (1 - float(val["correct"].mean())), 2)
    cal = C.fit_calibration(val[score], val["correct"], method=method, score=score, low_below=low_below, fitted_on={
        "data": "validation phantoms", "seed": VAL_SEED, "studies": len(val_rows),
        "choice": "lowest cross-fitted Brier on validation among candidates adding <= 20 % of the median study time",
        "cross_fitted_brier": winner["cross_fitted"]["brier"], "cross_fitted_ece": winner["cross_fitted"]["ece"]})
    p_val = cross_fit(val[score], val["correct"], val["study"], method)
    low_val = p_val < low_below
    val_low = {"share_marked": float(low_val.mean()),
               "precision_marked": float(val["correct"][low_val].mean()) if low_val.any() else None,
               "precision_unmarked": float(val["correct"][~low_val].mean()) if (~low_val).any() else None}
    if not args.no_write_model:
        print(f"wrote {cal.save(args.model)}")

    # the test seed, scored once with the chosen score and calibrator
    test_rows = collect_greedy(pipe, TEST_SEED, args.n_test, work / "test.jsonl")
    test_agree = collect_agreement(pipe, TEST_SEED, args.n_agree, args.k, work / f"test_agree_k{args.k}.jsonl")
    test = findings_table(test_rows, test_agree)
    y = test["correct"]
    p = cal(test[score])
    low = p < cal.low_below
    result = {
        "model": args.model, "weights": weights_sha256(args.model)[:12], "machine": f"{platform.machine()}, {args.threads} threads",
        "rule": __doc__.split("The rule for choosing, fixed before measuring: ")[1].split("Low confidence")[0].replace("\n", " ").strip(),
        "low_rule": __doc__.split("Low confidence (the sentences the app marks): ")[1].split("The winner")[0].replace("\n", " ").strip(),
        "cost": cost, "k": args.k, "validation": {"studies": len(val_rows), "findings": int(len(val["correct"])),
                                                  "sampled_studies": len(val_agree), "low_cross_fitted": val_low,
                                                  "candidates": candidates},
        "chosen": {"score": score, "calibrator": method, "low_below": cal.low_below},
        "test": {"studies": len(test_rows), "findings": int(len(y)),
                 "raw": summarize(test[score], y), "calibrated": summarize(p, y),
                 "low": {"share_marked": float(low.mean()),
                         "precision_marked": float(y[low].mean()) if low.any() else None,
                         "precision_unmarked": float(y[~low].mean()) if (~low).any() else None},
                 "reliability_calibrated": C.reliability(p, y), "reliability_raw": C.reliability(test[score], y)},
    }
    sampled = ~np.isnan(test["agreement"])
    if sampled.sum() >= 10:
        a_cal = C.fit_calibration(val["agreement"][~np.isnan(val["agreement"])],
                                  val["correct"][~np.isnan(val["agreement"])], method=method)
        result["test"]["agreement_subset"] = {
            "studies": len(test_agree), "agreement_raw": summarize(test["agreement"][sampled], y[sampled]),
            "agreement_calibrated": summarize(a_cal(test["agreement"][sampled]), y[sampled]),
            "chosen_calibrated": summarize(p[sampled], y[sampled])}
    per_obs = {}
    for obs in sorted(set(test["observation"])):
        sel = test["observation"] == obs
        per_obs[obs] = {"n": int(sel.sum()), "precision": float(y[sel].mean()), "mean_p": float(p[sel].mean())}
    result["test"]["per_observation"] = per_obs
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    plot(test, score, cal, Path(args.figure), f"{len(y)} stated findings, {len(test_rows)} test phantoms (seed 3)")

    print(f"\nvalidation (seed {VAL_SEED}): {len(val_rows)} studies, {len(val['correct'])} stated findings; "
          f"cost on {cost['threads']} threads: median study {cost['study_median_s']:.3f} s")
    print(f"{'score':<13}{'calibrator':<10}{'added':>8}{'ok':>4}{'raw ECE':>9}{'AUROC':>7}{'cf ECE':>8}{'cf Brier':>9}")
    for r in candidates:
        au = r["raw"]["auroc"]
        print(f"{r['score']:<13}{r['calibrator']:<10}{r['added_cost']:>7.0%}{'y' if r['eligible'] else 'n':>4}"
              f"{r['raw']['ece']:>9.3f}{(au if au is not None else float('nan')):>7.3f}{r['cross_fitted']['ece']:>8.3f}"
              f"{r['cross_fitted']['brier']:>9.4f}")
    t = result["test"]
    print(f"\nchosen: {score} + {method}.  test (seed {TEST_SEED}): {t['studies']} studies, {t['findings']} stated findings, "
          f"precision {t['raw']['precision']:.3f}")
    print(f"{'':<14}{'ECE':>7}{'Brier':>8}{'AUROC':>7}")
    for name in ("raw", "calibrated"):
        au = t[name]["auroc"]
        print(f"{name:<14}{t[name]['ece']:>7.3f}{t[name]['brier']:>8.4f}{(au if au is not None else float('nan')):>7.3f}")
    lo = t["low"]
    print(f"marked low (p < {cal.low_below}): {lo['share_marked']:.1%} of findings; precision marked "
          f"{lo['precision_marked']}, unmarked {lo['precision_unmarked']}")
    sub = [r for r in candidates if r["on_sampled_subset"] and r["calibrator"] == method]
    if sub:
        print(f"validation studies with sampled reports ({len(val_agree)}, {sub[0]['on_sampled_subset']['n']} findings), "
              f"cross-fitted {method}: " + ", ".join(f"{r['score']} ECE {r['on_sampled_subset']['ece']:.3f} Brier "
                                                     f"{r['on_sampled_subset']['brier']:.4f}" for r in sub))
    if "agreement_subset" in t:
        a = t["agreement_subset"]
        print(f"agreement subset ({a['studies']} studies): ECE raw agreement {a['agreement_raw']['ece']:.3f}, calibrated "
              f"{a['agreement_calibrated']['ece']:.3f}; chosen score {a['chosen_calibrated']['ece']:.3f}")
    print(f"wrote {args.output} and {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
