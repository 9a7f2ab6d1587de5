"""Alignment: the cp2tform similarity fit, templates, warping, landmark files, and whole folders."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from bench.align import (
    TEMPLATES,
    ARCFACE_112x112,
    LandmarkFileError,
    SPHEREFACE_96x112,
    align_face,
    align_folder,
    read_landmarks,
    similarity_transform,
    transform_points,
    warp,
)


def similarity(scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def inverse(m: np.ndarray) -> np.ndarray:
    return np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))[:2]


@pytest.mark.parametrize("template", [SPHEREFACE_96x112, ARCFACE_112x112], ids=["sphereface", "arcface"])
@pytest.mark.parametrize("truth", [similarity(0.4, 0.3, 12.5, -40.0), similarity(2.3, -1.2, -7.0, 3.25),
                                   similarity(1.0, 0.0, 0.0, 0.0), similarity(0.7, math.pi * 0.9, 300.0, 80.0)])
@pytest.mark.parametrize("reflective", [True, False])
def test_recovers_a_known_similarity_transform(template, truth, reflective):
    # landmarks in a photo = the template mapped by the inverse of the transform that aligns them
    landmarks = transform_points(inverse(truth), template)
    m = similarity_transform(landmarks, template, reflective=reflective)
    assert m.shape == (2, 3)
    np.testing.assert_allclose(m, truth, atol=1e-6)


def test_least_squares_is_cp2tform_fit_in_the_source_space():
    # with noise, cp2tform fits dst -> src by least squares and inverts it; scikit-image's Umeyama estimate
    # of dst -> src minimizes the same sum of squares over similarities, so the two agree
    from skimage.transform import SimilarityTransform

    rng = np.random.default_rng(0)
    landmarks = transform_points(inverse(similarity(0.5, 0.2, 10, 20)), ARCFACE_112x112) + rng.normal(0, 2, (5, 2))
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        ref = SimilarityTransform.from_estimate(ARCFACE_112x112, landmarks)
    else:
        ref = SimilarityTransform()
        ref.estimate(ARCFACE_112x112, landmarks)
    np.testing.assert_allclose(similarity_transform(landmarks, ARCFACE_112x112), inverse(ref.params[:2]), atol=1e-9)


def skimage_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """scikit-image's Umeyama estimate of the similarity taking ``src`` onto ``dst``, as a (2, 3) matrix."""
    from skimage.transform import SimilarityTransform

    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        return SimilarityTransform.from_estimate(src, dst).params[:2]
    ref = SimilarityTransform()
    ref.estimate(src, dst)
    return ref.params[:2]


#: LFW landmarks of the SphereFace repositories' lfw_landmark.txt (250x250 photos), and noisier ones
LFW_LANDMARKS = [np.array([[107, 112], [146, 110], [126, 134], [110, 155], [142, 153]], float),
                 np.array([[103.5, 113], [145, 112], [124, 137], [105, 157], [141, 156]], float),
                 np.array([[107, 112], [146, 110], [126, 134], [110, 155], [142, 153]], float)
                 + np.random.default_rng(0).normal(0, 3, (5, 2))]


@pytest.mark.parametrize("landmarks", LFW_LANDMARKS, ids=["eckhart", "pacheco", "noisy"])
def test_each_template_is_fitted_as_its_paper_aligns(landmarks):
    # ArcFace (insightface face_align.estimate_norm / norm_crop): skimage's SimilarityTransform.estimate(lmk,
    # arcface_dst), a least-squares fit from the landmarks to the template. SphereFace (face_align_demo.m,
    # sphereface_pytorch's matlab_cp2tform): cp2tform, the fit from the template to the landmarks, inverted. On
    # real landmarks the two differ by up to 0.4 output pixels, so each template keeps its own fit.
    face, m = align_face(np.zeros((250, 250, 3), np.uint8), landmarks, "arcface")
    np.testing.assert_allclose(m, skimage_similarity(landmarks, ARCFACE_112x112), atol=1e-9)
    _, m = align_face(np.zeros((250, 250, 3), np.uint8), landmarks, "sphereface")
    np.testing.assert_allclose(m, inverse(skimage_similarity(SPHEREFACE_96x112, landmarks)), atol=1e-9)


