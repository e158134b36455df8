"""Served models (medr2.inference.remote): a real `transformers serve` on loopback serving the embedded model, the
same study through `RemotePipeline` and the local `Pipeline`, the CLI and the app's event path on it, and a server
that answers garbage or dies mid-answer (one-line errors, the partial answer kept).

The server is the `transformers[serving]` extra (`pip install -e .[serve]`); it serves the embedded model read-only.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from loopback import QuietHandler, serving

from medr2.inference.pipeline import PipelineConfig, make_pipeline
from medr2.inference.remote import RemoteError, RemotePipeline, SaliencyUnavailable, api_base, openai_messages, server_label

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "assets" / "model"
SERVE = Path(sys.executable).with_name("transformers")  # the console script of the .venv's transformers
TEST_SEED = 3  # phantom test films


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def phantom(index: int = 0):
    from medr2.phantom.generator import generate_studies

    return list(generate_studies(index + 1, seed=TEST_SEED))[index].image


# ------------------------------------------------------------------------------------------- unit
def test_api_base_accepts_the_forms_users_paste():
    assert api_base("http://h:8000") == "http://h:8000/v1"
    assert api_base("http://h:8000/v1/") == "http://h:8000/v1"
    assert api_base("http://h:8000/v1/chat/completions") == "http://h:8000/v1"
    assert server_label("http://user:secret@h:8000/v1?x=1") == "h:8000"  # no credentials in messages or provenance


def test_openai_messages_put_the_image_where_the_placeholder_is():
    from medr2.modeling.model import build_chat

    msgs = openai_messages(build_chat("Describe.", system="You are a radiologist."), ["data:image/png;base64,AAAA"])
    assert msgs[0] == {"role": "system", "content": "You are a radiologist."}
    assert msgs[1]["content"] == [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                                  {"type": "text", "text": "Describe."}]
    with pytest.raises(ValueError, match="more image placeholders"):
        openai_messages(build_chat("Describe."), [])


def test_model_url_names_a_server():
    config = PipelineConfig(model="http://127.0.0.1:9/v1")
    assert (config.base_url, config.model) == ("http://127.0.0.1:9/v1", "")


def test_unreachable_server_is_one_line_from_generate(capsys):
    from medr2.cli import main

    port = free_port()  # nothing listens there
    png = ROOT / "assets" / "examples" / "phantom_effusion.png"
    assert main(["generate", str(png), "--base_url", f"http://127.0.0.1:{port}/v1"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"cannot reach the model server at 127.0.0.1:{port}" in err
    assert "Traceback" not in err


class _Garbage(QuietHandler):
    """A server that lists a model and then answers chat requests with an HTML page."""

    def do_GET(self):
        self.reply(b'{"object": "list", "data": [{"id": "m"}]}')

    def do_POST(self):
        self.read_body()
        self.reply(b"<html><body>502 Bad Gateway</body></html>", "text/html")


def test_garbage_answer_is_one_line_error():
    with serving(_Garbage) as (_, url):
        pipe = RemotePipeline(PipelineConfig(model="", base_url=url))
        assert pipe.served_model == "m"
        with pytest.raises(RemoteError, match="not a chat-completions stream") as info:
            pipe.run(phantom())
        assert "\n" not in str(info.value)
        with pytest.raises(SaliencyUnavailable, match="weights are not given locally"):
            pipe.saliency(None)
        assert pipe.look_mode == "off"  # 'auto': no card saying the model was trained with looks
        looking = RemotePipeline(PipelineConfig(model="", base_url=url, looks="proposed"))
        with pytest.raises(RemoteError, match="not a chat-completions stream") as info:
            looking.run(phantom())
        assert "\n" not in str(info.value)


# --------------------------------------------------------------- looks against a scripted server
DRAFT_TRACE = ("<think>\n<perception>\npleura: blunted right costophrenic angle with a meniscus.\n</perception>\n"
               "<reasoning>\nmeniscus -> pleural effusion [rule: effusion]\n</reasoning>\n<draft>\n"
               "Findings: Small right pleural effusion. Impression: Small right pleural effusion.\n</draft>\n"
               "<reflection>\nkept: written past the stop tag, never read\n")
ITEM = "kept: pleural effusion - magnified right lower zone: meniscus confirmed.\n</reflection>\n</think>\nnever read"
REST = "\n</think>\n<report>\nFindings: Small right pleural effusion. Impression: Small right pleural effusion.\n</report>"


def image_parts(body: dict) -> list[str]:
    return [part["image_url"]["url"] for m in body["messages"] if isinstance(m["content"], list)
            for part in m["content"] if part.get("type") == "image_url"]


class _Scripted(QuietHandler):
    """A chat-completions server with scripted answers that records every request: the film alone gets a draft,
    a look (film + crop) an item, a continued assistant turn the report. `mode`: 'vllm' (takes the
    continue-final-message switch), 'one_image' (refuses a second image as vLLM does at --limit-mm-per-prompt 1),
    'no_continue' (refuses the switch's fields as `transformers serve` does)."""

    mode = "vllm"
    bodies: list[dict] = []

    def do_GET(self):
        self.reply(b'{"object": "list", "data": [{"id": "scripted"}]}')

    def do_POST(self):
        body = json.loads(self.read_body())
        type(self).bodies.append(body)
        continued = body["messages"][-1]["role"] == "assistant"
        if self.mode == "no_continue" and "continue_final_message" in body:
            return self.reply(b'{"detail": "Unexpected fields in the request: {\'continue_final_message\', '
                              b'\'add_generation_prompt\'}"}', code=422)
        if len(image_parts(body)) > 1 and self.mode == "one_image":
            return self.reply(b'{"object": "error", "message": "At most 1 image(s) may be provided in one request.", '
                              b'"type": "BadRequestError", "code": 400}', code=400)
        answer = REST if continued else ITEM if len(image_parts(body)) > 1 else DRAFT_TRACE
        self.stream(answer.splitlines(keepends=True))


@pytest.fixture
def scripted():
    _Scripted.bodies = []
    with serving(_Scripted) as served:
        yield served


def decode_image(url: str):
    import base64
    import io

    import numpy as np
    from PIL import Image

    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("L"))


