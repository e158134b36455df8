"""Confidence: how sure the model is of each finding its final report states, as a calibrated probability.

For a `StudyResult` of `Pipeline.run/stream` (or `run_batch(..., keep_saliency_inputs=True)`) this module:
1. finds each positive/uncertain finding of the final report and its tokens with the same target finder as
   the saliency maps (`medr2.saliency.locate_targets`: the finding's report sentences plus the perception
   line(s) where its sign was read);
2. re-runs the model once, teacher-forced on prompt + generated ids (`medr2.saliency.token_logprobs`), and
   takes a raw score per finding from its tokens' probabilities (`token_scores`; the choice measured on
   validation phantoms is the geometric-mean probability of its sentences' and perception lines' tokens,
   `DEFAULT_SCORE`; a model's calibration file names the score it calibrates);
3. maps the raw score to the probability that the finding is really on the film with a monotone calibrator
   fitted on validation phantoms (`fit_calibration`: isotonic regression by pool-adjacent-violators, or
   Platt scaling), stored beside the weights as `confidence.json` (`load_calibration`).

The alternative raw score, agreement over k sampled reports (`agreement_scores`), is what
`benchmarks/bench_confidence.py` measures the token score against (calibration and cost; docs/confidence.md).

Hands on {observation: probability} per study (`finding_confidences`) and `is_low(p)` for the sentences the
reviewer should check first; `expected_calibration_error` / `reliability` for the measurement.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

CALIBRATION_FILE = "confidence.json"  # in a model folder, beside saliency.json
SCORES = ("tokens_min", "tokens_mean", "report_min", "report_first")  # raw scores `token_scores` returns
DEFAULT_SCORE = "tokens_mean"  # chosen by benchmarks/bench_confidence.py (docs/confidence.md)
LOW_BELOW = 0.5  # a stated finding the model more likely has wrong than right is marked for the reviewer
# A few hundred validation findings cannot support a claim of certainty: shown probabilities stay inside this.
P_MIN, P_MAX = 0.01, 0.99
ECE_BINS = 10


# ------------------------------------------------------------------------------------------ raw scores
def _finding_targets(text: str, labels: Mapping | None, perception: bool) -> dict:
    from medr2 import saliency

    found = saliency.locate_targets(text, labels, include_perception=False, with_perception_evidence=perception)
    return {t.name: t for t in found if t.kind == "finding"}


def token_scores(model, processor, result) -> dict[str, dict[str, float]]:
    """Raw token-probability scores of each finding the final report states: {observation: {score: value}}.

    One teacher-forced forward pass over prompt + generated ids gives every generated token's probability;
    per finding (its tokens found as for its saliency map):
    - tokens_min: the lowest token probability over its report sentences and perception evidence lines;
    - tokens_mean: the geometric mean probability over the same tokens;
    - report_min: the lowest token probability over its report sentences only;
    - report_first: the probability of the first token of its report sentence(s) (the lowest if several).
    A finding labelled in the final report whose sentence is not found in the generated tokens gets none.
    """
    import torch

    from medr2 import saliency

    saved = getattr(result, "saliency_inputs", None)
    if not saved:
        raise ValueError("this result kept no model inputs: score results of Pipeline.run/stream "
                         "or run_batch(..., keep_saliency_inputs=True)")
    new_ids = saved["new_ids"]
    text, offsets = saliency.token_char_spans(processor.tokenizer, new_ids[0].tolist())
    evidence = _finding_targets(text, result.final_labels, perception=True)
    report = _finding_targets(text, result.final_labels, perception=False)
    if not report:
        return {}
    was_training = model.training
    model.eval()  # no dropout: the same result gives the same scores
    try:
        with torch.inference_mode():
            lp = saliency.token_logprobs(model, saved["inputs"], new_ids)[0].float().cpu().numpy().astype(np.float64)
    finally:
        model.train(was_training)
    out = {}
    for name, t in report.items():
        in_report = saliency.token_weights([t], offsets)[0].numpy() > 0
        if not in_report.any():
            continue
        in_evidence = saliency.token_weights([evidence[name]], offsets)[0].numpy() > 0
        firsts = [int(np.argmax((offsets[:, 0] < b) & (offsets[:, 1] > a))) for a, b in t.spans
                  if ((offsets[:, 0] < b) & (offsets[:, 1] > a)).any()]
        out[name] = {"tokens_min": float(np.exp(lp[in_evidence].min())),
                     "tokens_mean": float(np.exp(lp[in_evidence].mean())),
                     "report_min": float(np.exp(lp[in_report].min())),
                     "report_first": float(np.exp(lp[firsts].min()))}
    return out


def agreement_scores(sampled_labels: Sequence[Mapping | None], observations: Iterable[str]) -> dict[str, float]:
    """Share of k sampled reports' final labels that state each observation (positive or uncertain); a sample
    without a report states nothing."""
    k = len(sampled_labels)
    if k == 0:
        raise ValueError("agreement needs at least one sampled report")
    return {o: sum(1 for lab in sampled_labels if lab and lab.get(o) in (1, -1)) / k for o in observations}


# ------------------------------------------------------------------------------------------ calibration
def pav(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Isotonic (non-decreasing) least-squares fit of y on x by pool-adjacent-violators.

    Returns knots (xs, ys) for `np.interp`: each pooled block contributes its lowest and highest x at its
    mean y, so prediction is flat inside a block and linear between blocks (as scikit-learn's
    IsotonicRegression predicts)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    w = np.ones_like(y) if w is None else np.asarray(w, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.shape != w.shape or len(x) == 0:
        raise ValueError("pav needs 1-D x, y (and w) of the same non-zero length")
    order = np.argsort(x, kind="mergesort")
    x, y, w = x[order], y[order], w[order]
    # Ties in x must share one fitted value: pool them first.
    ux, start = np.unique(x, return_index=True)
    ws = np.add.reduceat(w, start)
    ys = np.add.reduceat(w * y, start) / ws
    means, weights, lo, hi = [], [], [], []
    for xi, yi, wi in zip(ux, ys, ws):
        means.append(yi), weights.append(wi), lo.append(xi), hi.append(xi)
        while len(means) > 1 and means[-2] >= means[-1]:  # a violator (or a tie): pool it into its left block
            wt = weights[-2] + weights[-1]
            means[-2] = (means[-2] * weights[-2] + means[-1] * weights[-1]) / wt
            weights[-2], hi[-2] = wt, hi[-1]
            del means[-1], weights[-1], lo[-1], hi[-1]
    xs = np.array([v for a, b in zip(lo, hi) for v in ((a,) if a == b else (a, b))])
    yv = np.array([m for a, b, m in zip(lo, hi, means) for _ in ((a,) if a == b else (a, b))])
    return xs, yv


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def platt(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt scaling on the logit of a raw probability: p = sigmoid(a * logit(x) + b), by maximum likelihood."""
    from scipy.optimize import minimize

    z, y = _logit(x), np.asarray(y, dtype=np.float64)

    def nll(ab):
        s = ab[0] * z + ab[1]
        return float(np.sum(np.logaddexp(0, s) - y * s))

    def grad(ab):
        r = 1 / (1 + np.exp(-(ab[0] * z + ab[1]))) - y
        return np.array([np.sum(r * z), np.sum(r)])

    res = minimize(nll, np.array([1.0, 0.0]), jac=grad, method="BFGS")
    return float(res.x[0]), float(res.x[1])


