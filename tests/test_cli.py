import json
import os
import re
import subprocess
import sys

import pytest
import torch

import storyloom

from storyloom.cli import main

TINY_FLAGS = ["--hidden", "32", "--layers", "1", "--embed", "16", "--seq-len", "16", "--batch-size", "4",
              "--evals", "1", "--threads", "1", "--precision", "fp32", "--no-progress"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sonnets):
    d = tmp_path_factory.mktemp("cli")
    (d / "s.txt").write_text(sonnets)
    assert main(["train", str(d / "s.txt"), "--out", str(d / "run"), "--steps", "20", *TINY_FLAGS]) == 0
    return d


def test_train_eval_generate(trained, capsys):
    run = trained / "run"
    code, out, err = run_cli(capsys, "eval", run, trained / "s.txt", "--json")
    assert code == 0
    r = json.loads(out)
    assert set(r) == {"bpc", "nats_per_char", "perplexity", "chars", "token_perplexity", "tokens"}
    assert r["chars"] == r["tokens"] == 29999 and r["token_perplexity"] == pytest.approx(r["perplexity"])
    code, out, _ = run_cli(capsys, "eval", run, trained / "s.txt")
    assert code == 0 and out.startswith("bpc ") and "step that writes" not in out
    code, out, _ = run_cli(capsys, "eval", run, trained / "s.txt", "--decode-precision", "int8", "--json")
    q = json.loads(out)
    assert q["decode_precision"] == "int8" and abs(q["bpc"] - r["bpc"]) < 0.05
    code, out, _ = run_cli(capsys, "eval", run, trained / "s.txt", "--decode-precision", "int8")
    assert out.rstrip().endswith("(through the int8 step that writes)")
    code, out, err = run_cli(capsys, "generate", run, "--prompt", "Shall I", "--length", "50", "--seed", "3")
    assert code == 0 and out.startswith("Shall I") and len(out) == len("Shall I") + 50 + 1
    code2, out2, _ = run_cli(capsys, "generate", run, "--prompt", "Shall I", "--length", "50", "--seed", "3")
    assert out2 == out
    code, out, err = run_cli(capsys, "generate", run, "--length", "10")
    assert code == 0 and err.startswith("seed: ")


def test_clean_and_presets(tmp_path, capsys):
    p = tmp_path / "g.txt"
    p.write_text("header\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\nBody Text\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nlicence\n")
    code, out, _ = run_cli(capsys, "clean", p, "--lowercase")
    assert code == 0 and out == "body text\n"
    code, out, _ = run_cli(capsys, "presets")
    lines = out.strip().splitlines()
    assert [l.split()[0] for l in lines] == ["default", "story-writer", "shakespeare", "mysterious-island", "heart-of-darkness",
                                            "word", "bpe", "transformer", "gpu"]


