"""The reflection that looks again (medr2.reflection): regions and crops, the schema's look lines (and its backwards
compatibility), traces with looks, the look loop on a micro model (a forced look request, the crop reaching the
model), the draft -> final consistency check and the fix / break evaluation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from answers import GENERATED
from PIL import Image

from medr2.reflection.consistency import check_consistency
from medr2.reflection.looks import evidence_text, join_turns, propose_looks, split_at_looks
from medr2.reflection.regions import LOOK_REGIONS, WINDOW, crop_region, normalise_region, region_box, region_patches, regions_for
from medr2.report.schema import MedR2Output, ReflectionItem, Report, parse, render

OLD_TRACE = GENERATED  # a reflection written before looks existed


# ---------------------------------------------------------------- regions
@pytest.mark.parametrize("shape", [(256, 256), (512, 512), (2000, 1600)])
def test_every_region_box_lies_inside_the_film_and_magnifies(shape):
    for name in LOOK_REGIONS:
        top, left, bottom, right = region_box(name, shape)
        assert 0 <= top < bottom <= shape[0] and 0 <= left < right <= shape[1]
        assert bottom - top == right - left == round(WINDOW * min(shape))


def test_crop_is_cut_from_the_full_resolution_film_on_the_patients_side():
    film = np.zeros((512, 512), dtype=np.uint8)
    film[:, :256] = 200  # the image's left half = the patient's right
    right, left = crop_region(film, "right mid zone"), crop_region(film, "left mid zone")
    assert right.shape == left.shape == (230, 230)
    assert right.mean() > 150 and left.mean() < 50


def test_region_patches_and_finding_regions():
    assert region_patches("right upper zone", 8).reshape(8, 8)[:4, :4].any()
    assert not region_patches("right upper zone", 8).reshape(8, 8)[:, 6:].any()
    assert regions_for("Lung Lesion", ["left"], ["upper"]) == ["left upper zone"]
    assert regions_for("Pleural Effusion", ["right"]) == ["right lower zone"]
    assert regions_for("Pneumothorax", ["left"]) == ["left upper zone"]
    assert regions_for("Cardiomegaly") == ["heart"]
    assert regions_for("Support Devices") == [] and regions_for("Edema") == []
    assert normalise_region("Right lung, mid zone") == "right mid zone"
    assert normalise_region("left costophrenic angle") == "left lower zone"
    assert normalise_region("somewhere") is None


# ---------------------------------------------------------------- schema
def test_reflection_without_looks_parses_as_before():
    parsed = parse(OLD_TRACE)
    assert parsed.output.reflection == [ReflectionItem("kept", "pleural effusion", "re-checked the right base, meniscus confirmed.")]
    assert parsed.output.reflection[0].look is None
    assert render(parsed.output) == OLD_TRACE


def test_look_lines_attach_to_the_item_that_follows_and_round_trip():
    text = OLD_TRACE.replace(
        "kept: pleural effusion - re-checked the right base, meniscus confirmed.",
        "<look>right lower zone</look>\nkept: pleural effusion - magnified right lower zone: meniscus confirmed.\n"
        "<look>left mid zone</look>\nadded: pulmonary nodule - magnified left mid zone: round opacity, missed in the draft.\n"
        "kept: central venous catheter - re-checked the devices.")
    items = parse(text).output.reflection
    assert [(i.action, i.look) for i in items] == [("kept", "right lower zone"), ("added", "left mid zone"), ("kept", None)]
    assert render(parse(text).output) == text
    turns = split_at_looks(text)
    assert len(turns) == 3 and turns[0].endswith("<look>right lower zone</look>") and turns[1].endswith("<look>left mid zone</look>")
    assert join_turns(turns) == text


def test_a_look_with_no_item_after_it_is_kept_as_a_note():
    items = parse("<reflection>\n<look>heart</look>\n</reflection>").output.reflection
    assert len(items) == 1 and items[0].action is None and items[0].look == "heart"


# ---------------------------------------------------------------- traces
def test_look_traces_teach_looks_at_findings_errors_and_normal_regions():
    from medr2.phantom.generator import generate_studies
    from medr2.report.look_traces import build_look_trace
    from medr2.report.traces import TraceConfig

    kinds = set()
    for study in generate_studies(40, 11):
        for error_rate, normal in ((0.0, "left upper zone"), (1.0, None)):
            output, error = build_look_trace(study, TraceConfig(error_rate=error_rate), normal_look=normal, max_looks=3)
            looks = [i for i in output.reflection if i.look]
            assert len(looks) <= 3
            assert output.report == Report(study.findings_text, study.impression_text)  # the final is always the truth
            assert render(parse(render(output)).output) == render(output)
            if error is None:
                assert all(i.action == "kept" for i in output.reflection)
                assert output.draft == output.report
            else:
                kinds.add(error)
                fixes = [i for i in output.reflection if i.action != "kept"]
                assert len(fixes) == 1 and fixes[0].look in LOOK_REGIONS
    assert {"missed", "hallucinated", "wrong_side"} <= kinds


def test_evidence_words_follow_the_heads_thresholds():
    obs = ("Lung Lesion", "Lung Opacity", "Support Devices")
    text = evidence_text("right mid zone", np.array([0.9, 0.3, 0.99]), np.array([0.8, 0.5, 0.5]), obs)
    assert text == "magnified right mid zone (2.2x); finding heads here: lung lesion likely, lung opacity possible."
    assert evidence_text("heart") == "magnified heart (2.2x)."


def test_proposed_looks_cover_the_draft_then_the_heads_disagreements():
    from medr2.reflection.heads import OBSERVATIONS

    probs = np.zeros((64, len(OBSERVATIONS)))
    grid = region_patches("left upper zone", 8)
    probs[grid, OBSERVATIONS.index("Lung Lesion")] = 0.99
    draft = "Findings: Small right pleural effusion. Impression: Small right pleural effusion."
    looks = propose_looks(draft, probs, np.full(len(OBSERVATIONS), 0.9), OBSERVATIONS, max_looks=4)
    assert looks[0] == "right lower zone" and "left upper zone" in looks
    assert propose_looks(draft, None, None, OBSERVATIONS) == ["right lower zone"]


# ---------------------------------------------------------------- consistency
def _output(draft: str, final: str, items: list[ReflectionItem]) -> MedR2Output:
    return MedR2Output(draft=Report.parse(draft), reflection=items, report=Report.parse(final))


def test_consistency_flags_a_kept_item_whose_finding_changed_and_an_unexplained_change():
    kept = [ReflectionItem("kept", "pleural effusion", "re-checked.")]
    side_flip = check_consistency(_output("Small right pleural effusion.", "Small left pleural effusion.", kept))
    assert not side_flip.holds and side_flip.contradicted == ["Pleural Effusion"]
    assert "side right -> left" in side_flip.changes["Pleural Effusion"]
    dropped = check_consistency(_output("Small right pleural effusion. Widened mediastinum.", "Small right pleural effusion.", kept))
    assert not dropped.holds and dropped.unexplained == ["Enlarged Cardiomediastinum"]


def test_consistency_holds_when_every_change_has_its_item():
    items = [ReflectionItem("kept", "pleural effusion", "confirmed."),
             ReflectionItem("added", "pulmonary nodule", "missed in the draft.", "left mid zone")]
    result = check_consistency(_output("Small right pleural effusion.",
                                       "Small right pleural effusion. 12 mm pulmonary nodule in the left mid zone.", items))
    assert result.holds and result.changes == {"Lung Lesion": "added"}
    older = check_consistency(parse(OLD_TRACE).output)  # its final adds a pneumothorax no item mentions
    assert not older.holds and older.unexplained == ["Pneumothorax"]


# ---------------------------------------------------------------- the loop on a micro model
@pytest.fixture(scope="module")
def look_pipeline(tmp_path_factory):
    from medr2.inference.pipeline import Pipeline, PipelineConfig
    from medr2.modeling.model import cli_build_tiny

    out = tmp_path_factory.mktemp("look_model") / "micro"
    assert cli_build_tiny(["--micro", "--out", str(out)]) == 0
    (out / "medr2_model.json").write_text(json.dumps({"target": "medr2", "demo": True, "training_data": "synthetic phantoms",
                                                       "reflection": "looks"}))
    return Pipeline(PipelineConfig(model=str(out), max_new_tokens=24))


def test_micro_model_has_single_look_tokens(look_pipeline):
    tok = look_pipeline.processor.tokenizer
    assert len(tok.encode("<look>", add_special_tokens=False)) == len(tok.encode("</look>", add_special_tokens=False)) == 1
    assert look_pipeline.look_mode == "proposed"


def test_a_forced_look_brings_the_magnified_crop_to_the_model(look_pipeline, monkeypatch):
    from medr2.inference.pipeline import as_loaded
    from medr2.reflection.loop import LookRunner

    rng = np.random.default_rng(0)
    film = rng.integers(0, 255, size=(512, 512), dtype=np.uint8)
    seen = []
    real_generate = look_pipeline.model.generate

    def spy(**kwargs):
        seen.append({"pixel_values": kwargs["pixel_values"].clone(), "input_ids": kwargs["input_ids"].clone()})
        return real_generate(**kwargs)

    monkeypatch.setattr(look_pipeline.model, "generate", spy)
    draft = ("<think>\n<perception>\nheart: normal.\n</perception>\n<reasoning>\nx -> y\n</reasoning>\n<draft>\n"
             "Findings: 12 mm pulmonary nodule in the left upper zone. Impression: Pulmonary nodule.\n</draft>")
    [(text, looks)] = LookRunner(look_pipeline, None).run([as_loaded(film)], "proposed", max_looks=2, drafts=[draft])
    assert [lk.region for lk in looks] == ["left upper zone"] and looks[0].chosen_by == "pipeline"
    assert text.startswith(draft + "\n<reflection>\n<look>left upper zone</look>")
    # the round after the look sees two images: the film, then the crop of the left upper zone at full resolution
    after = seen[0]
    assert after["pixel_values"].shape[0] == 2
    from PIL import Image

    crop_rgb = Image.fromarray(crop_region(film, "left upper zone")).convert("RGB")
    expected = look_pipeline.processor.image_processor(images=[crop_rgb], return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(after["pixel_values"][1].float(), expected.float(), atol=1e-4)
    image_id = look_pipeline.processor.tokenizer.convert_tokens_to_ids("<image>")
    assert int((after["input_ids"][0] == image_id).sum()) == 2 * look_pipeline.model.config.image_seq_length
    assert np.array_equal(looks[0].crop, crop_region(film, "left upper zone"))


def test_looks_off_runs_one_pass_and_batches_keep_their_order(look_pipeline):
    from medr2.inference.pipeline import Pipeline, PipelineConfig

    off = Pipeline(PipelineConfig(model=look_pipeline.config.model, max_new_tokens=16, looks="off"))
    films = [np.full((256, 256), v, dtype=np.uint8) for v in (30, 120, 220)]
    assert all(r.looks == [] for r in off.run_batch(films, batch_size=3))
    batched = look_pipeline.run_batch(films, batch_size=3)
    single = [look_pipeline.run(f) for f in films]
    assert [r.raw_text for r in batched] == [r.raw_text for r in single]


def test_reflection_summary_counts_a_fixed_miss_and_a_broken_right_cell():
    from types import SimpleNamespace

    from medr2.evaluation.reflection import reflection_summary
    from medr2.labeler.findings import label_report

    def result(draft, final, items):
        out = _output(draft, final, items)
        return SimpleNamespace(output=out, draft_labels=label_report(draft), final_labels=label_report(final),
                               looks=[1] if any(i.look for i in items) else [], consistency=check_consistency(out))

    reference = "Small right pleural effusion. Pulmonary nodule in the left upper zone."
    fixed = result("Small right pleural effusion.", reference,
                   [ReflectionItem("added", "pulmonary nodule", "missed.", "left upper zone")])
    broken = result(reference, "Pulmonary nodule in the left upper zone.", [ReflectionItem("kept", "pleural effusion", "ok")])
    summary = reflection_summary([fixed, broken], [reference, reference])
    assert summary["cells"]["wrong"] == {"missed": 1} and summary["cells"]["fixed"] == {"missed": 1}
    assert summary["cells"]["broken"] == 1
    assert summary["studies"] == {"wrong_drafts": 1, "fixed": 1, "right_drafts": 1, "broken": 1,
                                  "fixed_share": 1.0, "broken_share": 1.0}
    assert summary["actions"] == {"added": 1, "kept": 1} and summary["consistency"]["holds"] == 1


def test_the_loop_runs_on_stop_strings_where_the_tags_are_not_single_tokens(look_pipeline):
    """A general LVLM's tokenizer splits the tags: the loop then stops generation with stop strings."""
    from medr2.inference.pipeline import as_loaded
    from medr2.reflection.loop import LookRunner

    runner = LookRunner(look_pipeline, None)
    runner.single_tokens = False  # as for a tokenizer without the tags
    draft = "<think>\n<draft>\nFindings: Small left pleural effusion. Impression: Small left pleural effusion.\n</draft>"
    [(text, looks)] = runner.run([as_loaded(np.full((256, 256), 90, dtype=np.uint8))], "proposed", max_looks=1, drafts=[draft])
    assert [lk.region for lk in looks] == ["left lower zone"]
    assert text.startswith(draft + "\n<reflection>\n<look>left lower zone</look>")
    assert "</reflection>" in text  # the loop closed the reflection after its one look


