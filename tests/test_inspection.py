import html
import json
import re
from html.parser import HTMLParser

import pytest

import storyloom
from storyloom.cli import main
from storyloom.inspection import correlations, features

from conftest import TINY

TEXT = 'FIRST CITIZEN.\nWe are accounted poor citizens, "the patricians good".\n[Exit.]\n\nBRUTUS.\nAway (with him)!\n'


@pytest.fixture(scope="module", params=["lstm", "gru"])
def run(request, tmp_path_factory, sonnets):
    d = tmp_path_factory.mktemp("insp")
    (d / "s.txt").write_text(TEXT * 3 + sonnets)
    return storyloom.train([str(d / "s.txt")], out=d / "r", steps=10, cell=request.param, progress=False, **TINY)


class Strict(HTMLParser):
    """Fails on a tag closed that was never opened, or left open."""

    VOID = {"meta", "br", "input", "img", "hr", "link"}

    def __init__(self):
        super().__init__()
        self.stack = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
        self.stack.pop()


def test_features_of_a_play():
    text = TEXT
    f = features(text, list(range(len(text))))
    at = lambda ch, name: f[name][text.index(ch)]  # noqa: E731
    assert at("p", "inside quotes") == 0 and at("t", "inside quotes") == 0
    assert f["inside quotes"][text.index('"the') + 1] == 1 and f["inside quotes"][text.index('".') + 1] == 0
    assert f["bracket depth"][text.index("Exit")] == 1 and f["bracket depth"][text.index("with")] == 1
    assert f["speaker heading"][text.index("FIRST")] == 1 and f["speaker heading"][text.index("We")] == 0
    assert f["position in line"][text.index("We") + 3] == 3


def test_correlations_find_a_unit_that_copies_a_feature():
    import numpy as np

    feat = {"inside quotes": np.array([0, 0, 1, 1, 0, 1.0])}
    acts = np.random.default_rng(0).normal(size=(6, 5))
    acts[:, 3] = feat["inside quotes"] * 2 - 1
    top = correlations(acts, feat)[0]
    assert top["unit"] == 3 and top["r"] == pytest.approx(1.0)


def test_inspect_writes_a_valid_self_contained_page(run, tmp_path, capsys):
    (tmp_path / "t.txt").write_text(TEXT)
    out = tmp_path / "page.html"
    assert main(["inspect", str(run), str(tmp_path / "t.txt"), "--out", str(out), "--unit", "5"]) == 0
    page = out.read_text()
    p = Strict()
    p.feed(page)
    p.close()
    assert p.stack == []
    assert "http://" not in page and "https://" not in page and "src=" not in page  # nothing fetched
    assert html.escape(TEXT) in page  # the text itself, for readers without scripts
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S).group(1))
    assert "".join(data["tokens"]) == TEXT and data["units"][0] == 5
    assert len(data["acts"][0]) == len(data["tokens"]) == len(data["p"]) == len(data["top5"])
    assert all(len(t) == 5 for t in data["top5"][1:]) and data["p"][0] is None
    assert ("forget &lt; 0.1" in page) == (storyloom.load(run).config.model.cell == "lstm")


def test_plot_writes_a_png(run, tmp_path):
    out = tmp_path / "curves.png"
    assert main(["plot", str(run), str(run), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg

    img = mpimg.imread(out)[..., :3]
    assert img.shape[:2] == (462, 1210)  # the two panels: bpc against steps and against minutes
    orange = (abs(img - [1.0, 0x7F / 255, 0x0E / 255]).max(-1) < 0.06).sum()
    assert orange > 50  # the second run's validation points (drawn over the first's: it is the same run) are there
