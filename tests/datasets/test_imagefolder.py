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


def _converted_pairs(faces, tmp_path, convert) -> str:
    """A copy of the faces' pair images, each passed through ``convert`` (a PIL image -> PIL image)."""
    import shutil

    from PIL import Image

    copy = tmp_path / "pairs"
    shutil.copytree(faces["pairs_root"], copy)
    for path in copy.rglob("*.png"):
        with Image.open(path) as im:
            converted = convert(im)
        converted.save(path)
    return str(copy)


def _named_images(pairs_txt) -> list[str]:
    """``name/name_NNNN`` of each distinct image a pairs.txt names, in the order they first appear."""
    named: dict[str, None] = {}
    for line in open(pairs_txt).read().splitlines()[1:]:
        f = line.split()
        for name, n in ((f[0], f[1]), (f[0], f[2])) if len(f) == 3 else ((f[0], f[1]), (f[2], f[3])):
            named.setdefault(f"{name}/{name}_{int(n):04d}")
    return list(named)


def test_pair_images_of_another_size_are_refused_before_training(faces, tmp_path):
    # 20x16 training faces, pair images resized to 60x48 (unaligned photos, say): they were resized back at each
    # evaluation without a word, so the model was evaluated on another crop than it trained on
    pairs_root = _converted_pairs(faces, tmp_path, lambda im: im.resize((48, 60)))
    with pytest.raises(RegistryError) as err:
        DATASETS.create("imagefolder", root=str(faces["train"]), pairs=str(faces["pairs_txt"]), pairs_root=pairs_root,
                        image_ext="png")
    message = str(err.value)
    named = _named_images(faces["pairs_txt"])
    assert f"{faces['pairs_txt']}: {len(named)} of {len(named)} pair images are not 20x16 (height x width)" in message
    assert f"like the training images under {faces['train']} (the first 40 read)" in message
    assert f"{pairs_root}/{named[0]}.png is 60x48; {pairs_root}/{named[1]}.png is 60x48" in message
    assert f"and {len(named) - 3} more" in message and "set pairs_root to the aligned copy" in message


def test_greyscale_pair_images_for_colour_training_images_are_refused(faces, tmp_path):
    pairs_root = _converted_pairs(faces, tmp_path, lambda im: im.convert("L"))
    params = dict(root=str(faces["train"]), pairs=str(faces["pairs_txt"]), pairs_root=pairs_root, image_ext="png")
    with pytest.raises(RegistryError) as err:
        DATASETS.check("imagefolder", params)
    message = str(err.value)
    named = _named_images(faces["pairs_txt"])
    assert f"{len(named)} of {len(named)} pair images are greyscale but the training images under" in message
    assert "are colour and in_chans is 3" in message and f"{pairs_root}/{named[0]}.png is L" in message
    assert "use colour copies of them (set pairs_root to those), or train and evaluate in greyscale" in message
    # in greyscale both become grey: nothing to refuse
    assert DATASETS.create("imagefolder", in_chans=1, **params).pairs.images[0].shape == (1, 20, 16)


def test_a_bin_of_another_size_is_refused_before_training(faces, tmp_path):
    # the .bin's 80 images (two per pair) re-encoded at 24x24, against 20x16 training faces
    import io

    from PIL import Image

    from registry.datasets.pairs import read_verification_bin, write_verification_bin

    blobs, same = read_verification_bin(faces["bin"])
    resized = []
    for blob in blobs:
        out = io.BytesIO()
        Image.open(io.BytesIO(blob)).resize((24, 24)).save(out, format="PNG")
        resized.append(out.getvalue())
    path = tmp_path / "other.bin"
    write_verification_bin(path, resized, same.tolist())
    with pytest.raises(RegistryError) as err:
        DATASETS.check("imagefolder", {"root": str(faces["train"]), "bin": str(path)})
    message = str(err.value)
    assert f"{path}: 80 of 80 pair images are not 20x16" in message
    assert "image 0 is 24x24; image 1 is 24x24; image 2 is 24x24; and 77 more" in message
    assert "set bin to the aligned copy" in message


def test_a_bin_image_that_is_no_image_is_named(faces, tmp_path):
    # only image 0 was decoded before: image 5 (an HTML page) failed at the first evaluation
    from registry.datasets.pairs import read_verification_bin, write_verification_bin

    blobs, same = read_verification_bin(faces["bin"])
    blobs[5] = b"<html>not found</html>"
    path = tmp_path / "damaged.bin"
    write_verification_bin(path, blobs, same.tolist())
    with pytest.raises(RegistryError, match=rf"{path}: 1 of 80 images are not a JPEG/PNG: image 5 "
                                            rf"\(UnidentifiedImageError"):
        DATASETS.check("imagefolder", {"root": str(faces["train"]), "bin": str(path)})


def test_training_images_of_several_sizes_are_compared_with_nothing(faces, tmp_path):
    # a training folder of unaligned photos of any size: no size the pairs should have, so none is asked
    import shutil

    from PIL import Image

    train = tmp_path / "train"
    shutil.copytree(faces["train"], train)
    first = sorted(train.rglob("*.png"))[0]
    with Image.open(first) as im:
        im.resize((30, 30)).save(first)
    pairs_root = _converted_pairs(faces, tmp_path, lambda im: im.resize((48, 60)))
    bundle = DATASETS.create("imagefolder", root=str(train), image_size=[20, 16], pairs=str(faces["pairs_txt"]),
                             pairs_root=pairs_root, image_ext="png")
    assert bundle.pairs.images[0].shape == (3, 20, 16)