class ScriptedLoop:
    """A look loop whose generation is scripted per phase (what a model would write), to test the state machine."""

    @staticmethod
    def make(can_ban: bool, script: dict[str, list[str]]):
        from medr2.reflection.loop import LookLoop

        class Scripted(LookLoop):
            can_ban_looks = can_ban

            def __init__(self):
                super().__init__()
                self.calls = []

            def generate(self, studies, phase):
                self.calls.append((phase, [s.looks_closed for s in studies]))
                return [script[phase].pop(0) for _ in studies]

        return Scripted()


REPEAT_DRAFT = ("<think>\n<draft>\nFindings: Small left pleural effusion. Endotracheal tube in place. "
                "Impression: Small left pleural effusion.\n</draft>")


def test_a_repeated_look_request_lets_the_model_write_the_items_it_still_owes():
    """After its last look the model asks to see a region again: the loop refuses, bans the look tag and lets it go on,
    so the device's `kept` item (which the traces put after the looks) is written instead of the reflection closing."""
    from medr2.inference.pipeline import as_loaded

    loop = ScriptedLoop.make(True, {
        "reflect": ["kept: pleural effusion - magnified left lower zone: meniscus confirmed.\n<look>left lower zone</look>",
                    "kept: support devices - endotracheal tube in place.\n</reflection>"],
        "rest": ["</think>\n<report>\nFindings: Small left pleural effusion. Endotracheal tube in place.\n</report>"]})
    [(text, looks)] = loop.run([as_loaded(np.full((256, 256), 90, dtype=np.uint8))], "proposed", max_looks=1,
                               drafts=[REPEAT_DRAFT])
    assert [lk.region for lk in looks] == ["left lower zone"]  # the one look, not a second of the same region
    assert text.count("<look>") == 1
    assert "kept: support devices - endotracheal tube in place.\n</reflection>" in text
    assert [c for c in loop.calls if c[0] == "reflect"] == [("reflect", [False]), ("reflect", [True])]
    out = parse(text).output
    assert [(i.action, i.target, i.look) for i in out.reflection] == [("kept", "pleural effusion", "left lower zone"),
                                                                      ("kept", "support devices", None)]


