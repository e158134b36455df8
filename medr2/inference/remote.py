"""A model served elsewhere: the same pipeline over any OpenAI-compatible chat-completions server.

vLLM, SGLang, TGI, Ollama and `transformers serve` all answer `POST /v1/chat/completions` (streamed as server-sent
events) and `GET /v1/models`. `RemotePipeline` sends each study there — the pipeline's own chat (our trained prompt
when the same weights are also given locally, else the prompted-mode system prompt) with the film as a PNG data URL —
and hands the answer to the same parser, labeler and `StudyResult` as `medr2.inference.pipeline.Pipeline`, so the
CLI, evaluation and app need no second path. Only the Python standard library talks to the server.

The reflection's looks run here too (`RemoteLookRunner`, the state machine of `medr2.reflection.loop`): the answer
is read up to `</draft>`, then each look is a follow-up user turn with the magnified crop as a further image (a PNG
data URL like the film) and the evidence line, and the server continues the answer. Where the loop must continue a
turn it has added to (a forced `</reflection>`), the request asks the server to continue the final assistant
message (`continue_final_message`, vLLM and SGLang); a server that refuses that field (`transformers serve`) gets
the prompt rendered here by the same weights' template, given locally, as its chat template. The look heads need
the vision tower: they join in where the same weights, with their `look_heads.npz`, are given locally.

What a served model lacks here: forced answer prefixes, the content half of the input gate and calibrated confidence
(no vision features, no token probabilities: the gate checks DICOM tags only). Saliency needs the weights: given
locally (`model` = the same weights' folder) it is computed by teacher-forcing the served answer through them;
otherwise it is unavailable, with the reason (`SaliencyUnavailable`).

Hands on: `RemotePipeline(config).stream(image)` -> token / section events, then a `StudyResult`; server problems
are one-line `RemoteError`s (a `ModelLoadError`, which every entry point already reports in one line).
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

from medr2.inference.pipeline import PipelineConfig, as_study, read_model_card, study_messages
from medr2.inference.results import (
    Event,
    Provenance,
    StudyResult,
    clean_text,
    merge_checks,
    note_frontal_only_looks,
    result_of_text,
    text_events,
)
from medr2.modeling.loading import ModelLoadError
from medr2.reflection.heads import HEADS_FILE
from medr2.reflection.looks import assistant_turn, join_turns
from medr2.reflection.loop import ITEM_TOKENS, LookLoop, LookStudy, prompt_text
from medr2.saliency.layers import SaliencyUnavailable

log = logging.getLogger(__name__)

API_KEY_ENV = ("MEDR2_API_KEY", "OPENAI_API_KEY")  # read in this order when no key is passed
CHAT_MARKERS = ["<|im_end|>", "<|im_start|>", "<|endoftext|>", "<end_of_turn>", "<eos>", "</s>"]
MAX_ERROR_CHARS = 200  # a server's error body is quoted this far: one line, never a page of HTML
# vLLM's and SGLang's switch for "continue the final assistant message" (instead of closing it and opening a new one)
CONTINUE_FIELDS = {"continue_final_message": True, "add_generation_prompt": False}
TEMPLATE_VARIABLE = "medr2_prompt"  # the chat-template variable that carries a prompt rendered here


class RemoteError(ModelLoadError):
    """The model server could not be reached or answered something unusable; one line naming the server and the fix.

    `partial_text` keeps what had arrived before a stream broke off; `status` is the HTTP status of a refusal."""

    def __init__(self, message: str, partial_text: str = "", status: int | None = None):
        super().__init__(message)
        self.partial_text = partial_text
        self.status = status


def is_url(text: str | None) -> bool:
    return bool(text) and str(text).startswith(("http://", "https://"))


def api_base(url: str) -> str:
    """The server's OpenAI API root: `http://host:8000` and `http://host:8000/v1/` both give `http://host:8000/v1`."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        url = url[:-len("/chat/completions")]
    return url if url.endswith("/v1") else url + "/v1"


def server_label(url: str) -> str:
    """Host and port only: what messages and provenance name (never a path, query or credentials in the URL)."""
    parts = urllib.parse.urlsplit(url)
    return parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else url


