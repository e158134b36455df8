"""A teacher LVLM writes perception and reasoning of real-report traces (`medr2 traces --teacher`,
`medr2.data.teacher_traces`): its sections are taken where they parse and agree with the report's labels, the
labeler's stand elsewhere, and every row says which.

Teachers here: a random tiny model built from config (its answers never parse: every study falls back), a scripted
teacher callable passed at the `write_traces` boundary (what a teacher that follows the prompt answers), and a scripted
chat-completions server on loopback (the served path's request). The embedded model cannot be a teacher: its context
(1,024 tokens) is shorter than the teacher prompt, which the context check reports.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from loopback import QuietHandler, serving
from test_real_reports import OWN_REPORTS, write_views_folder

from medr2.data.datasets import read_r2gen, record_report
from medr2.data.teacher_traces import DISAGREES, UNPARSED, Teacher, teacher_sections, teacher_system_prompt
from medr2.data.traces_export import write_traces
from medr2.inference.pipeline import PipelineConfig
from medr2.report.report_traces import build_report_trace, report_target, report_trace
from medr2.report.schema import Report, parse

NORMAL_ANSWER = ("<perception>\nheart: normal size on this film.\nlungs: clear to the periphery.\n</perception>\n<reasoning>\n"
                 "no abnormal sign in any region -> no acute cardiopulmonary abnormality [rule: normal_study]\n</reasoning>")


def teacher_answer(report_text: str) -> str:
    """What a teacher that follows the prompt writes: a line per region and the report's findings, in its own words."""
    labeler = build_report_trace(report_text)
    perception = "\n".join(f"{p.region}: seen as {p.text}" for p in labeler.perception)
    reasoning = "\n".join(f"teacher sign for {s.conclusion} -> {s.conclusion} [rule: {s.rule_id}]" for s in labeler.reasoning)
    return f"<perception>\n{perception}\n</perception>\n<reasoning>\n{reasoning}\n</reasoning>"


def test_teacher_sections_take_a_parsed_answer_that_agrees_and_say_why_not_otherwise():
    report = Report.parse(OWN_REPORTS[1])  # small right pleural effusion
    (perception, reasoning), why = teacher_sections(teacher_answer(report.text), report)
    assert why == "" and perception[0].text.startswith("seen as ") and reasoning[0].sign.startswith("teacher sign")
    assert teacher_sections(NORMAL_ANSWER, report) == (None, DISAGREES)  # misses the effusion
    hedged = teacher_answer(report.text).replace("-> small right pleural effusion", "-> possible small right pleural effusion")
    assert teacher_sections(hedged, report) == (None, DISAGREES)  # hedges what the report states
    assert teacher_sections(teacher_answer(report.text).replace("</reasoning>", ""), report) == (None, UNPARSED)
    assert teacher_sections(NORMAL_ANSWER.replace("heart: normal", "the heart looks normal"), Report.parse(OWN_REPORTS[0])) == (None, UNPARSED)
    assert teacher_sections("I cannot read radiographs.", report) == (None, UNPARSED)
    assert teacher_sections(NORMAL_ANSWER, Report.parse(OWN_REPORTS[0]))[1] == ""


def test_a_scripted_teacher_writes_the_sections_where_it_agrees_and_the_labeler_elsewhere(tmp_path):
    """`scripted_teacher` is the teacher boundary: it sees every view of the study (frontal first) and the draft the
    trace holds — with taught errors, the erroneous draft, not the reference — and its sections replace the
    labeler's only where they parse and agree; draft, reflection and report stay the labeler path's."""
    root = write_views_folder(tmp_path / "ds")
    records = {r["id"]: r for r in read_r2gen(root, splits=("train",))}
    calls = []

    def scripted_teacher(images, report_text):
        calls.append(([int(np.asarray(im).min()) for im in images], report_text))
        if report_text.startswith("Findings: Patchy opacity"):
            return "The film shows a left basilar opacity."  # off the schema: falls back
        if "Heart size is normal. Impression: Small right effusion" in report_text:
            return NORMAL_ANSWER  # parses, but misses the effusion: falls back
        return teacher_answer(report_text)

    counts = write_traces(root, "train", tmp_path / "t.jsonl", teacher=scripted_teacher, max_images=2)
    rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows] == ["teacher", "labeler", "labeler", "teacher", "teacher", "labeler"]
    assert counts.sources == {"teacher": 3, "labeler": 3} and counts.fallbacks == {UNPARSED: 1, DISAGREES: 2}
    for (views, text), row in zip(calls, rows):
        study = int(row["id"][1:])
        reference = record_report(records[row["id"]])
        assert views == [200 + study, 50 + study] and text == Report.parse(reference.text).text
        got, labeler = parse(row["target"]).output, build_report_trace(reference)
        assert (got.draft, got.reflection, got.report) == (labeler.draft, labeler.reflection, labeler.report)
        if row["source"] == "teacher":
            assert (got.perception, got.reasoning) == (lambda o: (o.perception, o.reasoning))(parse(teacher_answer(text)).output)
            assert got.perception != labeler.perception
        else:
            assert row["target"] == report_target(reference)
    calls.clear()
    counts = write_traces(root, "train", tmp_path / "e.jsonl", teacher=scripted_teacher, draft_error_rate=1.0, seed=2)
    for (_, text), row in zip(calls, (json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines())):
        trace, error = report_trace(record_report(records[row["id"]]), 1.0, 2, row["id"])
        assert error is not None and text == trace.draft.text != trace.report.text  # the draft, error included
        assert row["draft_error"]["kind"] == error.kind and parse(row["target"]).output.draft == trace.draft
    assert counts.written == 6 and sum(counts.errors.values()) == 6 and counts.errors["none"] == 0


