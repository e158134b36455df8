"""`medr2 study report` / `export`: what the readers said, with uncertainty, agreement and plots.

From a study folder's reviews (`medr2.study.session.ReviewStore`) and its key:
- per source (unblinded through `key.json`) and Likert item: mean with a 95 % t interval, n and N/A count;
- A/B designs: which source each reader preferred per case, with an exact two-sided sign test (ties dropped);
  multi designs: how often each source was chosen best, with an exact multinomial test of equal shares;
- edits per source: how many changed, deleted or added sentences the readers gave a content or a style reason;
- error tags per source (share of reviews with the tag, and clinically significant) and, per CheXpert
  observation, how often readers changed the report's label with their correction;
- inter-reader agreement on cases every reader saved: Fleiss' kappa (Cohen's for two readers) on the
  per-sentence verdicts and on the error tags, ICC(2,1) (two-way random, absolute agreement) on the overall
  rating; 95 % intervals by a seeded bootstrap over cases;
- seconds per case (median and quartiles) per source and reader;
- matplotlib PNGs, `report.json`, `report.md`, and a long-format CSV (one row per reader x case x source x item,
  one per edit) with its data dictionary.
"""
from __future__ import annotations

import csv
import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from medr2.feedback.record import ERROR_TAGS, ITEM_NA
from medr2.study.manifest import StudyFolder, distinct_labels
from medr2.study.session import ReviewStore

VERDICT_CATEGORIES = ("accept", "edit", "reject")
BOOTSTRAP = 1000
DICTIONARY = [
    ("study_id", "study identifier (study.json)"),
    ("reader", "reader handle (readers.json); never a person's name"),
    ("case_id", "neutral case id (case-001 …); key.json maps it to the original file"),
    ("source", "blinded source id (S1, S2 …) as stored with the review"),
    ("source_label", "what the source is, from key.json (model folder name, 'reference' or a report file; unique "
                     "within the study: a longer path suffix or a number tells two same-named sources apart)"),
    ("side", "where the reader saw this report: A or B (A/B design), A-F (multi design, shuffled per reader and "
             "case); empty for single-report studies"),
    ("order_index", "position of the case in this reader's randomised order (0-based)"),
    ("item", "what the row measures: rating:<item>, preference, tag:<error>, significant:<error>, "
             "verdict:<sentence no.>, edit_reason:<edit no.>:<edit|reject|add> (one row per changed, deleted or "
             "added sentence), seconds, edit_distance, locked"),
    ("value", "the answer: 1-5 or 'na' for ratings; preference: this / other / equal (A/B: this report is better, "
              "the other, equal; multi: this is the best, another is, no clear best); 0/1 for tags and locked; "
              "accept / edit / reject for verdicts; content / style for edit reasons; seconds open→save; words "
              "changed"),
    ("revision", "how many times the reader saved this review"),
]


# ---------------------------------------------------------------- statistics
def mean_ci(values: list[float]) -> dict:
    """Mean with a two-sided 95 % t interval (None bounds below two values)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return {"n": 0, "mean": None, "low": None, "high": None}
    if len(v) < 2 or v.std(ddof=1) == 0:
        return {"n": len(v), "mean": float(v.mean()), "low": None if len(v) < 2 else float(v.mean()),
                "high": None if len(v) < 2 else float(v.mean())}
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return {"n": len(v), "mean": float(v.mean()), "low": float(v.mean() - half), "high": float(v.mean() + half)}


def fleiss_kappa(ratings: list[list[str]], categories: tuple[str, ...]) -> float | None:
    """Fleiss' kappa of items rated by the same number of raters (each item: one category per rater)."""
    if not ratings or len(ratings[0]) < 2:
        return None
    n = len(ratings[0])
    table = np.array([[row.count(c) for c in categories] for row in ratings], dtype=float)
    p_j = table.sum(0) / (len(ratings) * n)
    p_i = ((table ** 2).sum(1) - n) / (n * (n - 1))
    p_e = float((p_j ** 2).sum())
    return None if p_e >= 1.0 else float((p_i.mean() - p_e) / (1 - p_e))


def cohen_kappa(a: list[str], b: list[str]) -> float | None:
    """Cohen's kappa of two raters over the same items."""
    if not a:
        return None
    cats = sorted(set(a) | set(b))
    po = sum(x == y for x, y in zip(a, b)) / len(a)
    pe = sum((a.count(c) / len(a)) * (b.count(c) / len(b)) for c in cats)
    return None if pe >= 1.0 else (po - pe) / (1 - pe)


