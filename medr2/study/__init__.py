"""Reader studies: several radiologists review frozen reports of a fixed case list, blinded and randomised.

Modules: `manifest` (case lists, report sources, the frozen study folder and its questions), `create` (generate
every report once and freeze the study), `session` (readers file with hashed passwords, per-reader order, resume,
revise-until-lock, timing), `analysis` (statistics, agreement, plots, long-format export), `cli`
(`medr2 study create|readers|report|export`). The reader and admin pages are `medr2.app.study_views`.
"""
