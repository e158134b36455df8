"""The reviewer app's event functions: upload → streamed shown work → saliency → reviewer feedback.

`AppService` owns the one `Pipeline` (loaded once at start-up) and the `FeedbackStore`; `app.py` only
wires its methods to gradio components. Each method is a plain function of component values, so tests
call them directly:
- `analyze(file)`: a generator of `ANALYZE_OUTPUTS`-ordered tuples: decodes the upload (gradio's cache owns the
  file: uploads are stored by content hash, so identical uploads of several readers share one path, and
  `delete_cache` in app.py removes it once old; a session deleting it would break the others' uploads),
  streams perception / reasoning / draft / reflection / report as they are generated (throttled to a few
  updates per second), labels draft and final report, then computes per-finding saliency maps; its last update
  carries `result` (report, labels, saliency targets as JSON) for API callers, never re-sending the report box;
- `view(study, choice, alpha, cmap)`: the image with one finding's saliency overlaid;
- `review(study, edited)`: reviewer column of the findings table + per-sentence verdicts from the edit;
- `submit(...)`: one `FeedbackRecord` into the store (image hash + allow-listed metadata, never pixels).
Users see curated one-line `gr.Error`s (see `medr2.app.views`); logs carry timings and counts, never image
content, metadata or report text.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

# Before gradio is imported: its analytics would otherwise look up an outside host at start-up.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from medr2.app import views as ui  # noqa: E402
from medr2.feedback.store import FeedbackError, FeedbackRecord, FeedbackStore  # noqa: E402
from medr2.imaging.loader import ImageLoadError, load_image  # noqa: E402
from medr2.labeler.findings import label_report  # noqa: E402
from medr2.report.schema import parse, parse_perception, parse_reasoning, parse_reflection  # noqa: E402
from medr2.saliency.layers import SaliencyUnavailable  # noqa: E402

log = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "assets" / "examples"
ANALYZE_OUTPUTS = ("stages", "view", "perception", "reasoning", "reflection", "diff", "report", "findings",
                   "verdicts", "provenance", "overlay", "truth", "raw", "study", "input_check", "report_fold",
                   # the feedback form, cleared when a new study starts
                   "rating", "reasoning_rating", "saliency_rating", "errors", "significant", "comment", "status",
                   # read-only JSON for API callers: the report and labels (`ui.analysis_result`), set last
                   "result")
DISPLAY_MAX_SIDE = 1024  # px kept per session for the viewer: enough for a ~700 px panel with zoom
DISPLAY_MIN_SIDE = 768  # small images (256 px phantoms) are upscaled so the viewer panel is filled
HEATMAP_MAX_SIDE = 256  # saliency grids are coarse (8 x 8 patches); 256 px float16 keeps sessions small
_CELL_COLORS = {ui.VALUE_WORDS[1]: "#ffd8d3", ui.VALUE_WORDS[-1]: "#fff1a8", ui.VALUE_WORDS[0]: "#e3f3e3"}


def gpu(fn):
    """`spaces.GPU` on Hugging Face Spaces (ZeroGPU allocates a GPU per call), a no-op elsewhere."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return fn
    return spaces.GPU(fn)


@dataclass
class Example:
    name: str
    path: Path
    label: str
    truth: dict | None  # phantom ground truth (its JSON), None for real radiographs
    sha256: str


def find_examples(folder: Path = EXAMPLES_DIR) -> list[Example]:
    """Bundled examples: films rendered from the real CT and drawn phantoms (each with its ground-truth JSON) first,
    then real DICOMs; [] if absent."""
    found = []
    synthetic = sorted(folder.glob("rendered_*.png")) + sorted(folder.glob("phantom_*.png"))
    for path in synthetic + sorted(folder.glob("*.dcm")):
        meta = path.with_suffix(".json")
        truth = json.loads(meta.read_text()) if path in synthetic and meta.is_file() else None
        found.append(Example(path.name, path, ui.example_label(truth, path.name), truth,
                             hashlib.sha256(path.read_bytes()).hexdigest()))
    return found


