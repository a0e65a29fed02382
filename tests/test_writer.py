import pytest
import torch

import storyloom
from storyloom.config import SampleConfig
from storyloom.errors import UserError
from storyloom.writer import Writer, draw_seed, load_model
from storyloom.runs import Run

from conftest import TINY


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sonnets):
    d = tmp_path_factory.mktemp("writer")
    (d / "s.txt").write_text(sonnets)
    plain = storyloom.train([str(d / "s.txt")], out=d / "plain", steps=30, progress=False, **{**TINY, "lr": 1e-2})
    lower = storyloom.train([str(d / "s.txt")], out=d / "lower", steps=5, lowercase=True, progress=False, **TINY)
    return plain, lower


def test_encode_folds_case_for_a_lowercase_run_and_read_starts_from_a_new_line(runs):
    plain, lower = (storyloom.load(r, device="cpu") for r in runs)
    assert lower.tokenizer.decode(lower.encode("Shall I")) == "shall i"
    assert plain.tokenizer.decode(plain.encode("Shall I")) == "Shall I"
    ids, logits, state = plain.read("")
    assert plain.tokenizer.decode(ids) == "\n" and logits.shape == (1, len(plain.tokenizer))
    with pytest.raises(UserError, match="the prompt has 1 character\\(s\\) never seen in training"):
        plain.read("\u00e9")


def test_sampling_travels_as_one_config_or_as_keywords(runs):
    m = storyloom.load(runs[0], device="cpu")
    cfg = SampleConfig(temperature=1.2, top_k=5, stop=("\n\n",))
    assert m.generate("Shall I", 60, seed=3, sampling=cfg) == m.generate("Shall I", 60, seed=3, temperature=1.2, top_k=5,
                                                                         stop="\n\n")
    # keywords change the given config
    assert m.generate("Shall I", 40, seed=3, sampling=cfg, top_k=1) == m.generate("Shall I", 40, temperature=0, seed=9)
    with pytest.raises(UserError, match="unknown setting temprature"):
        m.generate("Shall I", 10, temprature=1.0)
    with pytest.raises(UserError, match="--length must be between 0 and 1,000,000"):
        m.generate("Shall I", -3)


def test_banned_holds_the_tokenizers_own_and_the_asked(runs):
    m = storyloom.load(runs[0], device="cpu")
    ids = m.banned("ea")
    assert m.tokenizer.decode(list(ids)) == "ae"
    assert "e" not in m.generate("Shall I", 200, seed=1, ban="e")


def test_next_tokens_are_the_likeliest_after_the_prompt(runs):
    m = storyloom.load(runs[0], device="cpu")
    top = m.next_tokens("Shall I compare thee", 4)
    assert m.next_chars("Shall I compare thee", 4) == top  # the old name still answers
    _, logits, _ = m.read("Shall I compare thee")
    p = torch.softmax(logits[0], -1)
    want = [(m.tokenizer.decode([i]), v) for v, i in zip(*p.topk(4))]
    assert [c for c, _ in top] == [c for c, _ in want]
    assert [v for _, v in top] == pytest.approx([float(v) for _, v in want])


def test_draw_seed_keeps_a_given_seed_and_draws_a_fresh_one():
    assert draw_seed(7) == 7
    drawn = {draw_seed() for _ in range(20)}
    assert len(drawn) > 15 and all(0 <= s < 2**31 for s in drawn)


def test_load_model_gives_the_best_or_the_last_weights(runs):
    run = Run(runs[0])
    best, last = load_model(run, "best"), load_model(run, "last")
    assert not best.training
    assert all(torch.equal(best.state_dict()[k], v) for k, v in run.weights("best")[1].items())
    assert all(torch.equal(last.state_dict()[k], v) for k, v in run.latest().weights().items())
    with pytest.raises(UserError, match="--which must be one of best, last"):
        Writer(runs[0], which="newest")


def test_info_tells_what_a_run_is(tmp_path, sonnets):
    import json
    import os
    import subprocess
    import sys

    (tmp_path / "s.txt").write_text(sonnets)
    run = storyloom.train([str(tmp_path / "s.txt")], out=tmp_path / "r", steps=6, progress=False, **{**TINY, "layers": 2})
    m = storyloom.load(run)
    d = m.info()
    assert [r["layer"] for r in d["layers"]] == ["input", "lstm 1", "lstm 2", "head"]
    assert d["params"] == sum(p.numel() for p in m.model.parameters())
    assert d["level"] == "char" and d["vocab"] == len(m.tokenizer) and d["training"]["step"] == 6
    assert d["training"]["stopped"] == "limit" and d["best_val_bpc"] > 0 and d["base"] is None
    assert {"best.safetensors", "config.json", "metrics.jsonl"} <= {f["name"] for f in d["files"]}
    out = subprocess.run([sys.executable, "-m", "storyloom", "info", str(run)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 0 and "lstm 2" in out.stdout and f"{d['params']:,}" in out.stdout and "best val bpc" in out.stdout
    js = subprocess.run([sys.executable, "-m", "storyloom", "info", str(run), "--json"], capture_output=True, text=True,
                        env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert json.loads(js.stdout)["params"] == d["params"]


def test_decode_precision_auto_writes_in_int8_on_a_cpu_and_scores_exactly_unless_asked(runs, tmp_path, sonnets):
    plain, _ = runs
    auto, exact, int8 = Writer(plain), Writer(plain, decode_precision="fp32"), Writer(plain, decode_precision="int8")
    assert (auto.decode, exact.decode, int8.decode) == ("int8", "fp32", "int8") and auto.info()["decode_precision"] == "int8"
    text = sonnets[:3000]
    s_auto, s_exact, s_int8 = auto.score(text), exact.score(text), int8.score(text)
    assert s_auto == s_exact and "decode_precision" not in s_auto  # auto scores exactly
    assert s_int8["decode_precision"] == "int8" and 0 < abs(s_int8["bpc"] - s_exact["bpc"]) < 0.05  # through the int8 step
    assert int8.generate("Shall I", 40, seed=3) == auto.generate("Shall I", 40, seed=3)  # reproducible by seed


def test_a_decode_precision_the_cell_lacks_is_one_line(tmp_path, sonnets):
    (tmp_path / "s.txt").write_text(sonnets[:20000])
    gru = storyloom.train([str(tmp_path / "s.txt")], out=tmp_path / "gru", steps=2, cell="gru", progress=False, **TINY)
    assert Writer(gru).decode == "fp32"  # auto: what the cell has
    with pytest.raises(UserError, match="--decode-precision int8: the gru cell steps only in fp32; drop the flag"):
        Writer(gru, decode_precision="int8")
    with pytest.raises(UserError, match="--decode-precision must be one of"):
        Writer(gru, decode_precision="int4")
