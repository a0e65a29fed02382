import random

import numpy as np
import pytest

import storyloom
from storyloom.novelty import suffix_array

from conftest import TINY


@pytest.mark.parametrize("s", ["banana", "aaaaaaa", "abcabcabc", "mississippi", "a", "zyxwvu"])
def test_suffix_array_sorts_suffixes(s):
    ids = np.frombuffer(s.encode(), dtype=np.uint8)
    assert suffix_array(ids).tolist() == sorted(range(len(s)), key=lambda i: s[i:])


@pytest.fixture(scope="module")
def run(tmp_path_factory, sonnets):
    d = tmp_path_factory.mktemp("nov")
    (d / "s.txt").write_text(sonnets)
    return storyloom.train([str(d / "s.txt")], out=d / "run", steps=5, progress=False, val_fraction=0.1, **TINY)


def test_a_pasted_excerpt_is_found_as_copied(run, sonnets):
    rng = random.Random(0)
    noise = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(400))
    excerpt = sonnets[5000:5300]
    r = storyloom.novelty(run, noise[:200] + excerpt + noise[200:])
    assert r["longest_copied"] >= 300
    assert excerpt in r["copied_text"]
    assert r["copied_at"]["work"] == "s.txt" and r["copied_at"]["text_offset"] <= 200
    # 700 characters hold 651 50-grams, of which the 251 inside the excerpt are copied
    assert r["novel_50grams"] == pytest.approx(400 / 651, abs=0.02)


def test_random_text_is_novel(run):
    rng = random.Random(1)
    noise = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(1000))
    r = storyloom.novelty(run, noise)
    assert r["longest_copied"] < 10
    assert r["novel_10grams"] == 1.0 and r["novel_20grams"] == 1.0 and r["novel_50grams"] == 1.0
    assert (run / "novelty.safetensors").exists()