@dataclass
class Study:
    """What one session keeps about the study under review (no tensors, no upload file, no file name)."""

    sha256: str
    pixels: np.ndarray  # uint8 [H, W], at most DISPLAY_MAX_SIDE
    metadata: dict
    warnings: list[str]
    raw_text: str = ""
    draft: str = ""
    final: str = ""
    labels: dict = field(default_factory=dict)  # {"draft": Labels, "final": Labels} when present
    maps: list = field(default_factory=list)  # SimpleMap per saliency target
    provenance: dict = field(default_factory=dict)
    image_ref: str | None = None  # bundled example name (never an upload's file name)
    truth: dict | None = None
    input_check: dict | None = None  # the input gate's verdict (InputCheck.to_json())
    confidence: dict | None = None  # observation -> calibrated probability (models with a calibration file)
    low_confidence: list = field(default_factory=list)
    reviewer: str | None = None  # the handle this page first submitted under (one reviewer per open page)


@dataclass
class SimpleMap:
    target: str
    kind: str
    text: str
    value: int | None
    heatmap: np.ndarray  # float16 [h, w] in [0, 1]
    method: str


def _resize(pixels: np.ndarray, max_side: int, min_side: int = 0, mode: str | None = None) -> np.ndarray:
    """Scale so the long side is <= max_side (and >= min_side when given), keeping the aspect ratio."""
    h, w = pixels.shape[:2]
    long = max(h, w)
    scale = max_side / long if long > max_side else min_side / long if long < min_side else 1.0
    if scale == 1.0:
        return pixels
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = Image.fromarray(pixels if mode is None else pixels.astype(np.float32), mode=mode)
    return np.asarray(img.resize(size, Image.BILINEAR))


def empty_findings() -> pd.DataFrame:
    """The findings table before any analysis: its real column names over the 14 observations, cells blank."""
    return pd.DataFrame(ui.findings_rows(None, None, None)[1], columns=ui.FINDINGS_HEADERS)


def findings_frame(headers: list[str], rows: list[list[str]]):
    """The findings table as an update: present / uncertain / absent cells tinted, columns sized to fit."""
    frame = pd.DataFrame(rows, columns=headers)
    styled = frame.style.map(lambda v: f"background-color: {_CELL_COLORS[v]}; text-align: center; font-weight: 600"
                             if v in _CELL_COLORS else "", subset=headers[1:])
    rest = (100 - 40) / (len(headers) - 1)  # observation names get 40 %, the label columns share the rest
    return gr.update(value=styled, column_widths=["40%"] + [f"{rest:.0f}%"] * (len(headers) - 1))


def saliency_overlay(gray: np.ndarray, heatmap: np.ndarray, alpha: float, cmap: str) -> np.ndarray:
    """medr2.saliency.maps.overlay on the display image (heatmap resized to it)."""
    from medr2 import saliency

    heat = np.asarray(Image.fromarray(heatmap.astype(np.float32), mode="F").resize(
        (gray.shape[1], gray.shape[0]), Image.BILINEAR))
    return saliency.overlay(gray, np.clip(heat, 0.0, 1.0), alpha=alpha, cmap=cmap)


