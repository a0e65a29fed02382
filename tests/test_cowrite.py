import io

import pytest

import storyloom
from storyloom.config import SampleConfig
from storyloom.cowrite import run_session

from conftest import TINY


@pytest.fixture(scope="module")
def m(tmp_path_factory, sonnets):
    d = tmp_path_factory.mktemp("cowrite")
    (d / "s.txt").write_text(sonnets)
    run = storyloom.train([str(d / "s.txt")], out=d / "run", steps=30, progress=False, **{**TINY, "lr": 1e-2})
    return storyloom.load(run, device="cpu")


def session(m, script: str, story: str = "", seed: int = 4) -> str:
    out = io.StringIO()
    assert run_session(m, story, 20, seed, SampleConfig(), "replace", io.StringIO(script), out) == 0
    return out.getvalue()


def test_typed_text_joins_the_story_and_each_proposal_has_its_own_seed(m, tmp_path):
    story = tmp_path / "story.txt"
    text = session(m, f"Shall I compare thee\n:n\n:a\n:p\n:s {story}\n")
    first = m.session("Shall I compare thee ", "replace").propose(20, seed=5)
    second = m.session("Shall I compare thee ", "replace").propose(20, seed=6)
    assert text.count("--- proposal") == 3
    assert first in text and second in text  # :n draws with the next seed
    assert story.read_text() == "Shall I compare thee " + second  # :a accepted the second proposal
    assert f"saved {len('Shall I compare thee ' + second)} characters" in text


def test_picking_the_likeliest_next_token_adds_it(m):
    text = session(m, ":c 3\n1\n:p\n", story="Shall I compare thee")
    top = m.session("Shall I compare thee", "replace").next_tokens(3)
    assert f"added {top[0][0]!r}" in text
    assert "Shall I compare thee" + top[0][0] in text.split("added")[1]


@pytest.mark.parametrize("script, said", [(":a\n", "no proposal to accept"), (":x\n", "unknown command :x; :h for help"),
                                          (":s\n", "give a file name"), (":h\n", ":w [N]"), (":r\n", "rejected"),
                                          (":c 2\nnope\n:p\n", "pick 1-2")])
def test_commands_answer_without_ending_the_session(m, script, said):
    text = session(m, script)
    assert said in text and text.endswith("> \n")  # the end of input ends the session, cleanly


def test_an_error_is_one_line_and_the_session_goes_on(m, tmp_path):
    text = session(m, f":s {tmp_path}\n:q\n")  # a directory cannot be saved to
    assert "error: [Errno 21] Is a directory" in text and text.rstrip().endswith(">")