@pytest.mark.parametrize("request_text", ["</look>", "<look>left\nlower zone</look>"])
def test_a_closing_look_tag_without_a_well_formed_request_is_dropped_like_a_refused_one(request_text):
    """A model may write the closing tag alone (or a region across lines): the loop drops that tag, looks nowhere and
    lets the reflection go on, instead of failing the whole batch."""
    from medr2.inference.pipeline import as_loaded

    loop = ScriptedLoop.make(True, {
        "reflect": ["kept: pleural effusion - magnified left lower zone: meniscus confirmed.\n" + request_text,
                    "kept: support devices - endotracheal tube in place.\n</reflection>"],
        "rest": ["</think>\n<report>\nFindings: Small left pleural effusion. Endotracheal tube in place.\n</report>"]})
    [(text, looks)] = loop.run([as_loaded(np.full((256, 256), 90, dtype=np.uint8))], "proposed", max_looks=1,
                               drafts=[REPEAT_DRAFT])
    assert [lk.region for lk in looks] == ["left lower zone"]  # the proposed look only
    assert "</look>" not in text.split("<look>left lower zone</look>", 1)[1]
    assert "meniscus confirmed.\nkept: support devices - endotracheal tube in place.\n</reflection>" in text


def test_where_looks_cannot_be_banned_a_refused_request_closes_the_reflection():
    """A served model's look tag is not one token the loop can ban: a refused request closes the reflection there."""
    from medr2.inference.pipeline import as_loaded

    loop = ScriptedLoop.make(False, {
        "reflect": ["kept: pleural effusion - confirmed.\n<look>left lower zone</look>"],
        "rest": ["</think>\n<report>\nFindings: Small left pleural effusion.\n</report>"]})
    [(text, looks)] = loop.run([as_loaded(np.full((256, 256), 90, dtype=np.uint8))], "proposed", max_looks=1,
                               drafts=[REPEAT_DRAFT])
    assert len(looks) == 1 and "kept: pleural effusion - confirmed.\n</reflection>" in text
    assert [c[0] for c in loop.calls] == ["reflect", "rest"]


