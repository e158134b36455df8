"""Modeling: build, load and run the vision-language models behind every stage.

Modules: `model` (tiny LLaVA / Qwen2-VL / Qwen2.5-VL built from config; chat, inputs, generate;
`medr2 build-tiny`), `loading` (`load_model` by path or hub id, LoRA adapters, processor checks, weights hash),
`tokenizer` (the schema's tags as single tokens; chat template), `qwen_processor` (Qwen-VL processors without
the torchvision-only video processor). Hands on: `(model, processor)` pairs.
"""
