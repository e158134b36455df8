"""Taught errors in Med-R2 traces read from real reports (`medr2.report.report_traces.report_trace` / `draft_errors`): the
draft carries one error made from the reference's own findings, the reflection fixes it, the final report stays the
reference; SFT puts such a draft in a context-only turn; `medr2 traces` writes the errors out.

The IU X-Ray reports are read from the torchxrayvision wheel at test time (CC BY-NC-ND: never committed).
"""
from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from test_real_reports import OWN_REPORTS, TINY_SFT, _medr2, write_views_folder

from medr2.data.datasets import read_r2gen, record_report
from medr2.evaluation.evaluate import stated_details
from medr2.labeler.findings import label_report
from medr2.reflection.consistency import check_consistency
from medr2.report.report_traces import build_report_trace, draft_errors, report_target, report_trace
from medr2.report.schema import Report, parse, render

ACTION_OF = {"missed": "added", "hallucinated": "removed", "wrong_side": "revised", "wrong_severity": "revised"}


def reading(text: str) -> dict[str, tuple]:
    """observation -> (label, sides, zones, severities) of every positive or hedged observation (our own reading)."""
    details = stated_details(text)
    empty = (frozenset(), frozenset(), frozenset())
    return {o: (v, *details.get(o, empty)) for o, v in label_report(text).items() if o != "No Finding" and v in (1, -1)}


def test_every_iu_report_with_a_taught_error_parses_keeps_its_reference_and_fixes_exactly_its_error(iu_reports):
    """All IU X-Ray reports at draft_error_rate 1: the trace parses completely and round-trips; the final report is the
    reference and labels as it; the draft differs from the reference, as read by the labeler and the location
    reader, in the error's observation alone and in the error's way; perception and reasoning are those of the
    draft; the reflection fixes the error with one item (the right action, on that observation) and keeps the rest;
    the draft -> final consistency check holds. At rate 0 the trace is today's, whatever the seed."""
    kinds, n = Counter(), 0
    for rep in iu_reports:
        reference = Report(rep.findings, rep.impression)
        if not (reference.findings or reference.impression):
            continue
        n += 1
        trace, error = report_trace(reference, 1.0, 0, rep.uid)
        kinds[error.kind if error else None] += 1
        parsed = parse(render(trace))
        assert not parsed.missing and not parsed.problems, (rep.uid, parsed.problems)
        assert parsed.output == trace, rep.uid
        final = Report.parse(reference.text)
        assert trace.report == final and label_report(trace.report.text) == label_report(final.text), rep.uid
        assert check_consistency(trace).holds, (rep.uid, check_consistency(trace).messages)
        if error is None:
            assert trace == build_report_trace(reference), rep.uid
            continue
        assert trace.draft != final
        before, after = reading(final.text), reading(trace.draft.text)
        assert {o for o in before.keys() | after.keys() if before.get(o) != after.get(o)} == {error.observation}, rep.uid
        if error.kind == "missed":
            assert error.observation in before and error.observation not in after
        elif error.kind == "hallucinated":
            assert error.observation not in before and label_report(final.text)[error.observation] is None
        elif error.kind == "wrong_side":
            assert {before[error.observation][1], after[error.observation][1]} == {frozenset({"right"}), frozenset({"left"})}
        else:
            assert before[error.observation][3] != after[error.observation][3] and len(after[error.observation][3]) == 1
        follows = build_report_trace(trace.draft)  # the labeler's sections of the erroneous draft itself
        assert (trace.perception, trace.reasoning) == (follows.perception, follows.reasoning), rep.uid
        changed = [r for r in trace.reflection if r.action != "kept"]
        assert len(changed) == 1 and changed[0] is trace.reflection[-1] and changed[0].action == ACTION_OF[error.kind]
        assert {o for o, v in label_report(changed[0].target).items() if v == 1 and o != "No Finding"} == {error.observation}, rep.uid
        assert render(build_report_trace(reference, 0.0, 7, rep.uid)) == render(build_report_trace(reference))
    assert n > 3900 and set(kinds) >= {"missed", "hallucinated", "wrong_side", "wrong_severity"}
    assert kinds[None] < n / 100  # a report nothing can be changed in is rare (every finding shares a sentence, and
    # every hallucination candidate is mentioned)


def test_draws_are_seeded_per_study_and_follow_the_rate(iu_reports):
    reports = [Report(r.findings, r.impression) for r in iu_reports if r.findings or r.impression][:1000]
    uids = [r.uid for r in iu_reports if r.findings or r.impression][:1000]

    def draws(seed: int, rate: float) -> list[str | None]:
        return [(lambda e: e and f"{e.kind}:{e.observation}")(report_trace(rep, rate, seed, uid)[1])
                for rep, uid in zip(reports, uids)]

    first = draws(0, 0.3)
    assert draws(0, 0.3) == first  # the same seed and study id: the same draft
    share = sum(d is not None for d in first) / len(first)
    assert 0.25 < share < 0.35, share
    other = draws(1, 0.3)
    assert other != first and 0.25 < sum(d is not None for d in other) / len(other) < 0.35
    assert draws(0, 0.0) == [None] * len(reports)


