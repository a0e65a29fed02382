"""storyloom: train a recurrent language model on a book and write in its style."""

from . import compare
from .api import Session, Writer, clean_sources, load, metrics, novelty, prepare, status, train, validation_text
from .config import DataConfig, ModelConfig, RunConfig, TrainConfig
from .errors import UserError

__all__ = ["load", "train", "prepare", "status", "metrics", "validation_text", "novelty", "compare", "clean_sources", "Writer", "Session", "UserError", "ModelConfig", "DataConfig", "TrainConfig", "RunConfig"]
__version__ = "0.1.0"
