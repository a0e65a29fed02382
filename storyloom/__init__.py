"""storyloom: train a recurrent language model on a book and write in its style."""

from .api import Writer, clean_sources, load, train
from .config import DataConfig, ModelConfig, RunConfig, TrainConfig
from .errors import UserError

__all__ = ["load", "train", "clean_sources", "Writer", "UserError", "ModelConfig", "DataConfig", "TrainConfig", "RunConfig"]
__version__ = "0.1.0"