def test_each_kind_of_error_on_one_report_line_by_line():
    final = Report.parse("Findings: Small right pleural effusion. Heart size is normal. Impression: Small right pleural effusion.")
    options = draft_errors(final, random.Random(0))
    [(missed, _, added)] = options["missed"]
    assert missed == Report("Heart size is normal.", "")
    assert added.line() == "added: pleural effusion - re-inspected the right pleura: small right pleural effusion, missed in the draft."
    [(side, _, revised)] = options["wrong_side"]
    assert side == Report("Small left pleural effusion. Heart size is normal.", "Small left pleural effusion.")
    assert revised.line() == "revised: pleural effusion - re-inspected both sides: the pleural effusion is on the right, not the left."
    [(severity, _, revised)] = options["wrong_severity"]
    assert severity == Report("Moderate right pleural effusion. Heart size is normal.", "Moderate right pleural effusion.")
    assert revised.line() == "revised: pleural effusion - re-measured the right pleura: small, not moderate."
    # the report speaks of the effusion: only findings it does not mention are hallucinated, appended to the findings
    assert sorted(e.observation for _, e, _ in options["hallucinated"]) == ["Atelectasis", "Lung Lesion", "Lung Opacity"]
    for draft, error, removed in options["hallucinated"]:
        assert draft.findings.startswith(final.findings + " ") and draft.impression == final.impression
        assert removed.action == "removed" and removed.text.endswith("no " + removed.target + ", overlapping normal structures.")
    # one sentence states two findings: neither can be dropped or changed alone
    assert set(draft_errors(Report.parse("Findings: Cardiomegaly with small left effusion."), random.Random(0))) == {"hallucinated"}
    # a hedged finding dropped is added back hedged; the only finding dropped leaves a draft that calls the film normal
    [(draft, _, added)] = draft_errors(Report.parse("Findings: Possible left lower lobe pneumonia."), random.Random(0))["missed"]
    assert draft == Report("", "No acute cardiopulmonary abnormality.") and "possible pneumonia, left lower zone" in added.text
    with pytest.raises(ValueError, match=r"draft_error_rate must be in \[0, 1\]"):
        report_trace(final, 1.5)