def test_served_looks_send_the_crop_and_continue_the_turn(scripted, monkeypatch):
    import numpy as np

    from medr2.inference.pipeline import as_loaded
    from medr2.reflection.regions import crop_region

    server, url = scripted
    monkeypatch.setattr(_Scripted, "mode", "vllm")
    pipe = RemotePipeline(PipelineConfig(model="", base_url=url, looks="proposed"))
    film = phantom(0)
    result = pipe.run(film)
    draft, look, rest = _Scripted.bodies
    # the draft: the film alone, read up to </draft> (what the server wrote past it is not in the trace)
    assert len(image_parts(draft)) == 1 and "never read" not in result.raw_text
    # the look: a follow-up user turn with the crop of the draft finding's region as the second image
    assert [lk.region for lk in result.looks] == ["right lower zone"] and result.looks[0].chosen_by == "pipeline"
    assert look["messages"][-2]["content"].endswith("</draft>\n<reflection>\n<look>right lower zone</look>")
    assert look["messages"][-1]["content"][1] == {"type": "text", "text": "magnified right lower zone (2.2x)."}
    pixels = np.asarray(as_loaded(film).to_pil().convert("L"))
    assert np.array_equal(decode_image(image_parts(look)[1]), crop_region(pixels, "right lower zone"))
    assert np.array_equal(decode_image(image_parts(look)[0]), pixels)
    # the loop closed the reflection itself: the server continues that assistant turn (vLLM's switch)
    assert rest["continue_final_message"] is True and rest["add_generation_prompt"] is False
    assert rest["messages"][-1] == {"role": "assistant", "content": "kept: pleural effusion - magnified right lower zone: "
                                                                   "meniscus confirmed.\n</reflection>"}
    assert pipe.continuation == "fields"
    item = result.output.reflection[0]
    assert (item.action, item.look) == ("kept", "right lower zone")
    assert result.output.report.text and not result.parsed.problems and result.consistency.holds
    assert result.raw_text.count("<look>") == 1 and result.raw_text.endswith("</report>")


@pytest.mark.slow
def test_app_shows_a_served_models_look_as_it_streams(scripted, monkeypatch, tmp_path):
    from medr2.app.service import ANALYZE_OUTPUTS, AppService
    from medr2.feedback.store import FeedbackStore
    from medr2.inference.pipeline import as_loaded

    server, url = scripted
    monkeypatch.setattr(_Scripted, "mode", "vllm")
    pipe = RemotePipeline(PipelineConfig(model="", base_url=url, looks="proposed"))
    service = AppService(pipe, FeedbackStore(tmp_path / "data"), [], upload_root=tmp_path / "up", stream_interval_s=0.0)
    png = tmp_path / "film.png"
    as_loaded(phantom(0)).to_pil().save(png)
    updates = [dict(zip(ANALYZE_OUTPUTS, u)) for u in service.analyze(str(png))]
    assert updates[-1]["study"].final.startswith("Findings: Small right pleural effusion.")
    panel = next(u["reflection"] for u in reversed(updates) if isinstance(u["reflection"], str) and u["reflection"])
    assert 'alt="look at the right lower zone"' in panel and "chosen by the pipeline" in panel
    assert "Every draft → final change is explained" in panel


