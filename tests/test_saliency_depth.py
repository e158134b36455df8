"""`medr2 saliency-depth`: per-finding vision-block weights chosen on validation phantoms (medr2.saliency.depth)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from medr2.cli import main
from medr2.labeler.findings import label_report
from medr2.modeling.model import TinyVLMConfig, build_chat, build_tiny_vlm, prepare_inputs
from medr2.modeling.tokenizer import train_tokenizer
from medr2.phantom.generator import generate_studies
from medr2.saliency.depth import Generation, choose_cutoffs, collect, cutoff_weights, ground_truth

REPO = Path(__file__).resolve().parents[1]


def test_depth_choice_needs_enough_true_positives_and_a_real_gain():
    hits = {"gain": [[0, 1, 1, 1]] * 25,  # the last three blocks point right, all four do not
            "tie": [[1, 1, 1, 1]] * 25,  # no gain over fusing every block: keep the default
            "few": [[0, 0, 0, 1]] * 5,  # too few true positives to choose on
            "worse": [[1, 0, 0, 0]] * 15 + [[0, 1, 0, 0]] * 10,
            "chance": [[0, 0, 0, 1]] * 3 + [[1, 1, 1, 1]] * 30,  # 3 net wins of 3 discordant: within chance
            "last": [[0, 0, 0, 1]] * 8 + [[0, 0, 1, 1]] * 2 + [[1, 1, 1, 1]] * 20}  # 10 vs 2 net: the last block
    assert choose_cutoffs(hits, min_n=20) == {"gain": 1, "last": 3}
    assert choose_cutoffs(hits, min_n=5) == {"gain": 1, "few": 3, "last": 3}
    assert choose_cutoffs(hits, min_n=5, z=0.0) == {"gain": 1, "few": 3, "chance": 3, "last": 3}
    assert cutoff_weights(0, 4) == [1.0] * 4 and cutoff_weights(3, 4) == [0.0, 0.0, 0.0, 1.0]


def test_collect_scores_every_cutoff_of_each_reported_true_positive():
    """A micro model 'reports' each study's reference report: every finding it names has a mask to point at."""
    studies = [s for s in generate_studies(40, seed=7) if any(f.kind == "effusion" for f in s.findings)][:2]
    texts = [f"<report>\nFindings: {s.report}\n</report>" for s in studies]
    tok = train_tokenizer(texts * 10, vocab_size=400)
    model, processor = build_tiny_vlm(tok, TinyVLMConfig.micro("llava"))
    gens = []
    for study, text in zip(studies, texts):
        inputs = prepare_inputs(processor, study.image, build_chat("Read this chest radiograph."))
        gens.append(Generation(inputs, torch.tensor([tok.encode(text, add_special_tokens=False)]), label_report(study.report)))
    rows, n_layers = collect(model, tok, studies, gens)
    n_blocks = model.config.vision_config.num_hidden_layers
    assert n_layers == n_blocks
    assert {r["study"] for r in rows} == {s.study_id for s in studies}
    assert "Pleural Effusion" in {r["target"] for r in rows}
    for r in rows:
        study = next(s for s in studies if s.study_id == r["study"])
        assert r["target"] in ground_truth(study) and len(r["hits"]) == n_blocks and set(r["hits"]) <= {0.0, 1.0}


@pytest.fixture(scope="module")
def micro_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("micro") / "model"
    assert main(["build-tiny", "--micro", "--out", str(out), "--vocab_size", "400"]) == 0
    return out


def test_cli_refuses_the_test_seed_and_a_missing_model_in_one_line(micro_model, tmp_path, capsys):
    assert main(["saliency-depth", "--model", str(micro_model), "--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert "test split" in err and err.count("\n") == 1
    assert main(["saliency-depth", "--model", str(tmp_path / "none")]) == 2
    assert "--model must be a model folder" in capsys.readouterr().err


def test_cli_refuses_an_architecture_without_a_layer_entry_right_after_loading(micro_model, monkeypatch, capsys):
    """The registry without LLaVA's entry (as for any architecture it does not know): one line, and no phantom is
    generated first."""
    from medr2.inference.pipeline import Pipeline
    from medr2.saliency import layers

    monkeypatch.setattr(layers, "SUPPORTED_ARCHS", tuple(a for a in layers.SUPPORTED_ARCHS if a != "llava"))
    generated: list = []
    monkeypatch.setattr(Pipeline, "run_batch", lambda self, images, **kw: generated.append(images) or [])
    assert main(["saliency-depth", "--model", str(micro_model), "--n", "3"]) == 2
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("medr2 saliency-depth:")]
    assert len(said) == 1 and "saliency unavailable for this architecture (model_type='llava'" in said[0]
    assert "Traceback" not in err and generated == []


def test_cli_runs_on_a_micro_model_and_writes_nothing_without_true_positives(micro_model, tmp_path, capsys):
    """An untrained model names no finding: the command says so and leaves the model's saliency.json alone."""
    write = tmp_path / "saliency.json"
    code = main(["saliency-depth", "--model", str(micro_model), "--n", "3", "--batch", "2", "--max-new-tokens", "6",
                 "--write", str(write)])
    assert code == 1 and "no true-positive finding" in capsys.readouterr().err
    assert not write.exists()


@pytest.mark.slow
def test_cli_writes_saliency_json_for_the_shipped_model(tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(REPO / "assets" / "model", model)
    write, out = model / "saliency.json", tmp_path / "depth.json"
    assert main(["saliency-depth", "--model", str(model), "--n", "6", "--min_n", "1", "--z", "0", "--threads", "2",
                 "--write", str(write), "--out", str(out)]) == 0
    assert "pointing (1 patch)" in capsys.readouterr().out
    chosen, result = json.loads(write.read_text()), json.loads(out.read_text())
    assert chosen == result["config"] and chosen["layer"] == "blocks" and chosen["chosen_on"]["seed"] == 2
    n_layers = result["n_layers"]
    assert result["rows"] and all(len(r["hits"]) == n_layers for r in result["rows"])
    for target, weights in chosen["depth_weights"].items():
        cut = result["per_finding"][target]["cutoff"]
        assert cut > 0 and weights == cutoff_weights(cut, n_layers)
    from medr2.inference.pipeline import Pipeline, PipelineConfig

    assert Pipeline(PipelineConfig(model=str(model))).saliency_config == chosen  # what the app's maps read
