import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from storyloom import checkpoint
from storyloom.checkpoint import Position, TrainerState, Window
from storyloom.errors import UserError


def state() -> TrainerState:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    pos = Position(step=7, epoch=1, batch=2, elapsed=1.5, history=[[5, 1.0, 3.2]], best_bpc=3.2, skipped=1)
    return TrainerState(pos, Window(loss=2.5, steps=3, tokens=96, seconds=0.25), model.state_dict(), opt.state_dict(),
                        (torch.randn(1, 2, 3), torch.randn(1, 2, 3)), checkpoint.capture_rng())


def test_pack_and_unpack_round_trip_everything():
    st = state()
    files = checkpoint.pack(st)
    assert set(files) == set(checkpoint.FILES)
    assert json.loads(files["trainer.json"])["format"] == 1
    back = checkpoint.unpack(files, Path("ck"))
    assert back.position == st.position and back.window == st.window
    assert all(torch.equal(back.model[k], v) for k, v in st.model.items())
    assert all(torch.equal(a, b) for a, b in zip(back.carried, st.carried))
    assert back.optimizer["param_groups"] == json.loads(json.dumps(st.optimizer["param_groups"]))
    for i, s in st.optimizer["state"].items():
        assert all(torch.equal(back.optimizer["state"][i][k], v) for k, v in s.items())


def test_the_weights_moving_average_round_trips_and_is_absent_when_not_kept():
    st = state()
    assert checkpoint.unpack(checkpoint.pack(st), Path("ck")).average is None
    model = torch.nn.Linear(4, 3)
    st.average = torch.optim.swa_utils.AveragedModel(model).state_dict()
    back = checkpoint.unpack(checkpoint.pack(st), Path("ck")).average
    assert set(back) == {"n_averaged", "module.weight", "module.bias"}
    assert all(torch.equal(back[k], v) for k, v in st.average.items())


def test_a_data_parallel_checkpoint_keeps_every_ranks_generators():
    st = state()
    st.world, st.ranks = 3, {1: {"torch": torch.get_rng_state()}, 2: {"torch": torch.zeros(5056, dtype=torch.uint8)}}
    back = checkpoint.unpack(checkpoint.pack(st), Path("ck"))
    assert back.world == 3 and set(back.ranks) == {1, 2}
    assert all(torch.equal(back.ranks[r]["torch"], st.ranks[r]["torch"]) for r in (1, 2))
    assert checkpoint.unpack(checkpoint.pack(state()), Path("ck")).world == 1  # one process: nothing more


def test_restored_random_generators_draw_the_same_numbers():
    tensors, meta = checkpoint.capture_rng()
    meta = json.loads(json.dumps(meta))  # as trainer.json keeps it
    first = (torch.rand(3), np.random.rand(3), random.random())
    checkpoint.restore_rng(tensors, meta)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_a_format_0_checkpoint_kept_its_window_in_the_position():
    files = checkpoint.pack(state())
    meta = json.loads(files["trainer.json"])
    meta.pop("format"), meta.pop("window")
    meta["position"].update(acc_loss=2.5, acc_steps=3, acc_tokens=96, acc_time=0.25)
    files["trainer.json"] = json.dumps(meta).encode()
    back = checkpoint.unpack(files, Path("ck"))
    assert back.window == Window(loss=2.5, steps=3, tokens=96, seconds=0.25) and back.position.step == 7


def test_an_unknown_field_is_one_clear_error():
    files = checkpoint.pack(state())
    meta = json.loads(files["trainer.json"])
    meta["position"]["steps_per_fortnight"] = 3
    files["trainer.json"] = json.dumps(meta).encode()
    with pytest.raises(UserError, match=r"trainer.json: not a storyloom trainer state \(unknown \['steps_per_fortnight'\]\)"):
        checkpoint.unpack(files, Path("ck"))