def test_the_embedded_loop_bans_the_look_tag_only_in_the_rows_whose_looks_are_closed(look_pipeline, monkeypatch):
    from medr2.reflection.loop import LookRunner, LookStudy

    runner = LookRunner(look_pipeline, None)
    assert runner.can_ban_looks
    look_id = look_pipeline.processor.tokenizer.convert_tokens_to_ids("<look>")
    seen = {}
    real_generate = look_pipeline.model.generate

    def spy(**kwargs):
        seen.update(kwargs)
        return real_generate(**kwargs)

    monkeypatch.setattr(look_pipeline.model, "generate", spy)
    film = np.full((256, 256), 90, dtype=np.uint8)
    studies = [LookStudy(film, Image.fromarray(film)) for _ in range(3)]
    for s in studies:
        s.current = REPEAT_DRAFT + "\n<reflection>\n"
    studies[1].looks_closed = True
    runner.generate(studies, "reflect")
    scores = torch.zeros(3, look_pipeline.model.config.text_config.vocab_size)
    banned = seen["logits_processor"][0](None, scores.clone())
    assert torch.isinf(banned[1, look_id]) and not torch.isinf(banned[0]).any() and not torch.isinf(banned[2]).any()
    assert int(torch.isinf(banned).sum()) == 1
    seen.clear()
    studies[1].looks_closed = False
    runner.generate(studies, "reflect")
    assert "logits_processor" not in seen  # nobody closed: nothing banned


# ---------------------------------------------------------------- teaching the reflection honestly
def test_a_context_only_draft_carries_no_loss_and_renders_the_same():
    from medr2.modeling.tokenizer import CHAT_TEMPLATE, train_tokenizer, with_context_turns

    tok = train_tokenizer(["read the film draft final look report"] * 20, vocab_size=300)
    assert tok.chat_template == CHAT_TEMPLATE and with_context_turns(CHAT_TEMPLATE) == CHAT_TEMPLATE
    older = CHAT_TEMPLATE.replace("message.role == 'assistant' and not message.context_only", "message.role == 'assistant'")
    assert with_context_turns(older) == CHAT_TEMPLATE  # an older model's template gains the switch
    messages = [{"role": "user", "content": [{"type": "text", "text": "read"}], "context_only": False},
                {"role": "assistant", "content": [{"type": "text", "text": "draft"}], "context_only": True},
                {"role": "user", "content": [{"type": "text", "text": "look"}], "context_only": False},
                {"role": "assistant", "content": [{"type": "text", "text": "final"}], "context_only": False}]
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    trained = tok.decode([i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m])
    assert trained == "final<|im_end|>"
    plain = [{k: v for k, v in m.items() if k != "context_only"} for m in messages]
    assert tok.apply_chat_template(messages, tokenize=False) == tok.apply_chat_template(plain, tokenize=False)


def test_look_rows_hide_only_a_draft_that_holds_an_injected_error():
    from medr2.phantom.generator import PhantomConfig, generate_study, study_seeds
    from medr2.reflection.traces import look_row
    from medr2.report.look_traces import build_look_trace
    from medr2.report.traces import TraceConfig

    seen = set()
    for seed in study_seeds(12, 13):
        study = generate_study(seed, PhantomConfig(size=256))
        config = TraceConfig(error_rate=0.5, seed=1)
        row = look_row(study, None, None, config, normal_look_rate=0.0, max_looks=3)
        _, error = build_look_trace(study, config, max_looks=3)
        assistants = [m for m in row["messages"] if m["role"] == "assistant"]
        assert assistants[0]["context_only"] is (error is not None)
        assert not any(m["context_only"] for m in assistants[1:])  # the reflection and the report are always taught
        seen.add(error is None)
    assert seen == {True, False}


def test_look_error_kinds_follow_the_given_proportions():
    import random

    from medr2.phantom.generator import generate_studies
    from medr2.report.look_traces import inject_look_error
    from medr2.report.traces import DEVICE_KINDS, TraceConfig, parse_look_error_weights

    assert parse_look_error_weights("missed:0.5, wrong_zone:0.25") == {"missed": 0.5, "wrong_zone": 0.25}
    for bad in ("missed", "missed:-1", "misread:0.2", "missed:0"):
        with pytest.raises(ValueError, match="look_error_weights"):
            TraceConfig(look_error_weights=bad)
    studies = [s for s in generate_studies(30, 12) if any(f.kind not in DEVICE_KINDS for f in s.findings)]
    rng = random.Random(0)
    kinds = [inject_look_error(s.findings, rng, {"missed": 3.0, "hallucinated": 1.0})[1] for s in studies * 20]
    assert set(kinds) == {"missed", "hallucinated"}
    assert 0.65 < kinds.count("missed") / len(kinds) < 0.85
    # a kind the study cannot carry leaves its draft right
    draft, kind, _, _ = inject_look_error([], random.Random(0), {"wrong_side": 1.0})
    assert (draft, kind) == ([], None)


def test_look_heads_with_a_reader_read_the_crop_and_round_trip(tmp_path):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from medr2.reflection.heads import OBSERVATIONS, LookHeads, region_max, tower_checksum

    torch.manual_seed(0)
    tower = SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                 num_attention_heads=2, image_size=224, patch_size=28)).eval()
    reader = SiglipVisionModel(tower.config).eval()  # other weights: what tuning at the look scale gives
    k = len(OBSERVATIONS)
    weight, bias = np.random.default_rng(0).normal(size=(k, 32)), np.zeros(k)
    heads = LookHeads(weight, bias, np.full(k, 0.5), tower_checksum(tower), {"fitted_on": "test"}, reader=reader,
                      crop_thresholds=np.full(k, 0.4))
    film = np.random.default_rng(1).integers(0, 255, size=(512, 512), dtype=np.uint8)
    crop = crop_region(film, "left lower zone")
    film_probs = heads.read(tower, [film])[0]
    probs, thresholds = heads.region_reading(tower, film, film_probs, "left lower zone")
    with torch.no_grad():  # the crop's reading goes through the reader, not the model's tower
        by_reader = LookHeads(weight, bias, np.full(k, 0.5), "", {}).read(reader, [crop])[0].max(axis=0)
    assert np.allclose(probs, by_reader, atol=1e-5) and np.allclose(thresholds, 0.4)
    path = heads.save(tmp_path)
    with pytest.raises(ValueError, match="vision tower"):
        LookHeads.load(tmp_path)
    again = LookHeads.load(tmp_path, tower)
    assert again.reads_crops and np.allclose(again.crop_thresholds, 0.4)
    assert np.allclose(again.region_reading(tower, film, film_probs, "left lower zone")[0], probs, atol=2e-3)  # float16 copy
    # without a reader the heads read the region of the whole film, at the film thresholds
    plain = LookHeads(weight, bias, np.full(k, 0.5), tower_checksum(tower), {})
    plain_probs, plain_t = plain.region_reading(tower, film, film_probs, "left lower zone")
    assert np.allclose(plain_probs, region_max(film_probs, "left lower zone")) and np.allclose(plain_t, 0.5)
    assert path.stat().st_size > 0


