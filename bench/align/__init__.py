"""Face alignment: 5-point similarity transforms onto the SphereFace and ArcFace templates, landmark files,
MTCNN detection, and whole-folder alignment (``bench align``).

Example::

    from bench.align import align_face, load_mtcnn
    points = load_mtcnn().detect_landmarks(image)       # (5, 2), or None without a face
    face, matrix = align_face(image, points, "arcface")  # (112, 112, 3)
"""

from __future__ import annotations

from bench.align._folder import IMAGE_EXTENSIONS, AlignSummary, align_folder
from bench.align._landmarks import LandmarkFileError, read_landmarks
from bench.align._transform import (
    TEMPLATES,
    ARCFACE_112x112,
    SPHEREFACE_96x112,
    Template,
    align_face,
    get_template,
    similarity_transform,
    transform_points,
    warp,
)
from bench.align.mtcnn import MTCNN, Detections, MTCNNWeightsError, find_weights, load_mtcnn

__all__ = ["ARCFACE_112x112", "SPHEREFACE_96x112", "TEMPLATES", "Template", "get_template", "similarity_transform",
           "transform_points", "warp", "align_face", "read_landmarks", "LandmarkFileError", "align_folder",
           "AlignSummary", "IMAGE_EXTENSIONS", "MTCNN", "Detections", "MTCNNWeightsError", "find_weights",
           "load_mtcnn"]
