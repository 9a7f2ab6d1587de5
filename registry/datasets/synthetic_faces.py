"""``synthetic-faces``: generated identities, so the whole face pipeline (training, pairs, verification)
runs in tests and benchmarks without CASIA-WebFace or LFW.

Each identity is a face-like template drawn from its own random generator: a soft oval of skin colour,
hair, two eyes and eyebrows, a nose and a mouth at identity-specific places, sizes and colours, plus a
few identity-specific marks. Each image shows its identity's template under a random pose (in-plane
rotation, scale, shift, and a yaw that moves the features sideways by their depth), lighting (contrast,
brightness, a directional gradient, a colour cast) and pixel noise, on a random background. Rendering
evaluates the shapes analytically at every pixel, so any size and any channel count come out sharp.

Identity ``i``'s template and images depend only on ``seed``, ``i`` and the generator settings, never on
how many identities are asked for. Training identities are ``0..identities-1``; verification pairs are
drawn over ``test_identities`` further identities that training never sees (the face protocol).

`write_image_folder` writes the same data to disk, ``train/<identity>/<identity>_<n:04d>.jpg``,
``pairs/<identity>/...`` and an LFW-format ``pairs.txt`` (optionally an insightface ``.bin``), so the
on-disk loaders are exercised by the same faces.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from registry import DATASETS
from registry.datasets._images import encode_image, parse_image_size
from registry.datasets._types import EVALUATIONS, IMAGE_SIZES, DataBundle, Evaluation, PairSet, TensorSplit
from registry.datasets.pairs import make_pairs, write_pairs_txt, write_verification_bin

__all__ = ["SyntheticFaces", "render_identities", "synthetic_faces", "write_image_folder", "identity_name"]


@dataclass(frozen=True)
class SyntheticFaces:
    """Generator settings (one per dataset); see `synthetic_faces` for their meaning."""

    image_size: tuple[int, int] = (112, 96)
    in_chans: int = 3
    seed: int = 0
    pose: float = 1.0
    lighting: float = 1.0
    noise: float = 1.0

    def __post_init__(self) -> None:
        if self.in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, but got {self.in_chans=}")
        for key in ("pose", "lighting", "noise"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0 (0 turns that variation off), but got {getattr(self, key)}")

    # identity templates -------------------------------------------------------------------------------
    def template(self, identity: int) -> dict[str, np.ndarray]:
        """Shapes of one identity: centres (n, 2), sigmas (n, 2), angles (n,), colours (n, C), depth (n,),
        power (n,) of each feature, plus the face and hair shapes and colours."""
        rng = np.random.default_rng([self.seed, 0, identity])
        c = self.in_chans

        def colour(base: float, spread: float) -> np.ndarray:
            return base * (1 + spread * rng.normal(size=c))

        centres, sigmas, angles, colours, depth = [], [], [], [], []

        def add(centre: Sequence[float], sigma: Sequence[float], angle: float, col: np.ndarray, d: float) -> None:
            centres.append(centre), sigmas.append(sigma), angles.append(angle), colours.append(col), depth.append(d)

        ex, ey = rng.uniform(0.17, 0.32), rng.uniform(-0.25, -0.08)
        eye_size = rng.uniform(0.045, 0.085, size=2)
        eye_col = colour(-rng.uniform(0.3, 0.6), 0.3)
        brow_dy, brow_w, brow_tilt = rng.uniform(0.1, 0.17), rng.uniform(0.07, 0.14), rng.uniform(-0.35, 0.35)
        brow_col = colour(-rng.uniform(0.15, 0.5), 0.3)
        for side in (-1, 1):
            add((side * ex, ey), eye_size, 0.0, eye_col, 0.3)
            add((side * ex, ey - brow_dy), (brow_w, rng.uniform(0.02, 0.04)), side * brow_tilt, brow_col, 0.3)
        add((rng.normal(0, 0.02), rng.uniform(0.0, 0.15)), (rng.uniform(0.035, 0.08), rng.uniform(0.08, 0.18)),
            rng.normal(0, 0.1), colour(rng.choice([-1, 1]) * rng.uniform(0.1, 0.25), 0.2), 1.0)
        add((rng.normal(0, 0.02), rng.uniform(0.28, 0.45)), (rng.uniform(0.09, 0.22), rng.uniform(0.02, 0.05)),
            rng.normal(0, 0.1), colour(-rng.uniform(0.2, 0.5), 0.5), 0.5)
        for _ in range(3):
            add((rng.uniform(-0.45, 0.45), rng.uniform(-0.4, 0.5)), rng.uniform(0.03, 0.1, size=2),
                rng.uniform(0, np.pi), colour(rng.choice([-1, 1]) * rng.uniform(0.1, 0.35), 0.4), 0.4)
        return {
            "centres": np.asarray(centres, dtype=np.float32), "sigmas": np.asarray(sigmas, dtype=np.float32),
            "angles": np.asarray(angles, dtype=np.float32), "colours": np.asarray(colours, dtype=np.float32),
            "depth": np.asarray(depth, dtype=np.float32),
            "face": np.asarray([rng.normal(0, 0.03), 0.05 + rng.normal(0, 0.03), rng.uniform(0.5, 0.68),
                                rng.uniform(0.68, 0.85)], dtype=np.float32),
            "skin": np.clip(colour(rng.uniform(0.45, 0.85), 0.15), 0.05, 1.0).astype(np.float32),
            "hair": np.asarray([rng.uniform(-0.85, -0.62), rng.uniform(0.55, 0.85), rng.uniform(0.12, 0.28)],
                               dtype=np.float32),
            "hair_colour": np.clip(colour(rng.uniform(0.05, 0.6), 0.3), 0.0, 1.0).astype(np.float32),
        }

    # rendering --------------------------------------------------------------------------------------
    def render(self, identity: int, count: int) -> np.ndarray:
        """``count`` images of ``identity``: float32 ``(count, C, H, W)`` in ``[0, 1]``."""
        t = self.template(identity)
        rng = np.random.default_rng([self.seed, 1, identity])
        h, w = self.image_size
        c = self.in_chans
        pix = 1.0 / min(h, w)  # half a pixel in the [-1, 1] frame: the smallest sigma that does not alias
        v, u = np.meshgrid(np.linspace(-1, 1, h, dtype=np.float32), np.linspace(-1, 1, w, dtype=np.float32),
                           indexing="ij")
        # pose: template coordinates q = R(-theta) (p - shift) / scale
        theta = rng.uniform(-1, 1, count) * np.deg2rad(12) * self.pose
        scale = 1 + rng.uniform(-1, 1, count) * 0.1 * self.pose
        shift = rng.uniform(-1, 1, (count, 2)) * 0.08 * self.pose
        yaw = rng.uniform(-1, 1, count) * self.pose
        cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
        du = (u[None] - shift[:, 0, None, None]) / scale[:, None, None]
        dv = (v[None] - shift[:, 1, None, None]) / scale[:, None, None]
        qu, qv = (cos * du + sin * dv).astype(np.float32), (-sin * du + cos * dv).astype(np.float32)

        def shape(cu: np.ndarray, cv: float, su: float, sv: float, angle: float, power: int) -> np.ndarray:
            # exp(-r^(2 power) / 2) over the ellipse (su, sv) rotated by angle: a Gaussian, or flatter
            a, b = np.float32(np.cos(angle) / np.hypot(su, pix)), np.float32(np.sin(angle) / np.hypot(su, pix))
            c2, d2 = np.float32(-np.sin(angle) / np.hypot(sv, pix)), np.float32(np.cos(angle) / np.hypot(sv, pix))
            x, y = qu - cu.astype(np.float32)[:, None, None], qv - np.float32(cv)
            r2 = (a * x + b * y) ** 2 + (c2 * x + d2 * y) ** 2
            return np.exp(np.float32(-0.5) * (r2 if power == 1 else r2 * r2))

        fu, fv, fw, fh = t["face"]
        face = shape(fu + 0.04 * yaw, fv, fw, fh, 0.0, 2)[:, None]  # a flat-topped oval
        masks = np.stack([shape(cu + 0.12 * yaw * d, cv, su, sv, angle, 1)
                          for (cu, cv), (su, sv), angle, d in zip(t["centres"], t["sigmas"], t["angles"], t["depth"],
                                                                  strict=True)])
        inside = np.einsum("nkhw,nc->kchw", masks, t["colours"]) + t["skin"][None, :, None, None]
        hv, hw, hh = t["hair"]
        hair = shape(fu + 0.03 * yaw, hv, hw, hh, 0.0, 2)[:, None] * face.clip(0.3, 1)
        f32 = np.float32
        # background: a random level and gradient per image, unrelated to the identity
        bg_level = rng.uniform(0.15, 0.85, (count, c, 1, 1)).astype(f32)
        bg_dir = (rng.normal(size=(count, 2, 1, 1)) * 0.15).astype(f32)
        background = bg_level + bg_dir[:, :1] * u + bg_dir[:, 1:] * v
        img = background * (1 - face) + inside * face
        img = img * (1 - hair) + t["hair_colour"][None, :, None, None] * hair
        # lighting: contrast, brightness, a directional gradient and a colour cast
        lt = self.lighting
        contrast = (1 + rng.uniform(-0.3, 0.3, (count, 1, 1, 1)) * lt).astype(f32)
        brightness = (rng.uniform(-0.15, 0.15, (count, 1, 1, 1)) * lt).astype(f32)
        alpha = rng.uniform(0, 2 * np.pi, count)
        strength = rng.uniform(0, 0.25, count) * lt
        gu, gv = (strength * np.cos(alpha)).astype(f32), (strength * np.sin(alpha)).astype(f32)
        gradient = gu[:, None, None] * u + gv[:, None, None] * v
        cast = (rng.normal(0, 0.03, (count, c, 1, 1)) * lt).astype(f32)
        img = (img - 0.5) * contrast + (0.5 + brightness + cast) + gradient[:, None]
        sigma = (rng.uniform(0.02, 0.08, (count, 1, 1, 1)) * self.noise).astype(f32)
        img += rng.standard_normal(img.shape, dtype=f32) * sigma
        return np.clip(img, 0, 1).astype(np.float32)

    def images(self, identities: Sequence[int], count: int) -> tuple[np.ndarray, np.ndarray]:
        """``count`` images of each identity: ``(N * count, C, H, W)`` in ``[0, 1]`` and each image's position
        in ``identities`` (its label)."""
        h, w = self.image_size
        out = np.empty((len(identities) * count, self.in_chans, h, w), dtype=np.float32)

        def fill(i: int) -> None:
            out[i * count:(i + 1) * count] = self.render(identities[i], count)

        # each identity is a pure function of (seed, identity), and numpy releases the GIL in the array work:
        # threads render the same pixels several times faster (20,000 faces at 112x112 take ~70 s in one)
        threads = min(len(identities), torch.get_num_threads())
        if threads > 1 and len(identities) * count * h * w >= 2**22:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(fill, range(len(identities))))
        else:
            for i in range(len(identities)):
                fill(i)
        return out, np.repeat(np.arange(len(identities), dtype=np.int64), count)


def render_identities(identities: Sequence[int], count: int, **settings: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of the given identity indices as float32 ``(N * count, C, H, W)`` in ``[-1, 1]`` and labels."""
    images, labels = SyntheticFaces(**settings).images(identities, count)
    return torch.from_numpy(images).mul_(2).sub_(1), torch.from_numpy(labels)


