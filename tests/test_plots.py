import matplotlib.image as mpimg
import numpy as np
import pytest

from storyloom import plots

BLUE, ORANGE = np.array([0x1F, 0x77, 0xB4]) / 255, np.array([0xFF, 0x7F, 0x0E]) / 255  # matplotlib's first two colours


def png(path) -> np.ndarray:
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    return img[..., :3]


def share_of(img: np.ndarray, colour: np.ndarray) -> float:
    """The share of pixels within a little of `colour`."""
    return float((np.abs(img - colour).max(-1) < 0.06).mean())


def test_run_curves_draws_both_panels_with_one_colour_per_run(tmp_path):
    rows_a = [{"step": s, "elapsed_s": s * 6.0, "train_bpc": 4 - s / 50} for s in range(1, 100)]
    rows_a += [{"step": s, "elapsed_s": s * 6.0, "val_bpc": 4 - s / 60} for s in range(10, 100, 10)]
    rows_b = [{**r, **({"train_bpc": r["train_bpc"] + 0.5} if "train_bpc" in r else {"val_bpc": r["val_bpc"] + 0.5})} for r in rows_a]
    plots.run_curves([("a", rows_a), ("b", rows_b)], tmp_path / "c.png")
    img = png(tmp_path / "c.png")
    h, w, _ = img.shape
    assert (h, w) == (462, 1210)  # figsize 11 x 4.2 inches at 110 dpi
    left, right = img[:, : w // 2], img[:, w // 2 :]
    for panel in (left, right):  # each run's lines in each panel
        assert share_of(panel, BLUE) > 0.001 and share_of(panel, ORANGE) > 0.001


def test_compare_curves_one_line_per_result(tmp_path):
    results = [{"spec": "default", "val_bpc": 2.0, "curve": [(60, 2.5), (120, 2.2), (180, 2.0)]},
               {"spec": "bpe", "val_bpc": 2.1, "curve": []}]  # a run without evaluations still gets its legend entry
    plots.compare_curves(results, tmp_path / "c.png")
    img = png(tmp_path / "c.png")
    assert img.shape[:2] == (540, 840)  # 7 x 4.5 inches at 120 dpi
    assert share_of(img, BLUE) > 0.001


@pytest.mark.parametrize("draw", ["accuracy_by_distance", "gradient_norms", "training_runs"])
def test_the_experiment_figures_are_drawn(tmp_path, draw):
    out = tmp_path / "f.png"
    if draw == "accuracy_by_distance":
        plots.accuracy_by_distance({"lstm": [(2, 1.0), (10, 0.5)], "rnn": [(2, 0.9), (10, 0.2)]}, 1 / 8, out)
    elif draw == "gradient_norms":
        plots.gradient_norms({"rnn": [1.0, 0.1, 0.01], "lstm": [1.0, 0.5, 0.3]}, out)
    else:
        plots.training_runs({"clip": [3.0, 2.0, 1.5], "no clip": [3.0, 8.0, 13.0]}, "loss", "exploding", out)
    img = png(out)
    assert share_of(img, BLUE) > 0.0005 and share_of(img, ORANGE) > 0.0005
