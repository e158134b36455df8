"""Which vision blocks should each finding's saliency map fuse? Chosen on validation phantoms, per finding.

Fusing every vision block (the default) helps pleural signs, whose evidence sits at an edge the last block smears,
and hurts parenchymal ones, whose maps the early blocks pull towards rib and vessel edges (docs/saliency.md).
This measures, on held-out **validation** phantoms (seed 2, never the test seed 3), the pointing game (the map's
peak within one vision patch of the finding's mask) of every depth cut-off "blocks k..L" for each true-positive
finding the model reports, and picks per finding (CheXpert observation) the cut-off with the best pointing, but
only where it beats all blocks by more than chance: a paired sign test on the findings where the two disagree
(net wins > z * sqrt(discordant), z = 1.96). Findings with fewer than `--min_n` true positives keep all blocks.
Only L candidates per finding, so the choice has little room to overfit the validation set.

Run: `medr2 saliency-depth --model assets/model --n 1800 --seed 2 --write assets/model/saliency.json`
A model whose architecture saliency has no layer entry for is refused in one line right after loading.
Hands on: a table on stdout; with `--write`, the weights where `Pipeline.saliency` reads them (the model folder's
`saliency.json`); with `--out`, every measurement as JSON. Measure the choice on the test seed with
`benchmarks/saliency_faithfulness.py` (which reports the model's weights and uniform fusion side by side).
"""
from __future__ import annotations

import json
import logging
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medr2 import saliency as S

logger = logging.getLogger(__name__)

VALIDATION_SEED = 2  # the phantom seed to choose on
TEST_SEED = 3  # `medr2 evaluate`'s held-out phantoms: never choose on it


