"""The IDX reader against files written byte by byte in the test (the format's spec, not our writer)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from registry import DATASETS, RegistryError
from registry.datasets.idx import IDXError, read_idx, write_idx
from registry.datasets.mnist import find_idx_files, load_idx_pair


def _idx_bytes(array: np.ndarray) -> bytes:
    # Spec: 0x00 0x00, type 0x08 (unsigned byte), ndim, then big-endian uint32 sizes, then the data.
    return bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


@pytest.mark.parametrize("gz", [False, True])
def test_reads_images_raw_and_gz(tmp_path, gz):
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    path = tmp_path / ("img.idx.gz" if gz else "img.idx")
    data = _idx_bytes(images)
    path.write_bytes(gzip.compress(data) if gz else data)
    np.testing.assert_array_equal(read_idx(path), images)


def test_reads_int32_big_endian(tmp_path):
    values = np.array([1, -2, 70000], dtype=">i4")
    path = tmp_path / "v.idx"
    path.write_bytes(bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 3) + values.tobytes())
    np.testing.assert_array_equal(read_idx(path), [1, -2, 70000])


def test_writer_round_trips(tmp_path):
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    write_idx(tmp_path / "l.gz", labels)
    np.testing.assert_array_equal(read_idx(tmp_path / "l.gz"), labels)


def test_truncated_file_gives_a_clear_error(tmp_path):
    images = np.zeros((10, 28, 28), dtype=np.uint8)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(_idx_bytes(images)[:-100])
    with pytest.raises(IDXError, match=r"truncated or padded: header says shape \(10, 28, 28\)"):
        read_idx(path)


def test_truncated_gzip_gives_a_clear_error(tmp_path):
    path = tmp_path / "x.gz"
    noise = np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    path.write_bytes(gzip.compress(_idx_bytes(noise))[:2000])
    with pytest.raises(IDXError, match="damaged or truncated"):
        read_idx(path)


def test_bad_magic_is_refused(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"\x89PNG....")
    with pytest.raises(IDXError, match="not an IDX file"):
        read_idx(path)


HTML_404 = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"
REFETCH = "delete it and download it again (download: true fetches only the files that are missing"
ELSEWHERE = "if the real IDX files are in another folder, point the dataset's root at that folder"


@pytest.mark.parametrize("name, content, what", [
    # a failed download saved its error page under the file's name
    ("t10k-labels-idx1-ubyte", HTML_404, "(magic bytes 3c21444f): it looks like an HTML or XML page"),
    ("t10k-labels-idx1-ubyte.gz", gzip.compress(HTML_404), "(magic bytes 3c21444f): it looks like an HTML"),
    ("t10k-labels-idx1-ubyte", b"", "(magic bytes missing): the file is empty"),
    ("t10k-labels-idx1-ubyte", b"\x00\x00", "(magic bytes 0000): the file ends within the 4 bytes"),
    ("t10k-labels-idx1-ubyte", b"PK\x03\x04zip", "(magic bytes 504b0304): an MNIST-format IDX file starts with two "
                                                  "zero bytes; this one is damaged or another kind of file"),
])
@pytest.mark.parametrize("reader", ["read_idx", "idx_shape"])
def test_a_file_that_is_not_idx_names_the_file_and_the_fix(tmp_path, name, content, what, reader):
    # before: "<path>: not an IDX file (magic bytes 3c21444f)", with nothing on what to do
    from registry.datasets import idx

    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(IDXError) as err:
        getattr(idx, reader)(path)
    assert str(err.value).startswith(f"{path}: not an IDX file {what}")
    assert str(err.value).endswith(f"; {REFETCH}, so it keeps a damaged one), or, {ELSEWHERE}")


@pytest.mark.parametrize("reader", ["read_idx", "idx_shape"])
def test_a_gzip_saved_without_gz_says_to_rename_it_and_the_rename_reads(tmp_path, reader):
    from registry.datasets import idx

    labels = np.arange(10, dtype=np.uint8)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(gzip.compress(_idx_bytes(labels)))
    with pytest.raises(IDXError) as err:
        getattr(idx, reader)(path)
    assert str(err.value) == (f"{path}: not an IDX file as named (magic bytes 1f8b0800): it is gzip-compressed but "
                              f"its name does not end in .gz; rename it to t10k-labels-idx1-ubyte.gz, so that it is "
                              f"read through gzip")
    path.rename(tmp_path / "t10k-labels-idx1-ubyte.gz")  # the fix, as the message says it
    np.testing.assert_array_equal(read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz"), labels)


@pytest.mark.parametrize("reader", ["read_idx", "idx_shape"])
def test_a_gz_compressed_twice_says_to_gunzip_it_once_and_that_reads(tmp_path, reader):
    from registry.datasets import idx

    labels = np.arange(10, dtype=np.uint8)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.compress(_idx_bytes(labels))))
    with pytest.raises(IDXError) as err:
        getattr(idx, reader)(path)
    assert str(err.value).startswith(
        f"{path}: not an IDX file (magic bytes 1f8b0800): it is gzip-compressed twice; gunzip it once (gunzip "
        f"t10k-labels-idx1-ubyte.gz leaves t10k-labels-idx1-ubyte, compressed once) and rename the result to "
        f"t10k-labels-idx1-ubyte.gz, or {REFETCH}")
    path.write_bytes(gzip.decompress(path.read_bytes()))  # gunzip once, under the same name
    np.testing.assert_array_equal(read_idx(path), labels)


@pytest.mark.parametrize("reader", ["read_idx", "idx_shape"])
def test_an_unknown_type_code_names_the_file_and_the_fix(tmp_path, reader):
    # 0x07 is no IDX type (the spec's are 0x08, 0x09, 0x0B..0x0E); before: the valid codes only, no fix
    from registry.datasets import idx

    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 0x07, 1]) + struct.pack(">I", 3) + bytes(3))
    with pytest.raises(IDXError) as err:
        getattr(idx, reader)(path)
    assert str(err.value) == (f"{path}: unknown IDX type code 0x07 (valid: 0x08, 0x09, 0x0b, 0x0c, 0x0d, 0x0e; "
                              f"MNIST's files use 0x08, unsigned bytes): the file is damaged or not an MNIST-format "
                              f"IDX file; {REFETCH}, so it keeps a damaged one), or, {ELSEWHERE}")


@pytest.mark.parametrize("content, what", [
    # a failed download (a 404 or a login page) saved, uncompressed, under the .gz name
    (HTML_404, "(magic bytes 3c21444f): it is an HTML page, not gzip-compressed, such as the error or login page of "
               "a failed download saved under this name"),
    (b"\xef\xbb\xbf\n  <html><body>Sign in</body></html>\n", "(magic bytes efbbbf0a): it is an HTML page"),
    (b"", "(magic bytes missing): the file is empty (an interrupted download or copy)"),
    (b"PK\x03\x04zip", "(magic bytes 504b0304): a .gz file starts with gzip's magic bytes 1f8b; this one is damaged "
                       "or another kind of file"),
])
@pytest.mark.parametrize("reader", ["read_idx", "idx_shape"])
def test_a_gz_that_is_not_gzip_says_what_it_is_and_the_fix(tmp_path, content, what, reader):
    # before: "<path>: cannot read (Not a gzipped file (b'<!')); the file is damaged or truncated: ..." for the page,
    # and idx_shape's "cannot read ([Errno 22] Invalid argument)" for an empty file
    from registry.datasets import idx

    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(IDXError) as err:
        getattr(idx, reader)(path)
    assert str(err.value).startswith(f"{path}: not a gzip-compressed IDX file {what}")
    assert str(err.value).endswith(f"; {REFETCH}, so it keeps a damaged one), or, {ELSEWHERE}")


@pytest.mark.parametrize("reader", ["read_idx", "idx_shape"])
def test_an_uncompressed_idx_named_gz_says_to_rename_it_and_the_rename_reads(tmp_path, reader):
    from registry.datasets import idx

    labels = np.arange(10, dtype=np.uint8)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(_idx_bytes(labels))
    with pytest.raises(IDXError) as err:
        getattr(idx, reader)(path)
    assert str(err.value) == (f"{path}: not a gzip-compressed IDX file (magic bytes 00000801): it is an uncompressed "
                              f"IDX file whose name ends in .gz; rename it to t10k-labels-idx1-ubyte, so that it is "
                              f"read as it is")
    path.rename(tmp_path / "t10k-labels-idx1-ubyte")  # the fix, as the message says it
    np.testing.assert_array_equal(read_idx(tmp_path / "t10k-labels-idx1-ubyte"), labels)


def test_an_html_page_in_place_of_an_idx_file_fails_the_grid_naming_the_file_and_the_fix(tmp_path):
    from bench.grid import GridError, load_grid
    from tests.conftest import write_tiny_mnist

    write_tiny_mnist(tmp_path / "mnist")
    page = tmp_path / "mnist" / "train-images-idx3-ubyte"
    page.write_bytes(HTML_404)
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"name: g\nbase: {{dataset: {{name: mnist, root: {tmp_path / 'mnist'}}}, epochs: 1}}\n")
    with pytest.raises(GridError) as err:
        load_grid(grid)
    assert err.value.key == "base.dataset" and len(err.value.problems) == 1
    assert f"{page}: not an IDX file (magic bytes 3c21444f): it looks like an HTML" in str(err.value)
    assert REFETCH in str(err.value) and ELSEWHERE in str(err.value)


def test_missing_files_are_named_with_where_they_were_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        find_idx_files(tmp_path)
    assert "t10k-labels-idx1-ubyte[.gz]" in str(err.value) and str(tmp_path) in str(err.value)


def test_mnist_layout_loads_normalized_tensors(tmp_path):
    rng = np.random.default_rng(0)
    for stem, n in (("train", 6), ("t10k", 4)):
        (tmp_path / f"{stem}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(_idx_bytes(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))))
        (tmp_path / f"{stem}-labels-idx1-ubyte").write_bytes(_idx_bytes(np.arange(n, dtype=np.uint8) % 10))
    train, test = load_idx_pair(tmp_path)
    assert train.images.shape == (6, 1, 28, 28) and test.labels.tolist() == [0, 1, 2, 3]
    raw = read_idx(tmp_path / "train-images-idx3-ubyte.gz").astype(np.float64) / 255.0
    np.testing.assert_allclose(train.images[:, 0].numpy(), (raw - 0.1307) / 0.3081, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, params, message", [
    ("mnist", {"limit": -1}, "limit must be an int >= 1"),  # a negative slice would drop the last images
    ("mnist", {"limit": 0}, "limit must be an int >= 1"),  # empty splits
    ("mnist", {"limit": 2.5}, "limit must be an int >= 1"),  # a TypeError inside the factory, mid-trial
    ("mnist", {"repeat": 0}, "repeat must be an int >= 1"),  # quietly one copy
    ("mnist", {"repeat": 1.5}, "repeat must be an int >= 1"),
    ("fashion-mnist", {"limit": -3}, "limit must be an int >= 1"),
])
def test_limit_and_repeat_below_one_fail_validation(tmp_path, name, params, message):
    with pytest.raises(RegistryError, match=message):
        DATASETS.check(name, {"root": str(tmp_path), "download": True, **params})


@pytest.mark.parametrize("gz", [False, True])
def test_a_damaged_file_says_to_delete_it_as_download_keeps_a_file_that_exists(tmp_path, gz):
    # before: "download it again", but download: true skips a file that is there, damaged or not
    from registry.datasets.idx import idx_shape
    from registry.datasets.mnist import MNIST_FILES, download_idx

    labels = np.arange(10, dtype=np.uint8)
    for stem in MNIST_FILES.values():
        data = _idx_bytes(labels)[:-3]  # 10 labels promised, 7 there
        (tmp_path / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(data) if gz else data)
    damaged = tmp_path / ("t10k-labels-idx1-ubyte" + (".gz" if gz else ""))
    before = damaged.read_bytes()
    for read in (read_idx, idx_shape):
        with pytest.raises(IDXError, match=r"delete it and download it again \(download: true fetches only the "
                                           r"files that are missing"):
            read(damaged)
    download_idx(tmp_path, url="http://127.0.0.1:9/")  # a closed port: it would fail if it fetched anything
    assert damaged.read_bytes() == before
