"""Inference: one image -> perception, reasoning, draft, reflection and final report, streamed.

Module: `pipeline` (`Pipeline`: prompt, generate, parse, label draft and final, saliency on request,
provenance; `medr2 generate`). Hands on: `StudyResult` to the app, the CLI and the evaluation.
"""
