"""Embedding pictures: 2-D and 3-D scatters with class directions, t-SNE beyond, a GIF of the frames."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bench.embedding_plots import make_gif, plot_embeddings


def clustered(dim: int, classes: int, per_class: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), per_class)
    emb = 4 * weights[labels] + rng.normal(size=(len(labels), dim))
    return emb, labels, weights


@pytest.mark.parametrize("dim", [2, 3])
def test_low_dimensional_scatter_with_weight_directions_is_deterministic(tmp_path, dim):
    emb, labels, weights = clustered(dim, 10, 30)
    a = plot_embeddings(emb, labels, weights, tmp_path / "a.png", title=f"{dim}-d")
    b = plot_embeddings(emb, labels, weights, tmp_path / "b.png", title=f"{dim}-d")
    assert a.read_bytes() == b.read_bytes()  # same input, same picture
    with Image.open(a) as im:
        assert im.format == "PNG" and im.size[0] > 200
    # the weight directions change the picture
    c = plot_embeddings(emb, labels, None, tmp_path / "c.png", title=f"{dim}-d")
    assert c.read_bytes() != a.read_bytes()


def test_tsne_of_at_most_ten_identities_is_deterministic(tmp_path):
    emb, labels, _ = clustered(16, 12, 6)
    labels[labels == 11] = 0  # identity 0 is the most frequent; 10 and 11 fewer than the rest... ten shown
    a = plot_embeddings(emb, labels, None, tmp_path / "a.png", title="t-SNE")
    b = plot_embeddings(emb, labels, None, tmp_path / "b.png", title="t-SNE")
    assert a.read_bytes() == b.read_bytes()


def test_non_finite_embeddings_are_dropped_not_fatal(tmp_path):
    emb, labels, weights = clustered(2, 3, 10)
    emb[0] = np.nan
    assert plot_embeddings(emb, labels, weights, tmp_path / "nan.png").is_file()


@pytest.mark.parametrize("dim", [2, 3, 8])
def test_all_non_finite_embeddings_give_an_empty_picture(tmp_path, dim):
    # t-SNE (dim > 3) used to raise "need at least one array to concatenate", failing a trial at its last epoch
    emb = np.full((6, dim), np.nan)
    assert plot_embeddings(emb, np.arange(6) % 3, None, tmp_path / "nan.png").is_file()


def test_shape_errors(tmp_path):
    emb, labels, weights = clustered(2, 3, 4)
    with pytest.raises(ValueError, match=r"labels \(N,\)"):
        plot_embeddings(emb, labels[:-1], weights, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"class_weights must be \(C, 2\)"):
        plot_embeddings(emb, labels, np.zeros((3, 3)), tmp_path / "x.png")


def test_gif_gathers_the_frames_in_order(tmp_path):
    frames = []
    for epoch in range(3):
        emb, labels, weights = clustered(2, 4, 20, seed=epoch)
        frames.append(plot_embeddings(emb, labels, weights, tmp_path / f"e{epoch}.png", title=f"epoch {epoch}"))
    gif = make_gif(frames, tmp_path / "out" / "embeddings.gif", duration_ms=300)
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 3
        assert im.info["duration"] == 300 and im.info["loop"] == 0
    with pytest.raises(ValueError, match="at least one frame"):
        make_gif([], tmp_path / "empty.gif")


def drawn(monkeypatch, dim: int) -> tuple[dict, list]:
    """Records what the pictures draw: ``{label: scatter colour}`` and ``[(line end, colour)]``."""
    import matplotlib
    from matplotlib.axes import Axes

    scatters, lines = {}, []
    axes_class = Axes
    if dim == 3:
        from mpl_toolkits.mplot3d import Axes3D

        axes_class = Axes3D
    real_scatter, real_plot = axes_class.scatter, axes_class.plot

    def scatter(self, *args, **kwargs):
        scatters[int(kwargs["label"])] = matplotlib.colors.to_rgba(kwargs["color"])
        return real_scatter(self, *args, **kwargs)

    def plot(self, *args, **kwargs):
        lines.append((np.array([a[1] for a in args]), matplotlib.colors.to_rgba(kwargs["color"])))
        return real_plot(self, *args, **kwargs)

    monkeypatch.setattr(axes_class, "scatter", scatter)
    monkeypatch.setattr(axes_class, "plot", plot)
    return scatters, lines


@pytest.mark.parametrize("dim", [2, 3])
def test_sub_centre_directions_are_drawn_in_their_class_colour(tmp_path, monkeypatch, dim):
    # Sub-center ArcFace's weight is (C * K, D), row j * K + k the k-th sub-centre of class j: each of the
    # C * K rows is a line in class j's colour, and there are C classes, not C * K (rows used to be taken as
    # classes: class 1's colour went to class 0's second sub-centre, and phantom classes 3..5 appeared)
    import torch

    from bench.spec import TrialSpec
    from bench.trial import _plot_epoch
    from registry import LOSSES

    classes, k = 3, 2
    head = LOSSES.create("subcenter-arcface", embedding_dim=dim, num_classes=classes, k=k)
    spec = TrialSpec.from_nested({"dataset": "digits", "backbone": "lenet++", "embedding_dim": dim, "epochs": 2,
                                  "loss": {"name": "subcenter-arcface", "k": k}})
    emb, labels, _ = clustered(dim, classes, 20)
    scatters, lines = drawn(monkeypatch, dim)
    _plot_epoch(emb, labels, head, spec, 0, tmp_path)
    assert sorted(scatters) == list(range(classes))
    ends = [(end / np.linalg.norm(end), colour) for end, colour in lines if np.linalg.norm(end) > 0]
    rows = torch.nn.functional.normalize(head.weight.detach(), dim=1).numpy()
    assert len(ends) == classes * k
    for row, w in enumerate(rows):
        (colour,) = [c for end, c in ends if np.allclose(end, w, atol=1e-6)]
        assert colour == scatters[row // k]


def test_class_directions_are_the_head_weight_rows_in_the_class_colour(tmp_path, monkeypatch):
    # an ordinary head: one line per class, along its weight row, in the colour of the class's points
    from bench.spec import TrialSpec
    from bench.trial import _plot_epoch
    from registry import LOSSES

    head = LOSSES.create("cosface", embedding_dim=2, num_classes=4)
    spec = TrialSpec.from_nested({"dataset": "digits", "backbone": "lenet++", "embedding_dim": 2, "epochs": 2,
                                  "loss": "cosface"})
    emb, labels, _ = clustered(2, 4, 20)
    scatters, lines = drawn(monkeypatch, 2)
    _plot_epoch(emb, labels, head, spec, 0, tmp_path)
    ends = [(end, colour) for end, colour in lines if np.linalg.norm(end) > 0]
    w = head.weight.detach().numpy()
    assert len(ends) == 4
    for (end, colour), c in zip(ends, range(4), strict=True):
        assert np.allclose(end / np.linalg.norm(end), w[c] / np.linalg.norm(w[c])) and colour == scatters[c]