def icc_2_1(matrix: np.ndarray) -> float | None:
    """ICC(2,1) of an n-targets x k-raters matrix (Shrout & Fleiss: two-way random, absolute agreement)."""
    y = np.asarray(matrix, dtype=float)
    n, k = y.shape
    if n < 2 or k < 2:
        return None
    grand = y.mean()
    msr = k * ((y.mean(1) - grand) ** 2).sum() / (n - 1)
    msc = n * ((y.mean(0) - grand) ** 2).sum() / (k - 1)
    sse = ((y - grand) ** 2).sum() - msr * (n - 1) - msc * (k - 1)
    mse = sse / ((n - 1) * (k - 1))
    denom = msr + (k - 1) * mse + k * (msc - mse) / n
    return None if denom == 0 else float((msr - mse) / denom)


def _bootstrap(groups: list[Any], stat, seed: int = 0) -> tuple[float | None, float | None]:
    """95 % percentile interval of stat(resampled groups), resampling whole cases."""
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(BOOTSTRAP):
        pick = [groups[i] for i in rng.integers(0, len(groups), len(groups))]
        v = stat(pick)
        if v is not None and not math.isnan(v):
            vals.append(v)
    if len(vals) < BOOTSTRAP // 2:
        return None, None
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def _kappa(rows: list[list[str]], categories: tuple[str, ...]) -> float | None:
    if rows and len(rows[0]) == 2:
        return cohen_kappa([r[0] for r in rows], [r[1] for r in rows])
    return fleiss_kappa(rows, categories)


# ---------------------------------------------------------------- the analysis
def equal_shares_p(counts: list[int]) -> float | None:
    """P-value of 'every source is equally often best': the exact multinomial test (sum of the probabilities of
    all outcomes no likelier than the observed one) while the outcomes are few enough to list, else chi-square."""
    from math import comb, factorial, prod

    n, k = sum(counts), len(counts)
    if n == 0 or k < 2:
        return None
    if comb(n + k - 1, k - 1) > 200_000:
        from scipy.stats import chisquare

        return float(chisquare(counts).pvalue)

    def pmf(c) -> float:
        return factorial(n) / prod(factorial(x) for x in c) / k ** n

    def outcomes(left: int, parts: int):
        if parts == 1:
            yield (left,)
            return
        for first in range(left + 1):
            for rest in outcomes(left - first, parts - 1):
                yield (first, *rest)

    observed = pmf(counts) * (1 + 1e-9)  # ties within rounding count as no likelier
    return float(min(1.0, sum(p for c in outcomes(n, k) if (p := pmf(c)) <= observed)))


def best_counts(study: StudyFolder, readers: list[str], by: dict, labels: dict) -> dict:
    """Multi designs: how often each source was chosen best (reader x case), 'no clear best' apart, with a test
    of equal shares over the choices that named one (`equal_shares_p`)."""
    best: Counter = Counter()
    for reader in readers:
        for case in study.case_ids:
            prefs = {s: (by[(reader, case, s)].study or {}).get("preference")
                     for s in study.sources if (reader, case, s) in by}
            chosen = [s for s, p in prefs.items() if p == "this"]
            if chosen:
                best[chosen[0]] += 1
            elif "equal" in prefs.values():
                best["equal"] += 1
    return {**{labels[s]: best[s] for s in study.sources}, "equal": best["equal"],
            "equal_shares_p": equal_shares_p([best[s] for s in study.sources]), "source_ids": list(study.sources)}


def study_labels(study: StudyFolder, key: dict | None = None) -> dict[str, str]:
    """Source id -> label, unique within the study: the labels `create` recorded in key.json; for a key without
    them (a study frozen before labels were recorded), from its model paths and file names. Either way passed
    through `distinct_labels`, so two sources never share a label (the tables below are keyed by label)."""
    key = study.key() if key is None else key
    entries = [key.get("sources", {}).get(s, {}) for s in study.sources]
    paths = []
    for s, entry in zip(study.sources, entries):
        if entry.get("label"):
            paths.append((entry["label"],))
        elif entry.get("kind") == "model":
            model = Path(entry.get("model", s))
            paths.append((model.parts[1:] if model.is_absolute() else model.parts) or (s,))
        else:
            paths.append((entry.get("file") or entry.get("kind") or s,))
    return dict(zip(study.sources, distinct_labels(paths)))


