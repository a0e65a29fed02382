import dataclasses

import pytest

from storyloom import presets
from storyloom.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from storyloom.errors import UserError


def test_the_default_preset_is_the_configs_defaults():
    assert presets.build("default") == RunConfig()
    assert presets.PRESETS["default"].model == {} and presets.PRESETS["default"].train == {}


@pytest.mark.parametrize("name", presets.names())
def test_every_preset_builds_and_validates(name):
    cfg = presets.build(name)
    p = presets.PRESETS[name]
    assert cfg.preset == name
    for part, values in (("model", p.model), ("data", p.data), ("train", p.train)):
        for k, v in values.items():
            assert getattr(getattr(cfg, part), k) == v, f"{name}: {part}.{k}"


@pytest.mark.parametrize("name, model, data, train", [
    ("story-writer", dict(input="onehot", hidden=256, layers=2, dropout=0.2), {}, dict(seq_len=40, batch_size=64)),  # seed 000
    ("shakespeare", dict(input="onehot", hidden=128, layers=1), dict(val_fraction=0.2), dict(seq_len=40, batch_size=64)),
    ("mysterious-island", dict(input="embedding", embed=256, hidden=512, layers=1), {}, dict(seq_len=40, batch_size=64)),
    ("heart-of-darkness", dict(input="scalar", hidden=256, dropout=0.2), dict(lowercase=True), dict(seq_len=100, batch_size=128)),
])
def test_the_seed_presets_are_their_seeds(name, model, data, train):
    cfg = presets.build(name)
    for part, values in (("model", model), ("data", data), ("train", train)):
        assert {k: getattr(getattr(cfg, part), k) for k in values} == values


def test_overrides_win_and_go_to_their_config():
    cfg = presets.build("shakespeare", {"hidden": 64, "val_files": ("a.txt",), "lr": 0.01, "layers": None})
    assert cfg.model.hidden == 64 and cfg.data.val_files == ("a.txt",) and cfg.train.lr == 0.01
    assert cfg.model.layers == 1  # None: not given, the preset's value stays
    assert cfg.model.input == "onehot"


def test_bad_presets_and_overrides_name_the_flag():
    with pytest.raises(UserError, match="--preset 'nope' is not a preset; choose one of: default, story-writer"):
        presets.build("nope")
    with pytest.raises(UserError, match="--hidden must be a positive integer"):
        presets.build("default", {"hidden": 0})
    with pytest.raises(UserError, match="unknown setting hiden"):
        presets.build("default", {"hiden": 3})


def test_the_flag_lists_are_the_config_fields():
    assert set(presets.MODEL_FLAGS) == {f.name for f in dataclasses.fields(ModelConfig)} - {"vocab_size"}
    assert set(presets.DATA_FLAGS) == {f.name for f in dataclasses.fields(DataConfig)}
    assert not set(presets.MODEL_FLAGS) & {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize("preset, given, chars, fine_tune, dropout, epochs", [
    ("default", set(), 100_000, False, presets.SMALL_TEXT_DROPOUT, presets.SMALL_TEXT_PASSES),  # one book: both adapt
    ("default", set(), presets.SMALL_TEXT, False, 0.0, 0),  # a corpus: the defaults stay
    ("default", {"dropout"}, 100_000, False, 0.0, presets.SMALL_TEXT_PASSES),  # a flag wins (here the default's 0)
    ("default", {"epochs"}, 100_000, False, presets.SMALL_TEXT_DROPOUT, 3),
    ("default", {"steps"}, 100_000, False, presets.SMALL_TEXT_DROPOUT, 0),  # a step limit is a choice of length too
    ("default", set(), 100_000, True, 0.0, presets.SMALL_TEXT_PASSES),  # fine-tuning keeps its base's dropout
    ("mysterious-island", set(), 100_000, False, 0.0, presets.SMALL_TEXT_PASSES),  # a seed preset chose its dropout
    ("story-writer", set(), 100_000, False, 0.2, presets.SMALL_TEXT_PASSES),
])
def test_small_texts_adapt_what_no_flag_nor_preset_chose(preset, given, chars, fine_tune, dropout, epochs):
    flags = {"dropout": 0.0, "epochs": 3, "steps": 7}
    cfg = presets.build(preset, {k: flags[k] for k in given})
    note = presets.small_text(cfg, chars, given, fine_tune)
    assert cfg.model.dropout == dropout and cfg.train.epochs == epochs
    if chars >= presets.SMALL_TEXT:
        assert note is None
    else:
        assert f"{chars:,} training characters" in note
        assert ("--dropout 0 turns it off" in note) == (dropout == presets.SMALL_TEXT_DROPOUT)
        assert ("passes" in note) == (epochs == presets.SMALL_TEXT_PASSES)


@pytest.mark.parametrize("preset, flags, chars_per_s, told", [
    ("default", {"minutes": 10}, 4_700, True),  # the measured case: 2 AMD Zen 3 cores, 10 minutes
    ("default", {"minutes": 3}, 4_700, True),  # the demo's budget
    ("default", {"minutes": 10}, presets.SLOW_CHARS_PER_S, False),  # as fast as the threshold: not told
    ("default", {"minutes": 30}, 4_700, False),  # longer than measured
    ("default", {"minutes": 10, "steps": 500}, 4_700, False),  # its length chosen in steps
    ("default", {"minutes": 10, "epochs": 2}, 4_700, False),
    ("default", {"minutes": 10, "hidden": 768}, 4_700, False),  # the width chosen
    ("default", {"minutes": 10, "layers": 2}, 4_700, False),  # another model
    ("default", {"minutes": 10, "level": "bpe"}, 4_700, False),
    ("default", {"minutes": 10, "lr": 0.004, "batch_size": 64}, 4_700, True),  # training settings leave the model
    ("default", {"minutes": 10}, 0.0, False),  # nothing trained
    ("mysterious-island", {"minutes": 10}, 4_700, False),  # a seed preset chose its width
])
def test_a_short_slow_run_of_the_default_is_told_of_the_narrower_width(preset, flags, chars_per_s, told):
    cfg = presets.build(preset, flags)
    note = presets.narrower(cfg, set(flags), chars_per_s)
    assert (note is not None) == told
    if told:
        assert f"--hidden {presets.NARROW_HIDDEN}" in note and f"{chars_per_s:,.0f} characters a second" in note
