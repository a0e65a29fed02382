"""storyloom: train a recurrent language model on a book and write in its style.

Importing storyloom does not import torch, which takes 2-3 s: each function and class of the API loads with its
module on first use, so `storyloom prepare`, `storyloom --help` and a script that only calls `storyloom.prepare`
start in a fraction of a second.
"""

import importlib
import sys
import types

from .config import DataConfig, GenerateConfig, LoadConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig
from .errors import UserError

# Where each name of the API is defined: it loads with its module, on first use.
HOMES = {"prepare": "prepared", "clean_sources": "corpus", "load": "api", "train": "api", "status": "api",
         "metrics": "api", "validation_text": "api", "novelty": "api", "Writer": "writer", "Session": "writer",
         "compare": "compare"}

__all__ = [*HOMES, "UserError", "ModelConfig", "DataConfig", "TrainConfig", "RunConfig", "SampleConfig",
           "GenerateConfig", "LoadConfig"]
__version__ = "0.1.0"


class Package(types.ModuleType):
    """`storyloom.train`, `storyloom.compare` and `storyloom.novelty` are functions named like modules. Importing a
    submodule sets its name on the package, so without this guard whichever loaded last would win; the
    functions keep the names (the modules stay in sys.modules, as `from storyloom.train import Trainer` needs)."""

    def __setattr__(self, name: str, value) -> None:
        if name in HOMES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)

    def __getattr__(self, name: str):
        if name not in HOMES:
            raise AttributeError(f"module 'storyloom' has no attribute {name!r}")
        value = getattr(importlib.import_module("." + HOMES[name], __name__), name)  # `from . import` would ask again
        if name == "compare":  # code written when only `storyloom.compare.compare(...)` reached it still works
            value.compare = value
        super().__setattr__(name, value)
        return value

    def __dir__(self) -> list[str]:  # tab completion lists the API before any of it has loaded
        return sorted(set(super().__dir__()) | set(HOMES))


sys.modules[__name__].__class__ = Package