def image_data_url(pil) -> str:
    """A PNG data URL: lossless, so the server's processor sees the pixels the local pipeline would."""
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def openai_messages(messages: list[dict], image_urls: list[str]) -> list[dict]:
    """The pipeline's chat (content = list of parts, `{"type": "image"}` placeholders) in OpenAI's format: each
    placeholder becomes the next image URL; text-only turns become plain strings, which every server accepts."""
    images = iter(image_urls)
    out = []
    for message in messages:
        parts = message["content"]
        if isinstance(parts, str):
            out.append({"role": message["role"], "content": parts})
            continue
        if not any(p.get("type") == "image" for p in parts):
            out.append({"role": message["role"], "content": "\n".join(p.get("text", "") for p in parts)})
            continue
        converted = []
        for part in parts:
            if part.get("type") == "image":
                try:
                    converted.append({"type": "image_url", "image_url": {"url": next(images)}})
                except StopIteration:
                    raise ValueError("the chat has more image placeholders than images") from None
            else:
                converted.append({"type": "text", "text": part.get("text", "")})
        out.append({"role": message["role"], "content": converted})
    return out


class ChatClient:
    """A minimal OpenAI chat-completions client (standard library only): model list, streamed and whole answers."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 300.0):
        self.base = api_base(base_url)
        self.label = server_label(base_url)
        self.api_key = api_key
        self.timeout_s = timeout_s

    def _request(self, path: str, body: dict | None = None):
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method="POST" if data else "GET")
        try:
            return urllib.request.urlopen(request, timeout=self.timeout_s)  # noqa: S310 (the user's own server)
        except urllib.error.HTTPError as exc:
            detail = " ".join(exc.read(4096).decode("utf-8", "replace").split())[:MAX_ERROR_CHARS]
            hint = " (check --api_key or $MEDR2_API_KEY)" if exc.code in (401, 403) else ""
            raise RemoteError(f"the model server at {self.label} answered HTTP {exc.code} to {path}{hint}: {detail}",
                              status=exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RemoteError(f"cannot reach the model server at {self.label} ({reason}): is it running, and is "
                              "--base_url its address (e.g. http://127.0.0.1:8000/v1)?") from None

    def models(self) -> list[str]:
        """The served model names (`GET /v1/models`)."""
        with self._request("/models") as response:
            raw = response.read()
        try:
            return [m["id"] for m in json.loads(raw)["data"]]
        except (ValueError, KeyError, TypeError):
            raise RemoteError(f"{self.label} answered /v1/models with something that is not an OpenAI model list: "
                              f"{raw[:80]!r}") from None

    def stream_chat(self, body: dict, allow_empty: bool = False) -> Iterator[tuple[str, dict | None]]:
        """Yield (text delta, usage or None) from a streamed chat completion; RemoteError on a broken stream (and on
        an empty answer unless `allow_empty`: a look round may rightly end at once)."""
        try:  # the token count comes with the last chunk where the server supports stream_options
            response = self._request("/chat/completions", {**body, "stream": True, "stream_options": {"include_usage": True}})
        except RemoteError as exc:
            if "stream_options" not in str(exc):
                raise
            response = self._request("/chat/completions", {**body, "stream": True})
        received, finished = "", False
        with response:
            try:
                for raw in response:
                    line = raw.decode("utf-8", "replace").strip()
                    if not line or line.startswith(":"):  # keep-alive comments and event separators
                        continue
                    if not line.startswith("data:"):
                        raise RemoteError(f"the model server at {self.label} answered something that is not a "
                                          f"chat-completions stream: {line[:80]!r}", received)
                    payload = line[len("data:"):].strip()
                    if payload == "[DONE]":
                        finished = True
                        break
                    try:
                        chunk = json.loads(payload)
                    except ValueError:
                        raise RemoteError(f"the model server at {self.label} sent a malformed stream chunk: "
                                          f"{payload[:80]!r}", received) from None
                    if not isinstance(chunk, dict):
                        raise RemoteError(f"the model server at {self.label} sent a malformed stream chunk: "
                                          f"{payload[:80]!r}", received)
                    if "error" in chunk:
                        raise RemoteError(f"the model server at {self.label} stopped with an error: "
                                          f"{str(chunk['error'])[:MAX_ERROR_CHARS]}", received)
                    choices = chunk.get("choices") or []
                    finished = finished or any(c.get("finish_reason") for c in choices)
                    delta = "".join((c.get("delta") or {}).get("content") or "" for c in choices)
                    received += delta
                    yield delta, chunk.get("usage")
            except TimeoutError:
                raise RemoteError(f"the model server at {self.label} sent nothing for {self.timeout_s:.0f} s mid-answer "
                                  f"after {len(received)} characters", received) from None
            except (OSError, http.client.HTTPException) as exc:
                raise RemoteError(f"the model server at {self.label} closed the connection mid-answer after "
                                  f"{len(received)} characters ({type(exc).__name__})", received) from None
        if not finished:  # a connection closed without the end marker: the answer is cut short
            raise RemoteError(f"the model server at {self.label} closed the connection mid-answer after "
                              f"{len(received)} characters", received)
        if not received and not allow_empty:
            raise RemoteError(f"the model server at {self.label} ended the stream without an answer")


def stop_at(text: str, tags: list[str]) -> int | None:
    """Where a round's text ends: just after the first of `tags` in it (None when none has arrived yet)."""
    ends = [text.index(tag) + len(tag) for tag in tags if tag in text]
    return min(ends) if ends else None


