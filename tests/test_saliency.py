"""medr2.saliency.maps on micro models built from config: targets, layer registry, Grad-CAM vs captum, maps, overlays."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from answers import GENERATED  # tests/answers.py
from captum.attr import IntegratedGradients, LayerGradCam, LayerGradientXActivation

from medr2 import saliency as S
from medr2.imaging.loader import load_image
from medr2.inference.pipeline import as_loaded
from medr2.inference.results import StudyResult
from medr2.labeler.findings import label_report
from medr2.modeling.model import TinyVLMConfig, build_chat, build_tiny_vlm, prepare_inputs
from medr2.modeling.tokenizer import train_tokenizer
from medr2.report.schema import parse

ARCHS = ("llava", "qwen2_vl", "qwen2_5_vl")


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([GENERATED] * 20, vocab_size=400)


@pytest.fixture(scope="module")
def film() -> np.ndarray:
    """A non-square grayscale film, so 'heatmap at the original size' is not the model's 224 x 224."""
    y, x = np.mgrid[0:200, 0:232]
    return ((np.sin(x / 9.0) * np.cos(y / 13.0) + 1) * 120).astype(np.uint8)


def _micro(tokenizer, arch: str):
    return build_tiny_vlm(tokenizer, TinyVLMConfig.micro(arch))


def _explained(tokenizer, film, arch: str):
    """A micro model, a hand-made result on `film`, its saved inputs and the generated text's token spans."""
    model, processor = _micro(tokenizer, arch)
    result = _result(tokenizer, processor, film)
    inputs, new_ids = result.saliency_inputs["inputs"], result.saliency_inputs["new_ids"]
    text, offsets = S.token_char_spans(tokenizer, new_ids[0].tolist())
    return model, processor, result, inputs, new_ids, text, offsets


def _result(tokenizer, processor, film, text: str = GENERATED, labels: dict | None = None) -> StudyResult:
    """What Pipeline.run hands on, with a hand-made generation instead of the untrained model's."""
    inputs = prepare_inputs(processor, film, build_chat("Read this chest radiograph."))
    new_ids = torch.tensor([tokenizer.encode(text + "<|im_end|>", add_special_tokens=False)])
    parsed = parse(text)
    labels = labels if labels is not None else label_report(parsed.output.report.text)
    return StudyResult(text, parsed, None, labels, {}, None, new_ids.shape[1], as_loaded(film),
                       {"inputs": inputs, "new_ids": new_ids})


def test_targets_of_a_hand_made_generation():
    targets = {t.name: t for t in S.locate_targets(GENERATED)}
    effusion = targets["Pleural Effusion"]
    assert (effusion.kind, effusion.value) == ("finding", 1)
    # both report sentences, headers stripped, and the perception line where the sign was read; the draft
    # is not searched by default
    assert [GENERATED[a:b] for a, b in effusion.spans] == ["Small right pleural effusion."] * 2 + [
        "right lung, lower zone: blunted costophrenic angle with a meniscus."]
    assert effusion.text == "Small right pleural effusion. Small right pleural effusion."
    report_only = {t.name: t for t in S.locate_targets(GENERATED, with_perception_evidence=False)}
    assert [GENERATED[a:b] for a, b in report_only["Pleural Effusion"].spans] == ["Small right pleural effusion."] * 2
    # the pneumothorax was never perceived: its target stays its report sentence
    assert [GENERATED[a:b] for a, b in targets["Pneumothorax"].spans] == ["Possible left apical pneumothorax."]
    assert effusion.spans[0][0] > GENERATED.index("<report>")
    assert targets["Pneumothorax"].value == -1
    assert "Consolidation" not in targets and "Cardiomegaly" not in targets  # negated / normal
    perception = [t.name for t in targets.values() if t.kind == "perception"]
    assert perception == ["right lung, lower zone"]  # normal lines and "devices: none" are not explained
    assert targets["report"].text.startswith("Findings: Normal heart size.")
    with_draft = {t.name: t for t in S.locate_targets(GENERATED, sections=("draft", "report"))}
    assert len(with_draft["Pleural Effusion"].spans) == 5


