"""Saliency: where the model looked for each finding it states.

Modules: `maps` (captum attribution of each finding sentence's log-probability w.r.t. the vision tower;
overlays), `targets` (which tokens and which image region each map explains), `layers` (which vision layers
are explained, per architecture). Hands on: one heat map per finding. Details: docs/saliency.md.
"""
