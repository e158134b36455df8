"""Collect held-out evaluations of the training variants into the README's ablation table.

Reads `<eval_root>/<variant>/eval.json` written by `medr2 evaluate`, prints a Markdown table and writes
`research/results/ablation.json`. Variants missing from disk are listed as such, never invented.

Run: `python research/ablation_table.py runs/eval [OUT.json] [--present_only]`
(`--present_only`: leave out variants not evaluated under that root, e.g. a set of films only some were run on)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

VARIANTS = {
    "sft_direct": "direct SFT",
    "sft_medr2": "Med-R2 SFT",
    "sft_direct_v4": "direct SFT + v4 phase",
    "sft_medr2_v4": "Med-R2 SFT + v4 phase",
    "grpo_mccs": "Med-R2 SFT + GRPO (MCCS + Med-R2 format)",
    "grpo_cef1": "Med-R2 SFT + GRPO (CE-F1 + Med-R2 format)",
    "sft_direct_v5": "direct SFT + v4 + v5 phases",
    "sft_medr2_v5": "Med-R2 SFT + v4 + v5 phases",
    "grpo_mccs_v5": "Med-R2 SFT (v5) + GRPO (MCCS + Med-R2 format)",
    "grpo_cef1_v5": "Med-R2 SFT (v5) + GRPO (CE-F1 + Med-R2 format)",
    "sft_direct_v6": "direct SFT + v4 + v5 + fresh-seed phases",
    "sft_medr2_v6": "Med-R2 SFT + v4 + v5 + fresh-seed phases",
    "grpo_mccs_v6": "Med-R2 SFT (v6) + GRPO (MCCS + Med-R2 format)",
    "sft_direct_v7": "direct SFT + v4 + v5 + fresh-seed + new-tower phases",
    "sft_medr2_v7": "Med-R2 SFT + v4 + v5 + fresh-seed + new-tower phases",
    "sft_direct_v8": "direct SFT, 6 phases + generator-v7 phase (tower v9)",
    "sft_medr2_v8": "Med-R2 SFT, 6 phases + generator-v7 phase (tower v9)",
    "sft_medr2_v9": "Med-R2 SFT, 7 phases + tower-v10 phase",
    "sft_medr2_v10": "Med-R2 SFT, 8 phases + unfrozen-tower generator-v8 phase",
    "sft_medr2_v12": "Med-R2 SFT, 9 phases + lower-rate generator-v9 phase (experiment)",
}


def row(summary: dict) -> dict:
    final, fmt, detect = summary["final"], summary["format"], summary.get("final_uncertain_as_positive")
    per_obs = {r["observation"]: r["f1"] for r in final["per_observation"] if r["support"]}
    out = {
        "ce_f1_example": final["example-14"]["f1"],
        "ce_micro_f1_14": final["r2gen-14"]["micro"]["f1"],
        "ce_macro_f1_14": final["r2gen-14"]["macro"]["f1"],
        "format_failure_rate": fmt["mrg_r1_format_failure_rate"],
        "missing_report_rate": fmt["missing_report_rate"],
        "mean_tokens": fmt["mean_tokens"],
        "per_observation_f1": per_obs,
        "ce_macro_f1_14_uncertain_as_positive": detect["r2gen-14"]["macro"]["f1"] if detect else None,
        "per_observation_f1_uncertain_as_positive": {r["observation"]: r["f1"] for r in detect["per_observation"] if r["support"]} if detect else None,
        "draft_ce_f1_example": summary["draft"]["example-14"]["f1"] if "draft" in summary else None,
    }
    if "location" in summary:
        out["side_accuracy"] = summary["location"]["side_accuracy"]
        out["zone_accuracy"] = summary["location"]["zone_accuracy"]
    if "nlg" in summary:
        out["nlg"] = {k: v for k, v in summary["nlg"].items() if k.isupper() or k.startswith(("BLEU", "ROUGE", "CIDEr", "METEOR"))}
    return out


def print_per_finding(rows: dict) -> None:
    """Per-finding F1 of every variant: positive-only, then with hedged mentions counted as found."""
    done = [r for r in rows.values() if "missing" not in r]
    if not done:
        return
    observations = list(done[0]["per_observation_f1"])
    print("| finding | " + " | ".join(r["name"] for r in done) + " |")
    print("|---|" + "---|" * len(done))
    for obs in observations:
        cells = []
        for r in done:
            pos = r["per_observation_f1"].get(obs)
            hedged = (r.get("per_observation_f1_uncertain_as_positive") or {}).get(obs)
            cells.append("—" if pos is None else f"{pos:.2f}" + (f" ({hedged:.2f})" if hedged is not None else ""))
        print(f"| {obs} | " + " | ".join(cells) + " |")


def main(argv: list[str]) -> int:
    if {"-h", "--help"} & set(argv):
        print(__doc__)
        return 0
    present_only = bool({"--present_only", "--present-only"} & set(argv))
    argv = [a for a in argv if a not in ("--present_only", "--present-only")]
    root = Path(argv[0] if argv else "runs/eval")
    if not root.is_dir():  # never overwrite the committed results with a table of "not run"
        print(f"ablation_table: no evaluations under {root}", file=sys.stderr)
        return 2
    rows = {}
    for key, name in VARIANTS.items():
        path = root / key / "eval.json"
        if path.is_file():
            rows[key] = {"name": name, **row(json.loads(path.read_text()))}
        elif not present_only:
            rows[key] = {"name": name, "missing": str(path)}
    header = ("| variant | CE-F1 example-based | CE micro-F1 (14) | CE macro-F1 (14) | macro-F1, hedged = found | draft CE-F1 | "
              "format failure | mean tokens | side / zone |")
    print(header)
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows.values():
        if "missing" in r:
            print(f"| {r['name']} | not run ({r['missing']}) | | | | | | | |")
            continue
        draft = f"{r['draft_ce_f1_example']:.3f}" if r["draft_ce_f1_example"] is not None else "—"
        detect = f"{r['ce_macro_f1_14_uncertain_as_positive']:.3f}" if r.get("ce_macro_f1_14_uncertain_as_positive") is not None else "—"
        where = f"{r['side_accuracy']:.2f} / {r['zone_accuracy']:.2f}" if r.get("side_accuracy") is not None else "—"
        # A direct-target model writes only <report>: the thinking -> report format check does not apply to it.
        fmt = f"{r['format_failure_rate']:.1%}" if r["draft_ce_f1_example"] is not None else "n/a"
        print(f"| {r['name']} | {r['ce_f1_example']:.3f} | {r['ce_micro_f1_14']:.3f} | {r['ce_macro_f1_14']:.3f} | {detect} | {draft} | "
              f"{fmt} | {r['mean_tokens']:.0f} | {where} |")
    print()
    print_per_finding(rows)
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).parent / "results" / "ablation.json"
    out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