def _tiny_teacher(folder, max_position: int) -> None:
    from medr2.modeling.model import TinyVLMConfig, build_tiny_vlm
    from medr2.modeling.tokenizer import train_tokenizer

    model, processor = build_tiny_vlm(train_tokenizer(list(OWN_REPORTS) * 4, vocab_size=400),
                                      TinyVLMConfig.micro("llava", max_position=max_position))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def test_a_random_tiny_teacher_is_asked_for_every_study_and_every_study_falls_back(tmp_path, capsys):
    """`medr2 traces --teacher DIR` with an untrained model built from config: loaded through the pipeline, asked per
    study with both views, its answers do not parse, so every row is the labeler's and the fallbacks are counted."""
    from medr2.cli import main

    root = write_views_folder(tmp_path / "ds")
    _tiny_teacher(tmp_path / "teacher", max_position=8192)
    out = tmp_path / "traces.jsonl"
    assert main(["traces", "--dataset_dir", str(root), "--out", str(out), "--teacher", str(tmp_path / "teacher"),
                 "--max_new_tokens", "24", "--max_images", "2"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    records = read_r2gen(root, splits=("train",))
    assert [r["source"] for r in rows] == ["labeler"] * 6
    assert [r["target"] for r in rows] == [report_target(record_report(r)) for r in records]
    captured = capsys.readouterr()
    assert "by the labeler in 6 (teacher fallbacks: 6 did not parse, 0 disagreed with the report's labels)" in captured.out
    assert "train traces (teacher)" in captured.err and "6/6" in captured.err  # the progress bar over studies
    # a teacher whose context cannot hold the prompt and the answer is refused in one line, before any row is written
    _tiny_teacher(tmp_path / "short", max_position=512)
    assert main(["traces", "--dataset_dir", str(root), "--out", str(tmp_path / "x.jsonl"), "--teacher", str(tmp_path / "short")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "context of 512" in err and "use a teacher with a longer context" in err


class _ServedTeacher(QuietHandler):
    """A scripted chat-completions server (loopback) that records each request and streams `NORMAL_ANSWER`."""

    bodies: list[dict] = []

    def do_GET(self):
        self.reply(b'{"object": "list", "data": [{"id": "scripted-teacher"}]}')

    def do_POST(self):
        type(self).bodies.append(json.loads(self.read_body()))
        self.stream(NORMAL_ANSWER.splitlines(keepends=True))


@pytest.fixture
def served_teacher():
    _ServedTeacher.bodies = []
    with serving(_ServedTeacher) as (_, url):
        yield url


def test_a_served_teacher_gets_the_prompt_the_views_and_the_report(served_teacher, tmp_path, capsys):
    from medr2.cli import main

    teacher = Teacher(PipelineConfig(model="", base_url=served_teacher, max_new_tokens=50, looks="off"))
    assert teacher.name == "scripted-teacher (served by 127.0.0.1:" + served_teacher.split(":")[2].split("/")[0] + ")"
    root = write_views_folder(tmp_path / "ds")
    out = tmp_path / "traces.jsonl"
    assert main(["traces", "--dataset_dir", str(root), "--out", str(out), "--base_url", served_teacher,
                 "--max_images", "2", "--max_new_tokens", "50"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # two studies have a normal report: the served answer (a normal study) agrees there and nowhere else
    assert [r["source"] for r in rows] == ["teacher", "labeler", "labeler", "labeler", "teacher", "labeler"]
    assert "by the labeler in 4 (teacher fallbacks: 0 did not parse, 4 disagreed" in capsys.readouterr().out
    body = _ServedTeacher.bodies[0]
    assert body["model"] == "scripted-teacher" and body["max_tokens"] == 50 and body["temperature"] == 0.0
    assert body["messages"][0] == {"role": "system", "content": teacher_system_prompt()}
    user = body["messages"][1]["content"]
    assert [p["type"] for p in user] == ["image_url", "image_url", "text"]
    assert Report.parse(OWN_REPORTS[0]).text in user[2]["text"]
    assert parse(rows[0]["target"]).output.reasoning == parse(NORMAL_ANSWER).output.reasoning
