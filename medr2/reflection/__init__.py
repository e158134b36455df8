"""Reflection that looks again: the third Med-R2 step as a mechanism, not a re-reading.

After the draft, the reflection re-inspects regions with *new evidence*: a magnified crop of the region cut from
the full-resolution film (`regions`), encoded by the model's own vision tower and placed in the conversation as a
second image, plus the reading of small per-patch finding heads trained on that tower (`heads`, an independent
signal that catches findings the language model dropped). The pipeline proposes where to look (every draft finding,
plus regions where the heads disagree with the draft) and the model may ask for a look itself (`<look>region</look>`,
one token per tag); after each look the model writes kept / revised / added / removed (`looks`). Training traces with
looks come from phantom ground truth (`traces`); `consistency` checks afterwards that every draft -> final change is
explained by a reflection item and no `kept` item changed its finding.

Hands on: look regions and crops, `LookHeads`, the look conversation (`look_turn`, `propose_looks`), training rows,
and `check_consistency` for the pipeline, the app and evaluation.
"""
