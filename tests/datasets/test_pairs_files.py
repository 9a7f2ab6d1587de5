"""Verification files: the LFW pairs.txt layout and insightface's .bin pickles, written byte by byte in the
tests from the formats' descriptions, and the restricted unpickler that refuses anything else."""

from __future__ import annotations

import io
import os
import pickle
import re
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from registry import DATASETS, RegistryError
from registry.datasets.pairs import (
    PairsFileError,
    UnsafePickleError,
    pairs_from_bin,
    pairs_from_txt,
    read_pairs_txt,
    read_verification_bin,
)


def _jpeg(seed: int, size: tuple[int, int] = (12, 10)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _lfw_pairs_text(folds: int, n: int) -> str:
    # LFW README: header "folds n", then per fold n "name i j" lines and n "name1 i name2 j" lines.
    lines = [f"{folds}\t{n}"]
    for k in range(folds):
        lines += [f"Person_{k}_{i}\t1\t2" for i in range(n)]
        lines += [f"Person_{k}_{i}\t1\tOther_{k}_{i}\t3" for i in range(n)]
    return "\n".join(lines) + "\n"


def _image_root(tmp_path, names_numbers, ext="jpg"):
    root = tmp_path / "lfw"
    for name, number in names_numbers:
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / f"{name}_{number:04d}.{ext}").write_bytes(_jpeg(number))
    return root


