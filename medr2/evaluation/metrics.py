"""Evaluation metrics: clinical efficacy (CE) in the field's three conventions, and NLG metrics.

CE compares CheXpert-style labels of generated vs reference reports. Labels always come from
`medr2.labeler.findings` - the same labeler the MCCS reward and the UI use, never a re-implementation. Every
CE result is a dict carrying its `protocol` name, because published numbers are only comparable within
one convention:

- `r2gen-14`       micro and macro P/R/F1 over the [N, 14] label matrix (R2Gen family):
                   `result["micro"]["f1"]`, `result["macro"]["precision"]`, ...
- `example-14`     per report tp/fp/fn, then the mean over reports of P, R and F1 = tp / (tp + (fp+fn)/2)
                   (PromptMRG family). `example_prf` scores one report; `rewards.ce_f1_reward` calls it.
- `chexbert-5`     micro/macro P/R/F1 over the 5 competition labels, plus `f1_micro_14` / `f1_macro_14`
                   (that family reports both).

Positive-only by default: uncertain (-1), negative (0) and blank count as negative;
`uncertain_as_positive=True` counts -1 as positive. Undefined ratios (0/0) are 0, as sklearn's default
and PromptMRG's `nan_to_num` make them; in particular a report pair with no positive label on either
side scores `empty_score` (default 0.0, exactly PromptMRG's convention). Macro F1 is the mean of the
per-label F1s (sklearn's convention), not the F1 of macro P and R.

NLG: BLEU-1..4, METEOR, ROUGE-L, CIDEr from pycocoevalcap, on text cleaned the way R2Gen cleans reports
(`clean_report`). METEOR runs a Java subprocess (~8 s start-up); without `java` it is reported under
`unavailable` with the reason and the rest still runs.

CLI: `medr2 score --predictions P --references R [--output OUT.json] [--no-nlg]`.
"""
from __future__ import annotations

import csv
import json
import logging
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medr2.labeler import findings
from medr2.report.schema import report_for_scoring

log = logging.getLogger(__name__)

PROTOCOL_R2GEN = "r2gen-14"
PROTOCOL_EXAMPLE = "example-14"
PROTOCOL_FIVE = "chexbert-5"
COMPETITION_5: tuple[str, ...] = ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion")

Labels = findings.Labels  # observation -> 1 / 0 / -1 / None (blank)


# ---------------------------------------------------------------- CE
def binarize(labels: Labels, uncertain_as_positive: bool = False,
             observations: Sequence[str] = findings.OBSERVATIONS) -> np.ndarray:
    """[K] bool: positive (and, if asked, uncertain) observations of one report."""
    positive = {findings.POSITIVE, findings.UNCERTAIN} if uncertain_as_positive else {findings.POSITIVE}
    return np.array([labels.get(obs) in positive for obs in observations], dtype=bool)


def label_matrix(labels: Sequence[Labels], uncertain_as_positive: bool = False,
                 observations: Sequence[str] = findings.OBSERVATIONS) -> np.ndarray:
    """[N, K] bool label matrix."""
    rows = [binarize(lab, uncertain_as_positive, observations) for lab in labels]
    return np.array(rows, dtype=bool).reshape(len(rows), len(observations))


def _ratio(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)  # 0/0 -> 0 (sklearn default)