class RemoteLookRunner(LookLoop):
    """The look loop (`medr2.reflection.loop.LookLoop`) over a served model: each round is one chat-completions
    request per unfinished study (sent concurrently; the server batches them), streamed and read up to the phase's
    stop tag. The stop tags are found here rather than sent as `stop`: servers differ in whether the matched string
    comes back (and `transformers serve` fails on `stop` for image-text models), and closing the stream ends the
    server's generation as well."""

    def __init__(self, pipeline: RemotePipeline, heads=None, tower=None, on_text=None):
        super().__init__(heads, tower, evidence_names_draft=bool(pipeline.card.get("look_evidence_names_draft")))
        self.pipeline = pipeline
        self.on_text = on_text  # on_text(study, trace so far) as text arrives: the stream's token events
        self.pieces: dict[int, int] = {}  # id(study) -> streamed pieces (its token count: usage ends the stream)
        self._urls: dict[int, list[str]] = {}  # id(study) -> data URLs of its film and crops, encoded once

    def generate(self, studies: list[LookStudy], phase: str) -> list[str]:
        if len(studies) == 1:
            return [self._round(studies[0], phase)]
        with ThreadPoolExecutor(max_workers=len(studies)) as pool:
            return list(pool.map(lambda study: self._round(study, phase), studies))

    def _round(self, study: LookStudy, phase: str) -> str:
        """One round of one study: the conversation so far (the film, then each crop with its evidence line), the
        turn written so far continued where there is one."""
        pipe = self.pipeline
        urls = self._urls.setdefault(id(study), [])
        for image in study.images()[len(urls):]:
            urls.append(image_data_url(image))
        conversation = study.conversation(pipe.messages())
        partial = [assistant_turn(study.current)] if study.current else []
        max_tokens = min(pipe.config.max_new_tokens, ITEM_TOKENS) if phase == "reflect" else pipe.config.max_new_tokens
        body = pipe.sampling({"model": pipe.served_model, "messages": openai_messages(conversation + partial, urls),
                              "max_tokens": max_tokens})
        try:
            if not study.current:
                return self._read(body, study, phase)
            return self._continue(body, study, phase, conversation)
        except RemoteError as exc:
            # the trace so far, up to the look request when the failing round had not started its turn
            exc.partial_text = study.text(exc.partial_text) if study.current + exc.partial_text else join_turns(study.turns)
            if exc.status is not None and 400 <= exc.status < 500 and len(urls) > 1:
                limit = 1 + pipe.config.max_looks
                raise RemoteError(f"{exc} (this request carried a look's crop as image {len(urls)}: a server limited "
                                  f"to one image per prompt refuses it; let it take {limit} (vLLM: "
                                  f"--limit-mm-per-prompt '{{\"image\": {limit}}}') or run with --looks off)",
                                  exc.partial_text, exc.status) from None
            raise

    def _continue(self, body: dict, study: LookStudy, phase: str, conversation: list[dict]) -> str:
        """A round that continues the assistant turn the loop has written into: the server's continue-final-message
        switch, else (a server that refuses the field) the prompt rendered here as the request's chat template."""
        pipe = self.pipeline
        if pipe.continuation in (None, "fields"):
            try:
                text = self._read({**body, **CONTINUE_FIELDS}, study, phase)
                pipe.continuation = "fields"
                return text
            except RemoteError as exc:
                refused = exc.status in (400, 422) and any(name in str(exc) for name in CONTINUE_FIELDS)
                if pipe.continuation == "fields" or not refused:
                    raise
                pipe.continuation = "template"
        rendered = prompt_text(pipe.look_processor(), conversation, study.current)
        kwargs = {"chat_template": "{{ " + TEMPLATE_VARIABLE + " }}", TEMPLATE_VARIABLE: rendered}
        return self._read({**body, "chat_template_kwargs": kwargs}, study, phase)

    def _read(self, body: dict, study: LookStudy, phase: str) -> str:
        """Stream one round's answer up to the first stop tag of the phase (kept), then close the stream."""
        tags = self.stop_tags[phase]
        received = ""
        stream = self.pipeline.client.stream_chat(body, allow_empty=True)
        try:
            for delta, _ in stream:
                if not delta:
                    continue
                received += delta
                self.pieces[id(study)] = self.pieces.get(id(study), 0) + 1
                end = stop_at(received, tags)
                if end is not None:
                    received = received[:end]
                if self.on_text is not None:
                    self.on_text(study, study.text(clean_text(received, CHAT_MARKERS)))
                if end is not None:
                    break
        except RemoteError as exc:
            exc.partial_text = received
            raise
        finally:
            stream.close()
        return clean_text(received, CHAT_MARKERS)