def identity_name(identity: int) -> str:
    """Folder name of an identity on disk: ``id_00042``."""
    return f"id_{identity:05d}"


def _settings(image_size: int | Sequence[int], in_chans: int, seed: int, pose: float, lighting: float,
              noise: float) -> SyntheticFaces:
    return SyntheticFaces(parse_image_size(image_size), in_chans, seed, pose, lighting, noise)


def _check_counts(identities: int, images_per_identity: int, test_fraction: float, test_identities: int,
                  pairs_per_fold: int, folds: int) -> None:
    if identities < 2:
        raise ValueError(f"identities must be >= 2, but got {identities=}")
    if images_per_identity < 2:
        raise ValueError(f"images_per_identity must be >= 2 (pairs and a test split need two), but got "
                         f"{images_per_identity=}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), but got {test_fraction=}")
    if test_identities < 0 or pairs_per_fold < 0 or folds < 2:  # each fold's threshold comes from the others
        raise ValueError(f"test_identities and pairs_per_fold must be >= 0 and folds >= 2, but got "
                         f"{test_identities=}, {pairs_per_fold=}, {folds=}")
    if pairs_per_fold > 0 and test_identities == 1:
        raise ValueError("mismatched pairs need at least two test_identities (or set pairs_per_fold: 0)")


