"""MTCNN face and landmark detection (Zhang et al. 2016, https://arxiv.org/abs/1604.02878), self-contained.

The three networks have the layer names of facenet-pytorch (https://github.com/timesler/facenet-pytorch),
so its converted weights (``pnet.pt``, ``rnet.pt``, ``onet.pt``, state dicts of tensors) load unchanged.
This module never imports facenet_pytorch: its wheel pins an old torch, so it is installed, if at all,
without dependencies, just for the three weight files::

    pip install --no-deps facenet-pytorch==2.6.0

`find_weights` looks for the files in, in order: the ``weights_dir`` argument (``bench align
--mtcnn-weights DIR``), the environment variable ``MARGINBENCH_MTCNN_WEIGHTS``, and the ``data`` folder of an
installed facenet_pytorch (located with ``importlib.util.find_spec``, without importing it).

The cascade is the original one: an image pyramid (scale factor 0.709, smallest face 20 pixels) through
P-Net, then R-Net on 24x24 crops and O-Net on 48x48 crops, with thresholds 0.6, 0.7, 0.7, box regression,
squaring, and non-maximum suppression (IoU 0.5 within a scale, 0.7 across scales and after R-Net, 0.7 of
the smaller box after O-Net). Crops that reach past the image border are zero-padded, as in the original
MATLAB and TensorFlow code.

Example::

    mtcnn = load_mtcnn()                          # or load_mtcnn("/path/to/weights")
    det = mtcnn.detect(image)                     # image: (H, W, 3) uint8 RGB
    det.boxes, det.probs, det.landmarks           # (K, 4), (K,), (K, 5, 2)
    points = mtcnn.detect_landmarks(image)        # (5, 2) of the face nearest the centre, or None
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PNet", "RNet", "ONet", "MTCNN", "Detections", "find_weights", "load_mtcnn", "MTCNNWeightsError",
           "WEIGHTS_ENV", "WEIGHT_FILES", "nms"]

WEIGHTS_ENV = "MARGINBENCH_MTCNN_WEIGHTS"
WEIGHT_FILES = ("pnet.pt", "rnet.pt", "onet.pt")
_HOW_TO_GET = (
    "Get them in one of two ways:\n"
    "  1. pip install --no-deps facenet-pytorch==2.6.0   (only for its weight files; --no-deps keeps your torch;\n"
    "     marginbench finds them in the installed package without importing it)\n"
    "  2. download pnet.pt, rnet.pt and onet.pt from\n"
    "     https://github.com/timesler/facenet-pytorch/tree/master/data into a folder and pass\n"
    f"     --mtcnn-weights FOLDER (or export {WEIGHTS_ENV}=FOLDER)"
)


class MTCNNWeightsError(FileNotFoundError):
    """The MTCNN weight files are not where we looked; the message says where we looked and how to get them."""


# --------------------------------------------------------------------------------------------- networks
class PNet(nn.Module):
    """Proposal network: fully convolutional; per 12x12 window (stride 2) a face probability and a box offset.

    Input ``(B, 3, H, W)`` RGB scaled as ``(x - 127.5) / 128``; returns ``(offsets (B, 4, h, w),
    probabilities (B, 2, h, w))`` with ``h = ceil((H - 2) / 2) - 4``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.softmax4_1 = nn.Softmax(dim=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.prelu1(self.conv1(x))
        x = self.pool1(x)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return self.conv4_2(x), self.softmax4_1(self.conv4_1(x))


class RNet(nn.Module):
    """Refinement network on 24x24 crops: returns ``(offsets (B, 4), probabilities (B, 2))``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.softmax5_1 = nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).reshape(len(x), -1)  # the converted TensorFlow weights flatten (W, H, C)
        x = self.prelu4(self.dense4(x))
        return self.dense5_2(x), self.softmax5_1(self.dense5_1(x))


class ONet(nn.Module):
    """Output network on 48x48 crops: returns ``(offsets (B, 4), landmarks (B, 10), probabilities (B, 2))``;
    landmarks are ``x1..x5, y1..y5`` as fractions of the crop's width and height."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).reshape(len(x), -1)
        x = self.prelu5(self.dense5(x))
        return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))


