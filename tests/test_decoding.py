import numpy as np
import pytest
import torch

import storyloom
from storyloom.decoding import Stops

from conftest import TINY


@pytest.fixture(scope="module")
def m(tmp_path_factory, sonnets, dev):
    d = tmp_path_factory.mktemp("gen")
    (d / "s.txt").write_text(sonnets)
    run = storyloom.train([str(d / "s.txt")], out=d / "run", steps=60, progress=False, device=dev, **{**TINY, "lr": 1e-2})
    return storyloom.load(run, device=dev, decode_precision="fp32")  # the exact path, checked against forward here


PROMPT = "Shall I compare thee to a summer's day?\n"


def test_greedy_three_ways(m):
    g = m.generate(PROMPT, 80, temperature=0)
    assert len(g) == 80
    assert m.generate(PROMPT, 80, temperature=1.0, top_k=1, seed=5) == g
    assert m.generate(PROMPT, 80, beam=1) == g


def test_seeds_reproduce_and_differ(m):
    a = m.generate(PROMPT, 100, temperature=1.0, seed=1)
    assert m.generate(PROMPT, 100, temperature=1.0, seed=1) == a
    assert m.generate(PROMPT, 100, temperature=1.0, seed=2) != a


def test_stream_concatenates_to_generate(m):
    kw = dict(temperature=0.9, top_p=0.9, seed=3, stop=["\n\n"])
    assert "".join(m.stream(PROMPT, 150, **kw)) == m.generate(PROMPT, 150, **kw)


def test_stop_strings_stop_and_banned_characters_never_appear(m):
    for seed in range(5):
        t = m.generate(PROMPT, 300, temperature=1.0, seed=seed, stop=["e", "\n"])
        assert "e" not in t and "\n" not in t
        full = m.generate(PROMPT, 300, temperature=1.0, seed=seed)
        cut = min(i for i in (full.find("e"), full.find("\n"), len(full)) if i >= 0)
        assert t == full[:cut]
        b = m.generate(PROMPT, 300, temperature=1.0, seed=seed, ban="e ")
        assert "e" not in b and " " not in b and len(b) == 300


def test_stateful_logits_equal_a_recompute_over_the_whole_text(m):
    text = PROMPT + m.generate(PROMPT, 40, temperature=1.0, seed=9)
    ids = m.tokenizer.ids(text)
    dec = m.decoder
    logits, state = dec.read(ids[: len(PROMPT)])
    for t in range(len(PROMPT), len(ids)):
        full, _ = dec.read(ids[:t])
        torch.testing.assert_close(logits, full, rtol=1e-4, atol=1e-4)
        logits, state = dec.step(torch.tensor([int(ids[t])]), state)


@pytest.mark.parametrize("B", [1, 3])
def test_decoder_step_equals_the_model_step(m, B):
    # On CUDA the decoder replays a captured graph; it must compute what the eager step computes,
    # and a state it returned must survive later steps (the graph's output buffers are reused).
    dec, model = m.decoder, m.model
    ids = torch.tensor(m.tokenizer.ids(PROMPT)[:B].astype(np.int64))
    _, state = dec.read(m.tokenizer.ids(PROMPT))
    state = tuple(s.expand(-1, B, -1).contiguous() for s in state)
    want_logits, want_state = model.step(ids.to(dec.device), state)
    got_logits, got_state = dec.step(ids, state)
    kept = tuple(s.clone() for s in got_state)
    for _ in range(3):
        dec.step(ids, got_state)
    torch.testing.assert_close(got_logits, want_logits.cpu(), rtol=1e-5, atol=1e-5)
    for got, want, k in zip(got_state, want_state, kept):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert torch.equal(got, k)


def test_num_samples_each_reproducible_from_its_seed(m):
    outs = m.samples(PROMPT, num=4, length=60, temperature=1.0, seed=100)
    assert [o["seed"] for o in outs] == [100, 101, 102, 103]
    assert len({o["text"] for o in outs}) > 1
    again = m.samples(PROMPT, num=4, length=60, temperature=1.0, seed=100)
    assert again == outs
    assert m.generate(PROMPT, 60, temperature=1.0, seed=102) == outs[2]["text"]


def test_beam_search_scores_at_least_as_well_as_greedy(m):
    g = m.generate(PROMPT, 30, temperature=0)
    b = m.generate(PROMPT, 30, beam=4)

    def logprob(cont):
        ids = m.tokenizer.ids(PROMPT + cont)
        logits, _ = m.model(torch.from_numpy(ids.astype(np.int64))[None].to(m.device))
        lp = torch.log_softmax(logits[0, :-1].cpu(), -1)
        return lp[torch.arange(len(ids) - 1), torch.from_numpy(ids[1:].astype(np.int64))][len(PROMPT) - 1:].sum().item()

    assert logprob(b) >= logprob(g) - 1e-4


