"""medr2 reviewer app: upload a chest radiograph, watch the model perceive, reason, reflect and report,
check its saliency maps, correct the report and leave structured feedback.

Run: `bash scripts/app.sh [--model PATH_OR_HUB_ID] [--port 7860]` (or `python app.py ...`); on Hugging Face
Spaces this file is the `app_file`. The model (`--model`, else $MEDR2_MODEL, else the embedded demo model
in assets/model) is loaded once at start-up. Reviews go to $MEDR2_DATA_DIR (default ./medr2_data).
All logic lives in `medr2.app.service` (event functions) and `medr2.app.views` (presentation); this file only wires
components to them and sets the safety options (bounded queue, file-size cap, no run history, no
monitoring endpoint, no analytics, curated errors only, periodic cache deletion).
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import gradio as gr  # noqa: E402

from medr2.app import views as ui  # noqa: E402
from medr2.app.service import ANALYZE_OUTPUTS, AppService, empty_findings, find_examples, gpu  # noqa: E402

MAX_FILE_SIZE = "64mb"  # a 43 x 43 cm CR at 100 um, 16 bit, uncompressed is ~37 MB
DELETE_CACHE = (600, 1800)  # every 10 min, delete gradio temp files (overlay PNGs) older than 30 min
ERROR_TAG_CHOICES = [(tag.replace("_", " "), tag) for tag in
                     ("false_finding", "omission", "wrong_location", "wrong_severity", "false_comparison", "missed_comparison")]
LIKERT = [("1 poor", 1), ("2", 2), ("3", 3), ("4", 4), ("5 excellent", 5)]


def make_service(model: str | None = None, data_dir: str | None = None, max_new_tokens: int = 640,
                 adapter: str | None = None, *, base_url: str | None = None, served_model: str | None = None,
                 api_key: str | None = None, device_map: str | None = None) -> AppService:
    """Load the model once (or connect to the server that serves it) and open the feedback store (raises
    ModelLoadError, RemoteError included / FeedbackError)."""
    from medr2.feedback.store import FeedbackStore, default_data_dir, maybe_start_hub_sync
    from medr2.inference.pipeline import PipelineConfig, default_model, make_pipeline

    served = base_url or str(model or "").startswith(("http://", "https://"))
    pipeline = make_pipeline(PipelineConfig(model=model or ("" if served else default_model()), adapter=adapter,
                                            max_new_tokens=max_new_tokens, device_map=device_map, base_url=base_url,
                                            served_model=served_model, api_key=api_key))
    examples = find_examples()
    store = FeedbackStore(data_dir or default_data_dir(), allowed_image_refs=[e.name for e in examples])
    maybe_start_hub_sync(store)
    return AppService(pipeline, store, examples)


def build_demo(service: AppService | None = None, concurrency: int = 1, queue_size: int = 16) -> gr.Blocks:
    """The three-column review UI wired to `service` (built from $MEDR2_MODEL / defaults when None)."""
    service = service or make_service()
    demo_model = bool(service.pipeline.provenance.demo)
    notice = f"⚠ {ui.NOTICE}" + (f"<small>{ui.DEMO_NOTICE}</small>" if demo_model else "")
    with gr.Blocks(title="medr2 — chest X-ray report review", analytics_enabled=False, delete_cache=DELETE_CACHE) as demo:
        study = gr.State(None, time_to_live=3600)  # per-session study; dropped an hour after its last use
        with gr.Row(equal_height=False):
            gr.Markdown("## medr2 · chest X-ray report review")
            gr.HTML(f'<div class="medr2-notice">{notice}</div>', elem_id="notice")
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=360):
                view = gr.Image(label="Radiograph", type="numpy", interactive=False, height=560, format="png",
                                buttons=["fullscreen"], elem_id="viewer")
                with gr.Row():
                    overlay = gr.Dropdown(choices=ui.overlay_choices([]), value=ui.NO_OVERLAY, label="Saliency for",
                                          interactive=False, scale=3, elem_id="overlay")
                    alpha = gr.Slider(0.0, 1.0, value=0.45, step=0.05, label="Opacity", scale=2)
                    cmap = gr.Dropdown(choices=list(ui.COLORMAPS), value=ui.COLORMAPS[0], label="Colormap", scale=1)
                upload = gr.File(label="Upload a chest radiograph: DICOM (any extension), PNG or JPEG",
                                 file_count="single", type="filepath", height=110, elem_id="upload")
                if service.examples:
                    gr.Examples([[str(e.path)] for e in service.examples], inputs=[upload], label="Examples",
                                example_labels=[e.label for e in service.examples],
                                examples_per_page=len(service.examples))  # all on one page: rendered, phantom, real
                truth = gr.Markdown(visible=False, elem_id="truth")
            with gr.Column(scale=4, min_width=320):
                stages = gr.HTML(ui.stage_html([]), elem_id="stages")
                gr.Markdown("#### Perception · region checklist")
                perception = gr.HTML(elem_id="perception")
                gr.Markdown("#### Reasoning · sign → finding, with the knowledge rule used")
                reasoning = gr.HTML(elem_id="reasoning")
                gr.Markdown("#### Reflection · where it looked again, what changed")
                reflection = gr.HTML(elem_id="reflection")
                diff = gr.HighlightedText(label="Draft → final report (word diff)", color_map=ui.DIFF_COLORS,
                                          show_legend=True, combine_adjacent=True, elem_id="diff")
                with gr.Accordion("Raw model output", open=False):
                    raw = gr.Textbox(show_label=False, lines=8, max_lines=20, interactive=False)
            with gr.Column(scale=4, min_width=320):
                input_check = gr.Markdown(visible=False, elem_id="input_check")
                # folded when the input gate flags the film: the reviewer opens it deliberately
                with gr.Accordion(ui.REPORT_FOLD, open=True, elem_id="report_fold") as report_fold:
                    report = gr.Textbox(label="Final report (edit to correct it)", lines=7, max_lines=16, interactive=True,
                                        placeholder=ui.REPORT_PLACEHOLDER, elem_id="report")
                    findings = gr.Dataframe(empty_findings(), label=f"Findings, CheXpert 14 ({ui.FINDINGS_LEGEND})", interactive=False,
                                            wrap=True, max_height=600, elem_id="findings")
                provenance = gr.Markdown(elem_id="provenance")
        with gr.Accordion("Reviewer feedback", open=True, elem_id="feedback"):
            with gr.Row():
                rating = gr.Radio(LIKERT, label="Overall report quality", elem_id="rating")
                reasoning_rating = gr.Radio(LIKERT, label="Reasoning quality", elem_id="reasoning_rating")
                saliency_rating = gr.Radio(LIKERT, label="Saliency usefulness", elem_id="saliency_rating")
            verdicts = gr.Dataframe(headers=ui.VERDICT_HEADERS, datatype=ui.VERDICT_DATATYPES,
                                    label="Per sentence (filled from your edit; tick Delete or write the edited text to override)",
                                    interactive=True, static_columns=ui.VERDICT_STATIC_COLUMNS, wrap=True, elem_id="verdicts")
            with gr.Row():
                errors = gr.CheckboxGroup(ERROR_TAG_CHOICES, label="Errors in the final report", elem_id="errors")
                significant = gr.CheckboxGroup(ERROR_TAG_CHOICES, label="…of which clinically significant", elem_id="significant")
            with gr.Row():
                comment = gr.Textbox(label="Comment", lines=2, scale=3)
                reviewer = gr.Textbox(label="Reviewer handle (not your name; remembered in this browser)", lines=1,
                                      scale=1, elem_id="reviewer")
                saved_handle = gr.BrowserState("", storage_key="medr2_reviewer_handle")
            submit = gr.Button("Submit review", variant="primary", elem_id="submit")
            status = gr.Markdown(elem_id="status")
        result = gr.JSON(visible=False, elem_id="result")  # /analyze's report and labels for API callers

        parts = dict(stages=stages, view=view, perception=perception, reasoning=reasoning, reflection=reflection,
                     diff=diff, report=report, findings=findings, verdicts=verdicts, provenance=provenance,
                     overlay=overlay, truth=truth, raw=raw, study=study, input_check=input_check, report_fold=report_fold, rating=rating, reasoning_rating=reasoning_rating,
                     saliency_rating=saliency_rating, errors=errors, significant=significant, comment=comment, status=status,
                     result=result)
        upload.change(gpu(service.analyze), [upload], [parts[n] for n in ANALYZE_OUTPUTS], api_name="analyze",
                      concurrency_limit=concurrency, concurrency_id="model", show_progress="hidden")
        for trigger in (overlay.change, cmap.change, alpha.release):  # cheap: never wait behind the model
            trigger(service.view, [study, overlay, alpha, cmap], [view], concurrency_limit=None,
                    show_progress="hidden", api_visibility="private")
        # `input` follows typing; `blur` also catches a paste (Ctrl+V) the browser reported no keystroke for.
        # The stored verdicts never depend on either: submit recomputes them from the submitted text.
        for trigger in (report.input, report.blur):
            trigger(service.review, [study, report], [findings, verdicts], concurrency_limit=None,
                    trigger_mode="always_last", show_progress="hidden", api_visibility="private")
        demo.load(lambda h: h or "", [saved_handle], [reviewer], api_visibility="private", queue=False)
        reviewer.change(lambda h: (h or "").strip(), [reviewer], [saved_handle], api_visibility="private", queue=False)
        submit.click(service.submit, [study, report, verdicts, rating, reasoning_rating, saliency_rating, errors,
                                      significant, comment, reviewer], [status], concurrency_limit=None, api_name="submit")
    demo.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    return demo


def launch_settings() -> dict:
    """`launch()` options shared by the app, its tests and the benchmark (safety settings in one place)."""
    return dict(max_file_size=MAX_FILE_SIZE, show_error=False, run_history=False, enable_monitoring=False,
                footer_links=["gradio", "settings"], ssr_mode=False, pwa=False, mcp_server=False,
                css=ui.APP_CSS, theme=gr.themes.Soft())


@dataclass
class AppConfig:
    """`app.py` options (flags or a `--config` YAML file)."""

    model: str | None = field(default=None, metadata={"help": "local path or hub id (default: $MEDR2_MODEL, else assets/model)"})
    adapter: str | None = field(default=None, metadata={"help": "LoRA adapter folder on top of --model"})
    base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible server serving the model (docs/serving.md); "
                                                                  "--model then names the same weights locally, if at all"})
    served_model: str | None = field(default=None, metadata={"help": "the model's name on the server (default: the first listed)"})
    api_key: str | None = field(default=None, metadata={"help": "server API key (default: $MEDR2_API_KEY, else $OPENAI_API_KEY)"})
    device_map: str | None = field(default=None, metadata={"help": "'auto' spreads a large model over all GPUs"})
    data_dir: str | None = field(default=None, metadata={"help": "feedback folder (default: $MEDR2_DATA_DIR or ./medr2_data)"})
    host: str | None = field(default=None, metadata={"help": "bind address (default 127.0.0.1; Spaces sets 0.0.0.0)"})
    port: int | None = field(default=None, metadata={"help": "port (default 7860 or $GRADIO_SERVER_PORT)"})
    max_new_tokens: int = field(default=640, metadata={"help": "generation budget per study"})
    concurrency: int = field(default=1, metadata={"help": "studies generated at once (model calls are serialised)"})
    queue_size: int = field(default=16, metadata={"help": "studies waiting at most; more get a 'busy' message"})
    study: str | None = field(default=None, metadata={"help": "serve this reader study folder (sign-in, frozen reports, "
                                                               "no model; default: $MEDR2_STUDY)"})
    sign_in: str | None = field(default=None, metadata={
        "choices": ["password", "hf"],
        "help": "how study readers sign in: 'password' (the readers file) or 'hf' (Sign in with Hugging Face, on a "
                "Space whose README sets hf_oauth: true; docs/studies.md) (default: $MEDR2_SIGN_IN, else password)"})


def main(argv: list[str] | None = None) -> int:
    from medr2.cli import UsageError, fail, parse_config

    try:
        args = parse_config("app.py", AppConfig, sys.argv[1:] if argv is None else argv,
                            description="medr2 reviewer app (research demo, not for clinical use)")
    except UsageError as exc:
        return fail("app.py", exc)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from medr2.feedback.store import FeedbackError
    from medr2.modeling.model import ModelLoadError

    study_dir = args.study or os.environ.get("MEDR2_STUDY")
    if study_dir:  # a reader study serves frozen reports: no model is loaded
        from medr2.app.study_views import serve_study

        return serve_study(study_dir, args.sign_in or os.environ.get("MEDR2_SIGN_IN") or "password",
                           host=args.host, port=args.port, queue_size=args.queue_size, launch_settings=launch_settings())
    if args.sign_in:
        print("app.py: --sign_in applies to reader studies only (give --study)", file=sys.stderr)
        return 2

    try:
        service = make_service(args.model, args.data_dir, args.max_new_tokens, args.adapter, base_url=args.base_url,
                               served_model=args.served_model, api_key=args.api_key, device_map=args.device_map)
    except (ModelLoadError, FeedbackError, ValueError, OSError) as exc:
        print(f"app.py: {exc}", file=sys.stderr)
        return 2
    demo = build_demo(service, concurrency=args.concurrency, queue_size=args.queue_size)
    demo.launch(server_name=args.host, server_port=args.port, **launch_settings())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
