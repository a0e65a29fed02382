"""The package: importing it loads no torch, and each name of the API loads with its module on first use."""

import os
import subprocess
import sys
import types

import pytest

import storyloom


def run_fresh(script: str) -> str:
    """stdout of `script` in a new Python: what a first import does cannot be seen in this one, where it is done."""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_torch_loads_only_when_a_name_needs_it_and_train_compare_novelty_stay_functions():
    # One new Python (a torch import each): the light names first; then the modules train.py, compare.py and
    # novelty.py load before anything asks for the names, which must still be the functions.
    out = run_fresh("import sys, types, storyloom\n"
                    "assert {'train', 'load', 'prepare', 'Writer', 'compare', 'UserError'} <= set(dir(storyloom))\n"
                    "print('torch' in sys.modules, end=' ')\n"
                    "storyloom.prepare, storyloom.clean_sources, storyloom.ModelConfig, storyloom.UserError\n"
                    "print('torch' in sys.modules, end=' ')\n"
                    "from storyloom.train import Trainer\n"
                    "import storyloom.compare, storyloom.novelty, storyloom.api\n"
                    "print('torch' in sys.modules, storyloom.train is storyloom.api.train, storyloom.novelty is storyloom.api.novelty,\n"
                    "      storyloom.compare is sys.modules['storyloom.compare'].compare, storyloom.compare.compare is storyloom.compare,\n"
                    "      isinstance(sys.modules['storyloom.train'], types.ModuleType))")
    assert out == "False False True True True True True True"


def test_every_name_in_all_is_the_api_and_others_are_not_invented():
    for name in storyloom.__all__:
        assert not isinstance(getattr(storyloom, name), types.ModuleType), name
    assert storyloom.Writer.__module__ == "storyloom.writer" and storyloom.prepare.__module__ == "storyloom.prepared"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        storyloom.nope  # noqa: B018
    from storyloom import runtime  # a submodule still imports by name

    assert isinstance(runtime, types.ModuleType)