def test_perception_evidence_respects_side_and_single_finding_regions():
    trace = ("<perception>\nheart: cardiothoracic ratio about 0.61, enlarged.\n"
             "right pleura: blunted costophrenic angle with a meniscus, small.\n"
             "left pleura: visceral pleural line with no markings beyond it.\n</perception>\n"
             "<report>\nFindings: Cardiomegaly. Small left pleural effusion. Left pneumothorax.\n</report>")
    targets = {t.name: t for t in S.locate_targets(trace, include_perception=False)}
    report_starts = trace.index("<report>")

    def lines(name: str) -> list[str]:  # the perception lines added to a finding's report sentences
        return [trace[a:b] for a, b in targets[name].spans if a < report_starts]

    assert lines("Cardiomegaly") == ["heart: cardiothoracic ratio about 0.61, enlarged."]
    assert lines("Pleural Effusion") == []  # the meniscus was seen on the right: not evidence for a LEFT effusion
    assert lines("Pneumothorax") == ["left pleura: visceral pleural line with no markings beyond it."]
    # a sign worded with "no" is still an abnormal perception line with its own map
    assert [t.name for t in S.locate_targets(trace) if t.kind == "perception"] == ["heart", "right pleura", "left pleura"]


def test_labels_restrict_targets_and_a_missing_sentence_gives_none():
    labels = {"Pleural Effusion": 1, "Pneumothorax": None, "Fracture": 1}  # Fracture is not in the text
    names = [t.name for t in S.locate_targets(GENERATED, labels, include_perception=False)]
    assert names == ["Pleural Effusion", "report"]
    assert [t.name for t in S.locate_targets("<report>\nFindings: No acute disease.\n</report>")] == ["report"]
    assert S.locate_targets("") == []


def test_token_spans_cover_the_target_sentence(tokenizer):
    ids = tokenizer.encode(GENERATED, add_special_tokens=False)
    text, offsets = S.token_char_spans(tokenizer, ids)
    assert text == GENERATED and offsets.shape == (len(ids), 2) and offsets[-1, 1] == len(text)
    target = next(t for t in S.locate_targets(text) if t.name == "Pneumothorax")
    picked = S.token_weights([target], offsets)[0].numpy().astype(bool)
    covered = "".join(text[a:b] for a, b in offsets[picked])
    assert covered.strip() == "Possible left apical pneumothorax."


@pytest.mark.parametrize("arch", ARCHS)
def test_maps_shapes_normalised_deterministic(tokenizer, film, arch):
    model, processor = _micro(tokenizer, arch)
    result = _result(tokenizer, processor, film)
    first = S.explain(model, processor, result)
    second = S.explain(model, processor, result)
    assert [m.target for m in first.maps] == ["Pleural Effusion", "Pneumothorax", "right lung, lower zone", "report"]
    # LLaVA squashes to 224 x 224 (8 x 8 patches); Qwen keeps the aspect ratio, 14 px patches before the merge
    grid = (8, 8) if arch == "llava" else tuple(int(v) for v in result.saliency_inputs["inputs"]["image_grid_thw"][0, 1:])
    assert grid[0] != grid[1] or arch == "llava"
    for a, b in zip(first.maps, second.maps):
        assert a.heatmap.shape == film.shape and a.heatmap.dtype == np.float32
        assert a.grid.shape == grid and a.method == S.DEFAULT_METHOD
        assert 0.0 <= a.heatmap.min() and a.heatmap.max() == pytest.approx(1.0)
        assert a.grid.max() == pytest.approx(1.0) and a.grid.min() >= 0.0
        np.testing.assert_array_equal(a.heatmap, b.heatmap)
    assert first.for_target("Pneumothorax").value == -1 and first.for_target("nothing") is None
    effusion = first.for_target("Pleural Effusion")
    region = S.plausible_region("Pleural Effusion", effusion.text, film.shape)  # right base: image left, lower part
    h, w = film.shape
    assert region[int(0.9 * h), int(0.1 * w)]
    assert not region[int(0.9 * h), int(0.9 * w)] and not region[int(0.05 * h), int(0.1 * w)]
    share = float(effusion.heatmap[region].sum() / effusion.heatmap.sum())  # the map's energy inside it, by hand
    assert effusion.evidence == pytest.approx(share, rel=1e-5)
    assert effusion.weak_evidence == (share < S.EVIDENCE_MIN)
    assert first.for_target("report").evidence is None
    only = S.explain(model, processor, result, targets=["report", "Fracture"], include_perception=False)
    assert [m.target for m in only.maps] == ["report"]
    assert not model.training


