"""Does the stage-0 tower tell a lung mass from consolidation? Image-head co-firing on held-out films.

The demo model of generator-v5 films missed 10 of 17 overt (>= 35 mm) masses on the test set, 9 of them
reported as "focal consolidation". This probe asks whether that confusion is already in the tower: for every
held-out film with a lesion (mass or nodule), does the tower's image head fire "Lung Lesion" and, on films
without a true consolidation, does it also fire "Consolidation"? And the other way round: on films with a
consolidation but no lesion, how often does "Lung Lesion" fire?

  python research/perception_confusion.py --tower runs/perception [--n 400 --seed 2]
      [--eval runs/eval/sft]   # also: the same question asked of a model's `medr2 evaluate` reports
With `--eval` on the tower's own validation seed (an evaluation with `--seed 2`), it also splits each
focal finding the reports miss into "the tower fired, the language model dropped it" and "the tower missed it".
-> table on stdout, JSON in research/results/perception_confusion.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from medr2.phantom.generator import PhantomConfig, generate_study, study_seeds
from medr2.training.perception import FINDING_OBS, build_examples, load_trained, to_pixels

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "research" / "results" / "perception_confusion.json"
LESION, CONSOLIDATION = FINDING_OBS.index("Lung Lesion"), FINDING_OBS.index("Consolidation")


def image_probabilities(tower: Path, n: int, seed: int, batch_size: int = 64) -> np.ndarray:
    """Image-head probabilities [n, 13] of the stage-0 tower in `tower` on `n` phantoms of `seed`."""
    net, config = load_trained(tower)
    images = build_examples(n, seed, config)["image"]  # the tower folder's film cache when it has this set
    with torch.no_grad():
        return np.concatenate([torch.sigmoid(net(to_pixels(images[i:i + batch_size]))["image"]).numpy()
                               for i in range(0, n, batch_size)])


def confusion(probs: np.ndarray, studies: list, threshold: float = 0.5) -> dict:
    """Per lesion kind: lesion-head hits and consolidation-head co-fires; lesion fires on consolidation-only films."""
    out = {}
    for kind in ("mass", "nodule"):
        rows = [(i, f) for i, s in enumerate(studies) for f in s.findings if f.kind == kind]
        no_cons = [(i, f) for i, f in rows if not any(g.observation == "Consolidation" for g in studies[i].findings)]
        out[kind] = {"n": len(rows), "lesion_fires": int(sum(probs[i, LESION] > threshold for i, _ in rows)),
                     "n_without_true_consolidation": len(no_cons),
                     "consolidation_fires_without_true_consolidation": int(sum(probs[i, CONSOLIDATION] > threshold for i, _ in no_cons)),
                     "mean_size_mm": float(np.mean([f.size_mm for _, f in rows])) if rows else None}
    cons_only = [i for i, s in enumerate(studies) if any(f.observation == "Consolidation" for f in s.findings)
                 and not any(f.observation == "Lung Lesion" for f in s.findings)]
    out["consolidation_without_lesion"] = {"n": len(cons_only),
                                           "lesion_fires": int(sum(probs[i, LESION] > threshold for i in cons_only))}
    # Split by how the airspace disease is drawn: a pneumonia's round multifocal patches vs segmental consolidation.
    for name, is_pneumonia in (("pneumonia", True), ("segmental", False)):
        films = [i for i in cons_only if any(f.kind == "pneumonia" for f in studies[i].findings) == is_pneumonia]
        out["consolidation_without_lesion"][name] = {"n": len(films), "lesion_fires": int(sum(probs[i, LESION] > threshold for i in films))}
    return out


def final_report_labels(eval_dir: Path) -> dict[str, dict]:
    """Study id -> CheXpert labels of the model's final report, from a `medr2 evaluate` folder's predictions."""
    from medr2.labeler.findings import label_report
    from medr2.report.schema import parse

    labels = {}
    for line in (eval_dir / "predictions.jsonl").read_text().splitlines():
        row = json.loads(line)
        report = parse(row["text"]).output.report
        labels[row["id"]] = label_report(report.text if report else "")
    return labels


def eval_config(eval_dir: Path) -> dict:
    summary = json.loads((eval_dir / "eval.json").read_text())
    return summary.get("summary", summary)["config"]


def eval_films(config: dict) -> PhantomConfig:
    """The generator settings an evaluation's films were drawn with (runs before v9 placed opacities freely)."""
    return PhantomConfig(opacity_placement=config.get("opacity_placement", "free"))