def test_fit_look_heads_with_a_look_reader_leaves_the_models_tower_alone(tmp_path, capsys):
    from medr2.cli import main
    from medr2.modeling.loading import load_model
    from medr2.modeling.model import cli_build_tiny
    from medr2.reflection.heads import LookHeads, tower_checksum, tower_of

    model_dir, out = tmp_path / "micro", tmp_path / "heads"
    assert cli_build_tiny(["--micro", "--out", str(model_dir)]) == 0
    before = tower_checksum(tower_of(load_model(str(model_dir))[0]))
    assert main(["fit-look-heads", "--model", str(model_dir), "--out", str(out), "--n_train", "6", "--n_val", "3",
                 "--film_size", "256", "--steps", "3", "--tune_tower", "true", "--tune_steps", "2", "--batch_size", "4"]) == 0
    assert "crops F1" in capsys.readouterr().out  # the crop thresholds were chosen on validation crops
    tower = tower_of(load_model(str(model_dir))[0])
    assert tower_checksum(tower) == before
    heads = LookHeads.load(out, tower)
    assert heads.reads_crops and heads.crop_thresholds.shape == heads.thresholds.shape
    assert tower_checksum(heads.reader) != before  # the reader is a tuned copy
    assert "look_reader" in heads.meta and "crop_thresholds_from" in heads.meta
    film = np.random.default_rng(0).integers(0, 255, size=(256, 256), dtype=np.uint8)
    probs, thresholds = heads.region_reading(tower, film, heads.read(tower, [film])[0], "right mid zone")
    assert probs.shape == thresholds.shape and np.all((probs >= 0) & (probs <= 1))


def test_look_heads_maps_come_first_for_findings_and_read_the_film(tmp_path):
    from medr2.app.views import default_overlay, overlay_choices
    from medr2.inference.pipeline import HEADS_MAP_METHOD, Pipeline, PipelineConfig
    from medr2.modeling.model import cli_build_tiny
    from medr2.reflection.heads import OBSERVATIONS, LookHeads, tower_checksum, tower_of
    from medr2.saliency import DEFAULT_METHOD, normalise

    folder = tmp_path / "micro"
    assert cli_build_tiny(["--micro", "--out", str(folder)]) == 0
    y, x = np.mgrid[0:240, 0:256]
    film = ((np.sin(x / 9.0) * np.cos(y / 13.0) + 1) * 120).astype(np.uint8)
    plain = Pipeline(PipelineConfig(model=str(folder)))
    without = plain.saliency(plain.forced_result(film, GENERATED)).maps
    assert {m.method for m in without} == {DEFAULT_METHOD}
    k, dim = len(OBSERVATIONS), plain.model.config.vision_config.hidden_size
    heads = LookHeads(np.random.default_rng(0).normal(size=(k, dim)), np.zeros(k), np.full(k, 0.5),
                      tower_checksum(tower_of(plain.model)), {"fitted_on": "test"})
    heads.save(folder)
    pipe = Pipeline(PipelineConfig(model=str(folder)))
    assert pipe.look_mode == "off" and pipe.look_heads is not None  # loaded for the maps, not for looks
    maps = pipe.saliency(pipe.forced_result(film, GENERATED)).maps
    findings = [m for m in without if m.kind == "finding"]
    assert findings and len(maps) == len(without) + len(findings)
    probs = heads.read(tower_of(pipe.model), [film])[0]
    for m in findings:
        i = next(j for j, n in enumerate(maps) if n.target == m.target and n.method == HEADS_MAP_METHOD)
        assert maps[i + 1].target == m.target and maps[i + 1].method == DEFAULT_METHOD  # heads first, then gradients
        expected = normalise(probs[:, OBSERVATIONS.index(m.target)].reshape(8, 8))
        assert np.allclose(maps[i].grid, expected, atol=1e-6) and maps[i].heatmap.shape == film.shape
    labels = [label for label, _ in overlay_choices(maps)]
    first = int(default_overlay(maps))
    assert maps[first].method == HEADS_MAP_METHOD and "(finding heads)" in labels[first + 1]
    assert any("(model gradients)" in label for label in labels)
    # another method asked for by name: the heads' maps are not mixed in
    assert {m.method for m in pipe.saliency(pipe.forced_result(film, GENERATED), method="gradcam").maps} == {"gradcam"}


