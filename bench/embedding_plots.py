"""Pictures of embeddings, as the SphereFace/CosFace/ArcFace READMEs show them.

* 2-D features: a scatter coloured by class, with a line along each class weight vector (the class's
  direction; its length is the data's radius), as the seed repositories' MNIST pictures; a head with
  several sub-centres per class (Sub-center ArcFace) has a line per sub-centre, in the class's colour.
* 3-D features: the features normalized onto the unit sphere, with a wireframe sphere and the weight
  directions, seen from a fixed viewpoint.
* more dimensions: t-SNE (scikit-learn, fixed ``random_state``) of at most ten identities.

`make_gif` gathers per-epoch frames into an animated GIF. Everything is deterministic for the same input.

Example::

    frames = [plot_embeddings(emb[e], labels, head_weight[e], f"epoch{e:03d}.png", title=f"epoch {e}")
              for e in range(epochs)]
    make_gif(frames, "embeddings.gif")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.atomic import replace_file

__all__ = ["plot_embeddings", "make_gif", "MAX_TSNE_IDENTITIES", "MAX_TSNE_PER_IDENTITY"]

#: Identities shown in a t-SNE picture: the most frequent ones, ties broken by the smaller label.
MAX_TSNE_IDENTITIES = 10
#: Samples per identity in a t-SNE picture (the first ones in input order).
MAX_TSNE_PER_IDENTITY = 200


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _colours(n: int) -> np.ndarray:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "hsv"]
    if n <= 20:
        return np.asarray([cmap(i) for i in range(n)])
    return np.asarray([cmap(i / n) for i in range(n)])


def plot_embeddings(emb: np.ndarray, labels: np.ndarray, class_weights: np.ndarray | None, path: str | Path, *,
                    title: str = "", tsne_identities: int = MAX_TSNE_IDENTITIES) -> Path:
    """Writes a PNG picture of embeddings.

    Args:
        emb: ``(N, D)`` features as the backbone emits them (not normalized).
        labels: ``(N,)`` integer class of each feature.
        class_weights: ``(C, D)`` weight vector of each class (the head's ``weight``), or ``(C, K, D)`` for K
            sub-centres per class, drawn as directions for D <= 3; row ``c`` belongs to label ``c``. None: no
            directions. Ignored for D > 3.
        path: the PNG file (parent folders are created).
        title: picture title, e.g. ``"CosFace epoch 3"``.
        tsne_identities: identities in a t-SNE picture (D > 3).

    Returns:
        ``path`` as a `Path`.

    Raises:
        ValueError: shapes that do not fit together.
    """
    emb = np.asarray(emb, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    if emb.ndim != 2 or len(emb) != len(labels) or len(emb) == 0:
        raise ValueError(f"emb must be (N, D) and labels (N,) with N > 0, but got {emb.shape} and {labels.shape}")
    if class_weights is not None:
        class_weights = np.asarray(class_weights, dtype=np.float64)
        if class_weights.ndim not in (2, 3) or class_weights.shape[-1] != emb.shape[1]:
            raise ValueError(f"class_weights must be (C, {emb.shape[1]}) or (C, K, {emb.shape[1]}), but got "
                             f"{class_weights.shape}")
        if class_weights.ndim == 2:
            class_weights = class_weights[:, None, :]  # one direction per class
    finite = np.all(np.isfinite(emb), axis=1)
    emb, labels = emb[finite], labels[finite]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    dim = emb.shape[1]
    if dim == 2:
        fig = _plot_2d(plt, emb, labels, class_weights)
    elif dim == 3:
        fig = _plot_3d(plt, emb, labels, class_weights)
    else:
        fig = _plot_tsne(plt, emb, labels, tsne_identities)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    replace_file(path, lambda tmp: fig.savefig(tmp, format="png", metadata={"Software": None}))
    plt.close(fig)
    return path


def _classes(labels: np.ndarray, class_weights: np.ndarray | None) -> np.ndarray:
    """Labels present, plus every weight row when there are few classes (a class with no sample still has a
    direction worth drawing)."""
    present = np.unique(labels)
    if class_weights is not None and len(class_weights) <= 20:
        return np.union1d(present, np.arange(len(class_weights)))
    return present


def _legend(ax: Any, n: int) -> None:
    if n <= 10:
        ax.legend(loc="upper right", fontsize=7, markerscale=2, framealpha=0.7)


def _plot_2d(plt: Any, emb: np.ndarray, labels: np.ndarray, weights: np.ndarray | None) -> Any:
    fig, ax = plt.subplots(figsize=(5.5, 5.5), dpi=100)
    classes = _classes(labels, weights)
    colours = _colours(len(classes))
    for k, c in enumerate(classes):
        pts = emb[labels == c]
        if len(pts):
            ax.scatter(pts[:, 0], pts[:, 1], s=3, color=colours[k], alpha=0.6, linewidths=0, label=str(c))
    radius = float(np.percentile(np.linalg.norm(emb, axis=1), 99)) if len(emb) else 1.0
    radius = radius if radius > 0 else 1.0
    if weights is not None:
        for k, c in enumerate(classes):
            for w in weights[c] if c < len(weights) else ():
                w = w / (np.linalg.norm(w) or 1.0) * radius
                ax.plot([0, w[0]], [0, w[1]], color=colours[k], lw=1.5)
    lim = 1.1 * radius
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.axhline(0, color="0.85", lw=0.5, zorder=0)
    ax.axvline(0, color="0.85", lw=0.5, zorder=0)
    _legend(ax, len(classes))
    return fig


def _plot_3d(plt: Any, emb: np.ndarray, labels: np.ndarray, weights: np.ndarray | None) -> Any:
    fig = plt.figure(figsize=(5.5, 5.5), dpi=100)
    ax = fig.add_subplot(projection="3d")
    u, v = np.mgrid[0:2 * np.pi:24j, 0:np.pi:12j]
    ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.85", lw=0.4)
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    classes = _classes(labels, weights)
    colours = _colours(len(classes))
    for k, c in enumerate(classes):
        pts = unit[labels == c]
        if len(pts):
            ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], s=3, color=colours[k], alpha=0.7, linewidths=0,
                       label=str(c), depthshade=False)
    if weights is not None:
        for k, c in enumerate(classes):
            for w in weights[c] if c < len(weights) else ():
                w = w / (np.linalg.norm(w) or 1.0) * 1.15
                ax.plot([0, w[0]], [0, w[1]], [0, w[2]], color=colours[k], lw=1.5)
    for setter in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
        setter(-1.1, 1.1)
    ax.set_box_aspect((1, 1, 1))
    ax.view_init(elev=20, azim=35)
    _legend(ax, len(classes))
    return fig


def _plot_tsne(plt: Any, emb: np.ndarray, labels: np.ndarray, identities: int) -> Any:
    from sklearn.manifold import TSNE

    values, counts = np.unique(labels, return_counts=True)
    chosen = values[np.lexsort((values, -counts))][:identities]  # most frequent, then smallest label
    chosen = np.sort(chosen)
    idx = np.concatenate([np.flatnonzero(labels == c)[:MAX_TSNE_PER_IDENTITY] for c in chosen]
                         or [np.zeros(0, dtype=np.int64)])  # every feature non-finite: an empty picture
    x, y = emb[idx], labels[idx]
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # angular geometry, as the losses see it
    fig, ax = plt.subplots(figsize=(5.5, 5.5), dpi=100)
    if len(x) >= 3:
        perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=0, metric="euclidean",
                  method="exact" if len(x) < 500 else "barnes_hut").fit_transform(x)
    else:
        xy = np.zeros((len(x), 2))
    colours = _colours(len(chosen))
    for k, c in enumerate(chosen):
        pts = xy[y == c]
        ax.scatter(pts[:, 0], pts[:, 1], s=6, color=colours[k], alpha=0.8, linewidths=0, label=str(c))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"t-SNE of {len(chosen)} identities ({emb.shape[1]}-d features, normalized)", fontsize=8)
    _legend(ax, len(chosen))
    return fig


def make_gif(frames: list[Path] | list[str], path: str | Path, *, duration_ms: int = 500) -> Path:
    """Gathers PNG frames into an animated GIF that loops forever.

    Args:
        frames: image files in order; frames of another size are resized to the first frame's.
        path: the GIF file (parent folders are created).
        duration_ms: display time of each frame, in milliseconds.

    Returns:
        ``path`` as a `Path`.

    Raises:
        ValueError: no frames.
    """
    from PIL import Image

    if not frames:
        raise ValueError("make_gif needs at least one frame")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = []
    for f in frames:
        with Image.open(f) as im:
            images.append(im.convert("RGB"))
    size = images[0].size
    images = [im if im.size == size else im.resize(size, Image.BILINEAR) for im in images]
    # one palette for all frames (from up to eight of them) keeps the colours steady from frame to frame
    sample = [images[i] for i in np.unique(np.linspace(0, len(images) - 1, min(8, len(images))).astype(int))]
    mosaic = Image.new("RGB", (size[0], size[1] * len(sample)))
    for i, im in enumerate(sample):
        mosaic.paste(im, (0, i * size[1]))
    palette = mosaic.quantize(colors=255, method=Image.Quantize.MEDIANCUT)
    quantized = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in images]
    return replace_file(path, lambda tmp: quantized[0].save(
        tmp, format="GIF", save_all=True, append_images=quantized[1:], duration=int(duration_ms), loop=0,
        optimize=False, disposal=1))