def test_umeyama_fit_is_scikit_images_and_unknown_fits_are_named():
    for landmarks in LFW_LANDMARKS:
        m = similarity_transform(landmarks, SPHEREFACE_96x112, method="umeyama")
        np.testing.assert_allclose(m, skimage_similarity(landmarks, SPHEREFACE_96x112), atol=1e-9)
    with pytest.raises(ValueError, match=r"unknown similarity fit method='lstsq'; available: cp2tform, umeyama"):
        similarity_transform(LFW_LANDMARKS[0], ARCFACE_112x112, method="lstsq")
    with pytest.raises(ValueError, match="source points .* coincide"):
        similarity_transform(np.ones((5, 2)), ARCFACE_112x112, method="umeyama")


def test_reflection_is_chosen_only_when_it_fits_better():
    mirrored = SPHEREFACE_96x112 * [-1.0, 1.0]  # a left-right mirrored face: landmark order swapped in x
    m = similarity_transform(mirrored, SPHEREFACE_96x112, reflective=True)
    assert np.linalg.det(m[:, :2]) < 0
    np.testing.assert_allclose(transform_points(m, mirrored), SPHEREFACE_96x112, atol=1e-9)
    assert np.linalg.det(similarity_transform(mirrored, SPHEREFACE_96x112, reflective=False)[:, :2]) > 0


def test_invalid_points_are_rejected():
    with pytest.raises(ValueError, match="same shape"):
        similarity_transform(np.zeros((5, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"\(K, 2\)"):
        similarity_transform(np.zeros(10), np.zeros(10))
    with pytest.raises(ValueError, match="distinct"):
        similarity_transform(ARCFACE_112x112, np.ones((5, 2)))


def test_templates_are_the_standard_five_points():
    assert TEMPLATES["sphereface"].size == (96, 112) and TEMPLATES["arcface"].size == (112, 112)
    # as published: SphereFace's face_align_demo.m coord5points (rows x and y), insightface's arcface_dst
    coord5points = np.array([[30.2946, 65.5318, 48.0252, 33.5493, 62.7299],
                             [51.6963, 51.5014, 71.7366, 92.3655, 92.2041]])
    arcface_dst = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                            [41.5493, 92.3655], [70.7299, 92.2041]])
    np.testing.assert_array_equal(SPHEREFACE_96x112, coord5points.T)
    np.testing.assert_array_equal(ARCFACE_112x112, arcface_dst)
    np.testing.assert_allclose(ARCFACE_112x112 - SPHEREFACE_96x112, np.tile([8.0, 0.0], (5, 1)))
    with pytest.raises(ValueError):
        SPHEREFACE_96x112[0, 0] = 0.0  # read-only


def blob_image(points: np.ndarray, size=(250, 250), sigma: float = 2.0) -> np.ndarray:
    """An RGB image with a bright Gaussian spot at each point (sub-pixel centres)."""
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w))
    for x, y in points:
        img += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return np.repeat((255 * np.clip(img, 0, 1)).round().astype(np.uint8)[:, :, None], 3, axis=2)


def spot_centre(img: np.ndarray, near: np.ndarray, radius: int = 6) -> np.ndarray:
    """Intensity-weighted centroid of the spot within ``radius`` of ``near``."""
    g = img[..., 0].astype(np.float64)
    ys, xs = np.mgrid[0:g.shape[0], 0:g.shape[1]]
    mask = (xs - near[0]) ** 2 + (ys - near[1]) ** 2 <= radius**2
    w = g * mask
    return np.array([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()])


@pytest.mark.parametrize("name", ["sphereface", "arcface"])
def test_aligned_eye_centres_land_within_one_pixel_of_the_template(name):
    t = TEMPLATES[name]
    truth = similarity(0.55, 0.25, -20.0, -15.0)  # a face about twice the template's size, rotated 14 degrees
    landmarks = transform_points(inverse(truth), t.points)
    photo = blob_image(landmarks, sigma=3.0)
    face, m = align_face(photo, landmarks, name)
    assert face.shape == (t.size[1], t.size[0], 3) and face.dtype == np.uint8
    np.testing.assert_allclose(m, truth, atol=1e-6)
    for eye in t.points[:2]:
        assert np.linalg.norm(spot_centre(face, eye) - eye) < 1.0


