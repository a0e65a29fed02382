import dataclasses

import pytest

import storyloom
from storyloom import cli, presets
from storyloom.config import (RESUMABLE, DataConfig, GenerateConfig, LoadConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig,
                              flag, settings)
from storyloom.errors import UserError

RUN = (ModelConfig, DataConfig, TrainConfig)


def default(f):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def other_value(f):
    """A valid value for the setting that is not its default."""
    d, choices = default(f), f.metadata["choices"]
    if choices:
        return next(c for c in choices if c != d and c != "cuda")
    if isinstance(d, bool):
        return not d
    if isinstance(d, tuple):
        return ("a.txt",)
    if isinstance(d, int):
        return d + 1
    if isinstance(d, float):
        return d + 0.5 if f.name not in ("top_p", "beta1") else d / 2
    if d is None:
        return 3
    return "latin-1" if f.name == "encoding" else d + "xyz"


def argv(f, v) -> list[str]:
    if isinstance(v, bool):
        return [flag(f.name) if v else "--no-" + f.name.replace("_", "-")]
    return [flag(f.name), ",".join(v) if isinstance(v, tuple) else str(v)]


def parse(*args):
    return cli.build_parser().parse_args([str(a) for a in args])


@pytest.mark.parametrize("f", [f for cls in RUN for f in settings(cls)], ids=lambda f: f.name)
def test_every_run_setting_is_a_train_flag_that_arrives(f):
    a = parse("train", *argv(f, other_value(f)))
    got = cli.given(a, *RUN)
    assert got == {f.name: other_value(f)}  # parsed, and nothing else set
    cfg = presets.build("default", got)
    owner = next(getattr(cfg, part) for part, cls in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig))
                 if f in settings(cls))
    assert getattr(owner, f.name) == other_value(f)


def test_train_flags_not_given_leave_the_defaults_to_the_preset():
    a = parse("train")
    assert cli.given(a, *RUN) == {}
    assert presets.build("default", {}) == RunConfig()  # the dataclasses' defaults are the default preset
    helps = cli.build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for cls in RUN:
        for f in settings(cls):
            assert flag(f.name) in helps


@pytest.mark.parametrize("command, classes, left_out", [
    ("prepare", (DataConfig,), ()),
    ("compare", RUN, ("steps", "epochs", "minutes")),
])
def test_prepare_and_compare_take_the_settings_they_pass_on(command, classes, left_out):
    extra = {"prepare": ["src", "--out", "o"], "compare": ["default", "--out", "o"]}[command]
    for cls in classes:
        for f in settings(cls):
            if f.name in left_out:
                continue
            a = parse(command, *extra, *argv(f, other_value(f)))
            assert cli.given(a, *classes, skip=left_out) == {f.name: other_value(f)}


@pytest.mark.parametrize("command, classes", [("generate", (GenerateConfig, SampleConfig, LoadConfig)),
                                              ("write", (SampleConfig, LoadConfig)), ("eval", (LoadConfig,))])
def test_writing_flags_default_to_their_config_and_arrive(command, classes):
    extra = ["RUN", "t.txt"] if command == "eval" else ["RUN"]
    a = parse(command, *extra)
    for cls in classes:
        assert cli.config(a, cls) == cls()
        for f in settings(cls):
            v = other_value(f) if f.name != "stop" else ("THE END",)
            args = [flag("stop"), "THE END"] if f.name == "stop" else argv(f, v)
            assert getattr(cli.config(parse(command, *extra, *args), cls), f.name) == v


def test_resume_may_change_only_the_settings_marked_resume(tmp_path, sonnets):
    assert RESUMABLE == ("steps", "epochs", "minutes", "checkpoint_every", "checkpoint_minutes", "keep", "dist_timeout")
    (tmp_path / "s.txt").write_text(sonnets)
    run = storyloom.train([str(tmp_path / "s.txt")], out=tmp_path / "r", steps=4, hidden=16, embed=8, seq_len=8, batch_size=4,
                          evals=1, threads=1, progress=False)
    with pytest.raises(UserError, match=r"drop --hidden, --lr \(only --steps, --epochs, --minutes, --checkpoint-every, "
                                        r"--checkpoint-minutes, --keep, --dist-timeout may change\)"):
        storyloom.train(resume=run, hidden=32, lr=0.01, progress=False)
    storyloom.train(resume=run, steps=6, keep=1, progress=False)
    assert storyloom.status(run)["step"] == 6 and len(list((run / "checkpoints").iterdir())) == 1


@pytest.mark.parametrize("cls, kw, message", [
    (GenerateConfig, {"length": -1}, "--length must be between 0 and 1,000,000"),
    (GenerateConfig, {"beam": 300}, "--beam must be between 1 and 256"),
    (GenerateConfig, {"num": 0}, "--num must be between 1 and 4,096"),
    (GenerateConfig, {"length": 0, "num": 2}, "--length 0 .unbounded. works with one sample"),
    (LoadConfig, {"which": "newest"}, "--which must be one of best, last"),
    (LoadConfig, {"device": "tpu"}, "--device must be one of auto, cpu, cuda"),
    (SampleConfig, {"penalty_window": 0}, "--penalty-window must be >= 1"),
    (TrainConfig, {"device": "gpu"}, "--device must be one of auto, cpu, cuda"),
    (DataConfig, {"vocab_size": 100}, "--vocab-size must be between 257"),
    (TrainConfig, {"beta1": 1.0}, r"--beta1 must be in \[0, 1\), got 1.0"),
    (TrainConfig, {"beta1": -0.1}, r"--beta1 must be in \[0, 1\), got -0.1"),
])
def test_configs_refuse_what_the_cli_refuses(cls, kw, message):
    with pytest.raises(UserError, match=message):
        cls(**kw)


def test_an_unknown_setting_names_the_ones_there_are():
    with pytest.raises(UserError, match=r"unknown setting temprature \(the settings here: ban, penalty_window"):
        SampleConfig.of(temprature=0.5)
    assert SampleConfig.of(SampleConfig(top_k=3), temperature=0) == SampleConfig(temperature=0, top_k=3)


def test_the_api_refuses_what_the_cli_refuses(tmp_path):
    with pytest.raises(UserError, match="--workers must be >= 0"):
        storyloom.prepare(["shakespeare"], tmp_path / "p", workers=-1)
    from storyloom.experiments import run_experiment
    from storyloom.inspection import inspect_text

    with pytest.raises(UserError, match="--steps must be a positive integer"):
        run_experiment("gradients", tmp_path / "x", steps=0)
    with pytest.raises(UserError, match="--chars must be at least 3"):
        inspect_text(tmp_path, ["shakespeare"], tmp_path / "p.html", chars=2)
    assert list(tmp_path.iterdir()) == []


def test_a_config_saved_before_a_setting_existed_reports_the_value_it_trained_with():
    saved = RunConfig().to_dict()
    assert saved["train"].pop("beta1") == 0.6  # today's default
    assert RunConfig.from_dict(saved).train.beta1 == 0.9  # what AdamW used before --beta1 was a setting
    assert RunConfig.from_dict(RunConfig(train=TrainConfig(beta1=0.3)).to_dict()).train.beta1 == 0.3