# ------------------------------------------------------------------------------------------------ weights
def find_weights(weights_dir: str | Path | None = None) -> Path:
    """The folder holding ``pnet.pt``, ``rnet.pt`` and ``onet.pt``.

    Looks in ``weights_dir``, else ``$MARGINBENCH_MTCNN_WEIGHTS``, else the ``data`` folder of an installed
    facenet_pytorch (found without importing it). A folder given explicitly (argument or environment) must
    hold the files; there is no silent fallback past it.

    Raises:
        MTCNNWeightsError: the files are missing; says where it looked and how to get them.
    """
    def complete(folder: Path) -> bool:
        return all((folder / f).is_file() for f in WEIGHT_FILES)

    given = (("--mtcnn-weights / weights_dir", weights_dir), (f"${WEIGHTS_ENV}", os.environ.get(WEIGHTS_ENV)))
    for source, value in given:
        if value:
            folder = Path(value).expanduser()
            if complete(folder):
                return folder
            missing = [f for f in WEIGHT_FILES if not (folder / f).is_file()]
            raise MTCNNWeightsError(f"MTCNN weights: {source} points to {folder}, which lacks {', '.join(missing)}.\n"
                                    + _HOW_TO_GET)
    looked = ["--mtcnn-weights (not given)", f"${WEIGHTS_ENV} (not set)"]
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            folder = Path(location) / "data"
            if complete(folder):
                return folder
            looked.append(str(folder))
    else:
        looked.append("an installed facenet_pytorch (not installed)")
    raise MTCNNWeightsError("MTCNN weights (pnet.pt, rnet.pt, onet.pt) not found; looked in: "
                            + "; ".join(looked) + ".\n" + _HOW_TO_GET)


def load_mtcnn(weights_dir: str | Path | None = None, *, device: torch.device | str | None = None,
               **kwargs: Any) -> MTCNN:
    """An `MTCNN` with weights from `find_weights`, in eval mode, on ``device`` (default CPU).

    Keyword arguments go to `MTCNN` (``min_face_size``, ``thresholds``, ``factor``).
    """
    folder = find_weights(weights_dir)
    model = MTCNN(**kwargs)
    for name, net in (("pnet", model.pnet), ("rnet", model.rnet), ("onet", model.onet)):
        state = torch.load(folder / f"{name}.pt", map_location="cpu", weights_only=True)
        try:
            net.load_state_dict(state)
        except RuntimeError as err:
            raise MTCNNWeightsError(f"{folder / f'{name}.pt'} is not a facenet-pytorch {name} state dict: {err}\n"
                                    + _HOW_TO_GET) from err
    return model.to(device or "cpu").eval()


