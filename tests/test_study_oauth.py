"""Sign in with Hugging Face for reader studies on Spaces (`app.py --study DIR --sign_in hf`).

The Hub is out of reach here, so gradio's OAuth routes (real on a Space, a mock of the machine's own Hub login
elsewhere) are left out, and signed-in visitors are made as gradio makes them: a `gr.OAuthProfile`, or a request
whose session holds the OAuth info gradio stores after the Hub's callback. What is checked is medr2's part:
the readers file's allow-list, the reader each event resolves (allowed, not allowed, not signed in), the page in
hf mode (a LoginButton, no gradio `auth=`), and that the password sign-in is unchanged."""
from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path

import gradio as gr
import gradio.routes
import pytest
from gradio.state_holder import SessionState
from starlette.requests import Request as StarletteRequest

from medr2.app import study_views as sv
from medr2.study.cli import cli_study
from medr2.study.create import create_study
from medr2.study.manifest import StudyError, StudyFolder
from medr2.study.session import ReviewStore, add_reader, check_password, hf_user_reader, load_readers, reader_order

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"


@pytest.fixture
def study_dir(tmp_path) -> Path:
    cases = tmp_path / "cases"
    cases.mkdir()
    for p in sorted(EXAMPLES.glob("phantom_*.png"))[:2]:
        (cases / p.name).write_bytes(p.read_bytes())
        (cases / p.with_suffix(".json").name).write_bytes(p.with_suffix(".json").read_bytes())
    return create_study(cases, ["reference"], "single", tmp_path / "S", seed=1, study_id="hf")


def profile(username: str) -> gr.OAuthProfile:
    """What gradio hands a function after "Sign in with Hugging Face" (the OpenID userinfo of the account)."""
    return gr.OAuthProfile({"name": username.title(), "preferred_username": username,
                            "profile": f"https://huggingface.co/{username}", "picture": ""})


def request(username: str | None) -> gr.Request:
    """A page request whose session is signed in as `username` (None: not signed in), as gradio stores it."""
    session = {} if username is None else {"oauth_info": {"expires_at": time.time() + 3600,
                                                          "userinfo": dict(profile(username))}}
    return gr.Request(request=StarletteRequest({"type": "http", "method": "GET", "path": "/", "query_string": b"",
                                                "headers": [], "session": session}))


@contextlib.contextmanager
def refused(start: str):
    """The event raised gr.Error with this one-line message (gradio shows `message` to the visitor)."""
    with pytest.raises(gr.Error) as exc:
        yield
    assert exc.value.message.startswith(start) and "\n" not in exc.value.message, exc.value.message


@pytest.fixture
def no_hub(monkeypatch):
    """Build LoginButton pages without gradio's OAuth routes (they need the Hub: authlib on a Space, the
    machine's own Hub login elsewhere)."""
    monkeypatch.setattr(gradio.routes, "attach_oauth", lambda app: None)


def test_readers_file_allow_lists_hugging_face_accounts_beside_passwords(study_dir):
    add_reader(study_dir, "alice", "password-alice")
    add_reader(study_dir, "r2", hf_user="Bob")
    add_reader(study_dir, "alice", hf_user="alice-hf", admin=True)  # alice may now sign in either way
    readers = load_readers(study_dir)
    assert readers["r2"] == {"admin": False, "hf_user": "Bob"}
    assert readers["alice"]["hf_user"] == "alice-hf" and readers["alice"]["admin"] is True
    assert check_password(study_dir, "alice", "password-alice")  # kept when the Hugging Face account was added
    assert not check_password(study_dir, "r2", "")  # a Hugging Face reader has no password to guess
    assert hf_user_reader(study_dir, "bob") == "r2" and hf_user_reader(study_dir, "ALICE-HF") == "alice"
    assert hf_user_reader(study_dir, "mallory") is None and hf_user_reader(study_dir, None) is None
    with pytest.raises(StudyError, match="Hugging Face user bob already signs in as reader r2"):
        add_reader(study_dir, "r3", hf_user="bob")
    with pytest.raises(StudyError, match="a password or a Hugging Face username"):
        add_reader(study_dir, "r4")
    with pytest.raises(StudyError, match="a Hugging Face username is 1-64"):
        add_reader(study_dir, "r4", hf_user="bad name")