class RemotePipeline:
    """`Pipeline`'s surface (`stream`, `run`, `run_batch`, `messages`, `provenance`, `check_input`, `saliency`) for a
    model served by an OpenAI-compatible server at `config.base_url`."""

    calibration = None  # calibrated confidence needs token probabilities of the answer
    multi_image = True  # a study's views go as one image each in the request (the look loop reads the frontal)
    gate_stats = None  # the content check needs the vision tower's features: DICOM tags only

    def __init__(self, config: PipelineConfig):
        if not config.base_url:
            raise ValueError("RemotePipeline needs base_url (the server's address, e.g. http://127.0.0.1:8000/v1)")
        self.config = config
        api_key = config.api_key or next((os.environ[k] for k in API_KEY_ENV if os.environ.get(k)), None)
        self.client = ChatClient(config.base_url, api_key, timeout_s=config.request_timeout_s)
        t0 = time.perf_counter()
        served = self.client.models()
        if config.served_model:
            if served and config.served_model not in served:
                raise RemoteError(f"{self.client.label} serves {', '.join(served)}, not {config.served_model!r}: "
                                  "pass one of those as --served_model")
            self.served_model = config.served_model
        elif served:
            self.served_model = served[0]
        else:
            raise RemoteError(f"{self.client.label} lists no models: pass the served model's name as --served_model")
        self.load_seconds = time.perf_counter() - t0
        # The same weights given locally: their card decides the prompt and provenance, and saliency can run on them.
        self.local_model = config.model if config.model and Path(config.model).is_dir() else None
        self.card = read_model_card(self.local_model) if self.local_model else {}
        # as for the local pipeline: 'auto' looks for a model whose card says it was trained with them
        trained_to_look = self.card.get("reflection") == "looks"
        self.look_mode = ("proposed" if trained_to_look else "off") if config.looks == "auto" else config.looks
        # how a look round continues a turn the loop wrote into: None (untried), "fields" (the server's
        # continue-final-message switch) or "template" (the prompt rendered here, sent as the chat template)
        self.continuation: str | None = None
        self._processor = None  # the local copy's processor, loaded when the template route needs it
        self.saliency_config: dict = {}
        self._local = None  # the local Pipeline, loaded on the first saliency request (or for the look heads)
        weights = "served"
        if self.local_model:
            from medr2.modeling.loading import weights_sha256

            try:
                weights = weights_sha256(self.local_model)
            except ModelLoadError:
                weights = "served"
        self.provenance = Provenance(
            model=f"{self.served_model} (served by {self.client.label})",
            weights_sha256=weights,
            demo=bool(self.card.get("demo", False)),
            training_data=self.card.get("training_data", "unknown"),
            medr2_version=__import__("medr2").__version__,
            decoding={"greedy": config.greedy, "max_new_tokens": config.max_new_tokens, "served": True,
                      **({} if config.greedy else {"temperature": config.temperature, "top_p": config.top_p,
                                                   "seed": config.seed})},
        )
        log.info("using %s served by %s (%.2f s to list models)", self.served_model, self.client.label, self.load_seconds)

    # ------------------------------------------------------------ what is sent
    def messages(self, n_images: int = 1) -> list[dict]:
        """The chat for this model, as the local pipeline sends it (`medr2.inference.pipeline.study_messages`)."""
        return study_messages(self.card, n_images)

    def request_body(self, study) -> dict:
        """One study's chat-completions request (without the stream flags): every image of the study (a LoadedImage
        or a list of them, frontal first) as a data URL."""
        study = study if isinstance(study, list) else [study]
        return self.sampling({"model": self.served_model,
                              "messages": openai_messages(self.messages(len(study)), [image_data_url(im.to_pil()) for im in study]),
                              "max_tokens": self.config.max_new_tokens})

    def sampling(self, body: dict) -> dict:
        """`body` with the decoding settings: greedy (temperature 0) unless sampling was asked for."""
        if self.config.greedy:
            return {**body, "temperature": 0.0, "top_p": 1.0}
        return {**body, "temperature": self.config.temperature, "top_p": self.config.top_p, "seed": self.config.seed}

    def look_processor(self):
        """The processor of the same weights given locally: renders a look round's prompt for a server that cannot
        continue a turn itself."""
        if self._processor is None:
            if self.local_model is None:
                raise RemoteError(f"the model server at {self.client.label} cannot continue a partial answer (it "
                                  "refuses continue_final_message), which the looks need: serve the model with vLLM "
                                  "or SGLang, give the same weights locally as --model, or run with --looks off")
            if self._local is not None:
                self._processor = self._local.processor
            else:
                from medr2.modeling.loading import _load_processor

                self._processor = _load_processor(self.local_model)
        return self._processor

    def look_runner(self, on_text=None) -> RemoteLookRunner:
        """The look loop for this server, with the look heads of the same weights where they are given locally
        (their `look_heads.npz` and vision tower): the same proposals and evidence lines as the local loop."""
        heads = tower = None
        if self.local_model and (Path(self.local_model) / HEADS_FILE).is_file():
            from medr2.reflection.heads import tower_of

            local = self._local_pipeline()
            if local.look_heads is not None:
                heads, tower = local.look_heads, tower_of(local.model)
        return RemoteLookRunner(self, heads, tower, on_text)

    # ------------------------------------------------------------ the pipeline's surface
    def check_input(self, loaded, inputs=None):
        """The input gate's tag checks (the content check needs the vision tower, which is on the server)."""
        from medr2.trust.gate import check_input

        return check_input(loaded)

    def add_confidence(self, result: StudyResult) -> None:
        """No calibrated confidence for a served model (no token probabilities of its answer)."""

    def _look_results(self, loaded_images: list, on_text=None) -> list[StudyResult]:
        """Results of the look loop over the server for a batch of loaded films (the rounds' requests concurrent)."""
        runner = self.look_runner(on_text)
        t0 = time.perf_counter()
        runs = runner.run(loaded_images, self.look_mode, self.config.max_looks)
        per_study = (time.perf_counter() - t0) / max(len(loaded_images), 1)
        results = []
        for loaded, study, (text, looks) in zip(loaded_images, runner.studies, runs):
            result = result_of_text(text, [loaded], runner.pieces.get(id(study), 0), {"generate_s": per_study},
                                    self.provenance)
            result.looks = looks
            results.append(result)
        return results

    def _stream_with_looks(self, image) -> Iterator[Event | StudyResult]:
        """The look loop with live token events: the rounds run in a worker thread, the trace so far comes back."""
        t0 = time.perf_counter()
        study = as_study(image)
        loaded = study[0]  # the look loop reads the frontal only
        input_check = merge_checks([self.check_input(im) for im in study])
        timings = {"preprocess_s": time.perf_counter() - t0}
        updates: queue.Queue = queue.Queue()
        done: dict = {}

        def _run():
            try:
                done["result"] = self._look_results([loaded], on_text=lambda study, text: updates.put(text))[0]
            except BaseException as exc:  # surfaced to the caller below
                done["error"] = exc
            updates.put(None)

        t1 = time.perf_counter()
        worker = threading.Thread(target=_run, daemon=True)
        worker.start()
        seen_sections, first_token = 0, None
        while (text := updates.get()) is not None:
            if first_token is None:
                first_token = time.perf_counter() - t1
            seen_sections = yield from text_events(text, seen_sections)
        worker.join()
        if "error" in done:
            raise done["error"]
        final = done["result"]
        final.timings.update(timings, first_token_s=first_token or 0.0, generate_s=time.perf_counter() - t1)
        final.input_check = input_check
        note_frontal_only_looks(final, study)
        yield Event("done", final.raw_text, parsed=final.parsed)
        yield final

    def stream(self, image) -> Iterator[Event | StudyResult]:
        """Yield token and section events as the server streams, then the StudyResult (RemoteError on failure)."""
        if self.look_mode != "off":
            yield from self._stream_with_looks(image)
            return
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        study = as_study(image)
        body = self.request_body(study)
        timings["preprocess_s"] = time.perf_counter() - t0
        input_check = merge_checks([self.check_input(im) for im in study])
        t1 = time.perf_counter()
        text, seen_sections, first_token, usage, pieces = "", 0, None, None, 0
        for delta, chunk_usage in self.client.stream_chat(body):
            usage = chunk_usage or usage
            if not delta:
                continue
            if first_token is None:
                first_token = time.perf_counter() - t1
            text += delta
            pieces += 1
            seen_sections = yield from text_events(clean_text(text, CHAT_MARKERS), seen_sections)
        timings["first_token_s"] = first_token or 0.0
        timings["generate_s"] = time.perf_counter() - t1
        n_tokens = int(usage["completion_tokens"]) if usage and usage.get("completion_tokens") else pieces
        # the server read every image; the result keeps them all, frontal first
        final = result_of_text(clean_text(text, CHAT_MARKERS), study, n_tokens, timings, self.provenance)
        final.input_check = input_check
        yield Event("done", final.raw_text, parsed=final.parsed)
        yield final

    def run(self, image) -> StudyResult:
        *_, result = self.stream(image)
        return result

    def run_batch(self, images: list, batch_size: int = 16, prefixes: list[str] | None = None,
                  keep_saliency_inputs: bool = False, confidence: bool = False) -> list[StudyResult]:
        """`batch_size` concurrent requests (the server batches them); results in input order."""
        if prefixes is not None:
            raise ValueError("forced answer prefixes need the model in this process, not a served model")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if self.look_mode != "off":  # the loop's rounds carry `batch_size` studies each
            results = []
            for i in range(0, len(images), batch_size):
                studies = [as_study(im) for im in images[i:i + batch_size]]
                for study, result in zip(studies, self._look_results([st[0] for st in studies])):
                    result.input_check = merge_checks([self.check_input(im) for im in study])
                    note_frontal_only_looks(result, study)
                    results.append(result)
            return results
        with ThreadPoolExecutor(max_workers=batch_size) as pool:
            return list(pool.map(self.run, images))

    def forced_result(self, image, text: str) -> StudyResult:
        """What the local copy of the weights would attend to writing `text` (needs the weights locally)."""
        return self._local_pipeline().forced_result(image, text)

    def _local_pipeline(self):
        if self.local_model is None:
            raise SaliencyUnavailable("saliency unavailable: the model is served elsewhere and its weights are not "
                                      "given locally (pass the same weights' folder as --model)")
        if self._local is None:
            from medr2.inference.pipeline import Pipeline

            local = PipelineConfig(model=self.local_model, adapter=self.config.adapter, device=self.config.device,
                                   device_map=self.config.device_map, threads=self.config.threads, looks="off",
                                   max_new_tokens=self.config.max_new_tokens)
            self._local = Pipeline(local)
            self.saliency_config = self._local.saliency_config
        return self._local

    def saliency(self, result: StudyResult, **kwargs):
        """Per-finding saliency of the served answer, teacher-forced through the same weights loaded locally."""
        local = self._local_pipeline()
        return local.saliency(local.forced_result(result.image, result.raw_text), **kwargs)