def test_a_region_classifier_reads_crop_and_film_together_and_round_trips(tmp_path):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from medr2.reflection.heads import OBSERVATIONS, LookHeads, RegionClassifier, to_input, tower_checksum, tower_features

    torch.manual_seed(0)
    tower = SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                 num_attention_heads=2, image_size=224, patch_size=28)).eval()
    reader = SiglipVisionModel(tower.config).eval()
    k = len(OBSERVATIONS)
    classifier = RegionClassifier(32).eval()
    heads = LookHeads(np.zeros((k, 32)), np.zeros(k), np.full(k, 0.5), tower_checksum(tower), {}, reader=reader,
                      crop_thresholds=np.full(k, 0.4), region_classifier=classifier, region_thresholds=np.full(k, 0.3))
    assert heads.reads_regions
    film = np.random.default_rng(1).integers(0, 255, size=(512, 512), dtype=np.uint8)
    probs, thresholds = heads.region_reading(tower, film, heads.read(tower, [film])[0], "left lower zone")
    assert np.allclose(thresholds, 0.3)
    with torch.no_grad():  # the crop through the reader, the film through the model's own tower, the region's index
        crop = tower_features(reader, to_input(crop_region(film, "left lower zone"))[None])
        whole = tower_features(tower, to_input(film)[None])
        index = torch.tensor([list(LOOK_REGIONS).index("left lower zone")])
        expected = torch.sigmoid(classifier(crop, whole, index)).numpy()[0]
        other_film = torch.sigmoid(classifier(crop, whole.flip(1), index)).numpy()[0]
    assert np.allclose(probs, expected, atol=1e-5)
    assert not np.allclose(expected, other_film, atol=1e-4)  # the film's patches inside the window take part
    heads.save(tmp_path)
    again = LookHeads.load(tmp_path, tower)
    assert again.reads_regions and np.allclose(again.region_thresholds, 0.3)
    assert np.allclose(again.read_regions(tower, film, ["left lower zone"])[0], probs, atol=2e-3)  # float16 copy


def test_fit_look_heads_adds_a_region_classifier_to_an_existing_reader(tmp_path, capsys, monkeypatch):
    from medr2.cli import main
    from medr2.modeling.loading import load_model
    from medr2.modeling.model import cli_build_tiny
    from medr2.phantom import generator
    from medr2.reflection.fit_heads import region_features
    from medr2.reflection.heads import LookHeads, tower_checksum, tower_of

    model_dir, out = tmp_path / "micro", tmp_path / "heads"
    assert cli_build_tiny(["--micro", "--out", str(model_dir)]) == 0
    common = ["--model", str(model_dir), "--out", str(out), "--n_train", "6", "--n_val", "3", "--film_size", "256"]
    assert main(["fit-look-heads", *common, "--steps", "3", "--tune_tower", "true", "--tune_steps", "2", "--batch_size", "4"]) == 0
    tower = tower_of(load_model(str(model_dir))[0])
    reader_before = tower_checksum(LookHeads.load(out, tower).reader)
    capsys.readouterr()
    assert main(["fit-look-heads", *common, "--region_classifier", "true", "--region_epochs", "2"]) == 0
    assert "regions F1" in capsys.readouterr().out
    heads = LookHeads.load(out, tower)
    assert heads.reads_regions and tower_checksum(heads.reader) == reader_before  # added beside the reader it reads
    assert "region_classifier" in heads.meta
    assert {"val_region_f1", "val_crop_max_f1"} <= set(heads.meta["per_observation"]["Lung Opacity"])
    # the regions are cut from the films asked for (their renderer and size), not from default films
    seen, real = [], generator.generate_study
    monkeypatch.setattr(generator, "generate_study", lambda seed, config=None: seen.append(config) or real(seed, config))
    films = generator.PhantomConfig(size=192)
    region_features(heads, tower, 3, 5, films, workers=1)
    assert seen == [films] * 3
    film = np.random.default_rng(0).integers(0, 255, size=(256, 256), dtype=np.uint8)
    probs, thresholds = heads.region_reading(tower, film, heads.read(tower, [film])[0], "right mid zone")
    assert np.allclose(thresholds, heads.region_thresholds) and np.all((probs >= 0) & (probs <= 1))
    plain = tmp_path / "plain"
    assert main(["fit-look-heads", "--model", str(model_dir), "--out", str(plain), "--n_train", "4", "--n_val", "2",
                 "--film_size", "256", "--steps", "2"]) == 0
    capsys.readouterr()
    assert main(["fit-look-heads", "--model", str(model_dir), "--out", str(plain), "--n_train", "4", "--n_val", "2",
                 "--film_size", "256", "--region_classifier", "true", "--region_epochs", "1"]) != 0
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the INFO log lines: one error line
    assert last.startswith("medr2 fit-look-heads: ") and "fit the reader first" in last


def _own_draft_cases(n: int = 30, seed: int = 17):
    """(study, injected kind, the finding it concerns, draft text) for drafts of phantom studies made wrong in one
    known way (kind None: the right draft)."""
    import random as _random

    from medr2.phantom.generator import generate_studies
    from medr2.report.look_traces import inject_look_error
    from medr2.report.traces import write_report

    for study in generate_studies(n, seed):
        yield study, None, None, study.report
        for kind in ("missed", "hallucinated", "wrong_side", "wrong_zone"):
            draft, injected, true, wrong = inject_look_error(list(study.findings), _random.Random(study.study_id), {kind: 1.0})
            if injected is not None:
                yield study, injected, true or wrong, write_report(draft, _random.Random(0)).text


def test_an_own_draft_is_read_back_into_the_errors_it_holds():
    from medr2.evaluation.evaluate import stated_details
    from medr2.labeler.findings import label_report
    from medr2.report.look_traces import draft_from_text

    recovered = set()
    for study, injected, finding, text in _own_draft_cases():
        draft = draft_from_text(study, text)
        if injected is None:
            assert draft.errors == [] and draft.report == Report(study.findings_text, study.impression_text)
            continue
        # the text shows an error only where its observation's reading changes (a hallucinated second nodule, a
        # missed one beside another, a zone moved inside "bibasilar" read like the truth), and a moved side or
        # zone only names its finding when the observation has one
        same = [f for f in study.findings if f.observation == finding.observation and f is not finding]
        obs = finding.observation
        changed = (label_report(text).get(obs) in (1, -1)) != (label_report(study.report).get(obs) in (1, -1)) \
            or stated_details(text).get(obs) != stated_details(study.report).get(obs)
        readable = changed and not same
        assert [kind for kind, _, _ in draft.errors] == ([injected] if readable else []), (study.study_id, injected, text)
        for kind, true, wrong in draft.errors:
            assert (true is None) == (kind == "hallucinated") and (wrong is None) == (kind == "missed")
            assert (true in study.findings) if true is not None else wrong not in study.findings
            assert wrong is None or wrong in draft.findings
            assert (wrong or true).observation == finding.observation
        recovered.add(injected)
    assert recovered == {"missed", "hallucinated", "wrong_side", "wrong_zone"}


