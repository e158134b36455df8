"""Data: datasets in the R2Gen layout (IU X-Ray, MIMIC-CXR, phantoms), the IU X-Ray ecgen XML release, and
the shapes TRL's SFT and GRPO trainers expect.

Module: `datasets`. Hands on: study records `{id, report, image_path, split}` and `datasets.Dataset`s.
"""
