"""Feedback: reviewers' verdicts stored durably and exported for analysis or training.

Modules: `record` (`FeedbackRecord` validation, allow-lists, verdict and error-tag taxonomy), `store`
(SQLite in WAL mode, one transaction per review; exports as JSONL / CSV / SFT / DPO; `medr2 feedback`).
"""