def test_a_trace_on_an_own_draft_corrects_only_the_errors_its_looks_reach():
    from medr2.report.look_traces import build_look_trace_on_draft, draft_from_text, look_region

    checked = set()
    for study, injected, _, text in _own_draft_cases(20, 19):
        draft = draft_from_text(study, text)
        if injected is None or len(draft.errors) != 1:
            continue
        kind, true, wrong = draft.errors[0]
        region = look_region(wrong if wrong is not None else true)
        if region is None:
            continue
        truth = Report(study.findings_text, study.impression_text)
        looked, counts = build_look_trace_on_draft(study, draft, [region])
        assert counts == {"errors": 1, "corrected": 1}
        assert looked.draft == draft.report and looked.report == truth
        assert [i.action for i in looked.reflection if i.look] in (["removed"], ["revised"], ["added"], ["kept"])
        assert {i.action for i in looked.reflection} - {"kept"}, "the error's look carries its correction"
        elsewhere = next(r for r in LOOK_REGIONS if r != region and r not in {look_region(f) for f in study.findings})
        unseen, counts = build_look_trace_on_draft(study, draft, [elsewhere])
        assert counts == {"errors": 1, "corrected": 0}
        assert unseen.report == draft.report and all(i.action == "kept" for i in unseen.reflection)
        # narrowed to the words: silent words leave the draft as it is; words that show the error correct it
        silent, counts = build_look_trace_on_draft(study, draft, [region], shown={region: (set(), set())})
        assert counts == {"errors": 1, "corrected": 0} and silent.report == draft.report
        assert all(i.action == "kept" for i in silent.reflection)
        named = {region: ({true.observation} if kind == "missed" else set(), set() if kind == "missed" else {wrong.observation})}
        shown, counts = build_look_trace_on_draft(study, draft, [region], shown=named)
        assert counts == {"errors": 1, "corrected": 1} and shown.report == truth
        assert render(shown) == render(looked)
        for output in (looked, unseen, silent, shown):
            assert check_consistency(output).holds
            assert render(parse(render(output)).output) == render(output)
        checked.add(kind)
    assert {"missed", "hallucinated", "wrong_side"} <= checked