def test_warp_moves_a_pixel_where_the_matrix_says():
    img = np.zeros((60, 80), np.uint8)
    img[20, 30] = 255
    out = warp(img, np.array([[1.0, 0, 5], [0, 1.0, 2]]), (100, 90))
    assert out.shape == (90, 100)
    assert np.argwhere(out == 255).tolist() == [[22, 35]]  # (row, col) = (20 + 2, 30 + 5)
    # outside the input: the border value
    far = warp(np.full((4, 4, 3), 200, np.uint8), np.array([[1.0, 0, 50], [0, 1.0, 50]]), (10, 10), border=7)
    assert (far == 7).all()


@pytest.mark.parametrize("matrix", [similarity(0.55, 0.25, 2.0, -1.5), similarity(1.0, 0.0, 2.5, 2.25),
                                    similarity(3.1, -0.7, 10.0, 60.0)], ids=["shrink", "half-pixel-shift", "zoom"])
def test_warp_is_scikit_images_bilinear_warp(matrix):
    # skimage.transform.warp(order=1, mode="constant"): the same pixel-centre convention and the same blend
    # with the border value for samples within a pixel of the edge (each output reaches past the input)
    from skimage.transform import AffineTransform
    from skimage.transform import warp as skimage_warp

    rng = np.random.default_rng(1)
    image = rng.random((40, 48, 3))
    inverse_map = AffineTransform(matrix=np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]])))
    ours = warp(image, matrix, (52, 44), border=0.25)
    ref = skimage_warp(image, inverse_map, output_shape=(44, 52), order=1, mode="constant", cval=0.25,
                       preserve_range=True)
    assert 0 < np.sum(ours == 0.25) < ours.size  # some of the output lies outside the input
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    pixels = np.rint(image * 255).astype(np.uint8)
    ref8 = skimage_warp(pixels, inverse_map, output_shape=(44, 52), order=1, mode="constant", cval=0,
                        preserve_range=True)
    np.testing.assert_array_equal(warp(pixels, matrix, (52, 44)), np.clip(np.rint(ref8), 0, 255).astype(np.uint8))


def test_warp_of_a_float_image_keeps_its_dtype():
    img = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    out = warp(img, np.array([[1.0, 0, 0], [0, 1.0, 0]]), (4, 3))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, img, atol=1e-6)


# --------------------------------------------------------------------------------------------- landmarks
LANDMARK_LINES = [
    "Aaron_Eckhart/Aaron_Eckhart_0001.jpg\t107\t112\t146\t110\t126\t134\t110\t155\t142\t153",
    "# a comment, then a blank line",
    "",
    "Abel_Pacheco/Abel_Pacheco_0001.jpg 103.5 113 145 112 124 137 105 157 141 156",
    "0000045/001.jpg\t0\t82\t112\t125\t110\t105\t135\t87\t156\t122\t154",  # sphereface_pytorch casia: class id
    "My Faces/img 2.jpg 1 2 3 4 5 6 7 8 9 10",  # a path with spaces, space-separated numbers
]


def test_read_landmarks_in_the_sphereface_formats(tmp_path):
    path = tmp_path / "landmarks.txt"
    path.write_text("\n".join(LANDMARK_LINES) + "\n")
    marks = read_landmarks(path)
    assert list(marks) == ["Aaron_Eckhart/Aaron_Eckhart_0001.jpg", "Abel_Pacheco/Abel_Pacheco_0001.jpg",
                           "0000045/001.jpg", "My Faces/img 2.jpg"]
    np.testing.assert_array_equal(marks["Aaron_Eckhart/Aaron_Eckhart_0001.jpg"],
                                  [[107, 112], [146, 110], [126, 134], [110, 155], [142, 153]])
    assert marks["Abel_Pacheco/Abel_Pacheco_0001.jpg"][0, 0] == 103.5
    np.testing.assert_array_equal(marks["0000045/001.jpg"][0], [82, 112])  # the class index is not a coordinate
    np.testing.assert_array_equal(read_landmarks(path, one_based=True)["0000045/001.jpg"][0], [81, 111])
    np.testing.assert_array_equal(marks["My Faces/img 2.jpg"][-1], [9, 10])


