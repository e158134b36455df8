"""Labeler: rule-based CheXpert-style labels of report text (14 observations, negation and uncertainty,
mention spans), the one labeler behind the app's findings table, the evaluation metrics and the GRPO rewards.

Modules: `findings` (the rules; phrase tables in `phrases.json`), `cli` (`medr2 label`, a chexpert-labeler CSV
drop-in). Hands on: per-report label vectors and the sentence spans that state each finding.
"""
