"""storyloom: train a recurrent language model on a book and write in its style."""

from .api import Session, Writer, clean_sources, load, metrics, novelty, prepare, status, train, validation_text
from .compare import compare
from .config import DataConfig, GenerateConfig, LoadConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig
from .errors import UserError

# `storyloom.compare(...)` is the function; code written when it was only reachable as the module's
# `storyloom.compare.compare(...)` keeps working.
compare.compare = compare

__all__ = ["load", "train", "prepare", "status", "metrics", "validation_text", "novelty", "compare", "clean_sources", "Writer",
           "Session", "UserError", "ModelConfig", "DataConfig", "TrainConfig", "RunConfig", "SampleConfig", "GenerateConfig",
           "LoadConfig"]
__version__ = "0.1.0"
