"""The look loop: generate to the draft, look where the draft and the look heads say, let the model write an item per
look, then the report — batched, for the embedded model and any chat LVLM alike.

Each study advances through: draft (generation stops at `</draft>`) -> looks (the pipeline forces `<look>region</look>`
for each proposed region; the model may also ask for one itself; each look ends the assistant turn and a user turn
brings the crop and the heads' reading) -> the rest (generation to the end of the answer). Generation stops at the
look and section tags: as token ids where they are single tokens (the embedded model), as stop strings otherwise
(a served model: read from the stream).
A look request the loop cannot grant (a region already seen, an unknown one, the budget spent) is dropped; where the
look tag is a single token the model then goes on with that token banned, so the items it still owes (a device's
`kept` after the looks) are written; elsewhere the reflection closes there.
Every round re-prefills the conversation (the embedded model's prompt is short; a KV cache across turns with new
images is not worth its complexity at this size).

Modes: `proposed` (default; the pipeline's regions, plus any the model asks for while room is left), `model` (only
where the model asks), `off` (one pass, no looks: what older models do).

The state machine (`LookLoop`) does not care what generates: `LookRunner` runs the model in this process (batched,
left-padded); `medr2.inference.remote.RemoteLookRunner` sends each round to an OpenAI-compatible server (the crop as
a second image of a follow-up user turn). Both get the same `LookStudy` state and return the same text and `Look`s.

Hands on: `Look` records, `LookStudy` (one study's conversation so far), `LookLoop` (the state machine; a backend
implements `generate`), `LookRunner(pipeline, heads).run(loaded_images, mode, max_looks)` -> (raw text, looks) per
study.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from transformers import LogitsProcessor

from medr2.reflection.heads import OBSERVATIONS, LookHeads, tower_of
from medr2.reflection.looks import evidence_text, join_turns, look_conversation, propose_looks, stated_here
from medr2.reflection.regions import crop_region, normalise_region, region_box
from medr2.report.schema import LOOK_CLOSE, LOOK_OPEN, LOOK_RE, section_body

MODES = ("proposed", "model", "off")
ITEM_TOKENS = 120  # most new tokens for one reflection item (with its look request)
# where each phase's generation stops (the tag is kept in the text): the draft's end, a look request or the
# reflection's end, nothing (the end of the answer)
STOP_TAGS = {"draft": ["</draft>"], "reflect": [LOOK_CLOSE, "</reflection>"], "rest": []}


@dataclass
class Look:
    """One look: the region, its box on the film (top, left, bottom, right in film pixels), the crop the model saw,
    what the heads read there, and who chose the region ('pipeline' or 'model')."""

    region: str
    box: tuple[int, int, int, int]
    crop: np.ndarray = field(repr=False)
    evidence: str
    chosen_by: str

    def to_json(self) -> dict:
        return {"region": self.region, "box": list(self.box), "evidence": self.evidence, "chosen_by": self.chosen_by}


@dataclass
class LookStudy:
    """One study in the loop: the finished assistant turns (each ends with a look request), the turn being written
    (`current`, which the next generation continues), the looks taken, the regions still to look at and the phase."""

    film: np.ndarray  # full-resolution grayscale uint8
    pil: Image.Image
    turns: list[str] = field(default_factory=list)
    current: str = ""
    looks: list[Look] = field(default_factory=list)
    queue: list[str] = field(default_factory=list)
    phase: str = "draft"  # draft -> reflect -> rest -> done
    film_probs: np.ndarray | None = None
    looks_closed: bool = False  # a request was refused: the model goes on with the look tag banned
    draft: str = ""  # the draft's text (inside <draft>), once written

    def conversation(self, prompt_messages: list[dict]) -> list[dict]:
        """The chat up to the turn being written: the prompt, then assistant turn / look turn alternating (the last
        message is the user turn the next generation answers; `current` is the start of that answer)."""
        return look_conversation(prompt_messages, [*self.turns, ""], [lk.evidence for lk in self.looks])[:-1]

    def images(self) -> list[Image.Image]:
        """The conversation's images in order: the film, then each look's crop."""
        return [self.pil, *(Image.fromarray(lk.crop).convert("RGB") for lk in self.looks)]

    def text(self, pending: str = "") -> str:
        """The trace so far (with `pending`, text of the turn still arriving, after `current`)."""
        return join_turns([*self.turns, self.current + pending])




def _film_array(loaded) -> np.ndarray:
    return np.asarray(loaded.to_pil().convert("L"))


def _line_start(text: str) -> str:
    """`text` ending at the start of a new line (a forced tag must open its own line, as in the traces)."""
    text = text.rstrip(" ")
    return text if not text or text.endswith("\n") else text + "\n"


def prompt_text(processor, conversation: list[dict], current: str) -> str:
    """The text a round generates from: the chat template of the conversation with the assistant's generation
    prompt, then the turn written so far (the model continues it)."""
    return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False) + current


class LookLoop:
    """The look loop's state machine, whatever generates. A backend implements `generate(studies, phase)`: the new
    text of each study's turn, continuing `study.current` after `study.conversation(...)` with its `images()`, and
    stopping at the first of `STOP_TAGS[phase]` (kept in the text) or the end of the answer."""

    can_ban_looks = False  # whether `generate` can keep a study whose looks are closed from asking again

    def __init__(self, heads: LookHeads | None = None, tower=None, evidence_names_draft: bool = False):
        self.heads = heads
        self.tower = tower
        # a look model trained with the draft's unseen findings named in the evidence (its card says so) gets them
        self.evidence_names_draft = evidence_names_draft
        self.stop_tags = STOP_TAGS
        self.studies: list[LookStudy] = []  # the last run's studies, for backends that report on them

    def generate(self, studies: list[LookStudy], phase: str) -> list[str]:
        raise NotImplementedError

    # -------------------------------------------------------------- looks
    def _look(self, study: LookStudy, region: str, chosen_by: str) -> None:
        """End the assistant turn at the look request and add the crop + evidence turn."""
        crop = crop_region(study.film, region)
        if self.heads is not None and study.film_probs is not None:
            stated = stated_here(study.draft, region) if self.evidence_names_draft else ()
            evidence = evidence_text(region, *self.heads.region_reading(self.tower, study.film, study.film_probs, region),
                                     OBSERVATIONS, stated)
        else:
            evidence = evidence_text(region)
        study.turns.append(study.current)
        study.current = ""
        study.looks.append(Look(region, region_box(region, study.film.shape), crop, evidence, chosen_by))

    def _force_next(self, study: LookStudy, max_looks: int) -> bool:
        """Force the next proposed look; False when none is left or the budget is spent."""
        looked = {lk.region for lk in study.looks}
        while study.queue and len(study.looks) < max_looks:
            region = study.queue.pop(0)
            if region not in looked:
                study.current = _line_start(study.current) + f"{LOOK_OPEN}{region}{LOOK_CLOSE}"
                self._look(study, region, "pipeline")
                return True
        return False

    def run(self, loaded_images: list, mode: str = "proposed", max_looks: int = 3,
            drafts: list[str] | None = None) -> list[tuple[str, list[Look]]]:
        """(raw text, looks) per study. `drafts` (one per study, each ending with `</draft>`) replaces the model's own
        draft, so the reflection can be tested on a draft with a known error."""
        if mode not in MODES:
            raise ValueError(f"look mode must be one of {', '.join(MODES)}, got {mode!r}")
        if drafts is not None and (len(drafts) != len(loaded_images) or not all(d.rstrip().endswith("</draft>") for d in drafts)):
            raise ValueError("drafts: one per study, each ending with </draft>")
        studies = [LookStudy(_film_array(li), li.to_pil()) for li in loaded_images]
        self.studies = studies
        if self.heads is not None:
            probs = self.heads.read(self.tower, [s.film for s in studies])
            for s, p in zip(studies, probs):
                s.film_probs = p
        for s, draft in zip(studies, drafts or []):
            s.current = draft
            self._advance(s, draft, mode, max_looks)
        for _ in range(2 * max_looks + 4):  # each round advances every unfinished study by one step
            for phase in ("draft", "reflect", "rest"):
                active = [s for s in studies if s.phase == phase]
                if not active:
                    continue
                for s, piece in zip(active, self.generate(active, phase)):
                    s.current += piece
                    self._advance(s, piece, mode, max_looks)
            if all(s.phase == "done" for s in studies):
                break
        return [(s.text(), s.looks) for s in studies]

    def _advance(self, s: LookStudy, piece: str, mode: str, max_looks: int) -> None:
        if s.phase == "draft":
            if not s.current.rstrip().endswith("</draft>"):
                s.phase = "done"  # stopped at the end of the answer or the token budget: nothing to reflect on
                return
            s.current = s.current.rstrip() + "\n<reflection>\n"
            s.draft = section_body(s.current, "draft") or ""
            if mode == "proposed":
                thresholds = self.heads.thresholds if self.heads is not None else None
                s.queue = propose_looks(s.draft, s.film_probs, thresholds, OBSERVATIONS, max_looks)
            s.phase = "reflect"
            if mode != "off":
                self._force_next(s, max_looks)
            return
        if s.phase == "reflect":
            stripped = s.current.rstrip()
            if stripped.endswith(LOOK_CLOSE):  # the model asks for a look
                request = next((m for m in LOOK_RE.finditer(stripped) if m.end() == len(stripped)), None)
                if request is not None:
                    start = request.start()
                else:
                    # a closing tag without a well-formed request (no opening tag, a region across lines) asks for
                    # nothing: it goes, with its opening tag if it has one after the last granted look
                    after = max((m.end() for m in LOOK_RE.finditer(stripped)), default=0)
                    opening = stripped.lower().rfind(LOOK_OPEN, after)
                    start = opening if opening >= 0 else len(stripped) - len(LOOK_CLOSE)
                region = normalise_region(request["region"]) if request else None
                looked = {lk.region for lk in s.looks}
                if mode != "off" and region and region not in looked and len(s.looks) < max_looks:
                    s.current = stripped[:start] + f"{LOOK_OPEN}{region}{LOOK_CLOSE}"
                    self._look(s, region, "model")
                    return
                s.current = stripped[:start]  # no room, seen or unknown region: the request is dropped
                if self._force_next(s, max_looks):
                    return
                if self.can_ban_looks and not s.looks_closed:
                    # go on without looks: closing here would lose the items still owed (a device's `kept`)
                    s.looks_closed = True
                    s.current = _line_start(s.current)
                    return
                s.current = _line_start(s.current) + "</reflection>"
                s.phase = "rest"
                return
            if stripped.endswith("</reflection>"):
                s.current = stripped[:-len("</reflection>")]
                if mode == "proposed" and self._force_next(s, max_looks):
                    return
                s.current = _line_start(s.current) + "</reflection>"
                s.phase = "rest"
                return
            if not any(tag in stripped for tag in ("</reflection>", "</think>", "<report>")):
                # the item ran past its budget, or the turn ended without a tag: close the reflection so the report
                # still comes (a look model must not leave a film without a report)
                s.current = _line_start(s.current) + "</reflection>"
                s.phase = "rest"
                return
            s.phase = "done"
            return
        s.phase = "done"


class BanTokenInRows(LogitsProcessor):
    """A `generate` logits processor that bans one token in some rows of the batch (`bad_words_ids` bans it in all):
    the studies whose look requests are closed, beside studies still free to ask."""

    def __init__(self, token_id: int, rows: list[int]):
        self.token_id, self.rows = token_id, list(rows)

    def __call__(self, input_ids, scores):
        scores[self.rows, self.token_id] = float("-inf")
        return scores


class LookRunner(LookLoop):
    """Runs the look loop with one pipeline's model, processor and (optional) look heads, in this process."""

    def __init__(self, pipeline, heads: LookHeads | None):
        super().__init__(heads, tower_of(pipeline.model) if heads is not None else None,
                         evidence_names_draft=bool(pipeline.card.get("look_evidence_names_draft")))
        self.pipeline = pipeline
        tok = pipeline.processor.tokenizer
        vocab = tok.get_vocab()
        self.single_tokens = all(t in vocab for t in ("</draft>", LOOK_CLOSE, "</reflection>"))
        self.look_open_id = vocab.get(LOOK_OPEN)
        self.can_ban_looks = self.look_open_id is not None
        self.eos = [tok.eos_token_id] if tok.eos_token_id is not None else []

    def generate(self, studies: list[LookStudy], phase: str) -> list[str]:
        """One batched, left-padded `generate` over the studies' conversations (re-prefilled each round)."""
        import torch

        pipe, proc = self.pipeline, self.pipeline.processor
        convs = [s.conversation(pipe.messages()) for s in studies]
        texts = [prompt_text(proc, c, s.current) for c, s in zip(convs, studies)]
        images = [im for s in studies for im in s.images()]
        from medr2.modeling.model import per_study_images

        inputs = proc(images=per_study_images(proc, images, convs), text=texts, return_tensors="pt", padding=True,
                      padding_side="left").to(pipe.model.device)
        kwargs = pipe._gen_kwargs()
        if phase == "reflect":  # one item (~30 tokens) per call: a runaway item must not eat the whole budget
            kwargs["max_new_tokens"] = min(kwargs["max_new_tokens"], ITEM_TOKENS)
        tags = self.stop_tags[phase]
        if tags and self.single_tokens:
            kwargs["eos_token_id"] = self.eos + [proc.tokenizer.convert_tokens_to_ids(t) for t in tags]
        elif tags:
            kwargs.update(stop_strings=tags, tokenizer=proc.tokenizer)
        closed = [i for i, s in enumerate(studies) if s.looks_closed]
        if phase == "reflect" and closed and self.can_ban_looks:
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList([BanTokenInRows(self.look_open_id, closed)])
        pipe._seed()
        with torch.no_grad():
            ids = pipe.model.generate(**inputs, **kwargs)
        new = ids[:, inputs["input_ids"].shape[1]:]
        from medr2.inference.results import clean_text

        return [clean_text(proc.tokenizer.decode(row, skip_special_tokens=False), pipe._strip) for row in new]