def test_a_server_refusing_the_second_image_is_one_line_with_the_fix(scripted, monkeypatch, capsys):
    from medr2.cli import main

    server, url = scripted
    monkeypatch.setattr(_Scripted, "mode", "one_image")
    pipe = RemotePipeline(PipelineConfig(model="", base_url=url, looks="proposed"))
    with pytest.raises(RemoteError, match="answered HTTP 400") as info:
        pipe.run(phantom(0))
    message = str(info.value)
    assert "\n" not in message and "image 2" in message and "--limit-mm-per-prompt" in message and "--looks off" in message
    assert "At most 1 image(s)" in message  # the server's own words
    assert info.value.partial_text.endswith("</draft>\n<reflection>\n<look>right lower zone</look>")
    png = ROOT / "assets" / "examples" / "phantom_effusion.png"
    assert main(["generate", str(png), "--base_url", url, "--looks", "proposed"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "image 2" in err and "Traceback" not in err


def test_a_server_that_cannot_continue_a_turn_needs_the_local_template(scripted, monkeypatch):
    server, url = scripted
    monkeypatch.setattr(_Scripted, "mode", "no_continue")
    pipe = RemotePipeline(PipelineConfig(model="", base_url=url, looks="proposed"))
    with pytest.raises(RemoteError, match="cannot continue a partial answer") as info:
        pipe.run(phantom(0))
    assert "\n" not in str(info.value) and "--looks off" in str(info.value)
    assert "continue_final_message" in _Scripted.bodies[-1]  # tried the switch first


# ------------------------------------------------------------------------------- a real server
@pytest.fixture(scope="module")
def served():
    """`transformers serve` on a free loopback port, serving the embedded model; killed at the end."""
    if not SERVE.exists():
        pytest.fail(f"{SERVE} missing: install the serving extra (`pip install -e .[serve]`)")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([str(SERVE), "serve", str(MODEL), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"transformers serve exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as r:
                json.load(r)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("transformers serve did not answer /v1/models within 120 s")
    yield proc, url
    proc.kill()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def remote(served):
    """The served embedded model, with its weights also given locally (the model card: our trained prompt)."""
    return make_pipeline(PipelineConfig(model=str(MODEL), base_url=served[1]))


@pytest.fixture(scope="module")
def local():
    from medr2.inference.pipeline import Pipeline

    return Pipeline(PipelineConfig(model=str(MODEL), looks="off"))


@pytest.fixture(scope="module")
def streamed(remote):
    return list(remote.stream(phantom(0)))


@pytest.mark.slow
def test_served_study_streams_the_same_trace_as_the_local_model(remote, local, streamed):
    assert isinstance(remote, RemotePipeline) and remote.served_model == str(MODEL)
    *events, result = streamed
    kinds = [e.kind for e in events]
    assert kinds.count("token") > 20 and kinds[-1] == "done"  # streamed, not one block
    sections = [e.section for e in events if e.kind == "section"]
    assert sections == ["perception", "reasoning", "draft", "reflection", "think", "report"]
    assert not result.parsed.missing and not result.parsed.problems
    assert result.output.report.text and result.final_labels is not None
    assert result.n_tokens > 50 and result.timings["first_token_s"] > 0
    # greedy decoding of the same weights on the same pixels (PNG is lossless): the server writes what we write
    assert result.raw_text == local.run(phantom(0)).raw_text
    assert result.provenance.model == f"{remote.served_model} (served by {server_label(remote.config.base_url)})"
    assert result.provenance.weights_sha256 == local.provenance.weights_sha256
    assert result.input_check.in_distribution is None  # tag checks only: the vision tower is on the server


@pytest.mark.slow
def test_served_batch_keeps_input_order(served, streamed):
    short = RemotePipeline(PipelineConfig(model=str(MODEL), base_url=served[1], max_new_tokens=32))
    results = short.run_batch([phantom(1), phantom(0)], batch_size=2)
    first = streamed[-1].raw_text  # greedy: the 32-token answer is the start of the full one
    assert first.startswith(results[1].raw_text) and not first.startswith(results[0].raw_text)
    with pytest.raises(ValueError, match="prefixes"):
        short.run_batch([phantom(0)], prefixes=["<think>"])


@pytest.mark.slow
def test_generate_cli_on_a_served_model(served, capsys):
    from medr2.cli import main

    png = ROOT / "assets" / "examples" / "phantom_effusion.png"
    assert main(["generate", str(png), "--base_url", served[1], "--model", str(MODEL), "--max_new_tokens", "48", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["provenance"]["decoding"]["served"] is True and "served by" in out["provenance"]["model"]
    assert 0 < out["tokens"] <= 48
    # `--model URL` alone: no local card, so the prompted-mode system prompt, longer than this model's 1,024-token
    # context; the server refuses and the refusal is one line
    assert main(["generate", str(png), "--model", served[1]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "answered HTTP 400" in err and "Traceback" not in err


@pytest.mark.slow
def test_evaluate_on_a_served_model(served, tmp_path):
    from medr2.evaluation.evaluate import EvalConfig, run

    summary = run(EvalConfig(base_url=served[1], model=str(MODEL), n=2, batch_size=2, max_new_tokens=32, nlg=False,
                             output_dir=str(tmp_path)))
    assert summary["n"] == 2 and "served by" in summary["provenance"]["model"]
    assert summary["input_check"]["unknown"] == 2  # tag checks only: the content check needs the tower
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_app_event_path_on_a_served_model_with_local_saliency(remote, streamed, tmp_path):
    from medr2.app.service import ANALYZE_OUTPUTS, AppService
    from medr2.feedback.store import FeedbackStore

    service = AppService(remote, FeedbackStore(tmp_path / "data"), [], upload_root=tmp_path / "up", stream_interval_s=0.0)
    png = tmp_path / "film.png"
    from medr2.inference.pipeline import as_loaded

    as_loaded(phantom(0)).to_pil().save(png)
    updates = [dict(zip(ANALYZE_OUTPUTS, u)) for u in service.analyze(str(png))]
    study = updates[-1]["study"]
    assert study.final and study.final == streamed[-1].output.report.text
    assert study.maps, "saliency through the local copy of the served weights"
    assert "served by" in study.provenance["model"]


@pytest.mark.slow
def test_served_looks_write_what_the_local_look_loop_writes(served, monkeypatch):
    """The served embedded model with looks forced on: the same trace, looks and evidence as the local loop (greedy,
    same pixels), each look's crop sent as a further image, streamed as it is written."""
    import numpy as np

    from medr2.inference.generate import format_result
    from medr2.inference.pipeline import Pipeline
    from medr2.inference.remote import ChatClient

    bodies = []
    real_request = ChatClient._request

    def recording(self, path, body=None):
        if body is not None:
            bodies.append(body)
        return real_request(self, path, body)

    monkeypatch.setattr(ChatClient, "_request", recording)
    remote = RemotePipeline(PipelineConfig(model=str(MODEL), base_url=served[1], looks="proposed"))
    film = phantom(3)  # its draft states effusions on both sides: two looks, a request with three images
    *events, result = list(remote.stream(film))
    local = Pipeline(PipelineConfig(model=str(MODEL), looks="proposed")).run(film)
    assert len(local.looks) == 2
    assert result.raw_text == local.raw_text
    assert [(lk.region, lk.box, lk.evidence, lk.chosen_by) for lk in result.looks] == \
           [(lk.region, lk.box, lk.evidence, lk.chosen_by) for lk in local.looks]
    assert all(np.array_equal(a.crop, b.crop) for a, b in zip(result.looks, local.looks))
    assert "finding heads here" in result.looks[0].evidence  # the local copy's look heads joined in
    # the server really received the crops: 1 image (the film) for the draft, then 1 + the looks taken so far
    counts = [len(image_parts(b)) for b in bodies if b.get("messages")]
    assert counts[0] == 1 and max(counts) == 3 and set(counts) == {1, 2, 3}
    for body in bodies:
        for k, url in enumerate(image_parts(body)[1:]):
            assert np.array_equal(decode_image(url), result.looks[k].crop)
    assert remote.continuation == "template"  # transformers serve refuses continue_final_message
    kinds = [e.kind for e in events]
    assert kinds.count("token") > 20 and kinds[-1] == "done"
    assert [e.section for e in events if e.kind == "section"][:3] == ["perception", "reasoning", "draft"]
    assert result.consistency is not None and result.final_labels is not None
    # the consistency check and the printed shown work (reflection with its looks, report) as locally
    assert result.consistency == local.consistency
    assert (result.draft_labels, result.final_labels) == (local.draft_labels, local.final_labels)

    def shown(r):
        text = format_result(r)
        warnings = [line for line in text.splitlines() if line.startswith("WARNING: reflection")]
        return warnings, text[text.index("PERCEPTION"):text.index("FINDINGS")]  # confidence: local only

    assert shown(result) == shown(local)


@pytest.mark.slow
def test_server_killed_mid_answer_is_one_line_and_keeps_the_partial_text(served):
    proc, url = served  # the last test of the file: it kills the module's server
    pipe = RemotePipeline(PipelineConfig(model=str(MODEL), base_url=url))
    stream = pipe.stream(phantom(2))
    seen = ""
    with pytest.raises(RemoteError, match="closed the connection mid-answer|cannot reach|ended the stream") as info:
        for event in stream:
            seen = event.text
            if len(seen) > 40 and proc.poll() is None:
                proc.kill()
    assert "\n" not in str(info.value)
    assert info.value.partial_text.startswith(seen[:40])
