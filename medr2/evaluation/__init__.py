"""Evaluation: scoring generated reports against references on held-out data.

Modules: `metrics` (clinical efficacy in three conventions; BLEU / METEOR / ROUGE-L / CIDEr; `medr2 score`),
`rewards` (MRG-R1's MCCS and format rewards, Med-R2 format, CE-F1; TRL's reward signature),
`evaluate` (a model on a dataset split: CE, NLG, side / zone, draft vs final, format; `medr2 evaluate`),
`compare` (paired bootstrap of two evaluations of the same set: is B really better than A; `medr2 compare`).
Hands on: JSON result files and per-observation charts.
"""