def test_the_reader_is_resolved_from_the_oauth_profile(study_dir):
    add_reader(study_dir, "r1", hf_user="alice")
    assert sv.hf_reader(study_dir, profile("alice")) == "r1"
    assert sv.hf_reader(study_dir, profile("Alice")) == "r1"  # the Hub's usernames are case-insensitive
    with refused("The Hugging Face account mallory is not a reader of this study"):
        sv.hf_reader(study_dir, profile("mallory"))
    with refused("Sign in with Hugging Face first"):
        sv.hf_reader(study_dir, None)


def test_cli_adds_hugging_face_readers(study_dir, capsys):
    assert cli_study(["readers", "add", "--hf_users", "alice, bob", "--study_dir", str(study_dir)]) == 0
    assert cli_study(["readers", "add", "coord", "--hf_users", "carol", "--admin", "--study_dir", str(study_dir)]) == 0
    assert cli_study(["readers", "add", "pw", "--password", "password-pw", "--study_dir", str(study_dir)]) == 0
    capsys.readouterr()
    assert cli_study(["readers", "list", "--study_dir", str(study_dir)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "alice: Hugging Face alice", "bob: Hugging Face bob", "coord (admin): Hugging Face carol", "pw: password"]
    assert cli_study(["readers", "add", "x", "--hf_users", "d,e", "--study_dir", str(study_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "reader x signs in with one Hugging Face account, got 2" in err
    assert "password" not in json.dumps(load_readers(study_dir)["coord"])


def test_the_study_page_in_hf_mode_has_a_login_button_and_the_password_page_none(study_dir, no_hub):
    add_reader(study_dir, "r1", hf_user="alice")
    demo = sv.build_study_demo(study_dir, "hf")
    buttons = [b for b in demo.blocks.values() if isinstance(b, gr.LoginButton)]
    assert len(buttons) == 1 and buttons[0].elem_id == "hf_login" and demo.expects_oauth
    config = json.dumps(demo.get_config_file(), default=str)
    assert "Sign in with Hugging Face" in config and str(study_dir) not in config
    assert not sv.build_study_demo(study_dir).expects_oauth  # the password page: gradio's sign-in, no button
    with pytest.raises(StudyError, match="--sign_in must be one of password, hf"):
        sv.build_study_demo(study_dir, "github")


def _fns(demo) -> dict:
    return {f.fn.__name__: f for f in demo.fns.values() if f.fn}


def _call(demo, fn, inputs, state, req):
    return asyncio.run(demo.process_api(block_fn=fn, inputs=inputs, state=state, request=req))["data"]


def test_every_event_resolves_the_reader_from_the_hugging_face_sign_in(study_dir, no_hub):
    add_reader(study_dir, "r1", hf_user="alice")
    add_reader(study_dir, "r2", hf_user="bob")
    add_reader(study_dir, "coord", hf_user="carol", admin=True)
    demo = sv.build_study_demo(study_dir, "hf")
    fns = _fns(demo)
    # page load: the allow-listed account sees its first case; anyone else one line saying why not
    page = SessionState(demo)
    assert _call(demo, fns["start"], [], page, request("alice"))[3] == "**Case 1 / 2** · 0 saved · 0 locked"
    for who, why in (("mallory", "The Hugging Face account mallory is not a reader"), (None, "Sign in with Hugging Face")):
        out = _call(demo, fns["start"], [], SessionState(demo), request(who))
        assert out[3].startswith(f"**{why}") and out[1] is None and out[-1]["visible"] is False

    study = StudyFolder.open(study_dir)
    case = reader_order(study, "r1")[0]
    # state, the report unchanged, four ratings, no errors, no edits (8 reason slots), no preference, a comment
    answers = [None, study.reports[(case, "S1")], 4, 3, "na", 5, [], [], None, *[None] * sv.EDIT_SLOTS, None, "ok"]
    assert _call(demo, fns["save_case"], answers, page, request("alice"))[-1].startswith("✓ Saved")
    store = ReviewStore(study)
    saved = [(r.reviewer, r.study["case_id"], r.study["items"]) for _, r in store.reviews()]
    store.close()
    assert saved == [("r1", case, {"overall": 4, "accuracy": 3, "completeness": "na", "clarity": 5})]
    # another allow-listed account cannot act on alice's page, nor can a signed-out visitor
    with refused("Reload the page: it belongs to another sign-in"):
        _call(demo, fns["go_on"], [None], page, request("bob"))
    with refused("Sign in with Hugging Face first"):
        _call(demo, fns["save_case"], answers, page, request(None))
    # results: coordinators only, by the same rule
    with refused("Only the study's coordinators"):
        _call(demo, fns["results"], [], SessionState(demo), request("alice"))
    with refused("The Hugging Face account mallory is not a reader"):
        _call(demo, fns["results"], [], SessionState(demo), request("mallory"))
    summary = _call(demo, fns["results"], [], SessionState(demo), request("carol"))[0]
    assert "1 readers · 1 reviews" in summary


def test_the_password_page_ignores_hugging_face_sessions(study_dir):
    """Password sign-in as before: the name gradio's auth= put on the request; an OAuth session counts for nothing."""
    add_reader(study_dir, "pw", "password-pw")
    add_reader(study_dir, "r1", hf_user="alice")
    demo = sv.build_study_demo(study_dir)
    start = _fns(demo)["start"]
    assert _call(demo, start, [], SessionState(demo), gr.Request(username="pw"))[3].startswith("**Case 1 / 2**")
    out = _call(demo, start, [], SessionState(demo), request("alice"))
    assert out[3] == "**Sign in first: this study page needs a reader name and password.**"


def _serve(study_dir, monkeypatch, *flags, env: str | None = None) -> tuple[int, dict | None]:
    """`app.py --study DIR FLAGS` (with $MEDR2_SIGN_IN=env) up to `launch`, whose options are recorded instead."""
    sys.path.insert(0, str(ROOT))
    import app

    launched = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: launched.update(kw, demo=self))
    if env is None:
        monkeypatch.delenv("MEDR2_SIGN_IN", raising=False)
    else:
        monkeypatch.setenv("MEDR2_SIGN_IN", env)
    rc = app.main(["--study", str(study_dir), *flags])
    return rc, launched or None


def test_app_serves_hf_mode_without_gradio_auth_and_password_mode_with_it(study_dir, monkeypatch, no_hub, capsys):
    rc, launched = _serve(study_dir, monkeypatch, "--sign_in", "hf")
    assert rc == 2 and launched is None
    assert capsys.readouterr().err.strip() == (
        f"app.py: no Hugging Face readers yet: `medr2 study readers add --hf_users USER --study_dir {study_dir}`")
    add_reader(study_dir, "r1", hf_user="alice")
    monkeypatch.setattr(sv, "missing_oauth_packages", lambda: ["itsdangerous"])
    assert _serve(study_dir, monkeypatch, "--sign_in", "hf") == (2, None)
    assert "needs gradio's oauth extra (itsdangerous missing): pip install 'gradio[oauth]'" in capsys.readouterr().err
    monkeypatch.setattr(sv, "missing_oauth_packages", lambda: [])
    rc, launched = _serve(study_dir, monkeypatch, "--sign_in", "hf")
    assert rc == 0 and "auth" not in launched and launched["demo"].expects_oauth
    # the password page: gradio's auth= with the readers file, once a reader has a password
    assert _serve(study_dir, monkeypatch) == (2, None)
    assert "no readers with a password yet" in capsys.readouterr().err
    add_reader(study_dir, "pw", "password-pw")
    rc, launched = _serve(study_dir, monkeypatch)
    assert rc == 0 and not launched["demo"].expects_oauth
    assert launched["auth"]("pw", "password-pw") and not launched["auth"]("r1", "")
    # a Space runs `python app.py` without flags: its variables choose
    rc, launched = _serve(study_dir, monkeypatch, env="hf")
    assert rc == 0 and "auth" not in launched and launched["demo"].expects_oauth
    assert _serve(study_dir, monkeypatch, env="github") == (2, None)
    assert "--sign_in (or $MEDR2_SIGN_IN) must be one of password, hf, got 'github'" in capsys.readouterr().err


def test_docs_give_the_space_metadata_that_turns_oauth_on():
    """docs/studies.md adds `hf_oauth: true` to the Space's front matter (Space.yaml, which README.md repeats)."""
    import re

    import yaml

    doc = (ROOT / "docs" / "studies.md").read_text(encoding="utf-8")
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", doc, re.DOTALL)]
    (extra,) = [b for b in blocks if isinstance(b, dict) and "hf_oauth" in b]
    assert extra == {"hf_oauth": True, "hf_oauth_expiration_minutes": 480}
    assert not set(extra) & set(yaml.safe_load((ROOT / "Space.yaml").read_text()))  # added to it, nothing overridden
    assert "MEDR2_SIGN_IN=hf" in doc and "--sign_in hf" in doc