def analyse(study: StudyFolder, reviews=None) -> dict:
    """Every statistic of the module doc as a JSON-able dict."""
    key = study.key()
    if reviews is None:
        store = ReviewStore(study)
        reviews = [r for _, r in store.reviews()]
        store.close()
    by = {(r.reviewer, r.study["case_id"], r.study["source"]): r for r in reviews}
    readers = sorted({r.reviewer for r in reviews})
    labels = study_labels(study, key)
    out: dict[str, Any] = {"study_id": study.study_id, "design": study.design, "readers": readers,
                           "n_reviews": len(reviews), "sources": labels}

    ratings = {}
    for s in study.sources:
        ratings[s] = {}
        for item, _ in study.items:
            vals = [r.study.get("items", {}).get(item) for r in reviews if r.study["source"] == s]
            ratings[s][item] = {**mean_ci([v for v in vals if isinstance(v, int)]),
                                "na": sum(v == ITEM_NA for v in vals)}
    out["ratings"] = ratings

    if study.design == "ab":
        a, b = study.sources
        wins: Counter = Counter()
        for reader in readers:
            for case in study.case_ids:
                r = by.get((reader, case, a))
                if r is None or not r.study.get("preference"):
                    continue
                pref = r.study["preference"]
                wins[a if pref == "this" else b if pref == "other" else "equal"] += 1
        from scipy.stats import binomtest

        n = wins[a] + wins[b]
        out["preference"] = {labels[a]: wins[a], labels[b]: wins[b], "equal": wins["equal"],
                             "sign_test_p": binomtest(wins[a], n, 0.5).pvalue if n else None,
                             "source_ids": [a, b]}
    elif study.design == "multi":
        out["best"] = best_counts(study, readers, by, labels)

    tags = {}
    for s in study.sources:
        mine = [r for r in reviews if r.study["source"] == s]
        tags[s] = {t: {"share": (sum(any(e["tag"] == t for e in r.error_tags) for r in mine) / len(mine)) if mine else None,
                       "significant": sum(any(e["tag"] == t and e["clinically_significant"] for e in r.error_tags)
                                          for r in mine)} for t in ERROR_TAGS}
    out["error_tags"] = tags
    changed = {s: Counter() for s in study.sources}
    for r in reviews:
        final, mine = (r.labels or {}).get("final", {}), (r.labels or {}).get("reviewer", {})
        for obs in final:
            if final.get(obs) != mine.get(obs):
                changed[r.study["source"]][obs] += 1
    out["observations_changed"] = {s: dict(c) for s, c in changed.items()}
    edits: dict[str, Counter] = {s: Counter() for s in study.sources}
    for r in reviews:
        for e in r.study.get("edit_reasons") or []:
            edits[r.study["source"]][e["reason"]] += 1
            edits[r.study["source"]][f"{e.get('change', 'edit')}:{e['reason']}"] += 1
    out["edit_reasons"] = {s: {"content": c["content"], "style": c["style"],
                               "by_change": {k: c[k] for k in sorted(c) if ":" in k}} for s, c in edits.items()}

    # agreement on what every reader saved
    complete = [c for c in study.case_ids
                if all((rd, c, s) in by for rd in readers for s in study.sources)] if len(readers) >= 2 else []
    agreement: dict[str, Any] = {"cases": len(complete), "readers": len(readers)}
    if complete:
        def verdict_rows(cases):
            rows = []
            for c in cases:
                for s in study.sources:
                    per = [[v["verdict"] for v in by[(rd, c, s)].sentence_verdicts] for rd in readers]
                    for i in range(min(map(len, per))):
                        rows.append([p[i] for p in per])
            return rows

        def tag_rows(cases):
            return [["1" if any(e["tag"] == t for e in by[(rd, c, s)].error_tags) else "0" for rd in readers]
                    for c in cases for s in study.sources for t in ERROR_TAGS]

        def rating_matrix(cases):
            m = [[by[(rd, c, s)].rating for rd in readers] for c in cases for s in study.sources]
            m = [row for row in m if all(v is not None for v in row)]
            return np.array(m, dtype=float) if m else np.zeros((0, len(readers)))

        name = "cohen_kappa" if len(readers) == 2 else "fleiss_kappa"
        for what, rows_of, cats in (("verdicts", verdict_rows, VERDICT_CATEGORIES), ("error_tags", tag_rows, ("0", "1"))):
            value = _kappa(rows_of(complete), cats)
            low, high = _bootstrap(complete, lambda cs, f=rows_of, k=cats: _kappa(f(cs), k), seed=study.seed)
            agreement[what] = {"statistic": name, "value": value, "low": low, "high": high, "items": len(rows_of(complete))}
        value = icc_2_1(rating_matrix(complete))
        low, high = _bootstrap(complete, lambda cs: icc_2_1(rating_matrix(cs)), seed=study.seed)
        agreement["overall_rating"] = {"statistic": "icc_2_1", "value": value, "low": low, "high": high,
                                       "items": len(rating_matrix(complete))}
    out["agreement"] = agreement

    times: dict[str, Any] = {}
    for group, pick in (("source", lambda r: labels[r.study["source"]]), ("reader", lambda r: r.reviewer)):
        vals = defaultdict(list)
        for r in reviews:
            vals[pick(r)].append(float(r.study.get("seconds", 0.0)))
        times[group] = {k: {"n": len(v), "median": float(np.median(v)), "q1": float(np.percentile(v, 25)),
                            "q3": float(np.percentile(v, 75))} for k, v in vals.items()}
    out["seconds_per_review"] = times
    out["edit_distance"] = {labels[s]: mean_ci([float(r.study.get("edit_distance", 0)) for r in reviews
                                                if r.study["source"] == s]) for s in study.sources}
    return out


