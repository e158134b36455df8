"""Evaluate a model on a dataset split: clinical efficacy, NLG, location, draft vs final, format.

Runs `medr2.inference.pipeline.Pipeline.run_batch` over a held-out phantom set (unseen seed) or an R2Gen-layout
dataset (IU X-Ray, MIMIC-CXR), then scores with `medr2.evaluation.metrics` — the same labeler and CE functions as
the GRPO reward. It also checks *where*: for each true-positive observation whose reference names a side or a lung
zone, whether the generated report names the same ones.

Hands on: `<out>/eval.json` (every number, each labelled with its protocol), `<out>/per_observation.png`
and a printed table.

Run: `medr2 evaluate --model assets/model --n 500 --output_dir runs/eval/medr2` (phantom test set) or
`medr2 evaluate --model M --dataset_dir DIR --split test` (an R2Gen-layout dataset); `--config eval.yaml` sets the same
options from a file. Two evaluations of the same set compare with `medr2 compare`. On a dataset the model reads up to
`--max_images` views of each study, frontal first (default: its card's `images_per_study`, else 1); `eval.json` records
`images_per_study` and how many images were read.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medr2.evaluation import metrics
from medr2.labeler.findings import find_mentions
from medr2.phantom.specs import FilmSourceArguments

logger = logging.getLogger(__name__)

PHANTOM_TEST_SEED = 3  # training uses seed 1, stage-0 validation seed 2: the test set is never seen


@dataclass
class EvalConfig(FilmSourceArguments):
    """`medr2 evaluate` options (flags or a `--config` YAML file)."""

    model: str = field(default="", metadata={"help": "model path or hub id (default: $MEDR2_MODEL or the embedded model)"})
    dataset_dir: str | None = field(default=None, metadata={"help": "R2Gen-layout dataset folder; empty = phantom test set",
                                                            "aliases": ["--data_dir", "--data"]})
    split: str = field(default="test", metadata={"help": "split of the R2Gen dataset"})
    max_images: int | None = field(default=None, metadata={"help": "with --dataset_dir: images per study sent to the model, "
                                                                   "frontal first (IU X-Ray: 2 = frontal + lateral); default: "
                                                                   "the model card's images_per_study, else 1"})
    n: int = field(default=500, metadata={"help": "number of studies (phantoms generated; datasets truncated)"})
    seed: int = field(default=PHANTOM_TEST_SEED, metadata={"help": "phantom seed of the test set"})
    batch_size: int = field(default=16, metadata={"help": "generation batch size"})
    max_new_tokens: int = field(default=640, metadata={"help": "generation limit"})
    nlg: bool = field(default=True, metadata={"help": "compute BLEU/METEOR/ROUGE-L/CIDEr"})
    output_dir: str = field(default="runs/eval", metadata={"help": "output folder", "aliases": ["--out"]})
    film_size: int = field(default=256, metadata={"help": "phantom film side in px (512 gives the reflection's magnified looks real detail)"})
    looks: str = field(default="auto", metadata={"help": "reflection looks: auto | proposed | model | off (medr2.reflection)"})
    max_looks: int = field(default=3, metadata={"help": "most looks per study"})
    base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible server to evaluate (see `medr2 generate --help`)"})
    served_model: str | None = field(default=None, metadata={"help": "the model's name on the server (default: the first listed)"})
    api_key: str | None = field(default=None, metadata={"help": "server API key (default: $MEDR2_API_KEY, else $OPENAI_API_KEY)"})
    device_map: str | None = field(default=None, metadata={"help": "'auto' spreads a large model over all GPUs"})


SIDE_WORDS = {"right": ("right",), "left": ("left",), "bilateral": ("bilateral", "both", "bibasilar", "bibasal")}
ZONE_WORDS = {"upper": ("upper", "apex", "apical"), "mid": ("mid", "middle", "perihilar"),
              "lower": ("lower", "base", "basal", "basilar", "bibasilar", "bibasal")}
# Only lung findings are placed in a zone; a pneumothorax's "apical" or an effusion's "basal" is its size/shape.
ZONED_OBSERVATIONS = ("Consolidation", "Pneumonia", "Atelectasis", "Lung Opacity", "Lung Lesion")
# A device sentence names the insertion side first ("left chest wall pacemaker with leads in the right
# atrium"): later side words describe where the tip or leads lie, not the device's side.
FIRST_SIDE_ONLY = ("Support Devices",)


def _sentences_by_observation(report: str) -> dict[str, list[str]]:
    """observation -> the lower-cased sentences that mention it positively or hedged (one labeler pass)."""
    from medr2.labeler.findings import split_sentences

    spans = split_sentences(report)
    idx: dict[str, set[int]] = {}
    for m in find_mentions(report):
        if m.value in (1, -1) and m.sentence_index < len(spans):
            idx.setdefault(m.observation, set()).add(m.sentence_index)
    return {obs: [report[spans[i][0]:spans[i][1]].lower() for i in sorted(ids)] for obs, ids in idx.items()}


def _words_found(text: str, vocabulary: dict[str, tuple[str, ...]]) -> list[tuple[int, str]]:
    """(position, canonical word) of every vocabulary word in `text`, in reading order."""
    return sorted((m.start(), key) for key, words in vocabulary.items() for w in words for m in re.finditer(rf"\b{w}\b", text))


def _location_of(sentences: list[str], observation: str) -> tuple[frozenset[str], frozenset[str]]:
    sides: set[str] = set()
    zones: set[str] = set()
    for sentence in sentences:
        found = [w for _, w in _words_found(sentence, SIDE_WORDS)]
        sides.update(found[:1] if observation in FIRST_SIDE_ONLY else found)
        if observation in ZONED_OBSERVATIONS:
            zones.update(w for _, w in _words_found(sentence, ZONE_WORDS))
    if {"right", "left"} <= sides:
        sides = (sides - {"right", "left"}) | {"bilateral"}
    return frozenset(sides), frozenset(zones)


def stated_location(report: str, observation: str) -> tuple[frozenset[str], frozenset[str]]:
    """(sides, zones) a report states for one observation, read from the sentences that mention it.

    Right + left together is bilateral, so "bilateral" and "right and left" compare equal."""
    return _location_of(_sentences_by_observation(report or "").get(observation, []), observation)


SEVERITY_WORDS = {"small": ("small",), "moderate": ("moderate", "moderately"), "large": ("large",),
                  "mild": ("mild", "mildly"), "severe": ("severe", "severely")}


def _severity_of(sentences: list[str]) -> frozenset[str]:
    return frozenset(w for sentence in sentences for _, w in _words_found(sentence, SEVERITY_WORDS))


def stated_severity(report: str, observation: str) -> frozenset[str]:
    """Severity words a report states for one observation ("moderate right pleural effusion" -> {"moderate"})."""
    return _severity_of(_sentences_by_observation(report or "").get(observation, []))


def stated_details(report: str) -> dict[str, tuple[frozenset[str], frozenset[str], frozenset[str]]]:
    """observation -> (sides, zones, severity words) for every observation the report names, one labeler pass."""
    return {observation: (*_location_of(sentences, observation), _severity_of(sentences))
            for observation, sentences in _sentences_by_observation(report or "").items()}


def location_scores(references: list[str], reports: list[str]) -> dict:
    """Side and zone agreement over true positives: observations both reports mention (positive or hedged)
    where the reference states a side / a lung zone. Correct = the generated report states the same set.

    Read from text on both sides, so the reference scores 1.0 against itself by construction and the same
    check runs on real datasets (the phantom ground truth is what its reference report says)."""
    counts = {"side_total": 0, "side_correct": 0, "zone_total": 0, "zone_correct": 0}
    for reference, report in zip(references, reports):
        ref_sentences, gen_sentences = _sentences_by_observation(reference or ""), _sentences_by_observation(report or "")
        for observation in ref_sentences.keys() & gen_sentences.keys():  # true positives; CE metrics count the rest
            ref_sides, ref_zones = _location_of(ref_sentences[observation], observation)
            gen_sides, gen_zones = _location_of(gen_sentences[observation], observation)
            if ref_sides:
                counts["side_total"] += 1
                counts["side_correct"] += int(gen_sides == ref_sides)
            if ref_zones:
                counts["zone_total"] += 1
                counts["zone_correct"] += int(gen_zones == ref_zones)
    return {**counts,
            "side_accuracy": counts["side_correct"] / counts["side_total"] if counts["side_total"] else None,
            "zone_accuracy": counts["zone_correct"] / counts["zone_total"] if counts["zone_total"] else None}


def load_eval_set(config: EvalConfig, max_images: int | None = None):
    """(ids, studies, reference reports): each study one PIL image, or with `max_images` > 1 (default:
    `config.max_images`, else 1) a list of up to that many, frontal first (dataset studies; phantoms have one film)."""
    from PIL import Image

    max_images = max_images or config.max_images or 1
    if config.dataset_dir:
        from medr2.data.datasets import DatasetError, image_file, image_files, read_r2gen

        records = read_r2gen(config.dataset_dir, splits=(config.split,))[: config.n]
        if not records:
            raise ValueError(f"no {config.split!r} studies in {config.dataset_dir}")
        if max_images == 1:
            images = [Image.open(image_file(config.dataset_dir, r)).convert("L") for r in records]
        else:
            images = []
            for r in records:
                paths = image_files(config.dataset_dir, r)[:max_images]
                if not paths:
                    raise DatasetError(f"study {r['id']!r} has no image (a reports-only dataset?)")
                images.append([Image.open(path).convert("L") for path in paths])
        return [r["id"] for r in records], images, [r["report"] for r in records]
    from tqdm import tqdm

    from medr2.phantom.generator import generate_studies

    films = config.films(size=config.film_size)
    studies = list(tqdm(generate_studies(config.n, config.seed, films), total=config.n, desc="phantoms", disable=config.n < 50))
    return [s.study_id for s in studies], [Image.fromarray(s.image) for s in studies], [s.report for s in studies]


def confidence_summary(results, references: list[str]) -> dict:
    """How well the calibrated per-finding confidence matches reality on this set: a stated finding (positive or
    hedged in the final report) counts as right when the reference report states it too (hedged = found)."""
    from medr2.labeler.findings import label_report
    from medr2.trust.confidence import brier, expected_calibration_error

    p, right = [], []
    for result, reference in zip(results, references):
        ref = label_report(reference)
        for obs, prob in (result.confidence or {}).items():
            p.append(prob)
            right.append(ref.get(obs) in (1, -1))
    if not p:
        return {"n_findings": 0}
    return {"n_findings": len(p), "share_right": sum(right) / len(p), "mean_confidence": sum(p) / len(p),
            "ece": expected_calibration_error(p, right), "brier": brier(p, right),
            "low": sum(len(r.low_confidence) for r in results)}


def count_input_checks(results) -> dict:
    """How many studies the input gate flagged as outside the training distribution (and how many it could not
    judge: models without stored statistics)."""
    checks = [r.input_check for r in results if r.input_check is not None]
    return {"n": len(checks), "flagged": sum(c.in_distribution is False for c in checks),
            "unknown": sum(c.in_distribution is None for c in checks)}


def summarize(results, references: list[str], nlg: bool = True) -> dict:
    """Every number for one model on one set."""
    from medr2.evaluation.rewards import format_reward, medr2_format_reward
    from medr2.labeler.findings import label_reports

    finals = [r.output.report.text if r.output.report else "" for r in results]
    drafts = [r.output.draft.text if r.output.draft else "" for r in results]
    ref_labels = label_reports(references)
    final_labels = [r.final_labels or {k: None for k in ref_labels[0]} for r in results]
    out = {"n": len(results), "final": metrics.ce_scores(final_labels, ref_labels),
           # detection view: a hedged mention ("concerning for pneumonia") counts as found. The phantoms hedge
           # most pneumonias at random, so positive-only F1 also scores a coin flip the film cannot show
           "final_uncertain_as_positive": metrics.ce_scores(final_labels, ref_labels, uncertain_as_positive=True)}
    has_draft = any(drafts)
    if has_draft:
        draft_labels = [r.draft_labels or {k: None for k in ref_labels[0]} for r in results]
        out["draft"] = metrics.ce_scores(draft_labels, ref_labels)
    texts = [r.raw_text for r in results]
    out["format"] = {
        "mrg_r1_format_failure_rate": 1 - sum(format_reward(texts)) / len(texts),
        "medr2_format_failure_rate": 1 - sum(medr2_format_reward(texts)) / len(texts),
        "missing_report_rate": sum(1 for f in finals if not f) / len(finals),
        "mean_tokens": sum(r.n_tokens for r in results) / len(results),
        "mean_generate_s": sum(r.timings.get("generate_s", 0) for r in results) / len(results),
    }
    if nlg:
        out["nlg"] = metrics.nlg_scores(finals, references)
    out["location"] = location_scores(references, finals)
    if has_draft:
        from medr2.evaluation.reflection import reflection_summary

        out["reflection"] = reflection_summary(results, references)
    return out


def plot_per_observation(summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in summary["final"]["per_observation"] if r["support"] > 0]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["f1"] for r in rows], 0.4, label="final report")
    if "draft" in summary:
        draft = {r["observation"]: r["f1"] for r in summary["draft"]["per_observation"]}
        ax.bar(x + 0.2, [draft[r["observation"]] for r in rows], 0.4, label="draft")
    ax.set_xticks(x, [r["observation"] for r in rows], rotation=40, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1 (positive-only)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_summary(summary: dict) -> str:
    f = summary["final"]
    lines = [f"n = {summary['n']}",
             f"CE example-based F1 (PromptMRG, 14): {f[metrics.PROTOCOL_EXAMPLE]['f1']:.3f}",
             f"CE micro F1 (R2Gen, 14):             {f[metrics.PROTOCOL_R2GEN]['micro']['f1']:.3f}   macro {f[metrics.PROTOCOL_R2GEN]['macro']['f1']:.3f}"]
    if "draft" in summary:
        lines.append(f"draft: example F1 {summary['draft'][metrics.PROTOCOL_EXAMPLE]['f1']:.3f}, micro F1 {summary['draft'][metrics.PROTOCOL_R2GEN]['micro']['f1']:.3f}")
    if summary.get("reflection"):
        from medr2.evaluation.reflection import format_reflection

        lines += format_reflection(summary["reflection"])
    if "location" in summary:
        loc = summary["location"]
        lines.append(f"side accuracy {loc['side_accuracy']}, zone accuracy {loc['zone_accuracy']} (true positives)")
    lines.append("format: " + ", ".join(f"{k} {v:.3f}" for k, v in summary["format"].items()))
    if summary.get("confidence", {}).get("n_findings"):
        c = summary["confidence"]
        lines.append(f"confidence: {c['n_findings']} stated findings, {c['share_right']:.3f} right, mean confidence "
                     f"{c['mean_confidence']:.3f}, ECE {c['ece']:.3f}, {c['low']} marked low")
    if summary.get("input_check"):
        c = summary["input_check"]
        lines.append(f"input gate: {c['flagged']} of {c['n']} studies flagged as outside the training distribution"
                     + (f", {c['unknown']} unknown (no input statistics)" if c["unknown"] else ""))
    lines.append(f"{'observation':28s} {'P':>6s} {'R':>6s} {'F1':>6s} {'support':>8s}")
    lines += [f"{r['observation']:28s} {r['precision']:6.3f} {r['recall']:6.3f} {r['f1']:6.3f} {r['support']:8d}"
              for r in f["per_observation"] if r["support"] or r["predicted"]]
    return "\n".join(lines)


def images_per_study(config: EvalConfig, model: str) -> int:
    """Images per study the evaluation sends: `--max_images`, else the model card's `images_per_study`, else 1
    (phantom studies have one film: more is refused there)."""
    from medr2.inference.pipeline import read_model_card

    if config.max_images is not None:
        if config.max_images < 1:
            raise ValueError(f"--max_images must be >= 1, got {config.max_images}")
        if config.max_images > 1 and not config.dataset_dir:
            raise ValueError("--max_images > 1 needs --dataset_dir: phantom studies have one film")
        return config.max_images
    if not config.dataset_dir or not model or not Path(model).is_dir():
        return 1
    return max(1, int(read_model_card(model).get("images_per_study", 1)))


def run(config: EvalConfig) -> dict:
    from medr2.inference.pipeline import PipelineConfig, default_model, make_pipeline

    served = config.base_url or config.model.startswith(("http://", "https://"))
    model = config.model or ("" if served else default_model())
    n_images = images_per_study(config, "" if str(model).startswith(("http://", "https://")) else model)
    ids, images, references = load_eval_set(config, n_images)  # first: a bad data option fails before a model loads
    pipe = make_pipeline(PipelineConfig(model=model,
                                        max_new_tokens=config.max_new_tokens, looks=config.looks, max_looks=config.max_looks,
                                        device_map=config.device_map, base_url=config.base_url,
                                        served_model=config.served_model, api_key=config.api_key))
    if n_images > 1 and not getattr(pipe, "multi_image", False):
        if config.max_images is not None:
            raise ValueError(f"{type(pipe).__name__} takes one image a study: evaluate with --max_images 1")
        logger.info("%s takes one image a study: evaluating on the frontal images only", type(pipe).__name__)
        n_images, images = 1, [study[0] for study in images]
    from tqdm import tqdm

    results = []
    for i in tqdm(range(0, len(images), config.batch_size), desc="evaluate", unit="batch"):
        results += pipe.run_batch(images[i:i + config.batch_size], batch_size=config.batch_size, confidence=True)
    summary = summarize(results, references, nlg=config.nlg)
    summary["input_check"] = count_input_checks(results)
    if pipe.calibration is not None:
        summary["confidence"] = confidence_summary(results, references)
    summary["config"] = {**asdict(config), "max_images": n_images}
    # what the model read: the most images a study could bring, and how many it did bring in all
    summary["images_per_study"] = n_images
    summary["images_read"] = sum(len(s) if isinstance(s, list) else 1 for s in images)
    if not config.dataset_dir:  # the same phantom seed draws different films across generator versions
        from medr2.phantom.generator import GENERATOR_VERSION

        summary["config"]["phantom_generator_version"] = GENERATOR_VERSION
    summary["provenance"] = asdict(pipe.provenance)
    # where the weights really ran: the devices holding them, and accelerate's module placement when --device_map split
    # the model over several (a served model: nothing known here)
    model = getattr(pipe, "model", None)
    placement = getattr(model, "hf_device_map", None)
    summary["device_map"] = {"requested": config.device_map,
                             "devices": sorted({str(p.device) for p in model.parameters()}) if model is not None else None,
                             "placement": dict(placement) if placement else None}
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(summary, indent=2))
    with (out / "predictions.jsonl").open("w") as fh:
        # the reference each study was scored against travels with it: `medr2 compare` reads it instead of drawing
        # the films again (and a phantom set stays comparable after the generator changes)
        for i, r, reference in zip(ids, results, references):
            fh.write(json.dumps({"id": i, "text": r.raw_text, "reference": reference, "looks": [lk.to_json() for lk in r.looks],
                                 "consistency": r.consistency.to_json() if r.consistency is not None else None,
                                 **({"images": len(r.images)} if n_images > 1 else {})}) + "\n")
    plot_per_observation(summary, out / "per_observation.png", f"{Path(pipe.config.model).name or pipe.provenance.model}: per-observation F1")
    return summary


def cli_evaluate(argv: list[str]) -> int:
    from medr2.cli import UsageError, fail, parse_config

    try:
        config = parse_config("medr2 evaluate", EvalConfig, argv, description="CE + NLG evaluation of a model on a dataset split.")
    except UsageError as exc:
        return fail("medr2 evaluate", exc)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from medr2.modeling.model import ModelLoadError
    from medr2.phantom.ct_volume import CTUnavailable

    try:
        summary = run(config)
    except (ValueError, OSError, ModelLoadError, CTUnavailable) as exc:
        return fail("medr2 evaluate", exc)
    print(format_summary(summary))
    return 0
