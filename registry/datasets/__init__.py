"""Datasets; importing this package registers them in `DATASETS`.

Small sets (``digits``, ``mnist``, ``fashion-mnist``, ``synthetic-faces``) are tensors held in memory;
``imagefolder`` streams face images from disk through DataLoader workers (batched with `collate_skipping`,
which drops unreadable files and hands them back for the report). Verification pairs come from LFW
``pairs.txt`` files, insightface ``.bin`` files (read with a restricted unpickler) or generated identities.
"""

from __future__ import annotations

from registry.datasets import digits, fashion_mnist, imagefolder, mnist, synthetic_faces  # noqa: F401
from registry.datasets._check import check_bundle
from registry.datasets._collate import collate_skipping
from registry.datasets._types import (
    DataBundle,
    Evaluation,
    PairSet,
    SkippedSample,
    TensorSplit,
    evaluation_of,
    image_size_of,
)

__all__ = ["DataBundle", "Evaluation", "PairSet", "SkippedSample", "TensorSplit", "check_bundle", "collate_skipping",
           "evaluation_of", "image_size_of"]
