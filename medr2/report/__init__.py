"""The Med-R2 answer: its format, the radiology knowledge it cites, and reference traces.

Modules: `schema` (the tagged perceive -> reason -> draft -> reflect -> report format as dataclasses; render;
tolerant streaming parse), `knowledge` (typed access to `knowledge.yaml`: the perception checklist and the
sign -> finding rules; the prompted-mode system prompt), `traces` (ground truth -> the Med-R2 training target,
with taught reflection errors, and the direct-report target). Hands on: `MedR2Output` and target strings.
"""