@pytest.mark.parametrize("arch", ["llava", "qwen2_5_vl"])
def test_gradcam_equals_captum(tokenizer, film, arch):
    model, processor, result, inputs, new_ids, text, offsets = _explained(tokenizer, film, arch)
    target = [t for t in S.locate_targets(text) if t.name == "Pleural Effusion"]
    ours, _ = S.attribute(model, inputs, new_ids, target, offsets, methods=("gradcam", "gradxact"))
    weights = S.token_weights(target, offsets)[0]

    def forward(pixels):
        return (S.token_logprobs(model, inputs, new_ids, pixels) * weights).sum(-1)

    def captum_maps(block):
        with S.LayerProbe(block, S.patch_layout(model, inputs, "block")) as probe:
            cam = LayerGradCam(forward, probe.identity).attribute(inputs["pixel_values"])[0, 0]
            gxa = LayerGradientXActivation(forward, probe.identity).attribute(inputs["pixel_values"])[0].sum(0)
        return cam, gxa

    cam, gxa = captum_maps(S.layer_for(model))
    assert cam.abs().max() > 0
    single, _ = S.attribute(model, inputs, new_ids, target, offsets, methods=("gradcam", "gradxact"), layer="block")
    torch.testing.assert_close(torch.from_numpy(single["gradcam"][0]), cam, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(torch.from_numpy(single["gradxact"][0]), gxa, rtol=1e-4, atol=1e-7)
    # the default fuses every vision block: captum per block, each rectified and scaled to max 1, summed
    blocks = S.layers_for(model)
    assert len(blocks) == 2 and blocks[-1] is S.layer_for(model)
    per_block = [captum_maps(b) for b in blocks]
    for i, name in enumerate(("gradcam", "gradxact")):
        expected = sum(torch.from_numpy(S.normalise(maps[i].detach())) for maps in per_block)
        torch.testing.assert_close(torch.from_numpy(ours[name][0]), expected, rtol=1e-4, atol=1e-6)
    assert not np.allclose(ours["gradxact"][0], S.normalise(gxa.detach()))  # the earlier block changes the map



@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_depth_weights_choose_the_fused_blocks_per_finding(tokenizer, film, arch):
    model, processor, result, inputs, new_ids, text, offsets = _explained(tokenizer, film, arch)
    targets = [t for t in S.locate_targets(text, include_perception=False) if t.kind == "finding"]
    assert [t.name for t in targets] == ["Pleural Effusion", "Pneumothorax"]
    per_layer = S.layer_maps(model, inputs, new_ids, targets, offsets)
    assert per_layer.shape[:2] == (2, 2)
    last, _ = S.attribute(model, inputs, new_ids, targets, offsets, layer="block")
    uniform, _ = S.attribute(model, inputs, new_ids, targets, offsets)
    np.testing.assert_allclose(last["gradxact"], per_layer[:, -1], rtol=1e-5, atol=1e-8)
    # effusion: last block only; pneumothorax (not named, no "*"): every block with weight 1, as without weights
    mixed, _ = S.attribute(model, inputs, new_ids, targets, offsets, depth_weights={"Pleural Effusion": [0, 1]})
    np.testing.assert_allclose(S.normalise(mixed["gradxact"][0]), S.normalise(last["gradxact"][0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mixed["gradxact"][1], uniform["gradxact"][1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(S.normalise(uniform["gradxact"][0]), S.normalise(last["gradxact"][0]))
    starred, _ = S.attribute(model, inputs, new_ids, targets, offsets, depth_weights={"*": [0, 1]})
    np.testing.assert_allclose(S.normalise(starred["gradxact"][1]), S.normalise(last["gradxact"][1]), rtol=1e-5, atol=1e-6)
    # explain passes them through; other layers ignore them
    maps = S.explain(model, processor, result, include_perception=False, depth_weights={"Pleural Effusion": [0, 1]})
    np.testing.assert_allclose(maps.for_target("Pleural Effusion").grid, S.normalise(last["gradxact"][0]), rtol=1e-5, atol=1e-6)
    single, _ = S.attribute(model, inputs, new_ids, targets, offsets, layer="block", depth_weights={"*": [0, 1]})
    np.testing.assert_array_equal(single["gradxact"], last["gradxact"])
    for bad in ([1.0], [0, 0], [-1, 1]):
        with pytest.raises(ValueError, match="one per vision block"):
            S.attribute(model, inputs, new_ids, targets, offsets, depth_weights={"Pneumothorax": bad})
    with pytest.raises(ValueError, match="per-layer maps"):
        S.layer_maps(model, inputs, new_ids, targets, offsets, method="ig")

def test_registry_resolves_every_arch(tokenizer):
    for arch in ARCHS:
        model, _ = _micro(tokenizer, arch)
        block, projector = S.layer_for(model), S.layer_for(model, "projector")
        names = {id(m): n for n, m in model.named_modules()}
        assert id(block) in names and id(projector) in names
        if arch == "llava":
            assert names[id(block)].endswith("encoder.layers.1") and names[id(projector)].endswith("multi_modal_projector")
        else:
            assert names[id(block)].endswith("visual.blocks.1") and names[id(projector)].endswith("visual.merger")
        assert S.layers_for(model, "projector") == [projector]
        assert [names[id(m)] for m in S.layers_for(model)] == [names[id(block)].replace(".1", ".0"), names[id(block)]]
    with pytest.raises(ValueError, match="layer='neck'"):
        S.layer_for(model, "neck")
    with pytest.raises(ValueError, match="layers_for"):
        S.layer_for(model, "blocks")
    model.config.model_type = "paligemma"  # an architecture the registry has no entry for
    with pytest.raises(S.SaliencyUnavailable, match="saliency unavailable for this architecture.*paligemma"):
        S.layer_for(model)


@pytest.mark.parametrize("arch", ["llava_onevision", "idefics3"])
def test_registry_explains_the_whole_film_view_of_llava_onevision_and_idefics3(tokenizer, film, arch):
    """Both read a film as views [B, views, C, S, S]: the grid is the view that covers the whole film (OneVision's base
    view, first; Idefics3's global view, last), on the tower's patches or the projector's / connector's tokens."""
    model, processor = _micro(tokenizer, arch)
    inputs = prepare_inputs(processor, film, build_chat("x"))
    assert inputs["pixel_values"].dim() == 5
    names = {id(m): n for n, m in model.named_modules()}
    projector = "multi_modal_projector" if arch == "llava_onevision" else "connector"
    assert names[id(S.layer_for(model))].endswith("encoder.layers.1")
    assert names[id(S.layer_for(model, "projector"))].endswith(projector)
    assert [names[id(m)][-1] for m in S.layers_for(model)] == ["0", "1"]
    block, proj = S.patch_layout(model, inputs, "block"), S.patch_layout(model, inputs, "projector")
    view = 0 if arch == "llava_onevision" else -1
    assert block.view == proj.view == view and block.batched and block.skip == 0
    assert (block.gh, proj.gh) == ((8, 8) if arch == "llava_onevision" else (16, 8))  # Idefics3: 14 px patches, 2 x 2 shuffle
    with S.LayerProbe(S.layer_for(model), block) as probe, torch.no_grad():
        S.token_logprobs(model, inputs, torch.tensor([[5, 6]]))
    n_views = inputs["pixel_values"].shape[1]
    assert probe.acts.shape == (n_views, model.config.vision_config.hidden_size, block.gh, block.gw)


def test_idefics3_connector_tokens_are_row_major_2x2_blocks(tokenizer):
    """The connector's pixel shuffle folds each 2 x 2 block of patches into one token, tokens in row-major order: the
    projector grid's assumption, checked on patch indices."""
    model, processor = _micro(tokenizer, "idefics3")
    inputs = prepare_inputs(processor, np.zeros((64, 64), np.uint8) + 100, build_chat("x"))
    layout = S.patch_layout(model, inputs, "projector")
    side = 2 * layout.gh
    tokens = model.model.connector.pixel_shuffle(torch.arange(side * side, dtype=torch.float32)[None, :, None], 2)[0]
    for cell in range(layout.gh * layout.gw):
        ty, tx = divmod(cell, layout.gw)
        patches = {(2 * ty + dy) * side + 2 * tx + dx for dy in (0, 1) for dx in (0, 1)}
        assert set(tokens[layout.order[cell]].long().tolist()) == patches


def test_qwen_grid_order_follows_the_image(tokenizer):
    """Rows reordered by the layout are row-major in image space (2 x 2 merge windows, 2.5's windows undone)."""
    y, x = np.mgrid[0:224, 0:224]
    for arch in ("qwen2_vl", "qwen2_5_vl"):
        model, processor = _micro(tokenizer, arch)
        inputs = prepare_inputs(processor, (x + 0 * y).astype(np.uint8), build_chat("x"))
        order = S.qwen_patch_order(16, 16)
        col = inputs["pixel_values"][order].mean(1).reshape(16, 16)  # brightness = image column
        assert (col.diff(dim=1) > 0).all() and (col.diff(dim=0).abs() < 1e-5).all()
        layout = S.patch_layout(model, inputs, "block")
        seen = {}
        visual = S.vlm_part(model, "visual")

        def keep(module, args, kwargs):
            seen["x"] = args[0] if args else kwargs["hidden_states"]

        hook = visual.blocks[0].register_forward_pre_hook(keep, with_kwargs=True)
        with torch.no_grad():
            model(**inputs)
            embedded = visual.patch_embed(inputs["pixel_values"])
        hook.remove()
        torch.testing.assert_close(seen["x"][layout.order], embedded[order])


def test_baselines_and_ig(tokenizer, film):
    model, processor, result, inputs, new_ids, text, offsets = _explained(tokenizer, film, "llava")
    targets = S.locate_targets(text, include_perception=False)
    grids, _ = S.attribute(model, inputs, new_ids, targets, offsets, methods=("random", "center", "ig"))
    assert all(g.shape == (len(targets), 8, 8) for g in grids.values())
    again, _ = S.attribute(model, inputs, new_ids, targets, offsets, methods=("random",))
    np.testing.assert_array_equal(grids["random"], again["random"])
    assert np.unravel_index(grids["center"][0].argmax(), (8, 8)) in {(3, 3), (3, 4), (4, 3), (4, 4)}
    # IG is captum's IntegratedGradients on the pixels (black baseline), summed over channels, averaged per
    # 28 px patch of LLaVA's 224 x 224 input: computed here target by target, without the shared batch
    weights = S.token_weights(targets, offsets)
    for k in range(len(targets)):
        def forward(pixels, k=k):
            return (S.token_logprobs(model, inputs, new_ids, pixels) * weights[k]).sum(-1)

        attr = IntegratedGradients(forward).attribute(inputs["pixel_values"], baselines=0.0, n_steps=S.IG_STEPS)
        expected = attr[0].sum(0).reshape(8, 28, 8, 28).mean(dim=(1, 3))
        torch.testing.assert_close(torch.as_tensor(grids["ig"][k]).float(), expected.float(), rtol=1e-4, atol=1e-6)
    assert np.abs(grids["ig"]).max() > 1e-6  # a non-trivial map, so the equality above says something
    with pytest.raises(ValueError, match="unknown saliency method"):
        S.explain(model, processor, result, method="lime")


def test_explain_needs_saved_inputs(tokenizer, film):
    model, processor = _micro(tokenizer, "llava")
    result = _result(tokenizer, processor, film)
    result.saliency_inputs = None
    with pytest.raises(ValueError, match="run_batch"):
        S.explain(model, processor, result)


def test_overlay_and_legend(film):
    heat = S.upsample(S.normalise(np.arange(16, dtype=np.float32).reshape(4, 4) - 5), film.shape)
    assert heat.shape == film.shape and heat.min() == 0.0 and heat.max() == pytest.approx(1.0)
    out = S.overlay(film, heat, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == (*film.shape, 3)
    np.testing.assert_array_equal(S.overlay(film, heat, alpha=0.0), np.repeat(film[..., None], 3, -1))
    assert not np.array_equal(out, np.repeat(film[..., None], 3, -1))
    with pytest.raises(ValueError, match="heatmap shape"):
        S.overlay(film, heat[:10])
    with pytest.raises(ValueError, match="alpha"):
        S.overlay(film, heat, alpha=1.5)
    legend = S.legend_image()
    assert legend.dtype == np.uint8 and legend.shape == (36, 220, 3)
    assert S.normalise(np.zeros((3, 3))).max() == 0.0


def test_real_radiograph_shape(tokenizer):
    """The RG1 example (non-square DICOM) gets a heatmap at its own size."""
    loaded = load_image("assets/examples/rg1_chest.dcm")
    model, processor = _micro(tokenizer, "qwen2_vl")
    result = _result(tokenizer, processor, loaded.pixels)
    result.image = loaded
    maps = S.explain(model, processor, result, targets=["report"]).maps
    assert maps[0].heatmap.shape == loaded.pixels.shape


def test_evidence_region_holds_the_phantom_masks():
    """The plausible regions are loose enough for every ground-truth mask of held-out phantoms."""
    from medr2.phantom.generator import generate_studies

    checked = 0
    for study in generate_studies(40, 3):
        pneumonia_masks = [f.mask for f in study.findings if f.kind == "pneumonia"]
        for f in study.findings:
            # the consolidation paired with a multifocal pneumonia shares its mask, so only its side holds
            multifocal = any(np.array_equal(m, f.mask) for m in pneumonia_masks)  # the pneumonia itself included
            sentence = f"{f.side or ''} {'' if multifocal else f.zone or ''} {f.kind}"
            region = S.plausible_region(f.observation, sentence, f.mask.shape)
            if region is None or not f.mask.any():
                continue
            checked += 1
            assert (f.mask & region).sum() >= 0.9 * f.mask.sum(), (f.kind, f.side, f.zone)
    assert checked > 30


def test_evidence_flags_a_map_away_from_the_region():
    shape = (100, 100)
    region = S.plausible_region("Pleural Effusion", "Small right pleural effusion.", shape)
    assert region[90, 10] and not region[90, 90] and not region[5, 10]  # patient right = image left, base
    base = np.zeros(shape, np.float32)
    base[80:90, 10:20] = 1.0
    apex = np.zeros(shape, np.float32)
    apex[2:8, 80:90] = 1.0
    assert S.evidence_share(base, region) == 1.0 and S.evidence_share(apex, region) == 0.0
    assert S.plausible_region("Support Devices", "Central line.", shape) is None
    lesion = S.plausible_region("Lung Lesion", "Nodule in the left upper zone.", shape)
    assert lesion[20, 80] and not lesion[80, 80] and not lesion[20, 20]



@pytest.mark.parametrize("arch", ["gemma3", "qwen3_vl", "llava", "qwen2_vl", "llava_onevision", "idefics3"])
def test_teacher_forced_logprobs_are_the_models_own(tokenizer, film, arch):
    """The score every map explains is the model's log-probability of its answer: one full forward over prompt + answer
    with every input the processor made (Gemma 3's token_type_ids included: its image tokens attend both ways)."""
    model, processor, result, inputs, new_ids, text, offsets = _explained(tokenizer, film, arch)
    model.eval()
    with torch.no_grad():
        got = S.token_logprobs(model, inputs, new_ids)[0]
        full = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        for key in ("mm_token_type_ids", "token_type_ids"):
            if key in full:
                full[key] = torch.cat([full[key], torch.zeros_like(new_ids)], 1)
        logits = model(input_ids=torch.cat([inputs["input_ids"], new_ids], 1),
                       attention_mask=torch.cat([inputs["attention_mask"], torch.ones_like(new_ids)], 1), **full).logits
        start = inputs["input_ids"].shape[1] - 1
        want = torch.log_softmax(logits[0, start:start + new_ids.shape[1]].float(), -1).gather(-1, new_ids[0][:, None])[:, 0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["gemma3", "qwen3_vl", "llava_onevision", "idefics3"])
def test_pixel_methods_for_the_newer_architectures(tokenizer, film, arch):
    """Integrated Gradients is captum's on the pixels, target by target, laid out on the patch grid (Gemma 3: LLaVA's
    square film; LLaVA-OneVision / Idefics3: the explained view of theirs; Qwen3-VL: its 2 x 2 merge windows);
    occlusion blanks exactly the pixels under the chosen cells, in the explained view only."""
    square = arch != "qwen3_vl"
    model, processor, result, inputs, new_ids, text, offsets = _explained(tokenizer, film, arch)
    targets = S.locate_targets(text, include_perception=False)
    grids, _ = S.attribute(model, inputs, new_ids, targets, offsets, methods=("ig",))
    layout = S.patch_layout(model, inputs, "block")
    assert grids["ig"].shape == (len(targets), layout.gh, layout.gw)
    weights = S.token_weights(targets, offsets)
    for k in range(len(targets)):
        def forward(pixels, k=k):
            return (S.token_logprobs(model, inputs, new_ids, pixels) * weights[k]).sum(-1)

        attr = IntegratedGradients(forward).attribute(inputs["pixel_values"], baselines=0.0, n_steps=S.IG_STEPS)
        if square:  # [1, C, S, S] or [1, views, C, S, S]: sum channels, mean over each patch of the explained view
            pixels = attr[0, layout.view] if attr.dim() == 5 else attr[0]
            side = attr.shape[-1] // layout.gh
            expected = pixels.sum(0).reshape(layout.gh, side, layout.gw, side).mean(dim=(1, 3))
        else:  # [patches, C * t * p * p] in merge-window order: sum each patch, put it at its grid cell
            expected = attr.sum(-1)[S.qwen_patch_order(layout.gh, layout.gw)].reshape(layout.gh, layout.gw)
        torch.testing.assert_close(torch.as_tensor(grids["ig"][k]).float(), expected.float(), rtol=1e-4, atol=1e-6)
    assert np.abs(grids["ig"]).max() > 1e-6
    cells = np.zeros((layout.gh, layout.gw), dtype=bool)
    cells[: layout.gh // 2, 1] = True
    pv, before = S.occlude(model, inputs, cells, "block"), inputs["pixel_values"]
    if square:
        side = pv.shape[-1] // layout.gh
        blank = torch.from_numpy(np.kron(cells, np.ones((side, side), dtype=bool)))
        if pv.dim() == 5:  # the other views are untouched
            others = [v for v in range(pv.shape[1]) if v != layout.view % pv.shape[1]]
            assert torch.equal(pv[:, others], before[:, others])
            pv, before = pv[:, layout.view], before[:, layout.view]
        assert (pv[..., blank] == 0).all() and torch.equal(pv[..., ~blank], before[..., ~blank])
    else:
        rows = S.qwen_patch_order(layout.gh, layout.gw)[torch.from_numpy(cells.reshape(-1))]
        kept = torch.ones(len(pv), dtype=torch.bool)
        kept[rows] = False
        assert (pv[rows] == 0).all() and torch.equal(pv[kept], before[kept])
    assert (before != 0).any(dim=-1).all()  # the film had no blank rows: the check above says something
