"""``fashion-mnist`` reads the same IDX files as ``mnist`` (same names and layout), with its own statistics."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from registry import DATASETS, RegistryError


def _idx_bytes(array: np.ndarray) -> bytes:
    # IDX: 0x00 0x00, type 0x08 (unsigned byte), ndim, big-endian uint32 sizes, then the data.
    return bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


def test_loads_the_idx_files_with_fashion_statistics(tmp_path):
    rng = np.random.default_rng(0)
    raw = {}
    for stem, n in (("train", 6), ("t10k", 4)):
        raw[stem] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        (tmp_path / f"{stem}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(raw[stem])))
        (tmp_path / f"{stem}-labels-idx1-ubyte").write_bytes(_idx_bytes(np.arange(n, dtype=np.uint8) % 10))
    bundle = DATASETS.create("fashion-mnist", root=str(tmp_path))
    assert (bundle.name, bundle.num_classes, bundle.in_chans, bundle.image_size) == ("fashion-mnist", 10, 1, (28, 28))
    assert bundle.train.images.shape == (6, 1, 28, 28) and bundle.test.labels.tolist() == [0, 1, 2, 3]
    expected = (raw["train"].astype(np.float64) / 255.0 - 0.2860) / 0.3530
    np.testing.assert_allclose(bundle.train.images[:, 0].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert bundle.info["classes"][9] == "Ankle boot"


def test_missing_files_fail_validation_naming_them(tmp_path):
    with pytest.raises(RegistryError, match=r"train-images-idx3-ubyte\[.gz\]"):
        DATASETS.check("fashion-mnist", {"root": str(tmp_path)})