# ------------------------------------------------------------------------------------------------ cascade
@dataclass(frozen=True, eq=False)
class Detections:
    """Faces found in one image, most probable first.

    Attributes:
        boxes: float64 ``(K, 4)`` as ``x1, y1, x2, y2`` in pixels.
        probs: float64 ``(K,)`` O-Net face probabilities.
        landmarks: float64 ``(K, 5, 2)`` ``(x, y)`` of left eye, right eye, nose, left and right mouth corners
            ("left" as seen in the image).
    """

    boxes: np.ndarray
    probs: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return len(self.probs)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression as in the original MTCNN code (areas count pixels: ``x2 - x1 + 1``).

    Args:
        boxes: ``(N, 4)`` ``x1, y1, x2, y2``.
        scores: ``(N,)``.
        threshold: a box is dropped when its overlap with a kept, higher-scoring box exceeds this.
        mode: ``"union"`` (IoU) or ``"min"`` (intersection over the smaller area).

    Returns:
        Indices of the kept boxes, highest score first.
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores, kind="stable")[::-1]
    keep = []
    while len(order):
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        overlap = inter / np.minimum(area[i], area[rest]) if mode == "min" else inter / (area[i] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Boxes grown to squares about their centres (``rerec``)."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Applies R-Net/O-Net box offsets (fractions of the box's pixel width and height; ``bbreg``)."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out[:, :4] = boxes[:, :4] + offsets[:, :4] * np.stack([w, h, w, h], 1)
    return out


class MTCNN(nn.Module):
    """The three-stage MTCNN cascade (see the module docstring); load weights with `load_mtcnn`.

    Args:
        min_face_size: smallest face searched for, in pixels (the pyramid's first scale is 12 / this).
        thresholds: face-probability thresholds of P-Net, R-Net and O-Net.
        factor: scale ratio between pyramid levels.
    """

    def __init__(self, *, min_face_size: int = 20, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
                 factor: float = 0.709) -> None:
        super().__init__()
        if not min_face_size >= 12:
            raise ValueError(f"min_face_size must be >= 12 pixels, but got {min_face_size=}")
        if len(thresholds) != 3 or not all(0 <= t <= 1 for t in thresholds):
            raise ValueError(f"thresholds must be three probabilities, but got {thresholds=}")
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), but got {factor=}")
        self.min_face_size, self.thresholds, self.factor = int(min_face_size), tuple(thresholds), float(factor)
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, image: Any) -> Detections:
        return self.detect(image)

    @staticmethod
    def _as_tensor(image: Any) -> torch.Tensor:
        img = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        if img.ndim != 3 or img.shape[2] not in (3, 4):
            raise ValueError(f"image must be (H, W, 3) RGB, but got shape {img.shape}")
        img = img[:, :, :3]
        if img.dtype != np.uint8:
            if np.issubdtype(img.dtype, np.floating) and img.max(initial=0) <= 1.0:
                img = img * 255.0
        return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]

    def _crops(self, img: torch.Tensor, boxes: np.ndarray, size: int) -> torch.Tensor:
        """Integer boxes (1-based inclusive, as the original code) cut out with zero padding, resized."""
        _, _, h, w = img.shape
        out = []
        for x1, y1, x2, y2 in boxes[:, :4].astype(np.int64):
            bw, bh = x2 - x1 + 1, y2 - y1 + 1
            canvas = img.new_zeros((1, 3, bh, bw))
            sx0, sy0, sx1, sy1 = max(x1 - 1, 0), max(y1 - 1, 0), min(x2, w), min(y2, h)
            if sx1 > sx0 and sy1 > sy0:
                canvas[:, :, sy0 - (y1 - 1):sy1 - (y1 - 1), sx0 - (x1 - 1):sx1 - (x1 - 1)] = img[:, :, sy0:sy1, sx0:sx1]
            out.append(F.interpolate(canvas, size=(size, size), mode="area"))
        return (torch.cat(out) - 127.5) * 0.0078125

    @staticmethod
    def _valid(boxes: np.ndarray) -> np.ndarray:
        return (boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])

    @torch.no_grad()
    def detect(self, image: Any) -> Detections:
        """Detects faces and their five landmarks.

        Args:
            image: ``(H, W, 3)`` RGB array (uint8 0..255, or float 0..1), ``(H, W)`` grayscale, or a PIL image.

        Returns:
            `Detections` (empty when no face is found).
        """
        img = self._as_tensor(image).to(self.device)
        _, _, h, w = img.shape
        t1, t2, t3 = self.thresholds
        empty = Detections(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))

        # stage 1: P-Net over the pyramid
        scale = 12.0 / self.min_face_size
        scales = []
        side = min(h, w) * scale
        while side >= 12:
            scales.append(scale)
            scale *= self.factor
            side *= self.factor
        found = []
        for s in scales:
            x = F.interpolate(img, size=(int(h * s + 1), int(w * s + 1)), mode="area")
            offsets, probs = self.pnet((x - 127.5) * 0.0078125)
            p = probs[0, 1].cpu().numpy()
            rows, cols = np.nonzero(p >= t1)
            if len(rows) == 0:
                continue
            reg = offsets[0].cpu().numpy()[:, rows, cols].T
            cells = np.stack([cols, rows], 1).astype(np.float64)
            q1 = np.floor((2 * cells + 1) / s)
            q2 = np.floor((2 * cells + 12) / s)
            boxes = np.hstack([q1, q2, p[rows, cols][:, None].astype(np.float64), reg.astype(np.float64)])
            found.append(boxes[nms(boxes[:, :4], boxes[:, 4], 0.5)])
        if not found:
            return empty
        boxes = np.vstack(found)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        boxes = np.hstack([boxes[:, :4] + boxes[:, 5:9] * np.stack([bw, bh, bw, bh], 1), boxes[:, 4:5]])
        boxes = np.fix(_square(boxes))
        boxes = boxes[self._valid(boxes)]
        if len(boxes) == 0:
            return empty

        # stage 2: R-Net
        offsets, probs = _batched(self.rnet, self._crops(img, boxes, 24))
        score = probs[:, 1]
        keep = score > t2
        boxes = np.hstack([boxes[keep, :4], score[keep, None]])
        offsets = offsets[keep]
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
        boxes = np.fix(_square(_regress(boxes[pick], offsets[pick])))
        boxes = boxes[self._valid(boxes)]
        if len(boxes) == 0:
            return empty

        # stage 3: O-Net, landmarks
        offsets, points, probs = _batched(self.onet, self._crops(img, boxes, 48))
        score = probs[:, 1]
        keep = score > t3
        boxes = np.hstack([boxes[keep, :4], score[keep, None]])
        offsets, points = offsets[keep], points[keep]
        if len(boxes) == 0:
            return empty
        bw = boxes[:, 2] - boxes[:, 0] + 1
        bh = boxes[:, 3] - boxes[:, 1] + 1
        lx = bw[:, None] * points[:, :5] + boxes[:, 0:1] - 1
        ly = bh[:, None] * points[:, 5:] + boxes[:, 1:2] - 1
        landmarks = np.stack([lx, ly], axis=2)
        boxes = _regress(boxes, offsets)
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7, mode="min")
        return Detections(boxes[pick, :4].astype(np.float64), boxes[pick, 4].astype(np.float64),
                          landmarks[pick].astype(np.float64))

    def detect_landmarks(self, image: Any, *, select: str = "center") -> np.ndarray | None:
        """The five landmarks of one face, or None when no face is found.

        Args:
            image: as for `detect`.
            select: which face when there are several: ``"center"`` (box centre nearest the image centre, as
                SphereFace's preprocessing picks the LFW/CASIA subject), ``"largest"`` or ``"probability"``.

        Returns:
            float64 ``(5, 2)`` ``(x, y)`` in pixels, or None.
        """
        det = self.detect(image)
        if len(det) == 0:
            return None
        if select == "center":
            h, w = np.asarray(image).shape[:2]
            centres = (det.boxes[:, :2] + det.boxes[:, 2:]) / 2
            i = int(np.argmin(((centres - [w / 2, h / 2]) ** 2).sum(1)))
        elif select == "largest":
            i = int(np.argmax((det.boxes[:, 2] - det.boxes[:, 0]) * (det.boxes[:, 3] - det.boxes[:, 1])))
        elif select == "probability":
            i = int(np.argmax(det.probs))
        else:
            raise ValueError(f"select must be 'center', 'largest' or 'probability', but got {select!r}")
        return det.landmarks[i]


def _batched(net: nn.Module, x: torch.Tensor, size: int = 512) -> tuple[np.ndarray, ...]:
    outs = [net(x[i:i + size]) for i in range(0, len(x), size)]
    return tuple(torch.cat(parts).float().cpu().numpy().astype(np.float64) for parts in zip(*outs, strict=True))
