import json
import os
import subprocess
import sys

import pytest

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
    assert set(r) == {"bpc", "nats_per_char", "perplexity", "chars"} and r["chars"] == 29999
    code, out, _ = run_cli(capsys, "eval", run, trained / "s.txt")
    assert code == 0 and out.startswith("bpc ")
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
    assert [l.split()[0] for l in lines] == ["default", "story-writer", "shakespeare", "mysterious-island", "heart-of-darkness"]


BAD = ["missing path", "binary file", "undecodable file", "empty text", "too short for one batch", "bad flag value",
       "negative seq len", "unknown preset", "not a run", "missing run"]


def bad_inputs(tmp_path):
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\x7fELF\x00\x00\x01\x02")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be, that is the question.\n" * 10)
    return {
        "missing path": (["train", tmp_path / "nope.txt"], "nope.txt: no such file"),
        "binary file": (["train", binary], "binary"),
        "undecodable file": (["train", latin], "--encoding"),
        "empty text": (["train", empty], "no text left"),
        "too short for one batch": (["train", short], "fewer than one batch needs"),
        "bad flag value": (["train", short, "--hidden", "0"], "--hidden must be a positive integer"),
        "negative seq len": (["train", short, "--seq-len", "-3"], "--seq-len"),
        "unknown preset": (["train", short, "--preset", "nope"], "--preset 'nope'"),
        "not a run": (["eval", tmp_path, short], "not a storyloom run"),
        "missing run": (["generate", tmp_path / "none"], "no such run"),
    }


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


@pytest.mark.parametrize("flags, message", [(["--top-p", "0"], "--top-p"), (["--top-k", "-2"], "--top-k"),
                                            (["--length", "-1"], "--length"), (["--length", "0", "--num", "2"], "--length 0"),
                                            (["--beam", "-1"], "--beam"), (["--num", "0"], "--num")])
def test_absurd_generate_flags(trained, capsys, flags, message):
    code, out, err = run_cli(capsys, "generate", trained / "run", *flags)
    assert code == 2 and message in err and err.count("\n") == 1 and out == ""


def test_sigint_checkpoints_and_resume_finishes(tmp_path, sonnets):
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
    status = json.loads((run / "trainer.json").read_text())["position"]
    assert status["stopped"] == "interrupted" and 0 < status["step"] < 100000
    code = main(["train", "--resume", str(run), "--steps", str(status["step"] + 5), "--no-progress"])
    assert code == 0
    assert json.loads((run / "trainer.json").read_text())["position"]["step"] == status["step"] + 5