@dataclass
class Calibration:
    """A monotone map from one raw score to the probability that a stated finding is really present."""

    score: str = DEFAULT_SCORE  # which raw score of `token_scores` it calibrates
    method: str = "isotonic"  # "isotonic" | "platt" | "none" (raw score, clipped)
    xs: list[float] = field(default_factory=list)  # isotonic knots
    ys: list[float] = field(default_factory=list)
    a: float = 1.0  # platt: sigmoid(a * logit(raw) + b)
    b: float = 0.0
    low_below: float = LOW_BELOW
    fitted_on: dict = field(default_factory=dict)  # provenance: data, seed, n findings, validation numbers

    def __post_init__(self) -> None:
        if self.method not in ("isotonic", "platt", "none"):
            raise ValueError(f"unknown calibration method {self.method!r}: isotonic, platt or none")
        if self.method == "isotonic" and (not self.xs or len(self.xs) != len(self.ys)):
            raise ValueError("an isotonic calibration needs knots xs and ys of the same non-zero length")

    def __call__(self, raw):
        """Calibrated probability of raw score(s), inside [P_MIN, P_MAX]: a float for a float, else an array."""
        r = np.asarray(raw, dtype=np.float64)
        if self.method == "isotonic":
            p = np.interp(r, self.xs, self.ys)
        elif self.method == "platt":
            p = 1 / (1 + np.exp(-(self.a * _logit(r) + self.b)))
        else:
            p = r
        p = np.clip(p, P_MIN, P_MAX)
        return float(p) if p.ndim == 0 else p

    def to_json(self) -> dict:
        return asdict(self)

    def save(self, model_dir: str | Path) -> Path:
        path = Path(model_dir) / CALIBRATION_FILE
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path


