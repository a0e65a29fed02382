"""What a training checkpoint holds: the one owner of its contents and their names.

A checkpoint is three files (runs.py writes them as one directory, renamed
into place, with a manifest):

    model.safetensors    the weights (the model's own state_dict names)
    trainer.safetensors  opt.<i>.<name>   optimizer state of parameter i (AdamW's moments, step)
                         state.<i>        the carried state's tensors, the batch on dim 1
                         avg.<name>       the weights' moving average (--average): AveragedModel's state_dict
                         rng.torch, rng.numpy, rng.cuda.<device>, rng.resets   random generators
                         rank.<r>.rng.torch, rank.<r>.rng.cuda   those of data-parallel rank r >= 1
    trainer.json         {"format": N, "position": Position, "window": Window,
                          "param_groups": the optimizer's settings, "rng": numpy's and Python's generator state,
                          "world": the ranks that trained (1 in one process)}

A data-parallel run's checkpoint is the same as one process's: the carried
state is the global batch's (rank r's streams are its r-th share of dim 1),
and rank 0's generators are the ones above.

`TrainerState` is that content in memory; `pack` and `unpack` turn it into
the three files' contents and back. Checkpoints written before formats were
numbered (format 0) kept the logging window inside the position; they still unpack.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import UserError
from .files import dumps, parse_json, parse_tensors, tensor_bytes

FILES = ("model.safetensors", "trainer.safetensors", "trainer.json")


@dataclass
class Position:
    """Where training is: everything about progress a resumed run needs."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # next batch index within the epoch
    elapsed: float = 0.0  # wall-clock seconds spent so far, across resumes
    evals_done: int = 0  # of --evals' evenly spaced points, those passed (evaluated, or dropped for time)
    eval_s: float = 0.0  # of elapsed, the seconds spent evaluating
    best_bpc: float = float("inf")
    bad_evals: int = 0  # evaluations since the best one
    history: list = field(default_factory=list)  # (step, elapsed, val_bpc) per evaluation
    stopped: str = ""  # why the last session ended: "", "limit", "patience" or "interrupted"
    skipped: int = 0  # steps skipped for a non-finite loss or gradient, over the whole run
    bad_streak: int = 0  # non-finite steps in a row, now
    recoveries: int = 0  # times the last checkpoint was restored after bad_steps non-finite steps
    lr_scale: float = 1.0  # halved at each recovery


@dataclass
class Window:
    """What the next metrics row averages: the steps since the last row."""

    loss: float = 0.0  # summed training loss
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0  # spent inside steps


@dataclass
class TrainerState:
    position: Position
    window: Window
    model: dict[str, torch.Tensor]
    optimizer: dict  # torch's Optimizer.state_dict()
    carried: tuple[torch.Tensor, ...] | None  # the streams' state, carried into the next batch
    rng: tuple[dict[str, torch.Tensor], dict]  # as capture_rng gives it
    world: int = 1  # ranks that trained
    ranks: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # rank r >= 1: {"torch": ..., "cuda": ...}
    average: dict[str, torch.Tensor] | None = None  # the moving average's state_dict; None: the run keeps none


def capture_rng(cuda: list[int] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Every random stream training may touch: torch (and CUDA: the GPUs in `cuda`, all when None), numpy, python."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors = {"rng.torch": torch.get_rng_state(), "rng.numpy": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()) if cuda is None else cuda:
            tensors[f"rng.cuda.{i}"] = torch.cuda.get_rng_state(i)
    meta = {"numpy": [name, int(pos), int(has_gauss), float(gauss)], "python": random.getstate()}
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    name, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if torch.cuda.is_available():
        for k, v in tensors.items():
            if k.startswith("rng.cuda.") and int(k.rsplit(".", 1)[1]) < torch.cuda.device_count():
                torch.cuda.set_rng_state(v, int(k.rsplit(".", 1)[1]))


def pack(st: TrainerState) -> dict[str, bytes]:
    """The checkpoint's files: name -> bytes."""
    sd = st.optimizer
    tensors = {f"opt.{i}.{k}": v for i, s in sd["state"].items() for k, v in s.items()}
    tensors.update(st.rng[0])
    tensors.update({f"rank.{r}.rng.{k}": v for r, d in st.ranks.items() for k, v in d.items()})
    if st.carried is not None:
        tensors.update({f"state.{i}": s.float() for i, s in enumerate(st.carried)})
    if st.average is not None:
        tensors.update({f"avg.{k}": v for k, v in st.average.items()})
    meta = {"position": dataclasses.asdict(st.position), "window": dataclasses.asdict(st.window),
            "param_groups": sd["param_groups"], "rng": st.rng[1], "world": st.world}
    return {"model.safetensors": tensor_bytes(st.model), "trainer.safetensors": tensor_bytes(tensors),
            "trainer.json": dumps(meta)}


def _fields(cls, d: dict, where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    if not isinstance(d, dict) or set(d) - names:
        raise UserError(f"{where}: not a storyloom trainer state (unknown {sorted(set(d) - names) if isinstance(d, dict) else d!r}); "
                        "the run is damaged or from another program")
    return cls(**d)


def read_meta(path, data: bytes) -> tuple[Position, Window, dict]:
    """trainer.json: the position, the logging window, and the rest (param_groups, rng)."""
    meta = parse_json(path, data)
    pos = dict(meta.get("position", {})) if isinstance(meta, dict) else None
    if pos is None:
        raise UserError(f"{path}: not a storyloom trainer state; the run is damaged")
    old = {k: pos.pop(k) for k in ("acc_loss", "acc_steps", "acc_tokens", "acc_time") if k in pos}  # format 0
    window = meta.get("window") or {"loss": old.get("acc_loss", 0.0), "steps": old.get("acc_steps", 0),
                                    "tokens": old.get("acc_tokens", 0), "seconds": old.get("acc_time", 0.0)}
    return _fields(Position, pos, str(path)), _fields(Window, window, str(path)), meta


def unpack(files: dict[str, bytes], where) -> TrainerState:
    position, window, meta = read_meta(where / "trainer.json", files["trainer.json"])
    tensors = parse_tensors(where / "trainer.safetensors", files["trainer.safetensors"])
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = v
    carried = tuple(tensors[k] for k in sorted((k for k in tensors if k.startswith("state.")), key=lambda k: int(k.split(".")[1])))
    rng = ({k: v for k, v in tensors.items() if k.startswith("rng.")}, meta["rng"])
    ranks: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("rank."):
            _, r, _, k = key.split(".", 3)
            ranks.setdefault(int(r), {})[k] = v
    average = {k[4:]: v for k, v in tensors.items() if k.startswith("avg.")} or None
    return TrainerState(position, window, parse_tensors(where / "model.safetensors", files["model.safetensors"]),
                        {"state": state, "param_groups": meta["param_groups"]}, carried or None, rng,
                        int(meta.get("world", 1)), ranks, average)