# ---------------------------------------------------------------- outputs
def long_rows(study: StudyFolder, reviews) -> list[dict]:
    labels = study_labels(study)
    rows = []
    for r in reviews:
        st = r.study
        base = {"study_id": study.study_id, "reader": r.reviewer, "case_id": st["case_id"], "source": st["source"],
                "source_label": labels.get(st["source"], st["source"]), "side": st.get("side") or "",
                "order_index": st.get("order_index"), "revision": st.get("revision")}
        items = [(f"rating:{k}", st.get("items", {}).get(k, "")) for k, _ in study.items]
        if study.design in ("ab", "multi"):
            items.append(("preference", st.get("preference") or ""))
        tagged = {e["tag"]: e["clinically_significant"] for e in r.error_tags}
        items += [(f"tag:{t}", int(t in tagged)) for t in ERROR_TAGS]
        items += [(f"significant:{t}", int(bool(tagged.get(t)))) for t in ERROR_TAGS]
        items += [(f"verdict:{i}", v["verdict"]) for i, v in enumerate(r.sentence_verdicts, 1)]
        items += [(f"edit_reason:{i}:{e.get('change', 'edit')}", e["reason"])
                  for i, e in enumerate(st.get("edit_reasons") or [], 1)]
        items += [("seconds", st.get("seconds")), ("edit_distance", st.get("edit_distance")),
                  ("locked", int(bool(st.get("locked"))))]
        rows += [{**base, "item": item, "value": value} for item, value in items]
    return rows