def fit_calibration(raw: Sequence[float], correct: Sequence[bool | int], *, method: str = "isotonic",
                    score: str = DEFAULT_SCORE, low_below: float = LOW_BELOW, fitted_on: dict | None = None) -> Calibration:
    """Fit a calibrator on validation findings: raw scores and whether each stated finding was really present."""
    x, y = np.asarray(raw, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"need >= 2 (raw, correct) pairs of equal length, got {len(x)} and {len(y)}")
    if np.any((x < 0) | (x > 1)) or not np.all(np.isin(y, (0, 1))):
        raise ValueError("raw scores must lie in [0, 1] and correct be 0/1")
    fitted_on = {"n": int(len(x)), "positive_rate": float(y.mean()), **(fitted_on or {})}
    if method == "isotonic":
        xs, ys = pav(x, y)
        return Calibration(score, method, [round(float(v), 6) for v in xs], [round(float(v), 6) for v in ys],
                           low_below=low_below, fitted_on=fitted_on)
    if method == "platt":
        a, b = platt(x, y)
        return Calibration(score, method, a=a, b=b, low_below=low_below, fitted_on=fitted_on)
    if method == "none":
        return Calibration(score, method, low_below=low_below, fitted_on=fitted_on)
    raise ValueError(f"unknown calibration method {method!r}: isotonic, platt or none")


def load_calibration(model_dir: str | Path) -> Calibration | None:
    """The calibration stored in a model folder (`confidence.json`), or None (e.g. a hub id or a real LVLM)."""
    path = Path(str(model_dir)) / CALIBRATION_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return Calibration(**{k: v for k, v in data.items() if k in Calibration.__dataclass_fields__})


# ------------------------------------------------------------------------------------------ per study
def finding_confidences(model, processor, result, calibration: Calibration | None = None) -> dict[str, float]:
    """{observation: probability that it is really present} for each finding the final report states.

    With a calibration, its raw score calibrated; without one (a model folder with no `confidence.json`),
    the raw `DEFAULT_SCORE`, clipped to [P_MIN, P_MAX] — a token probability, not a calibrated one."""
    cal = calibration or Calibration(method="none")
    return {name: cal(scores[cal.score]) for name, scores in token_scores(model, processor, result).items()}


def is_low(p: float, calibration: Calibration | None = None) -> bool:
    """Whether a finding's probability is low enough for the reviewer to check its sentence first."""
    return p < (calibration.low_below if calibration is not None else LOW_BELOW)


# ------------------------------------------------------------------------------------------ measurement
def reliability(p: Sequence[float], correct: Sequence[bool | int], n_bins: int = ECE_BINS) -> list[dict]:
    """Equal-width bins of predicted probability: per non-empty bin its range, count, mean prediction and
    observed frequency (bin i holds lo <= p < hi; the last also p == 1)."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    if p.shape != y.shape:
        raise ValueError(f"{len(p)} predictions but {len(y)} outcomes")
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    out = []
    for b in range(n_bins):
        sel = idx == b
        if sel.any():
            out.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "n": int(sel.sum()),
                        "mean_p": float(p[sel].mean()), "freq": float(y[sel].mean())})
    return out


def expected_calibration_error(p: Sequence[float], correct: Sequence[bool | int], n_bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean over equal-width bins of |observed frequency - mean prediction|."""
    bins = reliability(p, correct, n_bins)
    n = sum(b["n"] for b in bins)
    return float(sum(b["n"] * abs(b["freq"] - b["mean_p"]) for b in bins) / n) if n else 0.0


def brier(p: Sequence[float], correct: Sequence[bool | int]) -> float:
    """Mean squared error of probabilities against 0/1 outcomes (rewards calibration and sharpness together)."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    return float(np.mean((p - y) ** 2)) if len(p) else 0.0


def auroc(score: Sequence[float], correct: Sequence[bool | int]) -> float | None:
    """Area under the ROC curve (ties count half); None when only one class is present."""
    from scipy.stats import rankdata

    s, y = np.asarray(score, dtype=np.float64), np.asarray(correct, dtype=bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return None
    r = rankdata(s)
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
