"""medr2.modeling.model / .tokenizer / .qwen_processor on micro models built from config (CPU, nothing downloaded)."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, ProcessorMixin

from medr2.modeling.model import (
    ModelLoadError,
    TinyVLMConfig,
    build_chat,
    build_tiny_vlm,
    check_multimodal_processor,
    cli_build_tiny,
    count_parameters,
    generation_kwargs,
    load_model,
    prepare_inputs,
    weights_sha256,
    weights_sha256_short,
)
from medr2.modeling.qwen_processor import NoVideoQwen2_5_VLProcessor
from medr2.modeling.tokenizer import IM_END, IMAGE_TOKEN, SCHEMA_TAGS, train_tokenizer
from medr2.report.knowledge import prompted_system_prompt

ARCHS = ("llava", "qwen2_vl", "qwen2_5_vl")
SENTENCES = [
    "The heart size is normal.", "The mediastinal contours are within normal limits.",
    "No focal consolidation, pleural effusion or pneumothorax.", "Cardiomegaly.",
    "Small right pleural effusion with blunting of the costophrenic angle.", "Left apical pneumothorax.",
    "Consolidation in the right lower zone.", "A nodule in the left upper zone.", "No acute disease.",
] * 4


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(SENTENCES, vocab_size=400)


@pytest.fixture(scope="module")
def film() -> Image.Image:
    """A grayscale ("L") non-square image, as the pipeline passes them."""
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((260, 240)) * 255).astype(np.uint8), mode="L")


def _micro(tokenizer, arch: str):
    model, processor = build_tiny_vlm(tokenizer, TinyVLMConfig.micro(arch))
    with torch.no_grad():  # random init with 0.02 std gives near-constant argmax: spread the embeddings
        model.get_input_embeddings().weight.normal_(0.0, 1.0)
    return model, processor


def _greedy(model, processor, image, n: int = 6):
    inputs = prepare_inputs(processor, image, build_chat("Describe the film."), device=model.device)
    with torch.no_grad():
        logits = model(**inputs).logits
        ids = model.generate(**inputs, **generation_kwargs(max_new_tokens=n))
    return inputs, logits, ids[0, inputs["input_ids"].shape[1]:]


# ------------------------------------------------------------------------------------------- tokenizer
def test_schema_tags_are_single_tokens_and_survive_decoding(tokenizer):
    for tag in SCHEMA_TAGS:
        assert len(tokenizer.encode(tag, add_special_tokens=False)) == 1, tag
    text = "<think>\n<perception> heart: normal </perception>\n</think>\n<report> Findings: clear. </report>"
    ids = tokenizer.encode(text + IM_END, add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == text  # tags kept, eos dropped, spacing exact


def test_chat_template_renders_one_image_token_and_generation_prompt(tokenizer):
    rendered = tokenizer.apply_chat_template(build_chat("Report.", system="Be careful."), tokenize=False,
                                             add_generation_prompt=True)
    assert rendered.count(IMAGE_TOKEN) == 1
    assert rendered.index("system") < rendered.index(IMAGE_TOKEN) < rendered.index("Report.")
    assert rendered.endswith("<|im_start|>assistant\n")


def test_chat_template_marks_only_the_assistant_turn_for_loss(tokenizer):
    answer = {"role": "assistant", "content": [{"type": "text", "text": "<report> ok </report>"}]}
    messages = build_chat("Report.") + [answer]
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    kept = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tokenizer.decode(kept) == "<report> ok </report>" + IM_END


def test_tokenizer_rejects_a_vocabulary_below_the_byte_alphabet():
    with pytest.raises(ValueError, match="vocab_size=100"):
        train_tokenizer(SENTENCES, vocab_size=100)


# ----------------------------------------------------------------------------------------------- build
def test_config_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="arch='gpt'"):
        TinyVLMConfig(arch="gpt")
    with pytest.raises(ValueError, match="image_size=200"):
        TinyVLMConfig(image_size=200)
    with pytest.raises(ValueError, match="text_kv_heads=3"):
        TinyVLMConfig(text_kv_heads=3)


def test_default_llava_is_a_few_million_parameters_with_64_image_tokens(tokenizer, film):
    model, processor = build_tiny_vlm(tokenizer, TinyVLMConfig())
    assert 4.5e6 < count_parameters(model) < 6.5e6
    inputs = prepare_inputs(processor, film, build_chat("x"))
    assert int((inputs["input_ids"] == model.config.image_token_index).sum()) == 64


@pytest.mark.parametrize("arch", ARCHS)
def test_build_save_load_generate_round_trip(tokenizer, film, tmp_path, arch):
    model, processor = _micro(tokenizer, arch)
    inputs, logits, new_ids = _greedy(model, processor, film)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    n_image_tokens = int((inputs["input_ids"] == image_id).sum())
    if arch == "llava":
        assert n_image_tokens == 64  # squashed to 224 x 224: 8 x 8 patches of 28 px
    else:  # aspect kept at ~224² px: 260 x 240 -> 16 x 14 patches of 14 px, merged 2 x 2 -> 8 x 7 tokens
        assert {"mm_token_type_ids", "image_grid_thw"} <= set(inputs)
        assert inputs["image_grid_thw"].tolist() == [[1, 16, 14]] and n_image_tokens == 56

    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = load_model(str(tmp_path), device="cpu")
    assert type(loaded_processor) is type(processor)
    assert loaded.dtype == torch.float32 and not loaded.training
    inputs2, logits2, new_ids2 = _greedy(loaded, loaded_processor, film)
    assert torch.equal(inputs["input_ids"], inputs2["input_ids"])
    assert torch.equal(inputs["pixel_values"], inputs2["pixel_values"])  # the saved image processor resizes alike
    assert torch.equal(logits, logits2)
    assert torch.equal(new_ids, new_ids2)
    assert loaded_processor.decode(new_ids2, skip_special_tokens=True) == processor.decode(new_ids, skip_special_tokens=True)


def test_prepare_inputs_batches_left_padded_and_casts_pixels(tokenizer, film):
    _, processor = build_tiny_vlm(tokenizer, TinyVLMConfig.micro("llava"))
    array = np.linspace(0.0, 1.0, 180 * 200).reshape(180, 200)  # float grayscale in [0, 1]
    chats = [build_chat("Short."), build_chat("A much longer prompt for the second study.", system="sys")]
    inputs = prepare_inputs(processor, [film, array], chats, dtype=torch.bfloat16)
    mask = inputs["attention_mask"]
    assert mask[0, 0] == 0 and mask[1, 0] == 1 and bool(mask[:, -1].all())  # left padding for generation
    assert inputs["pixel_values"].dtype == torch.bfloat16 and inputs["input_ids"].dtype == torch.long
    shared = prepare_inputs(processor, [film, array], chats[0])  # one conversation for every image
    assert shared["input_ids"].shape[0] == 2 and torch.equal(shared["input_ids"][0], shared["input_ids"][1])
    with pytest.raises(ValueError, match="2 images but 1 conversations"):
        prepare_inputs(processor, [film, film], [chats[0]])


# ------------------------------------------------------------------------------------------------ load
def test_dtype_alias_loads_bf16_and_generates(tokenizer, film, tmp_path):
    model, processor = _micro(tokenizer, "llava")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = load_model(str(tmp_path), device="cpu", dtype="bf16")
    assert loaded.dtype == torch.bfloat16
    inputs = prepare_inputs(loaded_processor, film, build_chat("x"), dtype=loaded.dtype)
    assert loaded.generate(**inputs, **generation_kwargs(max_new_tokens=3)).shape[1] > inputs["input_ids"].shape[1]
    with pytest.raises(ModelLoadError, match="dtype='fp64'"):
        load_model(str(tmp_path), dtype="fp64")


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no model at"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="no model at"):
        load_model("tests/no-such-model")  # "dir/name" whose first part exists here is a path, not a hub id


def test_hub_id_while_offline_names_the_fix(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        load_model("medr2-test/does-not-exist")


def test_bare_tokenizer_directory_is_rejected_with_class_name(tmp_path):
    train_tokenizer(SENTENCES, vocab_size=300).save_pretrained(tmp_path)  # fresh: names no processor class
    with pytest.raises(ModelLoadError, match="TokenizersBackend.*import medr2.modeling.model"):
        load_model(str(tmp_path))
    # the silent fallback seen when the custom processor class is not registered
    with pytest.raises(ModelLoadError, match="not a multimodal processor"):
        check_multimodal_processor(AutoTokenizer.from_pretrained(tmp_path), str(tmp_path))


def test_checkpoint_naming_the_stock_qwen_processor_loads_the_no_video_one(tokenizer, tmp_path):
    model, processor = _micro(tokenizer, "qwen2_5_vl")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    config_file = tmp_path / "processor_config.json"
    config = json.loads(config_file.read_text())
    config["processor_class"] = "Qwen2_5_VLProcessor"  # as official checkpoints say; needs torchvision here
    config_file.write_text(json.dumps(config))
    _, loaded_processor = load_model(str(tmp_path))
    assert isinstance(loaded_processor, NoVideoQwen2_5_VLProcessor)


def test_lora_adapter_directory_loads_its_base(tokenizer, film, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    model, processor = _micro(tokenizer, "llava")
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    model.save_pretrained(base_dir)
    processor.save_pretrained(base_dir)
    base, _ = load_model(str(base_dir))
    _, base_logits, _ = _greedy(base, processor, film, n=1)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # non-zero delta
    peft_model = get_peft_model(base, lora).eval()
    _, peft_logits, _ = _greedy(peft_model, processor, film, n=1)
    peft_model.save_pretrained(adapter_dir)

    loaded, loaded_processor = load_model(str(adapter_dir))  # base found via adapter_config.json
    assert isinstance(loaded, PeftModel) and isinstance(loaded_processor, ProcessorMixin)
    _, logits, _ = _greedy(loaded, loaded_processor, film, n=1)
    assert torch.allclose(logits, peft_logits, atol=1e-5) and not torch.allclose(logits, base_logits, atol=1e-3)
    with pytest.raises(ModelLoadError, match="no peft adapter"):
        load_model(str(base_dir), adapter=str(base_dir))


# ----------------------------------------------------------------------------------------- provenance
def test_weights_hash_matches_sha256sum_and_tracks_shards(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"abc")
    expected = hashlib.sha256(b"abc").hexdigest()
    assert weights_sha256(tmp_path) == weights_sha256(tmp_path / "model.safetensors") == expected
    assert weights_sha256_short(tmp_path) == expected[:12]
    (tmp_path / "adapter_model.safetensors").write_bytes(b"def")
    assert weights_sha256(tmp_path) != expected
    with pytest.raises(ModelLoadError, match="no safetensors"):
        weights_sha256(tmp_path / "missing")


def test_generation_kwargs_greedy_and_sampling():
    assert generation_kwargs() == {"max_new_tokens": 512, "do_sample": False, "num_beams": 1}
    sampled = generation_kwargs(greedy=False, max_new_tokens=8, temperature=0.5, top_p=0.8)
    assert sampled == {"max_new_tokens": 8, "do_sample": True, "temperature": 0.5, "top_p": 0.8}
    with pytest.raises(ValueError, match="top_p"):
        generation_kwargs(greedy=False, top_p=0.0)


def test_prompted_system_prompt_asks_for_every_tag_and_injects_knowledge():
    prompt = prompted_system_prompt()
    for tag in SCHEMA_TAGS:
        assert tag in prompt, tag
    assert "costophrenic" in prompt.lower() and "pneumothorax" in prompt.lower()


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_build_tiny_writes_a_loadable_model_and_refuses_to_overwrite(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES), encoding="utf-8")
    out = tmp_path / "tiny"
    assert cli_build_tiny(["--arch", "qwen2_vl", "--micro", "--out", str(out), "--corpus", str(corpus),
                           "--vocab-size", "400"]) == 0
    assert "qwen2_vl" in capsys.readouterr().out
    model, processor = load_model(str(out))
    assert model.config.model_type == "qwen2_vl"
    assert len(processor.tokenizer) == model.get_input_embeddings().num_embeddings == 400  # trained on --corpus
    assert cli_build_tiny(["--micro", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert cli_build_tiny(["--out", str(tmp_path / "x"), "--corpus", str(tmp_path / "none.txt")]) == 2
    assert "no such file" in capsys.readouterr().err
    shutil.rmtree(out)
