"""5-point similarity transforms (MATLAB ``cp2tform(..., 'similarity')`` for SphereFace, scikit-image's Umeyama
estimate for ArcFace), face templates, and warping.

Coordinates are pixels, ``(x, y)`` = (column, row), 0-based, with pixel centres at integers (the OpenCV and
scikit-image convention). Sizes are ``(width, height)``.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import numpy as np

__all__ = ["similarity_transform", "transform_points", "warp", "align_face", "Template", "TEMPLATES",
           "get_template", "SPHEREFACE_96x112", "ARCFACE_112x112", "FITS"]

#: How `similarity_transform` fits the landmarks onto a template (see there).
FITS = ("cp2tform", "umeyama")


def _frozen(points: list[list[float]]) -> np.ndarray:
    a = np.array(points, dtype=np.float64)
    a.setflags(write=False)
    return a


#: SphereFace's 96x112 template (https://github.com/wy1iu/sphereface, preprocess/code/face_align_demo.m):
#: left eye, right eye, nose tip, left and right mouth corners, ``(x, y)`` in pixels. "Left" is the image's
#: left (the person's right eye).
SPHEREFACE_96x112 = _frozen([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366],
                             [33.5493, 92.3655], [62.7299, 92.2041]])
#: ArcFace's 112x112 template (insightface ``arcface_src``): SphereFace's shifted 8 pixels right.
ARCFACE_112x112 = _frozen([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                           [41.5493, 92.3655], [70.7299, 92.2041]])


class Template(NamedTuple):
    """Where the five landmarks go, the output size ``(width, height)`` in pixels, and how the landmarks are
    fitted onto the points (a `similarity_transform` method: the one the template's paper aligns with)."""

    name: str
    points: np.ndarray
    size: tuple[int, int]
    fit: Literal["cp2tform", "umeyama"] = "cp2tform"


#: SphereFace aligns with MATLAB's cp2tform (face_align_demo.m; sphereface_pytorch's matlab_cp2tform port),
#: ArcFace with scikit-image's ``SimilarityTransform.estimate(landmarks, arcface_dst)`` (insightface
#: ``face_align.estimate_norm``); on real LFW landmarks the two crops differ by up to 0.4 pixels.
TEMPLATES = {"sphereface": Template("sphereface", SPHEREFACE_96x112, (96, 112), "cp2tform"),
             "arcface": Template("arcface", ARCFACE_112x112, (112, 112), "umeyama")}


def get_template(template: str | Template) -> Template:
    """A `Template` by name (``sphereface``: 96x112, ``arcface``: 112x112), or the one given.

    Raises:
        ValueError: an unknown name (listing the known ones).
    """
    if isinstance(template, Template):
        return template
    try:
        return TEMPLATES[str(template).lower()]
    except KeyError:
        raise ValueError(f"unknown template {template!r}; available: {', '.join(TEMPLATES)}") from None


def _points(a: Any, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2 or len(a) < 2:
        raise ValueError(f"{name} must be (K, 2) points with K >= 2, but got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite, but got {a.tolist()}")
    return a


def _least_squares(frm: np.ndarray, to: np.ndarray, name: str) -> np.ndarray:
    """The non-reflective similarity ``(3, 3)`` minimizing ``sum ||T(frm) - to||^2`` (cp2tform's
    ``findNonreflectiveSimilarity``; the same minimum as Umeyama's closed form)."""
    x, y = frm[:, 0], frm[:, 1]
    one, zero = np.ones_like(x), np.zeros_like(x)
    # u = a x + b y + c,  v = -b x + a y + d   (MATLAB's [u v 1] = [x y 1] * Tinv)
    design = np.vstack([np.stack([x, y, one, zero], 1), np.stack([y, -x, zero, one], 1)])
    target = np.r_[to[:, 0], to[:, 1]]
    if np.linalg.matrix_rank(design) < 4:
        raise ValueError(f"a similarity transform needs at least two distinct points, but the {name} points "
                         f"{frm.tolist()} coincide")
    a, b, c, d = np.linalg.lstsq(design, target, rcond=None)[0]
    return np.array([[a, b, c], [-b, a, d], [0.0, 0.0, 1.0]])


def _fit_nonreflective(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """cp2tform's ``findNonreflectiveSimilarity``: least squares of dst -> src, inverted to src -> dst."""
    return np.linalg.inv(_least_squares(dst, src, "destination"))[:2]


def similarity_transform(src: Any, dst: Any, *, reflective: bool = True,
                         method: Literal["cp2tform", "umeyama"] = "cp2tform") -> np.ndarray:
    """The similarity transform (rotation, uniform scale, translation) taking ``src`` points onto ``dst``.

    ``method="cp2tform"`` computes it as MATLAB's ``cp2tform(src, dst, 'similarity')``, which SphereFace's
    alignment uses: the non-reflective similarity is fit by least squares on the map from ``dst`` to ``src``
    and inverted; with ``reflective`` (cp2tform's behaviour), a similarity with a left-right reflection is fit
    as well and kept when its residual ``||T(src) - dst||`` is strictly smaller (never for landmarks of an
    upright face in the usual order). ``method="umeyama"`` computes it as insightface's ArcFace alignment does
    (scikit-image's ``SimilarityTransform.estimate(src, dst)``): least squares on the map from ``src`` to
    ``dst``, never a reflection. The two agree when the points fit a similarity exactly; otherwise each
    minimizes its own residual (on the landmarks or on the template).

    Args:
        src: ``(K, 2)`` points ``(x, y)`` in pixels, e.g. detected landmarks; K >= 2.
        dst: ``(K, 2)`` points they should land on, e.g. ``ARCFACE_112x112``.
        reflective: also consider reflections, as cp2tform does (``cp2tform`` only).
        method: ``"cp2tform"`` or ``"umeyama"`` (see above); `Template.fit` names each template's.

    Returns:
        float64 ``(2, 3)`` matrix ``M`` with ``dst ~ M @ [x, y, 1]``.

    Raises:
        ValueError: shapes that differ or are not ``(K, 2)``; points that coincide; an unknown ``method``.

    Example:
        >>> m = similarity_transform(landmarks, ARCFACE_112x112)
        >>> face = warp(image, m, (112, 112))
    """
    if method not in FITS:
        raise ValueError(f"unknown similarity fit method={method!r}; available: {', '.join(FITS)}")
    src, dst = _points(src, "src"), _points(dst, "dst")
    if src.shape != dst.shape:
        raise ValueError(f"src and dst must have the same shape, but got {src.shape} and {dst.shape}")
    if method == "umeyama":
        return _least_squares(src, dst, "source")[:2]
    m1 = _fit_nonreflective(src, dst)
    if not reflective:
        return m1
    flip = np.array([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    m2r = _fit_nonreflective(src, dst * [-1.0, 1.0])  # src -> reflected dst
    m2 = (flip @ np.vstack([m2r, [0.0, 0.0, 1.0]]))[:2]
    r1 = np.linalg.norm(transform_points(m1, src) - dst)
    r2 = np.linalg.norm(transform_points(m2, src) - dst)
    return m1 if r1 <= r2 else m2


def transform_points(matrix: Any, points: Any) -> np.ndarray:
    """``(K, 2)`` points mapped by a ``(2, 3)`` affine matrix."""
    matrix = np.asarray(matrix, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp(image: Any, matrix: Any, size: tuple[int, int], *, border: float = 0.0) -> np.ndarray:
    """Warps an image by an affine matrix with bilinear interpolation (the output pixel ``p`` takes the input
    at ``M^-1 p``; outside the input, ``border``).

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` array (uint8 or float), or a PIL image.
        matrix: ``(2, 3)`` map from input to output pixel coordinates, e.g. from `similarity_transform`.
        size: output ``(width, height)`` in pixels.
        border: value of output pixels that fall outside the input.

    Returns:
        ``(height, width[, C])`` array of the input's dtype (uint8 is rounded and clipped).
    """
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (H, W, C), but got shape {img.shape}")
    width, height = (int(v) for v in size)
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive (width, height), but got {size}")
    full = np.vstack([np.asarray(matrix, dtype=np.float64).reshape(2, 3), [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    u = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    v = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    src = img.astype(np.float64)
    if src.ndim == 2:
        src = src[:, :, None]
    h, w = src.shape[:2]
    padded = np.full((h + 2, w + 2, src.shape[2]), float(border))
    padded[1:-1, 1:-1] = src
    # sample positions in the padded image, clipped into its border ring (which holds `border`)
    u = np.clip(u + 1.0, 0.0, w + 1.0)
    v = np.clip(v + 1.0, 0.0, h + 1.0)
    x0 = np.minimum(np.floor(u).astype(np.int64), w)
    y0 = np.minimum(np.floor(v).astype(np.int64), h)
    fx, fy = (u - x0)[..., None], (v - y0)[..., None]
    out = ((1 - fy) * ((1 - fx) * padded[y0, x0] + fx * padded[y0, x0 + 1])
           + fy * ((1 - fx) * padded[y0 + 1, x0] + fx * padded[y0 + 1, x0 + 1]))
    if img.ndim == 2:
        out = out[..., 0]
    if img.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(img.dtype) if np.issubdtype(img.dtype, np.floating) else out


def align_face(image: Any, landmarks: Any, template: str | Template = "arcface") -> tuple[np.ndarray, np.ndarray]:
    """Warps a face so its five landmarks land on a template.

    Args:
        image: ``(H, W, 3)`` uint8 array or PIL image.
        landmarks: ``(5, 2)`` points ``(x, y)`` in the template's order (left eye, right eye, nose, left and
            right mouth corners; "left" as seen in the image).
        template: ``"sphereface"`` (96x112, fitted as cp2tform), ``"arcface"`` (112x112, fitted as insightface's
            ``estimate_norm``) or a `Template`.

    Returns:
        ``(aligned, matrix)``: the ``(height, width, 3)`` face and the ``(2, 3)`` transform used.
    """
    t = get_template(template)
    matrix = similarity_transform(landmarks, t.points, method=t.fit)
    return warp(image, matrix, t.size), matrix