def _counts(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (pred & ref), (pred & ~ref), (~pred & ref)


def _check(preds: Sequence[Labels], refs: Sequence[Labels]) -> None:
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references: pass aligned lists of equal length")


def example_prf(pred: Labels, ref: Labels, uncertain_as_positive: bool = False,
                empty_score: float = 0.0) -> tuple[float, float, float]:
    """Example-based (precision, recall, F1) of ONE report, F1 = tp / (tp + (fp + fn) / 2).

    `empty_score` is returned for all three when neither report has a positive label (tp = fp = fn = 0);
    0.0 reproduces PromptMRG. Shared by the evaluation metric and `rewards.ce_f1_reward`.
    """
    p, r = binarize(pred, uncertain_as_positive), binarize(ref, uncertain_as_positive)
    tp, fp, fn = (int(x.sum()) for x in _counts(p, r))
    if tp + fp + fn == 0:
        return empty_score, empty_score, empty_score
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return precision, recall, tp / (tp + 0.5 * (fp + fn))


def ce_example_based(preds: Sequence[Labels], refs: Sequence[Labels], uncertain_as_positive: bool = False,
                     empty_score: float = 0.0) -> dict:
    """PromptMRG-style example-based P/R/F1 over 14 labels: the mean of `example_prf` over reports."""
    _check(preds, refs)
    per = np.array([example_prf(p, r, uncertain_as_positive, empty_score) for p, r in zip(preds, refs)],
                   dtype=float).reshape(-1, 3)
    mean = per.mean(axis=0) if len(per) else np.zeros(3)
    return {"protocol": PROTOCOL_EXAMPLE, "labels": len(findings.OBSERVATIONS), "n": len(preds),
            "uncertain_as_positive": uncertain_as_positive, "empty_score": empty_score,
            "precision": float(mean[0]), "recall": float(mean[1]), "f1": float(mean[2])}


def _micro_macro(pred: np.ndarray, ref: np.ndarray) -> dict[str, dict[str, float]]:
    tp, fp, fn = (x.sum(axis=0) for x in _counts(pred, ref))  # [K] each
    p_k, r_k, f_k = _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(tp, tp + 0.5 * (fp + fn))
    TP, FP, FN = tp.sum(), fp.sum(), fn.sum()
    return {
        "micro": {"precision": float(_ratio(TP, TP + FP)), "recall": float(_ratio(TP, TP + FN)),
                  "f1": float(_ratio(TP, TP + 0.5 * (FP + FN)))},
        "macro": {"precision": float(p_k.mean()), "recall": float(r_k.mean()), "f1": float(f_k.mean())},
    }


def example_f1_matrix(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """[N] example-based F1 of [N, K] bool label matrices (0 where neither row has a label, as `example_prf`)."""
    tp, fp, fn = (x.sum(axis=1) for x in _counts(pred, ref))
    return _ratio(tp, tp + 0.5 * (fp + fn))


def macro_f1_matrix(pred: np.ndarray, ref: np.ndarray) -> float:
    """Macro F1 over the K columns of [N, K] bool label matrices (vectorised, for resampling)."""
    return _micro_macro(pred, ref)["macro"]["f1"]


def ce_micro_macro(preds: Sequence[Labels], refs: Sequence[Labels], uncertain_as_positive: bool = False) -> dict:
    """R2Gen-style micro and macro P/R/F1 over the [N, 14] label matrix."""
    _check(preds, refs)
    pred, ref = label_matrix(preds, uncertain_as_positive), label_matrix(refs, uncertain_as_positive)
    return {"protocol": PROTOCOL_R2GEN, "labels": len(findings.OBSERVATIONS), "n": len(preds),
            "uncertain_as_positive": uncertain_as_positive, **_micro_macro(pred, ref)}


def ce_five_label(preds: Sequence[Labels], refs: Sequence[Labels], uncertain_as_positive: bool = False) -> dict:
    """CheXbert-family micro/macro F1 over the 5 competition labels, and over all 14."""
    _check(preds, refs)
    five = _micro_macro(label_matrix(preds, uncertain_as_positive, COMPETITION_5),
                        label_matrix(refs, uncertain_as_positive, COMPETITION_5))
    all14 = _micro_macro(label_matrix(preds, uncertain_as_positive), label_matrix(refs, uncertain_as_positive))
    return {"protocol": PROTOCOL_FIVE, "labels": list(COMPETITION_5), "n": len(preds),
            "uncertain_as_positive": uncertain_as_positive, **five,
            "f1_micro_14": all14["micro"]["f1"], "f1_macro_14": all14["macro"]["f1"]}


def per_observation(preds: Sequence[Labels], refs: Sequence[Labels], uncertain_as_positive: bool = False) -> list[dict]:
    """One row per observation: precision, recall, F1, support (reference positives), predicted positives."""
    _check(preds, refs)
    pred, ref = label_matrix(preds, uncertain_as_positive), label_matrix(refs, uncertain_as_positive)
    tp, fp, fn = (x.sum(axis=0) for x in _counts(pred, ref))
    p, r, f = _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(tp, tp + 0.5 * (fp + fn))
    return [{"observation": obs, "precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]),
             "support": int(ref[:, k].sum()), "predicted": int(pred[:, k].sum())}
            for k, obs in enumerate(findings.OBSERVATIONS)]


def ce_scores(preds: Sequence[Labels], refs: Sequence[Labels], uncertain_as_positive: bool = False,
              empty_score: float = 0.0) -> dict:
    """All three CE conventions plus the per-observation table, keyed by protocol name."""
    return {
        PROTOCOL_R2GEN: ce_micro_macro(preds, refs, uncertain_as_positive),
        PROTOCOL_EXAMPLE: ce_example_based(preds, refs, uncertain_as_positive, empty_score),
        PROTOCOL_FIVE: ce_five_label(preds, refs, uncertain_as_positive),
        "per_observation": per_observation(preds, refs, uncertain_as_positive),
    }


def ce_scores_from_reports(predictions: Sequence[str], references: Sequence[str], **kwargs) -> dict:
    """`ce_scores` on report texts, labelled by `findings.label_reports` (the reward's labeler)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references: lists must align")
    return ce_scores(findings.label_reports(list(predictions)), findings.label_reports(list(references)), **kwargs)


# ---------------------------------------------------------------- NLG
_PUNCT = re.compile(r"[.,?;*!%^&_+():<=>@\[\]{}\-\"'/\\]")
_LIST_NUMBER = re.compile(r"(^|\s)\d\.\s")  # "1. ", " 2. " numbered-list markers
_HEADER = re.compile(r"\b(findings|impression)\s*:", re.IGNORECASE)


def clean_report(text: str, strip_headers: bool = True) -> str:
    """R2Gen's report cleaning: lower-case, sentences split on ". ", punctuation stripped per sentence,
    sentences re-joined with " . " and a final " .". `strip_headers` also drops "Findings:"/"Impression:"
    (our reports carry them, the R2Gen references do not). R2Gen's out-of-vocabulary <unk> mapping is
    not reproduced (it depends on its training vocabulary)."""
    text = _HEADER.sub(" ", text) if strip_headers else text
    text = re.sub(r"_+", "_", text.replace("\n", " "))
    text = _LIST_NUMBER.sub(lambda m: m.group(1) and ". ", text)
    text = re.sub(r"\.{2,}", ".", re.sub(r" {2,}", " ", text)).strip().lower()
    sentences = [" ".join(_PUNCT.sub("", s).split()) for s in text.split(". ")]
    sentences = [s for s in sentences if s]
    return " . ".join(sentences) + " ." if sentences else ""


def _meteor(gts: dict, res: dict) -> float:
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        return float(scorer.compute_score(gts, res)[0])
    finally:  # stop the Java process now rather than at garbage collection
        with scorer.lock:
            scorer.meteor_p.stdin.close()
            scorer.meteor_p.kill()
            scorer.meteor_p.wait()


def nlg_scores(predictions: Sequence[str], references: Sequence[str], meteor: bool = True) -> dict:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr (corpus level, pycocoevalcap). Missing ones go to `unavailable`."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references: lists must align")
    out: dict = {"protocol": "pycocoevalcap, R2Gen cleaning", "n": len(predictions), "unavailable": {}}
    if not predictions:
        out["unavailable"]["all"] = "no reports to score"
        return out
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError as exc:
        out["unavailable"]["all"] = f"pycocoevalcap not installed ({exc}): pip install 'medr2[eval]'"
        return out
    # Empty strings break METEOR's line protocol; a lone "." keeps every scorer defined and matches nothing.
    res = {i: [clean_report(p) or "."] for i, p in enumerate(predictions)}
    gts = {i: [clean_report(r) or "."] for i, r in enumerate(references)}
    bleu = Bleu(4).compute_score(gts, res, verbose=0)[0]
    out.update({f"BLEU_{n + 1}": float(b) for n, b in enumerate(bleu)})
    out["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    if not meteor:
        out["unavailable"]["METEOR"] = "disabled (meteor=False)"
    elif shutil.which("java") is None:
        out["unavailable"]["METEOR"] = "java not found on PATH: install a Java runtime (e.g. openjdk-17-jre-headless)"
    else:
        try:
            out["METEOR"] = _meteor(gts, res)
        except (OSError, ValueError) as exc:  # broken pipe / unparsable output from the jar
            out["unavailable"]["METEOR"] = f"METEOR failed: {exc}"
    return out


# ---------------------------------------------------------------- CLI: medr2 score
class ScoreInputError(ValueError):
    """A user-facing problem with the --predictions / --references files."""


def read_reports(path: str | Path) -> list[tuple[str | None, str]]:
    """(id or None, report) rows from CSV (column `report`, optional `id`) or JSONL (`{"id", "report"}`)."""
    path = Path(path)
    if not path.is_file():
        raise ScoreInputError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8-sig")
    is_jsonl = path.suffix.lower() in {".jsonl", ".json"} or text.lstrip().startswith("{")
    rows: list[tuple[str | None, str]] = []
    if is_jsonl:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ScoreInputError(f"{path}:{n}: not JSON ({exc.msg}); expected one {{\"id\", \"report\"}} per line")
            if not isinstance(obj, dict) or not isinstance(obj.get("report"), str):
                raise ScoreInputError(f"{path}:{n}: needs a string field \"report\"")
            rows.append((None if obj.get("id") is None else str(obj["id"]), obj["report"]))
    else:
        reader = csv.DictReader(text.splitlines())
        if "report" not in (reader.fieldnames or []):
            raise ScoreInputError(f"{path}: CSV needs a header with a `report` column (found {reader.fieldnames})")
        for row in reader:
            rid = (row.get("id") or "").strip() or None
            rows.append((rid, row["report"] or ""))
    if not rows:
        raise ScoreInputError(f"{path}: no reports found")
    return rows


def align(preds: list[tuple[str | None, str]], refs: list[tuple[str | None, str]]) -> tuple[list[str], list[str], list[str]]:
    """Align by id when every row of both files has one, else by order. Returns (ids, preds, refs)."""
    if all(i is not None for i, _ in preds + refs):
        p, r = dict(preds), dict(refs)
        for name, rows, d in (("predictions", preds, p), ("references", refs, r)):
            if len(d) != len(rows):
                raise ScoreInputError(f"{name}: duplicate ids ({len(rows) - len(d)} rows repeat an id)")
        if p.keys() != r.keys():
            only_p, only_r = sorted(p.keys() - r.keys()), sorted(r.keys() - p.keys())
            raise ScoreInputError(f"ids differ: {len(only_p)} only in predictions (e.g. {only_p[:3]}), "
                                  f"{len(only_r)} only in references (e.g. {only_r[:3]})")
        ids = [i for i, _ in refs]
        return ids, [p[i] for i in ids], [r[i] for i in ids]
    if len(preds) != len(refs):
        raise ScoreInputError(f"{len(preds)} predictions but {len(refs)} references and no `id` on every row "
                              "to align them: give both files an id column or the same number of rows")
    return [str(n) for n in range(len(refs))], [t for _, t in preds], [t for _, t in refs]


def format_table(result: dict) -> str:
    lines = [f"{'protocol':<30} {'metric':<18} {'value':>8}"]
    for key in (PROTOCOL_R2GEN, PROTOCOL_EXAMPLE, PROTOCOL_FIVE):
        for metric, value in result["ce"][key].items():
            if metric == "empty_score":  # a setting, not a score
                continue
            flat = {f"{metric}_{k}": v for k, v in value.items()} if isinstance(value, dict) else {metric: value}
            for name, v in flat.items():
                if isinstance(v, float):
                    lines.append(f"{key:<30} {name:<18} {v:>8.4f}")
    nlg = result.get("nlg") or {}
    for metric in ("BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr"):
        if metric in nlg:
            lines.append(f"{nlg['protocol']:<30} {metric:<18} {nlg[metric]:>8.4f}")
    for metric, why in nlg.get("unavailable", {}).items():
        lines.append(f"{'(unavailable)':<30} {metric:<18} {why}")
    lines += ["", f"{'observation':<28} {'P':>6} {'R':>6} {'F1':>6} {'support':>8} {'predicted':>9}"]
    for row in result["ce"]["per_observation"]:
        lines.append(f"{row['observation']:<28} {row['precision']:>6.3f} {row['recall']:>6.3f} {row['f1']:>6.3f} "
                     f"{row['support']:>8d} {row['predicted']:>9d}")
    return "\n".join(lines)


def cli_score(argv: list[str]) -> int:
    """`medr2 score`: CE (three conventions) + NLG of predictions vs references; table on stdout, JSON file."""
    from medr2.cli import FlagParser, UsageError, fail

    ap = FlagParser(prog="medr2 score", description=cli_score.__doc__)
    ap.add_argument("--predictions", required=True, help="CSV (column `report`, optional `id`) or JSONL")
    ap.add_argument("--references", required=True, help="same formats; aligned by id if every row has one")
    ap.add_argument("--output", help="write the full result as JSON here")
    ap.add_argument("--no_nlg", action="store_true", help="skip BLEU/METEOR/ROUGE-L/CIDEr")
    ap.add_argument("--no_meteor", action="store_true", help="skip METEOR only (saves the ~8 s Java start-up)")
    ap.add_argument("--uncertain_as_positive", action="store_true", help="count uncertain (-1) labels as positive")
    try:
        args = ap.parse_args(argv)
        ids, preds, refs = align(read_reports(args.predictions), read_reports(args.references))
    except (UsageError, ScoreInputError) as exc:
        return fail("medr2 score", exc)
    # Tagged Med-R2 outputs are scored on their final report (else draft); plain reports as they are.
    preds = [report_for_scoring(t) for t in preds]
    refs = [report_for_scoring(t) for t in refs]
    result = {"predictions": str(args.predictions), "references": str(args.references), "n": len(ids),
              "ce": ce_scores_from_reports(preds, refs, uncertain_as_positive=args.uncertain_as_positive)}
    if not args.no_nlg:
        result["nlg"] = nlg_scores(preds, refs, meteor=not args.no_meteor)
    print(format_table(result))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2), encoding="utf-8")
        log.info("wrote %s", args.output)
    return 0
