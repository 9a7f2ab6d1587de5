"""``imagefolder``: root/<identity>/<image> decoded in DataLoader workers, split by images or identities,
unreadable files skipped, counted and reported (never a crash)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from registry import DATASETS, RegistryError
from registry.datasets import SkippedSample, collate_skipping
from registry.datasets._images import normalize_uint8
from registry.datasets.imagefolder import FaceImages, scan_image_folder, split_samples
from registry.datasets.synthetic_faces import write_image_folder


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """Eight training identities of five 20x16 RGB faces, pairs.txt over four held-out identities."""
    root = tmp_path_factory.mktemp("faces") / "synthetic"
    return write_image_folder(root, identities=8, images_per_identity=5, image_size=[20, 16], in_chans=3,
                              test_identities=4, pairs_per_fold=2, folds=10, fmt="png", write_bin=True)


@pytest.fixture
def broken(tmp_path):
    """Three identities of four JPEGs plus one corrupt JPEG and one empty file."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(3):
        (tmp_path / f"p{i}").mkdir()
        for j in range(4):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / f"p{i}" / f"{j}.jpg")
    good = (tmp_path / "p0" / "0.jpg").read_bytes()
    (tmp_path / "p1" / "corrupt.jpg").write_bytes(good[: len(good) // 3])  # truncated mid-scan
    (tmp_path / "p2" / "empty.jpg").write_bytes(b"")
    (tmp_path / "p2" / "notes.txt").write_text("not an image")  # ignored: not an image ending
    return tmp_path


def test_scan_lists_identities_in_order(broken):
    classes, samples = scan_image_folder(broken)
    assert classes == ["p0", "p1", "p2"]
    assert len(samples) == 14 and {label for _, label in samples} == {0, 1, 2}


def test_missing_root_fails_validation(tmp_path):
    with pytest.raises(RegistryError, match="does not exist; set root"):
        DATASETS.check("imagefolder", {"root": str(tmp_path / "nope")})


def test_unknown_split_is_refused(tmp_path):
    with pytest.raises(RegistryError, match="split must be one of images, identities, none"):
        DATASETS.check("imagefolder", {"root": str(tmp_path), "split": "people"})


def test_unreadable_files_become_skipped_samples(broken):
    _, samples = scan_image_folder(broken)
    ds = FaceImages(samples, (16, 16), 3)
    items = {path: ds[i] for i, (path, _) in enumerate(samples)}
    bad = {p: it for p, it in items.items() if isinstance(it, SkippedSample)}
    assert sorted(p.rsplit("/", 1)[1] for p in bad) == ["corrupt.jpg", "empty.jpg"]
    assert "empty file" in bad[str(broken / "p2" / "empty.jpg")].reason
    assert "OSError" in bad[str(broken / "p1" / "corrupt.jpg")].reason


def test_collate_drops_skipped_and_returns_them():
    image = torch.zeros(3, 4, 4)
    skipped = SkippedSample("x.jpg", "empty file")
    images, labels, dropped = collate_skipping([(image, 1), skipped, (image, 2)])
    assert images.shape == (2, 3, 4, 4) and labels.tolist() == [1, 2] and dropped == [skipped]
    images, labels, dropped = collate_skipping([skipped])
    assert len(labels) == 0 and dropped == [skipped]


def test_workers_decode_everything_readable_and_hand_back_the_rest(broken):
    # Decoding happens in two DataLoader worker processes; nothing crashes, both bad files come back.
    bundle = DATASETS.create("imagefolder", root=str(broken), split="none", image_size=16)
    loader = DataLoader(bundle.train, batch_size=5, num_workers=2, collate_fn=collate_skipping)
    seen, skipped = 0, []
    for images, labels, bad in loader:
        assert images.shape[1:] == (3, 16, 16) and images.dtype == torch.uint8  # scaled on the device
        seen += len(labels)
        skipped += bad
    assert seen == 12 and sorted(s.path.rsplit("/", 1)[1] for s in skipped) == ["corrupt.jpg", "empty.jpg"]


def test_batches_scale_uint8_pixels_as_insightface_does(broken):
    # What the trial trains on from an image folder: PIL's pixels, (p - 127.5) / 127.5, computed here in
    # float64 from the file with PIL directly, in the order of the files (no shuffle, no flip).
    from PIL import Image

    from bench.data import Batches

    bundle = DATASETS.create("imagefolder", root=str(broken), split="none", image_size=16, flip=False)
    batches = Batches(bundle.train, 4, torch.device("cpu"), num_workers=2)
    images = torch.cat([x for x, _ in batches])
    assert images.dtype == torch.float32 and len(batches.skips) == 2
    readable = [path for path, _ in bundle.train.samples if not path.endswith(("corrupt.jpg", "empty.jpg"))]
    expected = np.stack([(np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) - 127.5) / 127.5
                         for path in readable]).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(images.numpy(), expected, rtol=0, atol=1e-7)


def test_loader_workers_default_to_none_on_the_cpu_else_the_cores_less_one():
    from bench.data import MAX_LOADER_WORKERS, default_loader_workers

    cuda = torch.device("cuda", 0)  # only the type is read
    assert [default_loader_workers(cuda, c) for c in (1, 2, 8, 64)] == [1, 1, 7, MAX_LOADER_WORKERS]
    assert default_loader_workers(cuda) == max(1, min(MAX_LOADER_WORKERS, torch.get_num_threads() - 1))
    assert default_loader_workers(torch.device("cpu"), 16) == 0


def test_split_by_images_keeps_every_identity_in_train():
    samples = [(f"{c}/{j}.jpg", c) for c in range(5) for j in range(10)] + [("5/0.jpg", 5)]
    train, test = split_samples(samples, "images", 0.2, seed=0)
    assert len(test) == 10 and {label for _, label in train} == set(range(6))
    assert {label for _, label in test} == set(range(5))  # the one-image identity stays in train
    assert split_samples(samples, "images", 0.2, seed=0) == (train, test)  # fixed for a seed


def test_split_by_identities_holds_whole_identities_out(faces):
    bundle = DATASETS.create("imagefolder", root=str(faces["train"]), split="identities", test_fraction=0.25,
                             pairs_per_fold=3)
    assert bundle.num_classes == 6 and bundle.test is None
    assert sorted({label for _, label in bundle.train.samples}) == list(range(6))  # relabelled 0..5
    pairs = bundle.pairs
    assert len(pairs.same) == 60 and pairs.same.sum() == 30 and pairs.folds.max() == 9
    held = {pairs.images.images.samples[int(i)][0].split("/")[-2] for i in torch.cat([pairs.left, pairs.right])}
    trained = {path.split("/")[-2] for path, _ in bundle.train.samples}
    assert held and not held & trained  # verification identities were never trained on
    assert pairs.images[0].shape == (3, 20, 16)


def test_flip_is_random_and_seeded(faces):
    bundle = DATASETS.create("imagefolder", root=str(faces["train"]), split="none")
    plain = FaceImages(bundle.train.samples[:1], (20, 16), 3, uint8=True)[0][0]
    torch.manual_seed(0)
    flips = [bool(torch.equal(bundle.train[0][0], plain.flip(-1))) for _ in range(20)]
    torch.manual_seed(0)
    again = [bool(torch.equal(bundle.train[0][0], plain.flip(-1))) for _ in range(20)]
    assert 0 < sum(flips) < 20 and flips == again


def test_grayscale_and_resizing(faces):
    bundle = DATASETS.create("imagefolder", root=str(faces["train"]), in_chans=1, image_size=[28, 28],
                             test_fraction=0.2)
    image, label = bundle.test[0]
    assert image.shape == (1, 28, 28) and bundle.in_chans == 1 and bundle.image_size == (28, 28)
    assert len(bundle.train) == 32 and len(bundle.test) == 8


def test_on_disk_pairs_are_the_in_memory_synthetic_pairs(faces):
    # The folder + pairs.txt written by synthetic-faces reload, through imagefolder, as the very same pairs.
    disk = DATASETS.create("imagefolder", root=str(faces["train"]), pairs=str(faces["pairs_txt"]),
                           pairs_root=str(faces["pairs_root"]), image_ext="png")
    memory = DATASETS.create("synthetic-faces", identities=8, images_per_identity=5, image_size=[20, 16],
                             in_chans=3, test_identities=4, pairs_per_fold=2, folds=10).pairs
    assert torch.equal(disk.pairs.same, memory.same) and torch.equal(disk.pairs.folds, memory.folds)
    for side in ("left", "right"):
        got = normalize_uint8(torch.stack([disk.pairs.images[int(i)] for i in getattr(disk.pairs, side)]))
        want = memory.images[getattr(memory, side)]
        assert (got - want).abs().max() <= 1 / 127.5 + 1e-6  # PNG keeps 8 bits
    assert disk.num_classes == 8


def test_bin_pairs_match_the_pairs_txt(faces):
    via_bin = DATASETS.create("imagefolder", root=str(faces["train"]), bin=str(faces["bin"])).pairs
    via_txt = DATASETS.create("imagefolder", root=str(faces["train"]), pairs=str(faces["pairs_txt"]),
                              pairs_root=str(faces["pairs_root"]), image_ext="png").pairs
    assert torch.equal(via_bin.same, via_txt.same) and via_bin.name == "synthetic"
    for k in (0, 7, 39):
        assert torch.equal(via_bin.images[int(via_bin.left[k])], via_txt.images[int(via_txt.left[k])])
        assert torch.equal(via_bin.images[int(via_bin.right[k])], via_txt.images[int(via_txt.right[k])])


def test_pairs_name_names_the_metrics_of_a_bin_too(faces):
    # pairs_name was ignored for a .bin (its metrics kept the file's name), so an objective.metric written with
    # the pairs_name found nothing
    named = DATASETS.create("imagefolder", root=str(faces["train"]), bin=str(faces["bin"]), pairs_name="agedb").pairs
    assert named.name == "agedb"
    txt = DATASETS.create("imagefolder", root=str(faces["train"]), pairs=str(faces["pairs_txt"]),
                          pairs_root=str(faces["pairs_root"]), image_ext="png").pairs
    assert txt.name == "lfw"  # the default for a pairs.txt stays lfw


def test_pairs_and_bin_together_are_refused(faces):
    with pytest.raises(RegistryError, match="either pairs .* or bin"):
        DATASETS.check("imagefolder", {"root": str(faces["train"]), "pairs": str(faces["pairs_txt"]),
                                       "bin": str(faces["bin"])})


@pytest.mark.parametrize(("identities", "params", "says"), [
    (0, {}, "has 0 identity folders; a classification head needs at least 2"),
    (1, {}, "has 1 identity folder; a classification head needs at least 2"),
    (2, {"split": "identities"}, "holds out 2 of 2 identities, leaving none to train"),
])
def test_too_few_identity_folders_fail_at_validation(tmp_path, identities, params, says):
    (tmp_path / ".hidden").mkdir()  # hidden folders are not identities
    for i in range(identities):
        (tmp_path / f"id{i}").mkdir()
        (tmp_path / f"id{i}" / "0.jpg").write_bytes(b"")
    with pytest.raises(RegistryError, match=says):
        DATASETS.check("imagefolder", {"root": str(tmp_path), **params})


def test_three_identities_validate_for_an_identity_split(tmp_path):
    for i in range(3):
        (tmp_path / f"id{i}").mkdir()
        (tmp_path / f"id{i}" / "0.jpg").write_bytes(b"")
    DATASETS.check("imagefolder", {"root": str(tmp_path), "split": "identities", "test_fraction": 0.3})


@pytest.mark.parametrize(("with_images", "says"), [(0, "none holds image files"), (1, "only 'id0' holds image files")])
def test_identity_folders_without_images_fail_at_validation(tmp_path, with_images, says):
    # a root one level too high (root/train, root/test holding identity folders) or folders of other files:
    # the folders count 2, but a trial would find fewer than 2 identities; refused before any training
    for i in range(2):
        (tmp_path / f"id{i}" / "nested").mkdir(parents=True)
        (tmp_path / f"id{i}" / "notes.txt").write_text("not an image")
    for i in range(with_images):
        (tmp_path / f"id{i}" / "0.jpg").write_bytes(b"")
    with pytest.raises(RegistryError, match=f"has 2 identity folders, but {says}"):
        DATASETS.check("imagefolder", {"root": str(tmp_path)})


@pytest.mark.parametrize("good, size", [(112, (112, 112)), ([112, 96], (112, 96)), ((64, 48), (64, 48))])
def test_image_size_forms(good, size):
    from registry.datasets._images import parse_image_size

    assert parse_image_size(good) == size


@pytest.mark.parametrize("bad", ["12", "112x96", [112.7, 96], [112], [112, 0], True, [True, 96], None])
def test_image_size_is_refused_rather_than_guessed(bad):
    # "12" used to become (1, 2) and [112.7, 96] (112, 96), silently
    from registry.datasets._images import parse_image_size

    with pytest.raises(ValueError, match=r"image_size must be \[height, width\] or one int"):
        parse_image_size(bad)
