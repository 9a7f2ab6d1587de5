"""pair_scores: the flip test (sum of the image's and its mirror's embeddings), then cosine, for tensors and
Datasets; decoded_pairs: image files decoded once for every epoch's evaluation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from bench.spec import TrialSpec
from bench.trial import TrialOptions, run_trial
from bench.verification import decoded_pairs, pair_scores, verification_metrics
from registry import DATASETS
from registry.datasets import PairSet, SkippedSample, _images
from registry.datasets._images import decode_image_uint8
from registry.datasets.pairs import pairs_from_bin, pairs_from_txt
from registry.datasets.synthetic_faces import write_image_folder


def make_pairs(images) -> PairSet:
    left = torch.tensor([0, 0, 2, 3])
    right = torch.tensor([1, 2, 3, 1])
    return PairSet(images=images, left=left, right=right, same=torch.tensor([True, False, True, False]),
                   folds=torch.tensor([0, 0, 1, 1]), name="toy")


def left_right_embed(x: torch.Tensor) -> torch.Tensor:
    """A 2-d embedding that sees left/right: mean of the left half and of the right half of the image."""
    w = x.shape[-1]
    return torch.stack([x[..., : w // 2].mean((1, 2, 3)), x[..., w // 2:].mean((1, 2, 3))], 1)


def reference(images: torch.Tensor, pairs: PairSet, flip: bool) -> np.ndarray:
    feats = left_right_embed(images).double()
    if flip:
        feats = feats + left_right_embed(images.flip(-1)).double()
    feats = feats / feats.norm(dim=1, keepdim=True)
    return (feats[pairs.left] * feats[pairs.right]).sum(1).numpy()


@pytest.fixture
def images():
    return torch.rand(5, 3, 4, 6, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("flip", [True, False])
def test_cosine_of_summed_flip_embeddings(images, flip):
    pairs = make_pairs(images)
    scores = pair_scores(left_right_embed, pairs, batch_size=2, flip=flip)
    assert scores.shape == (4,) and scores.dtype == np.float64
    np.testing.assert_allclose(scores, reference(images, pairs, flip), atol=1e-6)


def test_flip_test_makes_the_score_mirror_invariant():
    # with flip, an image and its mirror image get the same feature: cosine 1
    image = torch.zeros(1, 3, 4, 6)
    image[..., :3] = 1.0  # bright left half: embedding (1, 0); mirrored (0, 1)
    both = torch.cat([image, image.flip(-1)])
    pairs = PairSet(both, torch.tensor([0]), torch.tensor([1]), torch.tensor([True]), torch.tensor([0]))
    assert pair_scores(left_right_embed, pairs)[0] == pytest.approx(1.0, abs=1e-6)
    assert pair_scores(left_right_embed, pairs, flip=False)[0] == pytest.approx(0.0, abs=1e-6)


class ListDataset(Dataset):
    def __init__(self, images: torch.Tensor, *, with_labels: bool = False) -> None:
        self.images, self.with_labels, self.seen = images, with_labels, []

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        self.seen.append(i)
        return (self.images[i], 0) if self.with_labels else self.images[i]


@pytest.mark.parametrize("with_labels", [False, True])
def test_dataset_images_give_the_same_scores_and_only_used_images_are_read(images, with_labels):
    data = ListDataset(images, with_labels=with_labels)
    scores = pair_scores(left_right_embed, make_pairs(data), batch_size=3)
    np.testing.assert_allclose(scores, reference(images, make_pairs(images), True), atol=1e-6)
    assert sorted(data.seen) == [0, 1, 2, 3]  # image 4 is in no pair


def test_each_image_is_embedded_once_per_view(images):
    calls = []

    def embed(x):
        calls.append(len(x))
        return left_right_embed(x)

    pair_scores(embed, make_pairs(images), batch_size=256)
    assert calls == [4, 4]  # four used images, plain and mirrored


def test_batches_move_to_the_device(images):
    devices = []

    def embed(x):
        devices.append(x.device.type)
        return left_right_embed(x)

    pair_scores(embed, make_pairs(images), device="cpu")
    assert devices == ["cpu", "cpu"]


def test_unreadable_dataset_image_is_named():
    class Broken(ListDataset):
        def __getitem__(self, i):
            return SkippedSample(path=f"lfw/img{i}.jpg", reason="truncated") if i == 2 else super().__getitem__(i)

    with pytest.raises(ValueError, match="lfw/img2.jpg: truncated"):
        pair_scores(left_right_embed, make_pairs(Broken(torch.rand(5, 3, 4, 6))))


def test_out_of_range_pair_index_is_an_error(images):
    pairs = make_pairs(images[:3])
    with pytest.raises(ValueError, match=r"0\.\.2"):
        pair_scores(left_right_embed, pairs)


@pytest.fixture(scope="module")
def face_files(tmp_path_factory):
    """JPEG faces with an LFW-format pairs.txt over them and an insightface .bin of the same pairs."""
    return write_image_folder(tmp_path_factory.mktemp("faces") / "faces", identities=2, images_per_identity=4,
                              image_size=(20, 16), test_identities=4, pairs_per_fold=2, write_bin=True)


def _pairs_file(face_files, kind: str) -> PairSet:
    if kind == "txt":
        return pairs_from_txt(face_files["pairs_txt"], face_files["pairs_root"], (20, 16), 3)
    return pairs_from_bin(face_files["bin"], (20, 16), 3)


def _pil_reference(pairs: PairSet) -> np.ndarray:
    """Flip-test cosine of every pair in float64, each image decoded here by PIL and scaled by (p - 127.5) / 127.5."""
    sources = getattr(pairs.images, "paths", None) or [io.BytesIO(b) for b in pairs.images.blobs]

    def feature(i: int) -> torch.Tensor:
        if isinstance(sources[i], io.BytesIO):
            sources[i].seek(0)
        pixels = np.asarray(Image.open(sources[i]).convert("RGB"), dtype=np.float64)
        x = torch.from_numpy((pixels - 127.5) / 127.5).permute(2, 0, 1)[None]
        return (left_right_embed(x) + left_right_embed(x.flip(-1)))[0]

    feats = {i: feature(i) for i in torch.cat([pairs.left, pairs.right]).unique().tolist()}
    return np.array([float(feats[a] @ feats[b] / (feats[a].norm() * feats[b].norm()))
                     for a, b in zip(pairs.left.tolist(), pairs.right.tolist(), strict=True)])


@pytest.mark.parametrize("kind", ["txt", "bin"])
def test_decoded_pairs_score_as_the_files_decoded_at_every_call(face_files, kind):
    # decoded once into a uint8 tensor of the used images: the same scores, bit for bit, as streaming the files,
    # and both those of the images decoded by PIL here (float64 reference; float32 embeddings)
    pairs = _pairs_file(face_files, kind)
    decoded = decoded_pairs(pairs, batch_size=7)
    used = torch.cat([pairs.left, pairs.right]).unique()
    assert isinstance(decoded.images, torch.Tensor) and decoded.images.dtype == torch.uint8
    assert decoded.images.shape == (len(used), 3, 20, 16)
    assert torch.equal(decoded.same, pairs.same) and torch.equal(decoded.folds, pairs.folds)
    streamed = pair_scores(left_right_embed, pairs, batch_size=5)
    np.testing.assert_array_equal(pair_scores(left_right_embed, decoded, batch_size=5), streamed)
    np.testing.assert_allclose(streamed, _pil_reference(pairs), rtol=0, atol=1e-6)


def test_decoded_pairs_larger_than_max_bytes_stay_streamed(face_files):
    # one 20x16 RGB image is 960 bytes: the pairs' 16 images do not fit in 1000, so the Dataset is kept as it is
    pairs = _pairs_file(face_files, "txt")
    assert decoded_pairs(pairs, max_bytes=1000) is pairs
    assert isinstance(decoded_pairs(pairs, max_bytes=10**6).images, torch.Tensor)


def test_a_trial_decodes_each_pair_image_once(face_files, monkeypatch):
    # three epochs, three evaluations: every image a pair uses is decoded at the first one only (it was decoded
    # at each), and the first of them once more before training, where check_bundle checks its shape and pixels;
    # the training folder's images are decoded by imagefolder's own import, not counted here
    decoded = []

    def counting(source, *args):
        decoded.append(str(source))
        return decode_image_uint8(source, *args)

    monkeypatch.setattr(_images, "decode_image_uint8", counting)
    data = {"root": str(face_files["train"]), "split": "none", "image_size": [20, 16],
            "pairs": str(face_files["pairs_txt"]), "pairs_root": str(face_files["pairs_root"])}
    spec = TrialSpec(dataset="imagefolder", dataset_params=data, backbone="lenet++", loss="softmax",
                     embedding_dim=4, epochs=3, batch_size=8)
    result = run_trial(spec, TrialOptions(device="cpu", progress=False, num_workers=0))
    pairs = DATASETS.create("imagefolder", **data).pairs
    indices = torch.cat([pairs.left, pairs.right])
    used = {pairs.images.paths[i] for i in indices.tolist()}
    assert result.status == "finished" and len(result.history) == 3
    assert sorted(decoded) == sorted([*used, pairs.images.paths[int(indices.min())]])


def test_scores_are_insightfaces_distances_on_its_flip_summed_normalized_features():
    # insightface (arcface_torch eval/verification.py, test()): images in pair order (2i, 2i+1), embedded as is
    # and flipped along the width, the two float32 embeddings summed, sklearn.preprocessing.normalize, then
    # dist = sum((e1 - e2)^2), which is 2 - 2 cos for unit features. A zero feature (image 5: all zeros under a
    # linear embedding) has no cosine: it scores 0 here, where insightface's dist is 1 (a cosine of 0.5).
    from sklearn.preprocessing import normalize

    rng = np.random.default_rng(3)
    images = rng.normal(size=(6, 3, 4, 6)).astype(np.float32)
    images[5] = 0.0
    weight = rng.normal(size=(3 * 4 * 6, 16)).astype(np.float32)
    left, right = np.array([0, 0, 2, 3, 4, 5, 1]), np.array([1, 2, 3, 1, 4, 0, 4])
    pairs = PairSet(images=torch.from_numpy(images), left=torch.from_numpy(left), right=torch.from_numpy(right),
                    same=torch.from_numpy(np.arange(7) % 2 == 0), folds=torch.arange(7) % 2, name="toy")
    scores = pair_scores(lambda x: x.flatten(1) @ torch.from_numpy(weight), pairs, batch_size=4)

    ordered = images[np.stack([left, right], 1).reshape(-1)]  # the .bin's layout: left, right, left, right...
    plain = ordered.reshape(len(ordered), -1) @ weight
    flipped = np.flip(ordered, axis=3).reshape(len(ordered), -1) @ weight
    feats = normalize(plain + flipped)
    dist = np.sum(np.square(feats[0::2] - feats[1::2]), 1)
    unit = (left != 5) & (right != 5)
    np.testing.assert_allclose(2.0 - 2.0 * scores[unit], dist[unit], atol=1e-6)
    assert scores[4] == pytest.approx(1.0, abs=1e-12)  # an image with itself
    assert scores[5] == 0.0 and dist[5] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 3e38], ids=["nan", "inf", "float32-overflow"])
def test_a_diverged_embedding_stops_the_metrics_with_a_message(images, bad):
    # 3e38 is finite, but its flip sum overflows float32 to inf, as in insightface's float32 features
    def embed(x):
        f = left_right_embed(x)
        f[0] = bad
        return f

    scores = pair_scores(embed, make_pairs(images))
    assert np.isnan(scores).sum() >= 1 and np.isfinite(scores).sum() >= 1
    with pytest.raises(ValueError, match=r"scores must be finite, but \d+ are NaN or inf \(did the embedding diverge"):
        verification_metrics(scores, make_pairs(images).same.numpy(), make_pairs(images).folds.numpy())