def test_sft_rows_with_taught_errors_keep_the_erroneous_draft_out_of_the_loss(tmp_path):
    """`draft_error_rate`: every row is a chat; a draft with an error is a context-only turn, so the loss covers the
    reflection and the report (that fix it) and not one token of the draft; the turns joined are the trace."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from medr2.modeling.model import TinyVLMConfig, build_tiny_vlm
    from medr2.modeling.tokenizer import IM_END, train_tokenizer
    from medr2.report.report_traces import split_at_draft
    from medr2.training.sft import MedR2SFTConfig, _dataset_rows

    root = write_views_folder(tmp_path / "ds")
    common = dict(output_dir=str(tmp_path / "o"), dataset_dir=str(root), report_to="none")
    config = MedR2SFTConfig(target="medr2", draft_error_rate=1.0, seed=5, **common)
    assert config.assistant_only_loss and not config.completion_only_loss
    rows = _dataset_rows(config)
    records = read_r2gen(root, splits=("train",))
    tokenizer = train_tokenizer(list(OWN_REPORTS) * 4, vocab_size=400)
    model, processor = build_tiny_vlm(tokenizer, TinyVLMConfig.micro("llava"))
    collate = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)
    taught = 0
    for row, record in zip(rows, records):
        target = report_target(record_report(record), 1.0, 5, record["id"])
        _, error = report_trace(record_report(record), 1.0, 5, record["id"])
        turns = [m for m in row["messages"] if m["role"] == "assistant"]
        assert "\n".join(m["content"][0]["text"] for m in turns) == target
        assert [m["context_only"] for m in row["messages"]] == ([False, True, False] if error else [False, False])
        batch = collate([row])
        learned = tokenizer.decode(batch["input_ids"][0][batch["labels"][0] != -100])
        assert learned == (split_at_draft(target)[1] if error else target) + IM_END
        taught += error is not None
        with torch.no_grad():
            assert torch.isfinite(model(**batch).loss)
    assert taught == len(rows) == 6
    for bad, message in (({"draft_error_rate": 0.5, "dataset_dir": None}, "target=medr2 with dataset_dir"),
                         ({"draft_error_rate": 0.5, "target": "direct"}, "target=medr2 with dataset_dir"),
                         ({"draft_error_rate": 1.5}, r"draft_error_rate must be in \[0, 1\]")):
        with pytest.raises(ValueError, match=message):
            MedR2SFTConfig(**{**common, "target": "medr2", **bad})


@pytest.mark.slow
def test_train_sft_with_taught_errors_on_a_dataset_folder(tmp_path):
    """`train-sft --dataset_dir --draft_error_rate` trains (chat rows, context-only drafts) and its card says so."""
    root = write_views_folder(tmp_path / "ds")
    out = tmp_path / "sft"
    proc = _medr2("train-sft", "--target", "medr2", "--dataset_dir", str(root), "--draft_error_rate", "0.5",
                  "--output_dir", str(out), *TINY_SFT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "training_summary.json").read_text())["steps"] == 2
    traces = json.loads((out / "medr2_model.json").read_text())["training_datasets"][-1]["traces"]
    assert "50% of drafts drawn to carry a taught error" in traces
    assert "drafts carry a taught error" in proc.stderr  # the share actually drawn is logged


def test_traces_cli_writes_the_taught_errors(tmp_path, capsys):
    from medr2.cli import main

    root = write_views_folder(tmp_path / "ds")
    out = tmp_path / "traces.jsonl"
    assert main(["traces", "--dataset_dir", str(root), "--out", str(out), "--draft_error_rate", "1", "--seed", "3"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    records = read_r2gen(root, splits=("train",))
    for row, record in zip(rows, records):
        trace, error = report_trace(record_report(record), 1.0, 3, record["id"])
        assert row["target"] == render(trace) == report_target(record_report(record), 1.0, 3, record["id"])
        assert row["draft_error"] == {"kind": error.kind, "observation": error.observation} and row["source"] == "labeler"
        assert parse(row["target"]).output.report == record_report(record)
        assert row["labels"] == label_report(record_report(record).text)
    assert f"{len(rows)} drafts with a taught error" in capsys.readouterr().out
    from medr2.data.traces_export import TracesConfig
    from medr2.training.sft import MedR2SFTConfig

    # by default `medr2 traces` draws the drafts a default `train-sft --draft_error_rate` trains on
    assert TracesConfig().seed == MedR2SFTConfig(output_dir=str(tmp_path / "o"), report_to="none").seed
    plain = tmp_path / "plain.jsonl"
    assert main(["traces", "--dataset_dir", str(root), "--out", str(plain), "--seed", "3"]) == 0
    assert [json.loads(line)["draft_error"] for line in plain.read_text().splitlines()] == [None] * len(rows)
    capsys.readouterr()
    assert main(["traces", "--dataset_dir", str(root), "--out", str(out), "--draft_error_rate", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "draft_error_rate must be in [0, 1]" in err


def test_sft_reads_a_traces_file_as_written_and_builds_the_rest(tmp_path, capsys):
    """`train-sft --traces_file` (a `medr2 traces` JSONL, e.g. a teacher's): a listed study's trace is trained on as
    written — its erroneous draft context-only — and a study not listed gets the trace built from its report."""
    from medr2.cli import main
    from medr2.data.datasets import DatasetError
    from medr2.training.sft import MedR2SFTConfig, _dataset_rows

    root = write_views_folder(tmp_path / "ds")
    written = tmp_path / "traces.jsonl"
    assert main(["traces", "--dataset_dir", str(root), "--out", str(written), "--draft_error_rate", "1", "--seed", "3"]) == 0
    rows_in = [json.loads(line) for line in written.read_text().splitlines()]
    # a teacher's wording of one study's perception, and one study left out of the file
    edited = rows_in[0]["target"].replace("<perception>\n", "<perception>\nteacher line: the film was read by a teacher\n", 1)
    rows_in[0] = {**rows_in[0], "target": edited, "source": "teacher"}
    written.write_text("\n".join(json.dumps(r) for r in rows_in[:-1]) + "\n")
    common = dict(output_dir=str(tmp_path / "o"), dataset_dir=str(root), report_to="none", target="medr2")
    config = MedR2SFTConfig(traces_file=str(written), **common)
    assert config.assistant_only_loss and not config.completion_only_loss
    rows = _dataset_rows(config)
    records = read_r2gen(root, splits=("train",))
    assert len(rows) == len(records) == len(rows_in)
    by_id = {r["id"]: r for r in rows_in[:-1]}
    for row, record in zip(rows, records):
        turns = [m for m in row["messages"] if m["role"] == "assistant"]
        text = "\n".join(m["content"][0]["text"] for m in turns)
        if record["id"] in by_id:
            assert parse(text).output == parse(by_id[record["id"]]["target"]).output  # as written
            assert turns[0]["context_only"] is bool(by_id[record["id"]]["draft_error"])
        else:  # not in the file: built here, at this config's rate (0: the draft is the reference)
            assert text == report_target(record_report(record)) and not turns[0]["context_only"]
    assert "teacher line: the film was read by a teacher" in "\n".join(
        m["content"][0]["text"] for m in rows[0]["messages"] if m["role"] == "assistant")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"id": rows_in[0]["id"], "target": "<perception>\nunfinished"}) + "\n")
    with pytest.raises(DatasetError, match="does not parse"):
        _dataset_rows(MedR2SFTConfig(traces_file=str(broken), **common))
    with pytest.raises(ValueError, match="target=medr2 with dataset_dir"):
        MedR2SFTConfig(traces_file=str(written), **{**common, "target": "direct"})