def export(study: StudyFolder, path: str | Path) -> int:
    """The long-format CSV and `<name>.dictionary.csv` beside it; returns the number of rows."""
    store = ReviewStore(study)
    reviews = [r for _, r in store.reviews()]
    store.close()
    rows = long_rows(study, reviews)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = [c for c, _ in DICTIONARY]
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    with open(path.with_suffix(".dictionary.csv"), "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["column", "meaning"])
        writer.writerows(DICTIONARY)
    return len(rows)


def plots(result: dict, study: StudyFolder, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    labels = result["sources"]
    paths = []
    fig, ax = plt.subplots(figsize=(7, 3.5))
    items = [k for k, _ in study.items]
    width = 0.8 / max(1, len(labels))
    for j, s in enumerate(study.sources):
        stats = [result["ratings"][s][k] for k in items]
        means = [st["mean"] or 0 for st in stats]
        err = [[(st["mean"] - st["low"]) if st["low"] is not None else 0 for st in stats],
               [(st["high"] - st["mean"]) if st["high"] is not None else 0 for st in stats]]
        ax.bar(np.arange(len(items)) + j * width, means, width, yerr=err, capsize=3, label=labels[s])
    ax.set_xticks(np.arange(len(items)) + width * (len(labels) - 1) / 2, items)
    ax.set_ylim(0, 5.5)
    ax.set_ylabel("mean rating (95 % CI)")
    ax.legend(fontsize=8)
    ax.set_title("Ratings per source")
    fig.tight_layout()
    paths.append(out_dir / "ratings_by_source.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for j, s in enumerate(study.sources):
        shares = [result["error_tags"][s][t]["share"] or 0 for t in ERROR_TAGS]
        ax.bar(np.arange(len(ERROR_TAGS)) + j * width, shares, width, label=labels[s])
    ax.set_xticks(np.arange(len(ERROR_TAGS)) + width * (len(labels) - 1) / 2,
                  [t.replace("_", "\n") for t in ERROR_TAGS], fontsize=8)
    ax.set_ylabel("share of reviews")
    ax.legend(fontsize=8)
    ax.set_title("Error tags per source")
    fig.tight_layout()
    paths.append(out_dir / "error_tags.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    if "preference" in result:
        pref = result["preference"]
        names = [labels[s] for s in pref["source_ids"]] + ["equal"]
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.bar(names, [pref[n] for n in names], color=["#4c72b0", "#dd8452", "#999999"])
        p = pref["sign_test_p"]
        ax.set_title(f"Preferred report (sign test p = {p:.3g})" if p is not None else "Preferred report")
        ax.set_ylabel("reader x case")
        fig.tight_layout()
        paths.append(out_dir / "preference.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    if "best" in result:
        best = result["best"]
        names = [labels[s] for s in best["source_ids"]] + ["equal"]
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar(names, [best[n] for n in names], color=["#4c72b0"] * (len(names) - 1) + ["#999999"])
        p = best["equal_shares_p"]
        ax.set_title(f"Chosen best (equal shares p = {p:.3g})" if p is not None else "Chosen best")
        ax.set_ylabel("reader x case")
        ax.tick_params(axis="x", labelsize=8)
        fig.tight_layout()
        paths.append(out_dir / "best.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def _fmt(x: Any) -> str:
    return "–" if x is None else f"{x:.2f}" if isinstance(x, float) else str(x)


def markdown(result: dict) -> str:
    labels = result["sources"]
    lines = [f"### Study {result['study_id']} · {result['design']} · {len(result['readers'])} readers · "
             f"{result['n_reviews']} reviews", "", "| source | item | n | mean | 95 % CI | N/A |", "|---|---|---|---|---|---|"]
    for s, items in result["ratings"].items():
        for item, st in items.items():
            lines.append(f"| {labels[s]} | {item} | {st['n']} | {_fmt(st['mean'])} | {_fmt(st['low'])} – {_fmt(st['high'])} | {st['na']} |")
    if "preference" in result:
        p = result["preference"]
        a, b = (labels[s] for s in p["source_ids"])
        pv = "–" if p["sign_test_p"] is None else f"{p['sign_test_p']:.2g}"
        lines += ["", f"**Preference** {a}: {p[a]} · {b}: {p[b]} · equal: {p['equal']} · sign test p = {pv}"]
    if "best" in result:
        b = result["best"]
        pv = "–" if b["equal_shares_p"] is None else f"{b['equal_shares_p']:.2g}"
        lines += ["", "**Best report** " + " · ".join(f"{labels[s]}: {b[labels[s]]}" for s in b["source_ids"])
                  + f" · no clear best: {b['equal']} · equal shares p = {pv}"]
    if "edit_reasons" in result:
        lines += ["", "**Edits** (content / style) " + " · ".join(
            f"{labels[s]}: {e['content']} / {e['style']}" for s, e in result["edit_reasons"].items())]
    ag = result["agreement"]
    lines += ["", f"**Agreement** on {ag['cases']} cases every reader saved:"]
    for what in ("verdicts", "error_tags", "overall_rating"):
        if what in ag:
            a = ag[what]
            lines.append(f"- {what}: {a['statistic']} {_fmt(a['value'])} (95 % CI {_fmt(a['low'])} – {_fmt(a['high'])}, {a['items']} items)")
    lines += ["", "**Seconds per review** (median [q1, q3]): " + " · ".join(
        f"{k} {v['median']:.0f} [{v['q1']:.0f}, {v['q3']:.0f}]" for k, v in result["seconds_per_review"]["source"].items())]
    return "\n".join(lines)


def write_report(study: StudyFolder, out_dir: str | Path | None = None) -> Path:
    out = Path(out_dir) if out_dir else study.root / "results"
    result = analyse(study)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    (out / "report.md").write_text(markdown(result) + "\n", encoding="utf-8")
    plots(result, study, out)
    export(study, out / "responses_long.csv")
    return out