def report_confusion(eval_dir: Path, said: dict[str, dict]) -> dict:
    """From a `medr2 evaluate` folder: overt (>= 35 mm, not subtle) masses and the other lesions of its phantom
    set, how many the final reports (`said`, from `final_report_labels`) miss (no positive/hedged "Lung Lesion")
    and how many misses call consolidation."""
    config = eval_config(eval_dir)
    films = eval_films(config)
    counts = {"overt_mass": [0, 0, 0], "other_lesion": [0, 0, 0]}  # [n, missed, missed and called consolidation]
    for seed in study_seeds(config["n"], config["seed"]):
        study = generate_study(seed, films)
        labels = said[study.study_id]
        found = labels["Lung Lesion"] in (1, -1)
        for f in study.findings:
            if f.kind not in ("mass", "nodule"):
                continue
            key = "overt_mass" if f.kind == "mass" and not f.subtle and f.size_mm >= 35 else "other_lesion"
            counts[key][0] += 1
            counts[key][1] += not found
            counts[key][2] += (not found) and labels["Consolidation"] in (1, -1)
    return {"eval": str(eval_dir), **{k: dict(zip(("n", "missed", "missed_called_consolidation"), v)) for k, v in counts.items()}}


FOCAL = ("Lung Lesion", "Lung Opacity", "Consolidation", "Pneumonia", "Atelectasis", "Fracture")


def miss_attribution(probs: np.ndarray, studies: list, said: dict[str, dict], threshold: float = 0.5) -> dict:
    """Where is a focal finding lost: in the tower or in the language model?

    For the films both runs share (the evaluation must be on the tower's phantom seed), per observation present
    in the reference report: how many the model's report finds, and of the misses, how many the tower's image head
    had fired on (the language model dropped what the tower saw) or not (the tower missed it).
    `said`: the model's final-report labels per study id (`final_report_labels`).
    """
    from medr2.labeler.findings import label_report

    out = {obs: {"n": 0, "found": 0, "missed_tower_fired": 0, "missed_tower_silent": 0} for obs in FOCAL}
    for i, study in enumerate(studies):
        if study.study_id not in said:
            continue
        truth, reported = label_report(study.report), said[study.study_id]
        for obs in FOCAL:
            if truth[obs] not in (1, -1):
                continue
            row = out[obs]
            row["n"] += 1
            if reported[obs] in (1, -1):
                row["found"] += 1
            elif probs[i, FINDING_OBS.index(obs)] > threshold:
                row["missed_tower_fired"] += 1
            else:
                row["missed_tower_silent"] += 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tower", type=Path, required=True, help="stage-0 output folder")
    parser.add_argument("--n", type=int, default=400, help="held-out phantoms")
    parser.add_argument("--seed", type=int, default=2, help="phantom seed (2 = validation)")
    parser.add_argument("--eval", type=Path, default=None, help="a `medr2 evaluate` folder to check the same confusion in reports")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    probs = image_probabilities(args.tower, args.n, args.seed)
    studies = [generate_study(s) for s in study_seeds(args.n, args.seed)]
    result = {"tower": str(args.tower), "n": args.n, "seed": args.seed, "threshold": 0.5,
              "command": f"python research/perception_confusion.py --tower {args.tower} --n {args.n} --seed {args.seed}",
              **confusion(probs, studies)}
    for kind in ("mass", "nodule"):
        r = result[kind]
        print(f"{kind:7s} n {r['n']:3d}  lesion head fires {r['lesion_fires']:3d}  consolidation head fires "
              f"{r['consolidation_fires_without_true_consolidation']:3d} / {r['n_without_true_consolidation']} without a true consolidation")
    c = result["consolidation_without_lesion"]
    print(f"consolidation without lesion: n {c['n']}, lesion head fires {c['lesion_fires']} "
          f"(pneumonia patches {c['pneumonia']['lesion_fires']}/{c['pneumonia']['n']}, "
          f"segmental {c['segmental']['lesion_fires']}/{c['segmental']['n']})")
    if args.eval:
        said = final_report_labels(args.eval)
        result["reports"] = report_confusion(args.eval, said)
        result["command"] += f" --eval {args.eval}"
        for key in ("overt_mass", "other_lesion"):
            r = result["reports"][key]
            print(f"reports, {key}: n {r['n']}, missed {r['missed']}, of them called consolidation {r['missed_called_consolidation']}")
        if eval_config(args.eval)["seed"] == args.seed:  # the same films: ask where each miss was made
            result["miss_attribution"] = miss_attribution(probs, studies, said)
            for obs, r in result["miss_attribution"].items():
                print(f"{obs:14s} n {r['n']:3d}  report finds {r['found']:3d}  missed with tower firing "
                      f"{r['missed_tower_fired']:3d}  missed, tower silent {r['missed_tower_silent']:3d}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