class AppService:
    """The app's state that outlives a request: pipeline, feedback store, examples, model lock."""

    def __init__(self, pipeline, store: FeedbackStore, examples: Sequence[Example] | None = None,
                 upload_root: str | os.PathLike | None = None, stream_interval_s: float = 0.25) -> None:
        self.pipeline = pipeline
        self.store = store
        self.examples = list(find_examples() if examples is None else examples)
        self.by_sha = {e.sha256: e for e in self.examples}
        self.upload_root = Path(upload_root or gr.utils.get_upload_folder())
        self.stream_interval_s = stream_interval_s
        # Generation and captum hooks share one model: hooks registered for one study's saliency must not
        # fire inside another study's forward pass, so model use is serialised (the queue limits it too).
        self.model_lock = threading.Lock()
        self.prompt = self._prompt_text()

    def _prompt_text(self) -> str:
        parts = [p.get("text", "") for m in self.pipeline.messages() for p in m["content"] if p.get("type") == "text"]
        return "\n".join(p for p in parts if p)

    # ------------------------------------------------------------ analyze
    def _pack(self, **values: Any) -> tuple:
        return tuple(values[name] if name in values else gr.skip() for name in ANALYZE_OUTPUTS)

    def _read_upload(self, file: Any) -> tuple[Study, Any]:
        path = Path(file if isinstance(file, (str, os.PathLike)) else getattr(file, "name", file))
        try:
            data = path.read_bytes()
        except OSError:
            raise gr.Error("The uploaded file could not be read; please upload it again.") from None
        try:
            loaded = load_image(data)
        except ImageLoadError as exc:  # already one line, no paths, no tag values
            raise gr.Error(str(exc)) from None
        example = self.by_sha.get(loaded.sha256)
        study = Study(loaded.sha256, _resize(loaded.pixels, DISPLAY_MAX_SIDE, DISPLAY_MIN_SIDE), dict(loaded.metadata),
                      list(loaded.warnings), provenance=vars(self.pipeline.provenance).copy(),
                      image_ref=example.name if example else None, truth=example.truth if example else None)
        return study, loaded

    def _stream_panels(self, text: str, parsed=None) -> dict:
        parsed = parsed or parse(text)
        out, part, body = parsed.output, parsed.partial_section, parsed.partial_text
        perception = out.perception + (parse_perception(body) if part == "perception" else [])
        reasoning = out.reasoning + (parse_reasoning(body) if part == "reasoning" else [])
        reflection = out.reflection + (parse_reflection(body) if part == "reflection" else [])
        done = ["image", *[s for s in parsed.complete_sections if s in ui.STAGES]]
        panels = {"stages": ui.stage_html(done, active=part if part in ui.STAGES else None, note="generating…"),
                  "perception": ui.perception_html(perception, streaming=True), "raw": text}
        if reasoning or part == "reasoning":
            panels["reasoning"] = ui.reasoning_html(reasoning)
        if reflection or part == "reflection":
            panels["reflection"] = ui.reflection_html(reflection)
        if out.draft is not None or part == "draft":
            draft = out.draft.text if out.draft else body
            panels["diff"] = [(draft, None)]
        if part == "report":
            panels["report"] = body
        return panels

    def analyze(self, file: Any) -> Iterator[tuple]:
        """Stream one study's shown work into the panels (see ANALYZE_OUTPUTS for the order)."""
        empty = dict(stages=ui.stage_html([]), view=None, perception="", reasoning="", reflection="",
                           diff=[], report="", findings=empty_findings(), verdicts=pd.DataFrame(columns=ui.VERDICT_HEADERS),
                           provenance="",
                           overlay=gr.update(choices=ui.overlay_choices([]), value=ui.NO_OVERLAY, interactive=False),
                           truth=gr.update(value="", visible=False), raw="", study=None,
                           input_check=gr.update(value="", visible=False), report_fold=gr.update(label=ui.REPORT_FOLD, open=True),
                           rating=None,
                           reasoning_rating=None, saliency_rating=None, errors=[], significant=[], comment="", status="",
                           result=None)
        if file is None:
            yield self._pack(**empty)
            return
        t0 = time.perf_counter()
        study, loaded = self._read_upload(file)
        with self.model_lock:  # one tower forward: the verdict is on screen before generation starts
            study.input_check = self.pipeline.check_input(loaded).to_json()
        flagged = study.input_check["in_distribution"] is False
        # the gate's verdict stands above the report (input_check), so the provenance block does not repeat it
        prov_kw = dict(metadata=study.metadata, warnings=study.warnings)
        gate_text = ui.input_check_markdown(study.input_check)
        yield self._pack(**{**empty, **dict(
            stages=ui.stage_html(["image"], active="perception", note="generating…"),
            view=np.stack([study.pixels] * 3, axis=-1), perception=ui.perception_html([], streaming=True),
            provenance=ui.provenance_markdown(study.provenance, **prov_kw),
            input_check=gr.update(value=gate_text, visible=bool(gate_text)),
            report_fold=gr.update(label=ui.REPORT_ANYWAY if flagged else ui.REPORT_FOLD, open=not flagged),
            truth=gr.update(value=ui.ground_truth_markdown(study.truth), visible=True) if study.truth
            else gr.update(value="", visible=False))})
        result = None
        with self.model_lock:
            last = 0.0
            try:
                for event in self.pipeline.stream(loaded):
                    if not hasattr(event, "kind"):
                        result = event
                    elif event.kind == "section" or time.perf_counter() - last >= self.stream_interval_s:
                        last = time.perf_counter()
                        yield self._pack(**self._stream_panels(event.text, event.parsed))
            except Exception:  # users get the curated line; the log gets the traceback (code, no image or text)
                log.exception("generation failed")
                raise gr.Error(ui.GENERIC_ERROR) from None
            yield from self._finish_text(study, result, prov_kw)
            study.maps, note = self._saliency(result)
        log.info("study done in %.2f s (%d tokens, %d maps)", time.perf_counter() - t0, result.n_tokens, len(study.maps))
        choice = ui.default_overlay(study.maps)
        yield self._pack(stages=ui.stage_html(ui.STAGES if study.maps else ui.STAGES[:-1],
                                              failed=None if study.maps else "saliency", note=note),
                         view=self.view(study, choice, 0.45, ui.COLORMAPS[0]),
                         overlay=gr.update(choices=ui.overlay_choices(study.maps), value=choice,
                                           interactive=bool(study.maps)),
                         study=study,
                         # the report textbox is not re-sent (a reviewer may be editing it): API callers get the
                         # report from this read-only output instead
                         result=ui.analysis_result(study.final, study.draft, study.labels, study.maps,
                                                   study.provenance, study.input_check, study.confidence))

    def _finish_text(self, study: Study, result, prov_kw: dict) -> Iterator[tuple]:
        out = result.output
        study.raw_text = result.raw_text
        study.draft = out.draft.text if out.draft else ""
        study.final = out.report.text if out.report else ""
        study.labels = {k: v for k, v in (("draft", result.draft_labels), ("final", result.final_labels)) if v}
        study.confidence, study.low_confidence = result.confidence, list(result.low_confidence)
        headers, rows = ui.findings_rows(result.draft_labels, result.final_labels, result.final_labels,
                                         (study.truth or {}).get("labels") if study.truth else None,
                                         study.confidence, study.low_confidence)
        problems = "\n".join(f"- {p}" for p in result.parsed.problems)
        yield self._pack(
            stages=ui.stage_html(["image", *ui.STAGES[1:7]], active="saliency", note="computing saliency…"),
            perception=ui.perception_html(out.perception), reasoning=ui.reasoning_html(out.reasoning),
            reflection=ui.reflection_html(out.reflection, result.looks, result.image.pixels if result.image is not None else None,
                                          result.consistency.messages if result.consistency is not None else None),
            diff=ui.word_diff(study.draft, study.final) if study.draft and study.final else [(study.draft or study.final, None)],
            report=gr.update(value=study.final, placeholder=ui.REPORT_PLACEHOLDER if study.final else ui.NO_REPORT),
            findings=findings_frame(headers, rows),
            verdicts=pd.DataFrame(ui.verdict_rows(study.final, study.final), columns=ui.VERDICT_HEADERS),
            provenance=ui.provenance_markdown(study.provenance, timings=result.timings, n_tokens=result.n_tokens, **prov_kw),
            raw=result.raw_text + (f"\n\n--- parse problems ---\n{problems}" if problems else ""),
            study=study)

    def _saliency(self, result) -> tuple[list[SimpleMap], str]:
        if result.output.report is None and result.output.draft is None:
            return [], "no report, so no saliency"
        try:
            maps = self.pipeline.saliency(result).maps
        except ImportError:
            return [], "saliency unavailable in this installation"
        except SaliencyUnavailable as exc:  # an architecture or a served model without maps: say why
            return [], str(exc)
        except Exception:  # a failed map must not lose the report the reviewer is reading
            log.exception("saliency failed")
            return [], "saliency unavailable for this study"
        kept = [SimpleMap(m.target, m.kind, m.text, m.value,
                          _resize(np.asarray(m.heatmap, dtype=np.float32), HEATMAP_MAX_SIDE, mode="F").astype(np.float16),
                          m.method) for m in maps]
        return kept, "" if kept else "no findings to explain"

    # ------------------------------------------------------------ viewer and review
    def view(self, study: Study | None, choice: str | None, alpha: float, cmap: str) -> np.ndarray | None:
        """The display image, with the chosen finding's saliency overlaid (RGB uint8)."""
        if study is None:
            return None
        if choice in (None, ui.NO_OVERLAY) or not str(choice).isdigit() or int(choice) >= len(study.maps):
            return np.stack([study.pixels] * 3, axis=-1)
        cmap = cmap if cmap in ui.COLORMAPS else ui.COLORMAPS[0]
        return saliency_overlay(study.pixels, study.maps[int(choice)].heatmap, float(alpha), cmap)

    def review(self, study: Study | None, edited: str) -> tuple:
        """(findings table with the reviewer column from the edited report, per-sentence verdict rows)."""
        if study is None:
            return gr.skip(), gr.skip()
        edited = edited or ""
        reviewer = label_report(edited) if (edited or "").strip() else None
        headers, rows = ui.findings_rows(study.labels.get("draft"), study.labels.get("final"), reviewer,
                                         study.truth.get("labels") if study.truth else None,
                                         study.confidence, study.low_confidence)
        verdicts = pd.DataFrame(ui.verdict_rows(study.final, edited), columns=ui.VERDICT_HEADERS)
        return findings_frame(headers, rows), verdicts

    def submit(self, study: Study | None, edited: str, verdicts: Any, rating: Any, reasoning_rating: Any,
               saliency_rating: Any, errors: Sequence[str], significant: Sequence[str], comment: str,
               reviewer: str) -> str:
        """Store one review; returns the confirmation line (gr.Error with the fix when something is wrong).

        The verdicts are recomputed here from the submitted correction (`ui.reviewed_report`), so a pasted or
        API-sent correction is reflected; the same review sent twice is stored once; an empty review, a
        missing handle or a second handle in one session are refused with one line."""
        if study is None:
            raise gr.Error("Analyse an image first: there is no report to review yet.")
        rows = verdicts.values.tolist() if isinstance(verdicts, pd.DataFrame) else (verdicts or [])
        handle = (reviewer or "").strip()
        try:
            table = ui.verdicts_from_rows(rows)
            correction, sentence_verdicts = ui.reviewed_report(study.final, edited or "", table)
            unknown = set(significant or ()) - set(errors or ())
            if unknown:
                names = ", ".join(ui.tag_label(t) for t in sorted(unknown))
                raise ValueError(f"tick {names} under “Errors” before marking it clinically significant")
            ratings = [_likert_value(r) for r in (rating, reasoning_rating, saliency_rating)]
            changed = " ".join(correction.split()) != " ".join(study.final.split())
            if not (any(r is not None for r in ratings) or errors or (comment or "").strip() or changed):
                raise ValueError("the review is empty: rate the report, tick an error, correct the report or comment")
            if not handle:
                raise ValueError("enter your reviewer handle (not your name) so your reviews can be told apart")
            if study.reviewer is not None and handle != study.reviewer:
                raise ValueError(f"this page already submitted as “{study.reviewer}”; reload the page to review "
                                 "under another handle")
            record = FeedbackRecord(
                image_sha256=study.sha256, final_report=study.final, model_id=study.provenance.get("model", ""),
                weights_sha256=study.provenance.get("weights_sha256"), demo=bool(study.provenance.get("demo")),
                model_output=study.raw_text, draft_report=study.draft, prompt=self.prompt,
                corrected_report=correction, rating=ratings[0], sentence_verdicts=sentence_verdicts,
                error_tags=[{"tag": t, "clinically_significant": t in (significant or ())} for t in (errors or ())],
                comment=comment or "", reasoning_rating=ratings[1], saliency_rating=ratings[2],
                labels={**study.labels, **({"reviewer": label_report(correction)} if correction.strip() else {})},
                image_metadata=study.metadata, image_ref=study.image_ref, reviewer=handle)
            record.submission_key = record.content_key()
            record_id, status = self.store.put(record)
        except (ValueError, FeedbackError) as exc:  # FeedbackError is a ValueError; both name the field
            raise gr.Error(f"Review not stored: {exc}") from None
        study.reviewer = handle
        if status == "duplicate":
            return f"✓ This review is already stored as #{record_id}; nothing was added."
        return (f"✓ Stored review #{record_id}. Only the image's hash and technical metadata were kept, "
                "never the image.")


def _likert_value(value: Any) -> int | None:
    """A rating as the API may send it: 4, "4" or the choice's label "5 excellent" -> 5; empty -> None."""
    if isinstance(value, str):
        head = value.strip().split(" ")[0]
        return int(head) if head.isdigit() else (None if not value.strip() else value)  # type: ignore[return-value]
    return value
