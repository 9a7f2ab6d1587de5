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
