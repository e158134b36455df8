"""Phantoms: synthetic PA chest radiographs with pixel-exact ground truth (findings, side, zone, severity,
masks, reports), the only training data of the embedded demo model.

Modules: `generator` (studies and datasets; `medr2 phantom`), `anatomy` and `bones` (body, lungs, ribs,
acquisition), `findings` (drawing each finding), `specs` (prevalence, co-occurrence, what each finding looks
like), `reports` (ground truth -> report text), `sheet` (the bundled examples and the contact sheet).
Hands on: `Study` records in the R2Gen layout. Details: docs/phantom.md.
"""