def bad_inputs(tmp_path):
    """Each bad input to the CLI and a piece of the one line it must give (docs/reliability.md lists them)."""
    binary = tmp_path / "binary.bin"
    binary.write_bytes(b"\x7fELF\x00\x00\x01\x02")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be, that is the question.\n" * 10)
    nodir = tmp_path / "no-text"
    nodir.mkdir()
    (nodir / "cover.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00")
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"\x80\x04\x95\x00")
    return {
        "missing path": (["train", tmp_path / "nope.txt"], "nope.txt: no such file"),
        "binary file": (["train", binary], "binary"),
        "undecodable file": (["train", latin], "--encoding"),
        "empty text": (["train", empty], "no text left"),
        "directory with no text": (["train", nodir], "no-text: no text files in the directory"),
        "too short for one batch": (["train", short], "fewer than one batch needs"),
        "zero hidden size": (["train", short, "--hidden", "0"], "--hidden must be a positive integer"),
        "negative layers": (["train", short, "--layers", "-2"], "--layers must be a positive integer"),
        "absurd hidden size": (["train", short, "--hidden", "1000000"], "--hidden must be at most 65,536"),
        "zero seq len": (["train", short, "--seq-len", "0"], "--seq-len must be a positive integer"),
        "negative seq len": (["train", short, "--seq-len", "-3"], "--seq-len"),
        "zero batch size": (["train", short, "--batch-size", "0"], "--batch-size must be a positive integer"),
        "zero learning rate": (["train", short, "--lr", "0"], "--lr must be in (0, 1)"),
        "average over more than the run": (["train", short, "--average", "1.5"], "--average must be in [0, 1]"),
        "dropout of 1": (["train", short, "--dropout", "1"], "--dropout must be in [0, 1)"),
        "negative epochs": (["train", short, "--epochs", "-1"], "--epochs must be a number >= 0"),
        "minutes not a number": (["train", short, "--minutes", "nan"], "--minutes must be a number >= 0"),
        "validation share of 1": (["train", short, "--val-fraction", "1"], "--val-fraction must be in (0, 1)"),
        "zero keep": (["train", short, "--keep", "0"], "--keep must be a positive integer"),
        "zero eval tokens": (["train", short, "--eval-tokens", "0"], "--eval-tokens must be a positive integer"),
        "negative workers": (["prepare", short, "--out", tmp_path / "prep", "--workers", "-1"], "--workers must be >= 0"),
        "unknown experiment": (["experiment", "nope", "--out", tmp_path / "x"], "no experiment 'nope'; choose one of: long-range"),
        "deterministic with minutes": (["train", short, "--deterministic", "--minutes", "1"], "--deterministic needs --steps"),
        "not a number": (["train", short, "--hidden", "many"], "invalid int value: 'many'"),
        "unknown flag": (["train", short, "--hiden", "3"], "unrecognized arguments: --hiden"),
        "unknown preset": (["train", short, "--preset", "nope"], "--preset 'nope'"),
        "resume and overwrite": (["train", short, "--resume", tmp_path, "--overwrite"], "give only one of them"),
        "not a run": (["eval", tmp_path, short], "not a storyloom run"),
        "missing run": (["generate", tmp_path / "none"], "no such run"),
        "a text file as a run": (["generate", short], "a file, not a run directory"),
        "a pickle as a run": (["generate", pt], "never unpickles"),
    }


BAD = ["missing path", "binary file", "undecodable file", "empty text", "directory with no text", "too short for one batch",
       "zero hidden size", "negative layers", "absurd hidden size", "zero seq len", "negative seq len", "zero batch size",
       "zero learning rate", "average over more than the run", "dropout of 1", "negative epochs", "minutes not a number", "validation share of 1", "zero keep",
       "zero eval tokens", "negative workers", "unknown experiment",
       "deterministic with minutes", "not a number", "unknown flag", "unknown preset", "resume and overwrite", "not a run",
       "missing run", "a text file as a run", "a pickle as a run"]


def test_every_bad_input_is_tested(tmp_path):
    assert sorted(bad_inputs(tmp_path)) == sorted(BAD)


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case):
    argv, message = bad_inputs(tmp_path)[case]
    out_dir = tmp_path / "out"
    if argv[0] == "train":
        argv = [*argv, "--out", out_dir]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("storyloom: error: ") and message in err, err
    assert "Traceback" not in err and out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_prompt_with_unseen_characters(trained, capsys):
    code, out, err = run_cli(capsys, "generate", trained / "run", "--prompt", "\u00e9t\u00e9 \U0001f600")
    assert code == 2 and "never seen in training" in err and "--unknown replace" in err and out == ""
    code, out, err = run_cli(capsys, "generate", trained / "run", "--prompt", "\u00e9t\u00e9", "--unknown", "replace",
                             "--length", "5", "--seed", "1")
    assert code == 0


def test_negative_temperature(trained, capsys):
    code, out, err = run_cli(capsys, "generate", trained / "run", "--temperature", "-1")
    assert code == 2 and "--temperature" in err and out == ""


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "storyloom", "presets"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert r.returncode == 0 and "default" in r.stdout


