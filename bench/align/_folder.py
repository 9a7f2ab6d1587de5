"""Aligning a whole image folder (``identity/file.jpg`` layout) to a face template."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.align._landmarks import read_landmarks
from bench.align._transform import Template, align_face, get_template

__all__ = ["align_folder", "AlignSummary", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".ppm": "PPM", ".pgm": "PPM",
            ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}

Detector = Callable[[np.ndarray], "np.ndarray | None"]


@dataclass
class AlignSummary:
    """What `align_folder` did.

    Attributes:
        aligned: images written.
        existing: images left alone because the destination already existed (``overwrite=False``).
        skipped: ``[(relative path, reason)]`` for images not written.
        from_landmarks, from_detector: how the aligned images got their landmarks.
    """

    aligned: int = 0
    existing: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    from_landmarks: int = 0
    from_detector: int = 0

    def __str__(self) -> str:
        text = (f"aligned {self.aligned} ({self.from_landmarks} from landmarks, {self.from_detector} detected), "
                f"{self.existing} already there, {len(self.skipped)} skipped")
        return text


class _LandmarkIndex:
    """Finds an image's landmarks by its path relative to the source root, or by its last two components
    (``identity/file``) when the file lists paths under another prefix."""

    def __init__(self, landmarks: Mapping[str, Any]) -> None:
        self.exact = {_clean(k): np.asarray(v, dtype=np.float64).reshape(5, 2) for k, v in landmarks.items()}
        tails: dict[str, list[str]] = {}
        for k in self.exact:
            tails.setdefault("/".join(k.split("/")[-2:]), []).append(k)
        self.tails = {t: ks[0] for t, ks in tails.items() if len(ks) == 1}

    def get(self, rel: str) -> np.ndarray | None:
        if rel in self.exact:
            return self.exact[rel]
        key = self.tails.get("/".join(rel.split("/")[-2:]))
        return self.exact[key] if key is not None else None


def _clean(key: str) -> str:
    key = key.replace("\\", "/")
    while key.startswith("./"):
        key = key[2:]
    return key


def _resolve_detector(detector: Any) -> Detector | None:
    if detector is None:
        return None
    if hasattr(detector, "detect_landmarks"):
        return detector.detect_landmarks
    if callable(detector):
        return detector
    raise TypeError(f"detector must be an MTCNN or a callable image -> (5, 2) landmarks, but got {type(detector)}")


def align_folder(src_root: str | Path, dst_root: str | Path, *, template: str | Template = "sphereface",
                 landmarks: Mapping[str, Any] | str | Path | None = None, detector: Any = None,
                 overwrite: bool = False, progress: Callable[[int, int], None] | None = None) -> AlignSummary:
    """Aligns every image under ``src_root`` to a template, writing ``dst_root`` in the same layout.

    Each image's landmarks come from ``landmarks`` when it lists the image (coordinates on the stored
    pixels), else from ``detector`` (run on the image as displayed: EXIF orientation applied); an image
    with neither is skipped with its reason. Files are written to a temporary name in the destination folder
    and renamed, so an interrupted run leaves no half-written image, and a rerun (``overwrite=False``) goes on
    where it stopped.

    Args:
        src_root: folder of ``identity/image`` files (any depth; the relative path is kept).
        dst_root: output folder (created).
        template: ``"sphereface"`` (96x112), ``"arcface"`` (112x112) or a `Template`.
        landmarks: ``{relative path: (5, 2)}`` or a landmark file (`read_landmarks`); a path is matched
            exactly or by its last two components.
        detector: an `MTCNN` (its ``detect_landmarks`` is used) or a callable taking an ``(H, W, 3)`` uint8
            RGB array and returning ``(5, 2)`` landmarks or None.
        overwrite: rewrite destination files that exist.
        progress: called as ``progress(done, total)`` after each image.

    Returns:
        `AlignSummary` with the counts and the reasons for skipped images.

    Raises:
        FileNotFoundError: ``src_root`` is not a folder.
        ValueError: ``dst_root`` is ``src_root`` or inside it, or neither landmarks nor detector given, or
            (without ``overwrite``) an image already there is not the template's size.
    """
    from PIL import Image, ImageOps

    src_root, dst_root = Path(src_root), Path(dst_root)
    if not src_root.is_dir():
        raise FileNotFoundError(f"source folder {src_root} does not exist")
    if dst_root.resolve() == src_root.resolve() or src_root.resolve() in dst_root.resolve().parents:
        raise ValueError(f"the destination {dst_root} must be outside the source {src_root}")
    if landmarks is None and detector is None:
        raise ValueError("give landmarks (a landmark file or mapping) or a detector (MTCNN), or both")
    t = get_template(template)
    index = _LandmarkIndex(read_landmarks(landmarks) if isinstance(landmarks, (str, Path)) else landmarks or {})
    detect = _resolve_detector(detector)

    files = _image_files(src_root)
    summary = AlignSummary()
    for n, path in enumerate(files, 1):
        rel = path.relative_to(src_root).as_posix()
        out = dst_root / rel
        try:
            if out.exists() and not overwrite:
                _check_done(out, t)
                summary.existing += 1
                continue
            points, detected = index.get(rel), False
            try:
                with Image.open(path) as im:
                    # MTCNN finds upright faces only: detect on the photo as shown (EXIF orientation applied);
                    # a landmark file's numbers are on the stored pixels, as MATLAB's imread and PIL read them
                    image = _rgb(im if points is not None else ImageOps.exif_transpose(im))
            except Exception as err:  # noqa: BLE001 - any unreadable file is skipped with its reason
                summary.skipped.append((rel, f"unreadable image: {type(err).__name__}: {err}"))
                continue
            if points is None and detect is not None:
                points, detected = detect(image), True
                if points is None:
                    summary.skipped.append((rel, "no face detected"))
                    continue
            elif points is None:
                summary.skipped.append((rel, "no landmarks in the landmark file and no detector"))
                continue
            try:
                face, _ = align_face(image, points, t)
            except ValueError as err:
                summary.skipped.append((rel, f"bad landmarks: {err}"))
                continue
            _write_atomic(Image.fromarray(face), out)
            summary.aligned += 1
            if detected:
                summary.from_detector += 1
            else:
                summary.from_landmarks += 1
        finally:
            if progress is not None:
                progress(n, len(files))
    return summary


def _image_files(root: Path) -> list[Path]:
    """The image files under ``root`` at any depth, sorted, hidden files left out. Links to folders are
    followed, as the dataset loader's ``os.scandir`` follows them (``Path.rglob`` does not, before Python
    3.13), except a link back to a folder on its own path, which would loop."""
    files: list[Path] = []
    for folder, subdirs, names in os.walk(root, followlinks=True):
        rel = Path(folder).relative_to(root).parts
        chain = {os.path.realpath(root.joinpath(*rel[:i])) for i in range(len(rel) + 1)}
        subdirs[:] = [d for d in subdirs if os.path.realpath(os.path.join(folder, d)) not in chain]
        files += [Path(folder, n) for n in names if Path(n).suffix.lower() in IMAGE_EXTENSIONS
                  and not n.startswith(".")]
    return sorted(p for p in files if p.is_file())


def _rgb(im: Any) -> np.ndarray:
    """A PIL image as ``(H, W, 3)`` uint8 RGB; 16-bit grayscale is scaled to 0..255 (PIL's convert clips it,
    turning a 16-bit face white)."""
    if im.mode.startswith("I;16"):
        gray = np.rint(np.asarray(im, dtype=np.float64) / 257.0).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def _check_done(out: Path, template: Template) -> None:
    """Raises ValueError when an image already at ``out`` is not ``template``'s size: a rerun with another
    template into the same folder would otherwise keep it, mixing the two crops."""
    from PIL import Image

    try:
        with Image.open(out) as done:
            size = done.size
    except OSError as err:
        raise ValueError(f"{out} is already there but unreadable ({err}): delete it, or overwrite it "
                         "(--overwrite)") from None
    if size != template.size:
        raise ValueError(f"{out} is already there at {size[0]}x{size[1]} (W x H), not the {template.name} template's "
                         f"{template.size[0]}x{template.size[1]}: align into another destination, or overwrite it "
                         "(--overwrite)")


def _write_atomic(image: Any, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fmt = _FORMATS.get(out.suffix.lower(), "PNG")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        image.save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