@dataclass
class DepthConfig:
    """`medr2 saliency-depth` options (flags or a `--config` YAML file)."""

    model: str | None = field(default=None, metadata={"help": "model folder (a trained medr2 model)"})
    n: int = field(default=1800, metadata={"help": "validation phantom studies (600 left consolidation and fracture undecided)"})
    seed: int = field(default=VALIDATION_SEED, metadata={"help": "phantom seed (2 = validation; 3, the test seed, is refused)"})
    min_n: int = field(default=20, metadata={"help": "true positives a finding needs for its own choice"})
    z: float = field(default=1.96, metadata={"help": "sign-test threshold for leaving the full fusion"})
    batch_size: int = field(default=25, metadata={"help": "generation batch size", "aliases": ["--batch"]})
    max_new_tokens: int = field(default=640, metadata={"help": "generation limit"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    write: str | None = field(default=None, metadata={"help": "write the chosen weights here (the model folder's saliency.json)"})
    out: str | None = field(default=None, metadata={"help": "write every measurement (per-finding table, rows) as JSON here"})


@dataclass
class Generation:
    """One study's greedy generation, with the single-image inputs its saliency maps are computed on."""

    inputs: object  # BatchFeature of this image alone
    new_ids: torch.Tensor  # [1, T] generated ids up to and including the end-of-sequence token
    final_labels: dict | None  # labels of the final report (None: no report)


def cutoff_weights(cutoff: int, n_layers: int) -> list[float]:
    """Block weights that fuse blocks `cutoff`..L-1 (0 = all blocks, L-1 = the last block alone)."""
    return [0.0] * cutoff + [1.0] * (n_layers - cutoff)


def choose_cutoffs(hits: dict[str, list[list[float]]], min_n: int, z: float = 1.96) -> dict[str, int]:
    """target -> chosen cut-off, from per-target lists of per-cut-off pointing hits [n][L]. A cut-off
    replaces the full fusion (cut-off 0) only when it wins more of the true positives where the two disagree
    than chance allows (net wins > z * sqrt(discordant pairs), a sign test); among those, the largest net
    gain wins, ties going to the shallower cut-off. Targets with fewer than `min_n` true positives keep 0."""
    chosen = {}
    for target, rows in hits.items():
        if len(rows) < min_n:
            continue
        h = np.asarray(rows, dtype=float)
        wins, losses = ((h > h[:, :1]).sum(0), (h < h[:, :1]).sum(0))
        net = (wins - losses).astype(float)
        net[(net <= z * np.sqrt(wins + losses)) | (np.arange(h.shape[1]) == 0)] = -np.inf
        if np.isfinite(net.max()):
            chosen[target] = int(np.argmax(net))  # argmax takes the first maximum: the shallower cut-off
    return chosen


def generate(pipe, studies, batch_size: int) -> list[Generation]:
    """Batched greedy generation; each study keeps its own single-image inputs for saliency."""
    out: list[Generation] = []
    for i in range(0, len(studies), batch_size):
        results = pipe.run_batch([s.image for s in studies[i:i + batch_size]], batch_size=batch_size,
                                 keep_saliency_inputs=True)
        out += [Generation(r.saliency_inputs["inputs"], r.saliency_inputs["new_ids"], r.final_labels) for r in results]
        logger.info("generated %d/%d", len(out), len(studies))
    return out


def ground_truth(study) -> dict[str, np.ndarray]:
    """observation -> union mask of the study's findings of that observation."""
    masks: dict[str, np.ndarray] = {}
    for f in study.findings:
        masks[f.observation] = masks.get(f.observation, np.zeros_like(f.mask)) | f.mask
    return masks


def pointing_hit(grid: np.ndarray, mask: np.ndarray, patch_px: float) -> float:
    """1.0 when the map's peak (upsampled to the film) lies within one vision patch of the mask, else 0.0."""
    from scipy import ndimage

    heat = S.upsample(S.normalise(grid), mask.shape)
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return float(ndimage.distance_transform_edt(~mask)[peak] <= patch_px)


def collect(model, tokenizer, studies, generations: list[Generation]) -> tuple[list[dict], int]:
    """Per reported true-positive finding: its target and the pointing hit of every depth cut-off."""
    rows, n_layers = [], 0
    for i, (study, gen) in enumerate(zip(studies, generations)):
        text, offsets = S.token_char_spans(tokenizer, gen.new_ids[0].tolist())
        truth = ground_truth(study)
        # the report sentences of each finding plus the perception line where its sign was read (what users see)
        found = [t for t in S.locate_targets(text, gen.final_labels, include_perception=False, sections=("report",),
                                             with_perception_evidence=True)
                 if t.kind == "finding" and t.name in truth]
        weights = S.token_weights(found, offsets)
        found = [t for t, w in zip(found, weights) if w.sum() > 0]
        if found:
            per_layer = torch.from_numpy(S.layer_maps(model, gen.inputs, gen.new_ids, found, offsets))
            n_layers = per_layer.shape[1]
            patch_px = study.image.shape[1] / per_layer.shape[-1]
            for k, t in enumerate(found):
                hits = [pointing_hit(S.fuse_layers(per_layer[k:k + 1, c:])[0].numpy(), truth[t.name], patch_px)
                        for c in range(n_layers)]
                rows.append({"study": study.study_id, "target": t.name, "hits": hits})
        if (i + 1) % 50 == 0:
            logger.info("explained %d/%d studies", i + 1, len(studies))
    return rows, n_layers


def load_explainable(config: DepthConfig):
    """The model's pipeline, refused (`SaliencyUnavailable`, one line) when saliency has no layer entry for its
    architecture: checked right after loading, not after generating every phantom."""
    from medr2.inference.pipeline import Pipeline, PipelineConfig

    pipe = Pipeline(PipelineConfig(model=config.model, threads=config.threads, max_new_tokens=config.max_new_tokens))
    S.vlm_arch(pipe.model)
    return pipe


def choose(config: DepthConfig, command: str, pipe=None) -> dict:
    """Generate, explain, choose: every measurement plus the saliency.json `config` the model folder takes.
    `pipe`: the model's pipeline from `load_explainable` (loaded here when not given)."""
    from medr2.phantom.generator import generate_studies

    t0 = time.perf_counter()
    pipe = pipe if pipe is not None else load_explainable(config)
    studies = list(generate_studies(config.n, config.seed))
    rows, n_layers = collect(pipe.model, pipe.processor.tokenizer, studies, generate(pipe, studies, config.batch_size))
    by_target: dict[str, list[list[float]]] = defaultdict(list)
    for r in rows:
        by_target[r["target"]].append(r["hits"])
    chosen = choose_cutoffs(by_target, config.min_n, config.z)
    table = {t: {"n": len(h), "pointing_by_cutoff": np.asarray(h).mean(0).round(4).tolist(), "cutoff": chosen.get(t, 0)}
             for t, h in sorted(by_target.items())}
    weights = {"method": S.DEFAULT_METHOD, "layer": "blocks",
               "depth_weights": {t: cutoff_weights(c, n_layers) for t, c in sorted(chosen.items())},
               "chosen_on": {"seed": config.seed, "n_studies": config.n, "true_positives": len(rows),
                             "min_n": config.min_n, "z": config.z, "command": command}}
    return {"model": str(config.model), "n_layers": n_layers, "per_finding": table,
            "pointing_all_blocks": float(np.mean([r["hits"][0] for r in rows])) if rows else None,
            "pointing_per_finding_in_sample": float(np.mean([r["hits"][chosen.get(r["target"], 0)] for r in rows]))
            if rows else None,
            "config": weights, "rows": rows, "seconds": time.perf_counter() - t0}


def format_table(result: dict, n: int, seed: int) -> str:
    n_layers = result["n_layers"]
    lines = [f"saliency depth: {n} validation phantoms (seed {seed}), model {result['model']}, {n_layers} vision blocks",
             f"{'finding':<28}{'TPs':>5}" + "".join(f"{'from ' + str(c + 1):>9}" for c in range(n_layers)) + "   chosen"]
    for t, row in result["per_finding"].items():
        cells = "".join(f"{v:>9.2f}" for v in row["pointing_by_cutoff"])
        lines.append(f"{t:<28}{row['n']:>5}{cells}   blocks {row['cutoff'] + 1}-{n_layers}")
    lines.append(f"pointing (1 patch), all true positives: all blocks {result['pointing_all_blocks']:.3f}, per-finding "
                 f"choice {result['pointing_per_finding_in_sample']:.3f} (in-sample: measure on the test seed with "
                 "benchmarks/saliency_faithfulness.py)")
    return "\n".join(lines)


def cli_saliency_depth(argv: list[str]) -> int:
    from medr2.cli import UsageError, fail, parse_config

    prog = "medr2 saliency-depth"
    try:
        config = parse_config(prog, DepthConfig, argv, description=__doc__.splitlines()[0])
        if not config.model or not Path(config.model).is_dir():
            raise UsageError(f"--model must be a model folder, got {config.model!r}")
        if config.seed == TEST_SEED:
            raise UsageError(f"seed {TEST_SEED} is the test split; choose on validation (seed {VALIDATION_SEED})")
        if config.n < 1 or config.batch_size < 1:
            raise UsageError(f"--n and --batch_size must be >= 1, got {config.n} and {config.batch_size}")
    except UsageError as exc:
        return fail(prog, exc)
    torch.set_num_threads(config.threads)
    from medr2.modeling.model import ModelLoadError

    try:
        pipe = load_explainable(config)  # before the progress log starts: a refusal stays one line
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        result = choose(config, "medr2 saliency-depth " + " ".join(argv), pipe)
    except (ModelLoadError, ValueError, OSError) as exc:
        return fail(prog, exc)
    if not result["rows"]:
        print(f"{prog}: the model reported no true-positive finding on {config.n} phantoms; nothing to choose from",
              file=sys.stderr)
        return 1
    print(format_table(result, config.n, config.seed))
    for path, text in ((config.out, json.dumps(result) + "\n"), (config.write, json.dumps(result["config"], indent=2) + "\n")):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
            print(f"wrote {path}")
    return 0
