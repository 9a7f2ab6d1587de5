"""MTCNN: our P/R/O-Nets load facenet-pytorch's weight files (never importing facenet_pytorch) and find the
face and its landmarks in scikit-image's astronaut photograph.

The weights come from ``pip install --no-deps facenet-pytorch==2.6.0`` (or $MARGINBENCH_MTCNN_WEIGHTS);
without them the detection tests are skipped with that instruction.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from bench.align import (
    TEMPLATES,
    MTCNNWeightsError,
    align_face,
    find_weights,
    similarity_transform,
    transform_points,
)
from bench.align.mtcnn import MTCNN, Detections, ONet, PNet, RNet, nms

# Eye centres in skimage.data.astronaut() (512x512), measured by hand on a 12x enlargement: the middle of
# the dark iris, (x, y) in pixels. Image-left eye first (the person's right eye).
ASTRONAUT_EYES = np.array([[202.5, 100.0], [246.0, 102.5]])


@pytest.fixture(scope="module")
def mtcnn():
    from bench.align import load_mtcnn

    try:
        return load_mtcnn()
    except MTCNNWeightsError as err:
        pytest.skip(f"MTCNN weights not installed: {err}")


@pytest.fixture(scope="module")
def astronaut():
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="module")
def detections(mtcnn, astronaut):
    return mtcnn.detect(astronaut)  # once per module: about 2 s on a CPU core


def test_finds_the_astronaut_face_and_her_eyes(detections):
    det = detections
    assert len(det) == 1 and det.probs[0] > 0.99
    x1, y1, x2, y2 = det.boxes[0]
    assert 150 < x1 < 200 and 40 < y1 < 90 and 240 < x2 < 290 and 150 < y2 < 200  # the head, about 90 px wide
    # the detected eyes are where a person sees them
    np.testing.assert_array_less(np.linalg.norm(det.landmarks[0, :2] - ASTRONAUT_EYES, axis=1), 10.0)
    # nose below the eyes and between them, mouth corners below the nose
    lm = det.landmarks[0]
    assert lm[0, 0] < lm[2, 0] < lm[1, 0] and lm[2, 1] > lm[:2, 1].max() and lm[3:, 1].min() > lm[2, 1]


@pytest.mark.parametrize("name", ["sphereface", "arcface"])
def test_aligned_astronaut_eyes_lie_within_three_pixels_of_the_template(detections, astronaut, name):
    t = TEMPLATES[name]
    points = detections.landmarks[0]
    m = similarity_transform(points, t.points)
    eyes = transform_points(m, points[:2])
    np.testing.assert_array_less(np.linalg.norm(eyes - t.points[:2], axis=1), 3.0)
    # and in the warped picture itself: the aligned face is the template's size
    face, _ = align_face(astronaut, points, name)
    assert face.shape == (t.size[1], t.size[0], 3)


def test_detect_landmarks_picks_the_face_nearest_the_centre(mtcnn, detections, monkeypatch):
    two = Detections(boxes=np.r_[detections.boxes, [[0.0, 0.0, 300.0, 300.0]]], probs=np.r_[detections.probs, 1.0],
                     landmarks=np.r_[detections.landmarks, np.zeros((1, 5, 2))])
    monkeypatch.setattr(mtcnn, "detect", lambda image: two)
    image = np.zeros((512, 512, 3), np.uint8)
    np.testing.assert_array_equal(mtcnn.detect_landmarks(image), detections.landmarks[0])
    np.testing.assert_array_equal(mtcnn.detect_landmarks(image, select="largest"), np.zeros((5, 2)))
    np.testing.assert_array_equal(mtcnn.detect_landmarks(image, select="probability"), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="select"):
        mtcnn.detect_landmarks(image, select="first")


def test_no_face_in_a_flat_image(mtcnn):
    assert mtcnn.detect_landmarks(np.full((60, 80, 3), 128, np.uint8)) is None


def test_loading_never_imports_facenet_pytorch(mtcnn):
    # the fixture has loaded the weights (found through the installed package's location only)
    assert "facenet_pytorch" not in sys.modules
    source = (Path(__file__).parents[2] / "bench" / "align" / "mtcnn.py").read_text()
    assert "import facenet_pytorch" not in source and "from facenet_pytorch" not in source


def test_missing_weights_error_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("MARGINBENCH_MTCNN_WEIGHTS", str(tmp_path))
    with pytest.raises(MTCNNWeightsError) as err:
        find_weights()
    message = str(err.value)
    assert str(tmp_path) in message and "pnet.pt" in message
    assert "pip install --no-deps facenet-pytorch==2.6.0" in message and "--mtcnn-weights" in message


def test_explicit_folder_wins_over_the_environment(tmp_path, monkeypatch):
    for name in ("pnet.pt", "rnet.pt", "onet.pt"):
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setenv("MARGINBENCH_MTCNN_WEIGHTS", str(tmp_path / "elsewhere"))
    assert find_weights(tmp_path) == tmp_path
    with pytest.raises(MTCNNWeightsError, match="elsewhere"):
        find_weights()


def test_nets_have_facenet_pytorch_layer_names_and_shapes():
    import torch

    assert "conv4_2.weight" in PNet().state_dict() and "dense5_2.weight" in RNet().state_dict()
    assert "dense6_3.weight" in ONet().state_dict()
    with torch.no_grad():
        reg, prob = PNet()(torch.zeros(1, 3, 12, 12))
        assert reg.shape == (1, 4, 1, 1) and prob.shape == (1, 2, 1, 1)
        assert [t.shape for t in RNet()(torch.zeros(2, 3, 24, 24))] == [(2, 4), (2, 2)]
        assert [t.shape for t in ONet()(torch.zeros(2, 3, 48, 48))] == [(2, 4), (2, 10), (2, 2)]


def test_nms_union_and_min():
    boxes = np.array([[0, 0, 9, 9], [1, 1, 10, 10], [20, 20, 29, 29], [2, 2, 5, 5]], dtype=float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert nms(boxes, scores, 0.5).tolist() == [0, 2, 3]  # box 1 overlaps box 0 with IoU 81/119
    assert nms(boxes, scores, 0.5, mode="min").tolist() == [0, 2]  # box 3 lies inside box 0


def test_invalid_cascade_parameters():
    with pytest.raises(ValueError, match="min_face_size"):
        MTCNN(min_face_size=8)
    with pytest.raises(ValueError, match="thresholds"):
        MTCNN(thresholds=(0.6, 0.7))
    with pytest.raises(ValueError, match="factor"):
        MTCNN(factor=1.5)