@pytest.mark.parametrize("line, match", [
    ("a.jpg 1 2 3 4 5 6 7 8 9", r":2: expected a path and ten numbers.*9 fields"),
    ("a.jpg 1 2 3 4 5 6 7 8 9 x", r":2: expected a path and ten numbers.*0 fields"),
    ("a.jpg\t1\t2\t3\t4\t5\t6\t7\t8\t9\tx", r":2: landmarks must be numbers"),
    ("1 2 3 4 5 6 7 8 9 10", r":2: expected a path and ten numbers.*9 fields"),
    ("a.jpg 1.5 1 2 3 4 5 6 7 8 9 10", r":2: .*not a class index"),
    ("ok.jpg 1 2 3 4 5 6 7 8 9 11", r":2: 'ok.jpg' already has different landmarks on line 1"),
])
def test_landmark_file_errors_name_the_line(tmp_path, line, match):
    path = tmp_path / "bad.txt"
    path.write_text("ok.jpg 1 2 3 4 5 6 7 8 9 10\n" + line + "\n")
    with pytest.raises(LandmarkFileError, match=match):
        read_landmarks(path)


# ------------------------------------------------------------------------------------------------ folders
def write_face_folder(root, n_ids=2, per_id=2):
    """Blob 'faces' at a known transform of the ArcFace template; returns {relative path: landmarks}."""
    marks = {}
    for i in range(n_ids):
        for j in range(per_id):
            rel = f"id{i}/img{j}.jpg"
            points = transform_points(inverse(similarity(0.5 + 0.05 * j, 0.1 * i, -10 - j, -20 + i)), ARCFACE_112x112)
            (root / f"id{i}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(blob_image(points, sigma=3)).save(root / rel, quality=95)
            marks[rel] = points
    return marks


def test_align_folder_writes_the_same_layout_and_counts(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    marks = write_face_folder(src)
    (src / "id1" / "broken.png").write_bytes(b"not an image")
    # one image only by detector, one by neither
    given = {f"CASIA-WebFace/{k}": v for k, v in marks.items() if k != "id1/img1.jpg"}  # matched by identity/file
    given.pop("CASIA-WebFace/id0/img1.jpg")
    detector_calls = []

    def detector(image):
        detector_calls.append(image.shape)
        return marks["id0/img1.jpg"] if len(detector_calls) == 1 else None

    summary = align_folder(src, dst, template="arcface", landmarks=given, detector=detector)
    assert summary.aligned == 3 and summary.from_landmarks == 2 and summary.from_detector == 1
    assert sorted(summary.skipped) == [("id1/broken.png", summary.skipped[0][1]), ("id1/img1.jpg", "no face detected")]
    assert summary.skipped[0][1].startswith("unreadable image")
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*")) == [
        "id0", "id0/img0.jpg", "id0/img1.jpg", "id1", "id1/img0.jpg"]  # no temporary files left
    with Image.open(dst / "id0" / "img0.jpg") as im:
        assert im.size == (112, 112)
        face = np.asarray(im)
    assert np.linalg.norm(spot_centre(face, ARCFACE_112x112[0]) - ARCFACE_112x112[0]) < 1.0

    # a rerun leaves existing files alone
    again = align_folder(src, dst, template="arcface", landmarks=given)
    assert again.aligned == 0 and again.existing == 3


def test_align_folder_detects_on_the_photo_as_displayed(tmp_path):
    # a phone photo stored sideways with EXIF Orientation=6 (rotate 90 degrees clockwise to display): the
    # detector must see it upright, and the face is cut from that same upright picture
    src, dst = tmp_path / "src", tmp_path / "dst"
    points = transform_points(inverse(similarity(0.5, 0.1, -10.0, -20.0)), ARCFACE_112x112)
    upright = Image.fromarray(blob_image(points, size=(250, 200), sigma=3))  # (H, W) = (250, 200) as displayed
    exif = Image.Exif()
    exif[0x0112] = 6
    (src / "id0").mkdir(parents=True)
    upright.transpose(Image.Transpose.ROTATE_90).save(src / "id0" / "phone.png", exif=exif)
    seen = []

    def detector(image):
        seen.append(image.shape)
        return points

    summary = align_folder(src, dst, template="arcface", detector=detector)
    assert summary.aligned == 1 and seen == [(250, 200, 3)]
    with Image.open(dst / "id0" / "phone.png") as im:
        face = np.asarray(im)
    for eye in ARCFACE_112x112[:2]:
        assert np.linalg.norm(spot_centre(face, eye) - eye) < 1.0


def test_align_folder_reads_16_bit_grayscale_at_its_brightness(tmp_path):
    # a 16-bit grayscale PNG (mode I;16) of 8-bit content times 257: aligned as that 8-bit content, not as the
    # all-white picture PIL's convert("RGB") makes of it
    src, dst = tmp_path / "src", tmp_path / "dst"
    marks = write_face_folder(src, n_ids=1, per_id=1)
    photo = blob_image(marks["id0/img0.jpg"], sigma=3)
    (src / "id0" / "img0.jpg").unlink()
    Image.fromarray(photo[:, :, 0].astype(np.uint16) * 257).save(src / "id0" / "deep.png")
    with Image.open(src / "id0" / "deep.png") as im:
        assert im.mode == "I;16"
    summary = align_folder(src, dst, template="arcface", landmarks={"id0/deep.png": marks["id0/img0.jpg"]})
    assert summary.aligned == 1
    with Image.open(dst / "id0" / "deep.png") as im:
        face = np.asarray(im)
    expected, _ = align_face(photo, marks["id0/img0.jpg"], "arcface")
    np.testing.assert_array_equal(face, expected)


def test_align_folder_follows_linked_identity_folders(tmp_path):
    # src/id0 is a link to a folder elsewhere (as the dataset loader follows it); a link back up is not looped
    elsewhere, src, dst = tmp_path / "elsewhere", tmp_path / "src", tmp_path / "dst"
    marks = write_face_folder(elsewhere, n_ids=1, per_id=1)
    src.mkdir()
    try:
        (src / "id0").symlink_to(elsewhere / "id0", target_is_directory=True)
        (elsewhere / "id0" / "up").symlink_to(src, target_is_directory=True)
    except OSError as err:
        pytest.skip(f"no symbolic links here: {err}")
    summary = align_folder(src, dst, template="arcface", landmarks=marks)
    assert summary.aligned == 1 and not summary.skipped
    assert (dst / "id0" / "img0.jpg").is_file()


def test_align_folder_from_a_landmark_file(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    marks = write_face_folder(src, n_ids=1, per_id=1)
    lines = [f"{rel} " + " ".join(f"{v:.4f}" for v in pts.ravel()) for rel, pts in marks.items()]
    (tmp_path / "lm.txt").write_text("\n".join(lines))
    summary = align_folder(src, dst, template="sphereface", landmarks=tmp_path / "lm.txt")
    assert summary.aligned == 1 and not summary.skipped
    with Image.open(dst / "id0" / "img0.jpg") as im:
        assert im.size == (96, 112)


def test_rerun_with_another_template_into_the_same_folder_is_an_error(tmp_path):
    # the 96x112 faces already there are not "done" for the 112x112 template: they would mix two crops
    src, dst = tmp_path / "src", tmp_path / "dst"
    marks = write_face_folder(src, n_ids=1, per_id=1)
    align_folder(src, dst, template="sphereface", landmarks=marks)
    with pytest.raises(ValueError, match=r"img0.jpg is already there at 96x112 .* arcface template's 112x112"):
        align_folder(src, dst, template="arcface", landmarks=marks)
    assert align_folder(src, dst, template="arcface", landmarks=marks, overwrite=True).aligned == 1


def test_align_folder_never_leaves_a_half_written_file(tmp_path, monkeypatch):
    src, dst = tmp_path / "src", tmp_path / "dst"
    marks = write_face_folder(src, n_ids=1, per_id=1)

    def failing_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as fh:
            fh.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        align_folder(src, dst, template="arcface", landmarks=marks)
    assert [p for p in dst.rglob("*") if p.is_file()] == []


def test_align_folder_argument_errors(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        align_folder(tmp_path / "nope", tmp_path / "dst", landmarks={})
    with pytest.raises(ValueError, match="landmarks .* or a detector"):
        align_folder(tmp_path / "src", tmp_path / "dst")
    with pytest.raises(ValueError, match="outside the source"):
        align_folder(tmp_path / "src", tmp_path / "src" / "aligned", landmarks={})
    with pytest.raises(ValueError, match="unknown template 'vgg'"):
        align_folder(tmp_path / "src", tmp_path / "dst", landmarks={}, template="vgg")