def test_help_presets_clean_and_prepare_start_without_torch(tmp_path):
    # Torch takes 2-3 s to import: these commands never need it, so they must not load it (cli.py).
    book = tmp_path / "book.txt"
    book.write_text("It was the best of times, it was the worst of times.\n" * 200)
    script = f"""
import contextlib, io, sys
from storyloom.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    codes = [main(["presets"]), main(["clean", {str(book)!r}]), main(["prepare", {str(book)!r}, "--out", {str(tmp_path / "prep")!r},
             "--val-fraction", "0.1", "--workers", "1", "--no-progress"])]
    try:
        main(["--help"])
    except SystemExit as e:
        codes.append(e.code)
print(codes, sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[0, 0, 0, 0] []"
    assert (tmp_path / "prep" / "prepared.json").is_file()


@pytest.mark.parametrize("flag, shown", [([], True), (["--no-progress"], False)])
def test_prepare_passes_no_progress_to_the_api(tmp_path, capsys, monkeypatch, flag, shown):
    # tqdm hides its bars where stderr is no terminal, as under pytest, so what is checked is what the API is asked.
    from storyloom import cli

    asked = {}
    monkeypatch.setattr(cli, "prepare", lambda *a, **k: asked.update(k) or {"train_tokens": 1, "val_tokens": 1, "dtype": "uint8"})
    code, _, _ = run_cli(capsys, "prepare", "book.txt", "--out", tmp_path / "p", *flag)
    assert code == 0 and asked["progress"] is shown


def test_write_through_piped_input(trained, capsys, monkeypatch, tmp_path):
    import io

    story = tmp_path / "story.txt"
    script = f"Shall I compare thee\n:n\n:a\n:c 3\n1\n:w 2\n1\n:p\n:s {story}\n:q\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    code, out, err = run_cli(capsys, "write", trained / "run", "--length", "20", "--seed", "4")
    assert code == 0
    assert out.count("--- proposal") == 3  # after the text, after :n, after :a
    assert "pick 1-3" in out and "pick 1-2" in out
    saved = story.read_text()
    assert saved.startswith("Shall I compare thee ") and len(saved) > len("Shall I compare thee ") + 20
    assert f"saved {len(saved)} characters" in out
    # the same script and seed give the same session
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    assert run_cli(capsys, "write", trained / "run", "--length", "20", "--seed", "4")[1] == out


def test_generate_many_as_json_and_saved(trained, capsys, tmp_path):
    save = tmp_path / "samples.jsonl"
    code, out, err = run_cli(capsys, "generate", trained / "run", "--num", "3", "--length", "30", "--seed", "7", "--json",
                             "--save", save, "--check-novelty")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["seed"] for r in rows] == [7, 8, 9]
    assert all(len(r["text"]) == 30 and "longest_copied" in r["novelty"] for r in rows)
    assert [json.loads(line)["seed"] for line in save.read_text().splitlines()] == [7, 8, 9]
    code, out, err = run_cli(capsys, "generate", trained / "run", "--num", "2", "--length", "30", "--seed", "7")
    assert out.count("\n---\n") == 1


ABSURD_WRITING = {
    "temperature below 0": (["--temperature", "-1"], "--temperature must be a number >= 0"),
    "top-p of 0": (["--top-p", "0"], "--top-p must be in (0, 1]"),
    "top-p above 1": (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    "top-k of 0": (["--top-k", "0"], "--top-k must be >= 1"),
    "negative top-k": (["--top-k", "-2"], "--top-k must be >= 1"),
    "negative length": (["--length", "-1"], "--length must be between 0 and 1,000,000"),
    "length beyond the maximum": (["--length", "1000001"], "--length must be between 0 and 1,000,000"),
    "unbounded length with many samples": (["--length", "0", "--num", "2"], "--length 0"),
    "negative beam": (["--beam", "-1"], "--beam must be between 1 and 256"),
    "beam beyond the maximum": (["--beam", "1000"], "--beam must be between 1 and 256"),
    "zero samples": (["--num", "0"], "--num must be between 1 and 4,096"),
    "samples beyond the maximum": (["--num", "100000"], "--num must be between 1 and 4,096"),
    "repetition penalty below 1": (["--repetition-penalty", "0.5"], "--repetition-penalty must be >= 1"),
    "unseen character in the prompt": (["--prompt", "\u00e9t\u00e9 \U0001f600"], "--unknown replace"),
    "unseen character to ban": (["--ban", "\u00e9"], "--ban"),
    "cuda without a GPU": (["--device", "cuda"], "--device cuda was asked for but no CUDA GPU is visible"),
}


@pytest.mark.parametrize("case", ABSURD_WRITING)
def test_absurd_generate_flags(trained, capsys, case):
    flags, message = ABSURD_WRITING[case]
    if case == "cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, out, err = run_cli(capsys, "generate", trained / "run", *flags)
    assert code == 2 and message in err and err.count("\n") == 1 and out == ""


def test_fault_sigint_checkpoints_and_resume_finishes(tmp_path, sonnets):
    import signal
    import time

    (tmp_path / "s.txt").write_text(sonnets)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "storyloom", "train", str(tmp_path / "s.txt"), "--out", str(run), "--steps", "100000",
           *TINY_FLAGS]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    deadline = time.time() + 60
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "storyloom train --resume" in out
    status = storyloom.status(run)
    assert status["stopped"] == "interrupted" and 0 < status["step"] < 100000
    code = main(["train", "--resume", str(run), "--steps", str(status["step"] + 5), "--no-progress"])
    assert code == 0
    assert storyloom.status(run)["step"] == status["step"] + 5


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

VALUES = ["0", "-1", "1", "2", "0.5", "nan", "inf", "1e9", "abc", "", "\u00e9"]
GENERATE_FLAGS = ["--temperature", "--top-k", "--top-p", "--repetition-penalty", "--penalty-window", "--ban", "--stop",
                  "--seed", "--beam", "--num", "--prompt", "--which", "--unknown"]
TRAIN_FLAGS = ["--hidden", "--layers", "--embed", "--seq-len", "--batch-size", "--lr", "--dropout", "--warmup", "--clip",
               "--reset-prob", "--evals", "--log-every", "--keep", "--checkpoint-every", "--val-fraction", "--input",
               "--precision", "--patience", "--epochs", "--minutes", "--bad-steps", "--min-lr-ratio", "--beta1"]


def _flags(names):
    pair = st.tuples(st.sampled_from(names), st.sampled_from(VALUES)).map(list)
    switch = st.sampled_from(["--json", "--lowercase", "--deterministic", "--bogus"]).map(lambda f: [f])
    return st.lists(st.one_of(pair, pair, switch), max_size=5).map(lambda xs: [a for x in xs for a in x])


def _one_clear_line_or_success(code, out, err):
    assert code in (0, 2), (code, err)
    if code == 2:
        assert err.startswith("storyloom: error: ") and err.count("\n") == 1 and "Traceback" not in err, err


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flags=_flags(GENERATE_FLAGS), length=st.sampled_from(["1", "7", "-1", "abc", "2000000"]))
def test_fuzz_generate_flags(trained, capsys, flags, length):
    _one_clear_line_or_success(*run_cli(capsys, "generate", trained / "run", *flags, "--length", length))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flags=_flags(TRAIN_FLAGS))
def test_fuzz_train_flags(trained, capsys, tmp_path_factory, flags):
    out = tmp_path_factory.mktemp("fuzz") / "run"
    argv = ["train", trained / "s.txt", "--out", out, *TINY_FLAGS, *flags, "--steps", "2", "--threads", "1"]
    _one_clear_line_or_success(*run_cli(capsys, *argv))


def test_reliability_doc_lists_every_case(tmp_path):
    from pathlib import Path

    root = Path(__file__).parent
    doc = (root.parent / "docs" / "reliability.md").read_text()
    names = [n for f in root.glob("test_*.py") for n in re.findall(r"^def (test_(?:fault|fuzz)_\w+)", f.read_text(), flags=re.M)]
    assert len(names) > 20
    for case in [*names, *bad_inputs(tmp_path), *ABSURD_WRITING]:
        assert f"| {case} |" in doc or f"`{case}`" in doc, f"docs/reliability.md does not list {case}"


def test_suggested_commands_work_as_printed_from_a_new_shell(tmp_path, sonnets, monkeypatch):
    """`make demo` runs .venv/bin/storyloom without activating the venv: the hint must name that path."""
    import shutil
    import subprocess
    import sys

    from storyloom.cli import invocation

    monkeypatch.setattr(shutil, "which", lambda name: None)  # a fresh shell: storyloom is not on PATH
    monkeypatch.setattr(sys, "argv", [".venv/bin/storyloom", "train"])
    monkeypatch.setattr("os.path.isfile", lambda p: p == ".venv/bin/storyloom")
    assert invocation() == ".venv/bin/storyloom"
    monkeypatch.setattr(sys, "argv", ["/x/storyloom/__main__.py", "train"])
    import shlex

    assert invocation() == f"{shlex.quote(sys.executable)} -m storyloom"
    monkeypatch.undo()
    # and for real: the hint printed by `python -m storyloom train` runs as printed
    (tmp_path / "s.txt").write_text(sonnets)
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "storyloom", "train", str(tmp_path / "s.txt"), "--out", str(tmp_path / "r"),
                          "--steps", "3", "--hidden", "16", "--embed", "8", "--seq-len", "8", "--batch-size", "4", "--evals", "1",
                          "--no-progress"], capture_output=True, text=True, env=env, cwd=tmp_path)
    hint = next(line for line in out.stdout.splitlines() if line.startswith("write with: ")).removeprefix("write with: ")
    again = subprocess.run(hint + " --length 5 --seed 1", shell=True, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.startswith("Once upon a time"), (hint, again.stderr)