def test_look_rows_on_own_drafts_read_the_evaluation_and_hide_only_wrong_drafts(tmp_path):
    from medr2.phantom.generator import PhantomConfig, generate_studies
    from medr2.reflection.traces import look_rows, read_drafts
    from medr2.report.look_traces import draft_from_text
    from medr2.report.traces import TraceConfig

    studies = list(generate_studies(6, 23, PhantomConfig(size=256)))
    texts = [s.report if i % 2 else "Findings: Large left pleural effusion. Impression: Left effusion." for i, s in enumerate(studies)]
    rows = [{"id": s.study_id, "text": f"<think>\n<draft>\n{t}\n</draft>\n</think>\n<report>\n{t}\n</report>"} for s, t in zip(studies, texts)]
    (tmp_path / "predictions.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:5]) + "\n")
    with pytest.raises(ValueError, match="drafts for 5 of the 6 training studies"):
        read_drafts(str(tmp_path), 6, 23)
    (tmp_path / "predictions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    drafts = read_drafts(str(tmp_path), 6, 23)
    assert drafts == {s.study_id: t for s, t in zip(studies, texts)}
    with pytest.raises(ValueError, match="no predictions file"):
        read_drafts(str(tmp_path / "missing"), 6, 23)
    out = look_rows(6, 23, None, None, TraceConfig(), films=PhantomConfig(size=256), max_looks=3, workers=1, drafts=drafts)
    corrected = 0
    for (row, study, corrections), text in zip(out, texts):
        errors = draft_from_text(study, text).errors
        assistants = [m for m in row["messages"] if m["role"] == "assistant"]
        assert assistants[0]["context_only"] is bool(errors)
        assert len(row["images"]) == len(assistants)  # the film, then one crop per look
        assert 0 <= corrections <= len(errors)
        removed = sum(1 for m in assistants for part in m["content"] if "removed:" in part["text"])
        assert corrections >= removed  # every removal the reflection writes is a counted correction
        corrected += corrections
    assert {bool(draft_from_text(s, t).errors) for s, t in zip(studies, texts)} == {True, False}
    assert corrected > 0  # the hallucinated effusions sit where the draft's own look goes


def test_look_rows_that_need_evidence_correct_only_what_the_evidence_line_names():
    from medr2.phantom.generator import PhantomConfig, generate_studies
    from medr2.reflection.traces import look_rows

    # a study without an effusion whose draft states one: a hallucination in the left lower zone, where the draft's look goes
    study = next(s for s in generate_studies(12, 29, PhantomConfig(size=256))
                 if not any(f.observation == "Pleural Effusion" for f in s.findings))
    drafts = {study.study_id: "Findings: Large left pleural effusion. Impression: Left pleural effusion."}
    reports = {}
    for names_draft, need_evidence in ((False, False), (False, True), (True, True)):
        [(row, _, corrections)] = look_rows(1, 29, _FlatHeads(), None, None, films=PhantomConfig(size=256), max_looks=3,
                                            workers=1, drafts=drafts, evidence_names_draft=names_draft,
                                            corrections_need_evidence=need_evidence)
        answer = "\n".join(part["text"] for m in row["messages"] if m["role"] == "assistant" for part in m["content"])
        reports[names_draft, need_evidence] = (corrections, "removed: pleural effusion" in answer.lower())
    assert reports[False, False][1], "without the gate the truth alone removes the hallucinated effusion"
    assert reports[False, True][1] is False  # "finding heads here: nothing" does not show that it is absent
    assert reports[True, True][1], "'not seen here: pleural effusion' shows it"
    assert reports[False, True][0] < reports[True, True][0]


def test_corrections_that_need_evidence_are_for_own_draft_traces_only(tmp_path):
    from medr2.training.sft import MedR2SFTConfig

    with pytest.raises(ValueError, match="set look_drafts"):
        MedR2SFTConfig(output_dir=str(tmp_path), report_to="none", looks=True, corrections_need_evidence=True)


@pytest.mark.parametrize("option", [{"look_drafts": "runs/x"}, {"evidence_names_draft": True}, {"correction_oversample": 3}])
def test_own_drafts_and_draft_evidence_are_for_look_traces_only(tmp_path, option):
    from medr2.training.sft import MedR2SFTConfig

    with pytest.raises(ValueError, match="set looks true"):
        MedR2SFTConfig(output_dir=str(tmp_path), report_to="none", **option)


def test_the_evidence_names_the_drafts_findings_the_heads_do_not_see():
    from medr2.reflection.heads import OBSERVATIONS
    from medr2.reflection.looks import stated_here

    draft = "Findings: 12 mm nodule in the left upper zone. Small left pleural effusion. Impression: Nodule. Effusion."
    assert stated_here(draft, "left upper zone") == ["Lung Lesion"]
    assert stated_here(draft, "left lower zone") == ["Pleural Effusion"] and stated_here(draft, "heart") == []
    thresholds = np.full(len(OBSERVATIONS), 0.4)
    probs = np.zeros(len(OBSERVATIONS))
    probs[OBSERVATIONS.index("Pleural Effusion")] = 0.3  # "possible": above half its threshold
    plain = evidence_text("left upper zone", probs, thresholds, OBSERVATIONS)
    assert plain == "magnified left upper zone (2.2x); finding heads here: pleural effusion possible."  # as before
    named = evidence_text("left upper zone", probs, thresholds, OBSERVATIONS, ["Lung Lesion", "Pleural Effusion"])
    assert named == "magnified left upper zone (2.2x); finding heads here: pleural effusion possible; not seen here: lung lesion."


class _FlatHeads:
    """Look heads that read nothing anywhere: every region's evidence is 'nothing'."""

    thresholds = np.full(13, 0.5)

    def read(self, tower, films):
        return np.zeros((len(films), 64, 13))

    def region_reading(self, tower, film, film_probs, region):
        return np.zeros(13), self.thresholds


@pytest.mark.parametrize("names_draft", [False, True])
def test_the_loop_names_the_drafts_unseen_findings_only_for_a_model_taught_so(look_pipeline, monkeypatch, names_draft):
    from medr2.inference.pipeline import as_loaded
    from medr2.reflection.loop import LookRunner

    monkeypatch.setitem(look_pipeline.card, "look_evidence_names_draft", names_draft)
    draft = ("<think>\n<perception>\nheart: normal.\n</perception>\n<reasoning>\nx -> y\n</reasoning>\n<draft>\n"
             "Findings: 12 mm pulmonary nodule in the left upper zone. Impression: Pulmonary nodule.\n</draft>")
    film = np.full((512, 512), 90, dtype=np.uint8)
    runner = LookRunner(look_pipeline, _FlatHeads())
    [(_, looks)] = runner.run([as_loaded(film)], "proposed", max_looks=1, drafts=[draft])
    assert [lk.region for lk in looks] == ["left upper zone"]
    expected = "magnified left upper zone (2.2x); finding heads here: nothing"
    assert looks[0].evidence == expected + ("; not seen here: lung lesion." if names_draft else ".")


def test_look_rows_word_the_evidence_as_the_pipeline_does_for_a_model_taught_to_read_the_draft():
    from medr2.phantom.generator import PhantomConfig, generate_studies
    from medr2.reflection.traces import look_rows

    [study] = generate_studies(1, 29, PhantomConfig(size=256))
    drafts = {study.study_id: "Findings: Large left pleural effusion. Impression: Left pleural effusion."}
    evidence = {}
    for names_draft in (False, True):
        [(row, _, _)] = look_rows(1, 29, _FlatHeads(), None, None, films=PhantomConfig(size=256), max_looks=3, workers=1,
                               drafts=drafts, evidence_names_draft=names_draft)
        users = [m for m in row["messages"] if m["role"] == "user"][1:]  # the look turns after the prompt
        evidence[names_draft] = [part["text"] for m in users for part in m["content"] if part["type"] == "text"]
    looked = "magnified left lower zone (2.2x); finding heads here: nothing"
    assert evidence[False][0] == looked + "."
    assert evidence[True][0] == looked + "; not seen here: pleural effusion."


def test_export_carries_how_a_look_model_was_taught_its_evidence(tmp_path):
    from medr2.modeling.model import cli_build_tiny
    from medr2.training.export import export

    run = tmp_path / "run"
    assert cli_build_tiny(["--micro", "--out", str(run)]) == 0
    card = {"target": "medr2", "demo": True, "training_data": "synthetic phantoms", "reflection": "looks",
            "look_evidence_names_draft": True}
    (run / "medr2_model.json").write_text(json.dumps(card))
    export(run, tmp_path / "out", target="medr2", recipe=["recipes/experiments/sft_look_v7.yaml"])
    exported = json.loads((tmp_path / "out" / "medr2_model.json").read_text())
    assert exported["reflection"] == "looks" and exported["look_evidence_names_draft"] is True


def test_correcting_look_traces_are_repeated_as_the_recipe_says(tmp_path, monkeypatch):
    import medr2.reflection.heads as heads_module
    import medr2.reflection.traces as traces_module
    from medr2.phantom.generator import generate_studies
    from medr2.training import sft

    normal = next(s for s in generate_studies(40, 31) if not s.findings)  # no focal finding: focal_oversample leaves it once
    made = [({"id": "corrects"}, normal, 2), ({"id": "confirms"}, normal, 0)]
    monkeypatch.setattr(traces_module, "look_rows", lambda *args, **kwargs: made)
    monkeypatch.setattr(heads_module, "tower_of", lambda model: torch.nn.Identity())
    config = sft.MedR2SFTConfig(output_dir=str(tmp_path), report_to="none", looks=True, model_name_or_path=None,
                                correction_oversample=3)
    rows = sft._look_rows(config, model=None)
    assert sorted(row["id"] for row in rows) == ["confirms", "corrects", "corrects", "corrects"]