def test_next_chars_are_probabilities(m):
    top = m.next_chars(PROMPT, 5)
    assert len(top) == 5 and all(len(c) == 1 for c, _ in top)
    ps = [p for _, p in top]
    assert ps == sorted(ps, reverse=True) and 0 < sum(ps) <= 1.0001


def test_unbounded_length_stops_at_a_stop_string(m):
    t = m.generate(PROMPT, 0, temperature=1.0, seed=1, stop=["\n"])
    assert "\n" not in t


def test_session_caches_state(m):
    s = m.session("Shall I compare thee")
    p = s.propose(30, seed=1)
    # proposing does not change the story, and equals generating from the whole story
    assert s.story == "Shall I compare thee"
    assert m.generate("Shall I compare thee", 30, seed=1) == p
    s.add(p)
    assert s.story == "Shall I compare thee" + p
    words = s.next_words(3)
    assert 1 <= len(words) <= 3 and all(" " not in w for w, _ in words)


@pytest.mark.parametrize("text, stops, pieces, out", [
    ("hello world", ["wor"], list("hello world"), "hello "),
    ("abcabc", ["ca"], ["ab", "cab", "c"], "ab"),
    ("no stop here", ["xyz"], ["no st", "op here"], "no stop here"),
])
def test_stops_cut_before_the_stop_string(text, stops, pieces, out):
    s = Stops(stops)
    got = "".join(s.push(p) for p in pieces)
    if not s.done:
        got += s.flush()
    assert got == out


def test_beam_search_respects_stop_and_ban(m):
    t = m.generate(PROMPT, 60, beam=3, stop=["e"], ban="a")
    assert "e" not in t and "a" not in t
    assert len(t) <= 60


# -- every level -------------------------------------------------------------
@pytest.fixture(scope="module", params=["word", "bpe"])
def level_run(request, tmp_path_factory, sonnets):
    d = tmp_path_factory.mktemp(request.param)
    (d / "s.txt").write_text(sonnets)
    extra = {"vocab_size": 300} if request.param == "bpe" else {"min_count": 2}
    run = storyloom.train([str(d / "s.txt")], out=d / "run", steps=40, level=request.param, tie=True, progress=False,
                          **{**TINY, "lr": 1e-2}, **extra)
    return storyloom.load(run)


def test_generation_round_trips_at_every_level(level_run):
    m = level_run
    assert m.config.data.level in ("word", "bpe") and m.config.model.tie
    text = m.generate(PROMPT, 30, seed=3)
    assert text == m.generate(PROMPT, 30, seed=3) and text
    pieces = list(m.stream(PROMPT, 30, seed=3))
    assert "".join(pieces) == text
    if m.config.data.level == "word":  # each piece is one token of the vocabulary, spelled exactly; never <unk>
        assert len(pieces) == 30 and all(p in m.tokenizer.index and p != "<unk>" for p in pieces)
    else:
        assert m.tokenizer.decode(m.tokenizer.encode(text)) == text
    assert m.generate(PROMPT, 20, temperature=0) == m.generate(PROMPT, 20, beam=1)
    cut = m.generate(PROMPT, 60, temperature=0, stop=" ")
    assert " " not in cut
    assert all(" " not in s["text"] for s in m.samples(PROMPT, 3, 20, seed=1, ban=" "))


def test_scores_are_comparable_bpc_at_every_level(level_run, sonnets):
    r = level_run.score(sonnets[-3000:])
    assert r["chars"] > 2900 and r["tokens"] < r["chars"]
    assert 0 < r["bpc"] < 12 and r["token_perplexity"] > 1


def test_unknown_prompt_words(level_run):
    m = level_run
    if m.config.data.level == "word":
        with pytest.raises(storyloom.UserError, match="word\\(s\\) never seen in training: 'Zyzzyva'"):
            m.generate("Zyzzyva said", 5)
        assert m.generate("Zyzzyva said", 5, unknown="replace", seed=1)
    else:
        assert m.generate("Zyzzyva said \U0001f600", 5, seed=1)  # bytes: nothing is unknown
    words = m.session(PROMPT).next_words(3)
    assert len(words) == 3 and all(isinstance(w, str) and 0 < p <= 1 for w, p in words)


def test_int8_writing_reads_the_prompt_in_int8_and_steps_close_to_fp32(m):
    fast = storyloom.load(m.run.path, device="cpu", decode_precision="int8")  # int8 is a CPU path
    assert fast.decoder.decode == "int8" and fast.decoder.precision == "int8"
    assert m.decoder.precision == "fp32"
    ids = m.tokenizer.ids(PROMPT)
    want, s1 = m.decoder.read(ids)
    got, s2 = fast.decoder.read(ids)
    assert s2[0].dtype == torch.float32 and 0 < (got - want).abs().max() < 0.1  # int8 reading
    nxt = torch.tensor([int(ids[0])])
    (w, _), (g, _) = m.decoder.step(nxt, s1), fast.decoder.step(nxt, s2)
    assert w.dtype == g.dtype == torch.float32 and 0 < (g - w).abs().max() < 0.2
    assert len(fast.generate(PROMPT, 30, seed=1)) == 30