# pairs.txt ------------------------------------------------------------------------------------------
def test_lfw_view2_layout_gives_ten_folds_of_300_and_300(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text(_lfw_pairs_text(10, 300))
    pairs = read_pairs_txt(path)
    assert len(pairs) == 6000
    folds = np.array([p.fold for p in pairs])
    same = np.array([p.same for p in pairs])
    assert np.bincount(folds).tolist() == [600] * 10
    # In every fold the first 300 pairs are matched, the next 300 mismatched.
    assert same.reshape(10, 600)[:, :300].all() and not same.reshape(10, 600)[:, 300:].any()
    assert pairs[0].lineno == 2 and (pairs[0].name1, pairs[0].n1, pairs[0].n2) == ("Person_0_0", 1, 2)
    assert (pairs[300].name2, pairs[300].n2, pairs[300].same) == ("Other_0_0", 3, False)


def test_one_number_header_is_one_fold(tmp_path):
    path = tmp_path / "pairsDevTest.txt"
    path.write_text("1\nA 1 2\nA 1 B 1\n")
    pairs = read_pairs_txt(path)
    assert [(p.same, p.fold) for p in pairs] == [(True, 0), (False, 0)]


def test_bad_header_names_line_1(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("A 1 2\n")
    with pytest.raises(PairsFileError, match="line 1: expected the header"):
        read_pairs_txt(path)


def test_malformed_line_is_named(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("1 2\nA 1 2\nB 1 x\nA 1 B 1\nA 2 B 2\n")
    with pytest.raises(PairsFileError, match="line 3: expected 'name n1 n2'"):
        read_pairs_txt(path)


def test_a_byte_order_mark_before_the_header_is_ignored(tmp_path):
    # Windows editors save UTF-8 with a BOM; the header used to read as '\ufeff1 1' and be refused.
    path = tmp_path / "pairs.txt"
    path.write_bytes(b"\xef\xbb\xbf1 1\r\nA 1 2\r\nA 1 B 1\r\n")
    assert [(p.name1, p.n1, p.name2, p.n2, p.same) for p in read_pairs_txt(path)] == [("A", 1, "A", 2, True),
                                                                                       ("A", 1, "B", 1, False)]


def test_pair_count_must_match_the_header(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("10 300\nA 1 2\n")
    with pytest.raises(PairsFileError, match=r"promises 10 fold\(s\) of 300 .* but 1 pair lines follow"):
        read_pairs_txt(path)


def test_pairs_txt_loads_images_from_the_root(tmp_path):
    root = _image_root(tmp_path, [("A", 1), ("A", 2), ("B", 1)])
    path = tmp_path / "pairs.txt"
    path.write_text("1 1\nA 1 2\nA 2 B 1\n")
    ps = pairs_from_txt(path, root, (12, 10), 3)
    assert ps.left.tolist() == [0, 1] and ps.right.tolist() == [1, 2]  # A_0002 is stored once
    assert ps.same.tolist() == [True, False] and ps.folds.tolist() == [0, 0] and ps.name == "lfw"
    assert ps.images[2].shape == (3, 12, 10) and ps.images[2].dtype == torch.uint8  # pair_scores scales them


def test_missing_image_fails_validation_with_the_line_number(tmp_path):
    # Grid validation (before any training) names the pairs.txt line of the missing image.
    root = _image_root(tmp_path, [("A", 1), ("A", 2), ("B", 1)])
    for name in ("X", "Y"):  # two identities: a classification head needs at least 2
        faces = tmp_path / "faces" / name
        faces.mkdir(parents=True)
        (faces / "x.jpg").write_bytes(_jpeg(0))
    path = tmp_path / "pairs.txt"
    path.write_text("1 2\nA 1 2\nB 1 2\nA 1 B 1\nA 2 B 1\n")  # B_0002 does not exist
    with pytest.raises(RegistryError, match=r"pairs.txt: 1 image\(s\) .*line 3: .*B_0002.jpg \(missing\)"):
        DATASETS.check("imagefolder", {"root": str(tmp_path / "faces"), "pairs": str(path), "pairs_root": str(root)})


@pytest.mark.parametrize("text", ["1\nA 1 2\nA 1 B 1\n", "1 1\nA 1 2\nA 1 B 1\n"])
def test_a_single_fold_fails_validation(tmp_path, text):
    # The protocol chooses each fold's threshold on the others: a View 1 file (one fold) used to pass validation and
    # end the trial at its first evaluation.
    root = _image_root(tmp_path, [("A", 1), ("A", 2), ("B", 1)])
    for name in ("X", "Y"):
        faces = tmp_path / "faces" / name
        faces.mkdir(parents=True)
        (faces / "x.jpg").write_bytes(_jpeg(0))
    path = tmp_path / "pairs.txt"
    path.write_text(text)
    with pytest.raises(RegistryError, match="pairs.txt holds 1 fold of pairs; verification needs at least two"):
        DATASETS.check("imagefolder", {"root": str(tmp_path / "faces"), "pairs": str(path), "pairs_root": str(root)})


def test_wrong_extension_suggests_image_ext(tmp_path):
    root = _image_root(tmp_path, [("A", 1), ("A", 2)], ext="png")
    path = tmp_path / "pairs.txt"
    path.write_text("1\nA 1 2\nA 1 A 2\n")
    with pytest.raises(FileNotFoundError, match="A_0001.png: set image_ext"):
        pairs_from_txt(path, root, (12, 10), 3)
    assert len(pairs_from_txt(path, root, (12, 10), 3, ext="png").same) == 2


def test_empty_pair_image_is_refused_before_training(tmp_path):
    root = _image_root(tmp_path, [("A", 1)])
    (root / "A" / "A_0002.jpg").write_bytes(b"")
    path = tmp_path / "pairs.txt"
    path.write_text("1\nA 1 2\nA 1 A 2\n")
    with pytest.raises(FileNotFoundError, match=r"line 2: .*A_0002.jpg \(empty file\)"):
        pairs_from_txt(path, root, (12, 10), 3)


def test_pair_image_that_is_not_an_image_is_refused_before_training(tmp_path):
    # an HTML error page saved as a .jpg used to pass validation, and every trial failed at its first evaluation,
    # after a whole epoch of training
    root = _image_root(tmp_path, [("A", 1), ("B", 1)])
    (root / "A" / "A_0002.jpg").write_bytes(b"<html><body>404 Not Found</body></html>")
    for name in ("X", "Y"):  # two identities: a classification head needs at least 2
        faces = tmp_path / "faces" / name
        faces.mkdir(parents=True)
        (faces / "x.jpg").write_bytes(_jpeg(0))
    path = tmp_path / "pairs.txt"
    path.write_text("1 1\nA 1 2\nA 1 B 1\n")
    with pytest.raises(RegistryError, match=r"line 2: .*A_0002.jpg \(not an image: UnidentifiedImageError\); "
                                            r"replace the file"):
        DATASETS.check("imagefolder", {"root": str(tmp_path / "faces"), "pairs": str(path), "pairs_root": str(root)})
    with pytest.raises(FileNotFoundError, match=r"line 2: .*A_0002.jpg \(not an image"):
        pairs_from_txt(path, root, (12, 10), 3)


# insightface .bin -----------------------------------------------------------------------------------
def _write_insightface_bin(path, blobs, issame):
    # insightface's packing scripts: pickle.dump((bins, issame_list), f, protocol=pickle.HIGHEST_PROTOCOL)
    with open(path, "wb") as f:
        pickle.dump((blobs, issame), f, protocol=pickle.HIGHEST_PROTOCOL)


def test_bin_in_insightface_layout_loads(tmp_path):
    blobs = [_jpeg(i) for i in range(40)]
    issame = [i % 2 == 0 for i in range(20)]
    _write_insightface_bin(tmp_path / "lfw.bin", blobs, issame)
    ps = pairs_from_bin(tmp_path / "lfw.bin", (12, 10), 3)
    assert ps.name == "lfw" and ps.same.tolist() == issame
    assert ps.left.tolist() == list(range(0, 40, 2)) and ps.right.tolist() == list(range(1, 40, 2))
    assert ps.folds.tolist() == [k for k in range(10) for _ in range(2)]  # ten consecutive blocks
    expected = np.asarray(Image.open(io.BytesIO(blobs[3])).convert("RGB"))
    np.testing.assert_array_equal(ps.images[3].permute(1, 2, 0).numpy(), expected)  # uint8 pixels, as decoded


def test_bin_written_by_python2_loads_as_bytes(tmp_path):
    # Python 2 pickled the JPEG bytes as str (SHORT_BINSTRING 'U' / BINSTRING 'T'); they must come back as bytes.
    blobs = [_jpeg(1), _jpeg(2)]
    data = b"\x80\x02]q\x00("
    for b in blobs:
        data += (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<I", len(b))) + b
    data += b"e]q\x01\x88a\x86q\x02."
    (tmp_path / "py2.bin").write_bytes(data)
    got, same = read_verification_bin(tmp_path / "py2.bin")
    assert got == blobs and same.tolist() == [True]


def test_a_truncated_bin_says_so_with_its_sizes_and_the_fix(tmp_path):
    # a download cut short read as "not a readable pickle (UnpicklingError: pickle data was truncated)", with
    # nothing to do about it; the layout is Python 2's, written byte by byte, so the full size is known here
    blobs = [_jpeg(1), _jpeg(2)]
    head = b"\x80\x02]q\x00("
    entries = [b"T" + struct.pack("<I", len(b)) + b for b in blobs]  # BINSTRING: 4-byte length, then the bytes
    full = head + b"".join(entries) + b"e]q\x01\x88a\x86q\x02."
    path = tmp_path / "lfw.bin"
    cut = len(head) + len(entries[0]) + 5 + len(blobs[1]) // 2  # halfway through the second image
    path.write_bytes(full[:cut])
    end_of_second = len(head) + len(entries[0]) + len(entries[1])  # what the second image's length says
    truncated = rf"{re.escape(str(path))}: the file is truncated \({cut} bytes read, at least {end_of_second} expected"
    with pytest.raises(PairsFileError, match=truncated + r".*\): download it again"):
        read_verification_bin(path)
    path.write_bytes(full[:-1])  # only STOP missing
    with pytest.raises(PairsFileError, match=rf"truncated \({len(full) - 1} bytes read, at least {len(full)} "):
        read_verification_bin(path)
    path.write_bytes(b"")
    with pytest.raises(PairsFileError, match=r"the file is empty \(0 bytes\): download it again"):
        read_verification_bin(path)
    damaged = full[:len(head)] + b"\xff" + full[len(head) + 1:]  # an unknown opcode: damage, not a short file
    path.write_bytes(damaged)
    with pytest.raises(PairsFileError, match=r"not a readable pickle") as err:
        read_verification_bin(path)
    assert "the file is truncated" not in str(err.value)
    path.write_bytes(full)
    assert read_verification_bin(path)[0] == blobs


def test_a_truncated_bin_fails_validation_naming_the_file(tmp_path):
    path = tmp_path / "agedb_30.bin"
    _write_insightface_bin(path, [_jpeg(i) for i in range(4)], [True, False])
    path.write_bytes(path.read_bytes()[:-200])
    for name in ("X", "Y"):
        (tmp_path / "faces" / name).mkdir(parents=True)
        (tmp_path / "faces" / name / "0.jpg").write_bytes(_jpeg(0))
    with pytest.raises(RegistryError, match=rf"{re.escape(str(path))}: the file is truncated .*download it again"):
        DATASETS.check("imagefolder", {"root": str(tmp_path / "faces"), "bin": str(path)})


def test_bin_with_numpy_issame_loads(tmp_path):
    _write_insightface_bin(tmp_path / "cfp_fp.bin", [_jpeg(1), _jpeg(2), _jpeg(3), _jpeg(4)], np.array([True, False]))
    _, same = read_verification_bin(tmp_path / "cfp_fp.bin")
    assert same.tolist() == [True, False]


class _Opens:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))  # would create the file if called


class _System:
    def __reduce__(self):
        return (os.system, ("echo owned",))


def test_pickle_that_calls_a_function_is_refused_without_side_effect(tmp_path):
    marker = tmp_path / "created_by_pickle"
    path = tmp_path / "agedb_30.bin"
    _write_insightface_bin(path, [_jpeg(1), _Opens(str(marker))], [True])
    refused = r"refused to load '(builtins|_?io)\.open'.*cannot run code.*Nothing was executed"  # _io: Python 3.12
    with pytest.raises(UnsafePickleError, match=refused):
        read_verification_bin(path)
    assert not marker.exists()


def test_os_system_pickle_is_refused_at_validation(tmp_path):
    path = tmp_path / "lfw.bin"
    with open(path, "wb") as f:
        pickle.dump(([_System()], [True]), f)
    for name in ("X", "Y"):
        (tmp_path / "faces" / name).mkdir(parents=True)
        (tmp_path / "faces" / name / "0.jpg").write_bytes(b"")
    with pytest.raises(RegistryError, match=r"refused to load '(posix|os)\.system'"):
        DATASETS.check("imagefolder", {"root": str(tmp_path / "faces"), "bin": str(path)})


def test_bin_with_wrong_layout_is_named(tmp_path):
    path = tmp_path / "x.bin"
    _write_insightface_bin(path, [_jpeg(1)], [True, False])
    with pytest.raises(PairsFileError, match="1 images for 2 pairs"):
        read_verification_bin(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(PairsFileError, match="not a readable pickle"):
        read_verification_bin(path)


def test_grid_naming_a_missing_pair_image_fails_before_training(tmp_path):
    # The whole grid is validated before any trial starts; the error carries the pairs.txt line number.
    from bench.grid import GridError, load_grid

    root = _image_root(tmp_path, [("A", 1), ("A", 2), ("B", 1)])
    for name in ("X", "Y"):
        (tmp_path / "faces" / name).mkdir(parents=True)
        (tmp_path / "faces" / name / "x.jpg").write_bytes(_jpeg(0))
    (tmp_path / "pairs.txt").write_text("1 2\nA 1 2\nA 1 2\nA 1 B 1\nA 2 C 7\n")  # C_0007 does not exist
    grid = tmp_path / "faces.yaml"
    grid.write_text(f"name: faces\nbase:\n  dataset: {{name: imagefolder, root: '{tmp_path / 'faces'}', "
                    f"pairs: '{tmp_path / 'pairs.txt'}', pairs_root: '{root}'}}\n  backbone: lenet++\n"
                    f"  loss: softmax\n  epochs: 1\n")
    with pytest.raises(GridError, match=r"line 5: .*C_0007.jpg \(missing\)"):
        load_grid(grid, env={})


def test_pairs_name_must_suit_mlflow_metric_keys(tmp_path):
    # it prefixes the metrics (<name>_acc); MLflow refuses '(' in a key, so every epoch's write used to fail
    for name in ("X", "Y"):
        (tmp_path / "faces" / name).mkdir(parents=True)
        (tmp_path / "faces" / name / "x.jpg").write_bytes(_jpeg(0))
    with pytest.raises(RegistryError, match=r"pairs_name must be letters, digits.*but got 'lfw \(aligned\)'"):
        DATASETS.check("imagefolder", {"root": str(tmp_path / "faces"), "pairs_name": "lfw (aligned)"})
    DATASETS.check("imagefolder", {"root": str(tmp_path / "faces"), "pairs_name": "lfw-mtcnn 112x96"})


def test_a_pair_sets_default_name_from_its_folder_is_made_safe_for_metric_keys(tmp_path):
    from mlflow.utils.validation import _validate_metric_name

    root = _image_root(tmp_path, [("A", 1), ("A", 2), ("B", 1)]).rename(tmp_path / "lfw (aligned)")
    path = tmp_path / "pairs.txt"
    path.write_text("1 1\nA 1 2\nA 2 B 1\n")
    name = pairs_from_txt(path, root, (12, 10), 3).name
    assert name == "lfw _aligned_"
    _validate_metric_name(f"{name}_acc")  # MLflow's own check: raises on what it refuses


def test_a_one_byte_bin_says_byte_not_bytes(tmp_path):
    # b"\x80" is the PROTO opcode without its one-byte argument: 1 byte read, 2 expected ("1 bytes read" before)
    path = tmp_path / "lfw.bin"
    path.write_bytes(b"\x80")
    with pytest.raises(PairsFileError, match=r"the file is truncated \(1 byte read, at least 2 expected by"):
        read_verification_bin(path)