def _held_out_pairs(images_per_identity: int, test_identities: int, pairs_per_fold: int, folds: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(test_identities), images_per_identity)
    return make_pairs(labels, folds=folds, per_fold=pairs_per_fold, rng=np.random.default_rng([seed, 2]))


def _test_images(test_fraction: float, images_per_identity: int) -> int:
    """Images of each identity in the closed-set test split."""
    return min(int(round(test_fraction * images_per_identity)), images_per_identity - 1)


def _params(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` completed with the factory's defaults."""
    import inspect

    bound = inspect.signature(synthetic_faces).bind_partial(**params)
    bound.apply_defaults()
    return dict(bound.arguments)


def _evaluation(params: dict[str, Any], max_classes: int) -> Evaluation:
    """A test split of every identity when test_fraction leaves each one a test image; pairs ``synthetic``."""
    p = _params(params)
    test = _test_images(p["test_fraction"], p["images_per_identity"]) > 0
    classes = tuple(range(p["identities"])) if test and p["identities"] <= max_classes else None
    return Evaluation(test=test, test_classes=classes,
                      pairs="synthetic" if p["test_identities"] and p["pairs_per_fold"] else None)


def _validate(params: dict[str, Any]) -> None:
    p = _params(params)
    _check_counts(p["identities"], p["images_per_identity"], p["test_fraction"], p["test_identities"],
                  p["pairs_per_fold"], p["folds"])
    _settings(p["image_size"], p["in_chans"], p["seed"], p["pose"], p["lighting"], p["noise"])


@DATASETS.register("synthetic-faces", validate=_validate)
def synthetic_faces(identities: int = 64, images_per_identity: int = 16, image_size: int | Sequence[int] = (112, 96),
                    in_chans: int = 3, seed: int = 0, test_fraction: float = 0.25, test_identities: int = 32,
                    pairs_per_fold: int = 30, folds: int = 10, pose: float = 1.0, lighting: float = 1.0,
                    noise: float = 1.0) -> DataBundle:
    """Generated face identities (N x K images, any size and channels), pairs over held-out identities.

    Args:
        identities: training identities (classes).
        images_per_identity: images of each identity (training and held-out alike).
        image_size: ``[height, width]`` or one int (112x96 by default, the SphereFace crop).
        in_chans: channels (any count; 1 and 3 can also be written to disk).
        seed: everything is a function of it (same seed, same pixels).
        test_fraction: share of each training identity's images in the closed-set test split.
        test_identities: further identities, never trained on, that the verification pairs use.
        pairs_per_fold: matched (and as many mismatched) pairs per fold; 0 turns pairs off.
        folds: verification folds (10, as LFW; at least 2).
        pose, lighting, noise: strength of each variation (1 = default, 0 = none).

    Returns:
        A `DataBundle` with tensor splits in ``[-1, 1]`` and a `PairSet` over the held-out identities.
    """
    _check_counts(identities, images_per_identity, test_fraction, test_identities, pairs_per_fold, folds)
    gen = _settings(image_size, in_chans, seed, pose, lighting, noise)
    images, labels = render_identities(range(identities), images_per_identity, **_as_kwargs(gen))
    n_test = _test_images(test_fraction, images_per_identity)
    position = torch.arange(len(labels)) % images_per_identity
    is_test = position >= images_per_identity - n_test
    train = TensorSplit(images[~is_test].contiguous(), labels[~is_test].contiguous())
    test = TensorSplit(images[is_test].contiguous(), labels[is_test].contiguous()) if n_test else None
    pairs = None
    if test_identities and pairs_per_fold:
        held, _ = render_identities(range(identities, identities + test_identities), images_per_identity,
                                    **_as_kwargs(gen))
        left, right, same, fold = _held_out_pairs(images_per_identity, test_identities, pairs_per_fold, folds, seed)
        pairs = PairSet(held, torch.from_numpy(left), torch.from_numpy(right), torch.from_numpy(same),
                        torch.from_numpy(fold), name="synthetic")
    info = {"generator": "synthetic-faces", "seed": seed, "train_size": len(train),
            "test_size": len(test) if test is not None else 0, "pairs": len(pairs.same) if pairs is not None else 0}
    return DataBundle("synthetic-faces", identities, in_chans, gen.image_size, train, test, pairs, info)


def _as_kwargs(gen: SyntheticFaces) -> dict[str, Any]:
    return {"image_size": gen.image_size, "in_chans": gen.in_chans, "seed": gen.seed, "pose": gen.pose,
            "lighting": gen.lighting, "noise": gen.noise}


def write_image_folder(root: str | Path, *, identities: int = 64, images_per_identity: int = 16,
                       image_size: int | Sequence[int] = (112, 96), in_chans: int = 3, seed: int = 0,
                       test_identities: int = 32, pairs_per_fold: int = 30, folds: int = 10, pose: float = 1.0,
                       lighting: float = 1.0, noise: float = 1.0, fmt: str = "jpg",
                       write_bin: bool = False) -> dict[str, Path]:
    """Writes the synthetic faces as image folders with an LFW-format ``pairs.txt`` (and an insightface ``.bin``).

    Layout under ``root``: ``train/<id>/<id>_<n:04d>.<fmt>`` for the training identities (all their
    images; ``imagefolder`` makes its own split), ``pairs/<id>/...`` for the held-out identities,
    ``pairs.txt`` over ``pairs/`` (the same pairs `synthetic_faces` draws for these settings) and, with
    ``write_bin``, ``synthetic.bin`` holding those pairs' images. Everything is written into a temporary
    folder beside ``root`` and moved into place at the end, so an interrupted run leaves nothing behind.

    Returns:
        ``{"train": ..., "pairs_root": ..., "pairs_txt": ..., "bin": ...}`` (``bin`` only when written).

    Raises:
        FileExistsError: ``root`` exists and is not empty.
        ValueError: ``in_chans`` other than 1 or 3, or a format other than jpg/png.
    """
    root = Path(root).expanduser()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root} exists and is not empty; choose a new folder for the synthetic faces")
    if in_chans not in (1, 3):
        raise ValueError(f"only 1- or 3-channel faces can be written as image files, but got {in_chans=}")
    fmt = fmt.lower().lstrip(".")
    if fmt not in ("jpg", "png"):
        raise ValueError(f"fmt must be jpg or png, but got {fmt!r}")
    _check_counts(identities, images_per_identity, 0.0, test_identities, pairs_per_fold, folds)
    gen = _settings(image_size, in_chans, seed, pose, lighting, noise)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        def write(folder: Path, identity: int, images: np.ndarray) -> None:
            name = identity_name(identity)
            (folder / name).mkdir(parents=True)
            for j, image in enumerate(images):
                (folder / name / f"{name}_{j + 1:04d}.{fmt}").write_bytes(encode_image(image * 2 - 1, fmt))

        for i in range(identities):
            write(tmp / "train", i, gen.render(i, images_per_identity))
        held = list(range(identities, identities + test_identities))
        held_images = {}
        for i in held:
            held_images[i] = gen.render(i, images_per_identity)
            write(tmp / "pairs", i, held_images[i])
        if test_identities and pairs_per_fold:
            left, right, same, _ = _held_out_pairs(images_per_identity, test_identities, pairs_per_fold, folds, seed)
            k = images_per_identity

            def ident(index: int) -> tuple[str, int, int]:
                identity = held[index // k]
                return identity_name(identity), index % k + 1, identity

            rows = []
            for a, b in zip(left, right, strict=True):
                (n1, i1, _), (n2, i2, _) = ident(int(a)), ident(int(b))
                rows.append((n1, i1, n2, i2))
            write_pairs_txt(tmp / "pairs.txt", rows, folds=folds, per_fold=pairs_per_fold)
            if write_bin:
                blobs = []
                for a, b in zip(left, right, strict=True):
                    for index in (int(a), int(b)):
                        _, number, identity = ident(index)
                        blobs.append(encode_image(held_images[identity][number - 1] * 2 - 1, fmt))
                write_verification_bin(tmp / "synthetic.bin", blobs, same.tolist())
        if root.exists():
            root.rmdir()
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    out = {"train": root / "train", "pairs_root": root / "pairs", "pairs_txt": root / "pairs.txt"}
    if write_bin and test_identities and pairs_per_fold:
        out["bin"] = root / "synthetic.bin"
    return out


EVALUATIONS["synthetic-faces"] = _evaluation
IMAGE_SIZES["synthetic-faces"] = lambda params: parse_image_size(params.get("image_size", (112, 96)))
