"""`bench.metric_names.logged_metrics` against what trials really log: one tiny CPU trial per registered dataset and
per way it evaluates (test split or not, pairs of each name, classes without test images), so that the names grid
validation accepts cannot drift from the trial's."""

from __future__ import annotations

import shutil

import pytest

from bench.metric_names import logged_metrics
from bench.spec import TrialSpec
from bench.trial import TrialOptions, run_trial
from registry import DATASETS
from registry.datasets._types import EVALUATIONS
from tests.conftest import write_tiny_mnist

FACES = dict(identities=6, images_per_identity=4, image_size=16, in_chans=1, test_identities=4, pairs_per_fold=2)

#: case id -> (dataset, params); ``{mnist}`` and ``{faces}`` are replaced by the files the `data` fixture writes.
CASES = {
    "digits": ("digits", {"image_size": 8}),
    "mnist": ("mnist", {"root": "{mnist}"}),
    "mnist-limit-misses-classes": ("mnist", {"root": "{mnist}", "limit": 3}),  # test labels 0, 1, 2 only
    "fashion-mnist": ("fashion-mnist", {"root": "{mnist}"}),
    "synthetic-faces": ("synthetic-faces", {**FACES, "test_fraction": 0.25}),
    "synthetic-faces-no-test-no-pairs": ("synthetic-faces", {**FACES, "test_fraction": 0.0, "pairs_per_fold": 0}),
    "synthetic-faces-too-many-classes": (
        "synthetic-faces",
        {**FACES, "identities": 21, "images_per_identity": 2, "test_fraction": 0.5, "pairs_per_fold": 0},
    ),
    "imagefolder-images": ("imagefolder", {"root": "{faces}/train", "test_fraction": 0.25}),
    "imagefolder-images-rounds-to-no-test": ("imagefolder", {"root": "{faces}/train"}),  # round(0.1 * 4) == 0
    "imagefolder-identity-without-test-image": ("imagefolder", {"root": "{faces}/lone", "test_fraction": 0.25}),
    "imagefolder-identities": ("imagefolder", {"root": "{faces}/train", "split": "identities", "test_fraction": 0.5}),
    "imagefolder-pairs-txt": (
        "imagefolder",
        {"root": "{faces}/train", "split": "none", "pairs": "{faces}/pairs.txt", "pairs_root": "{faces}/pairs"},
    ),
    "imagefolder-bin": (
        "imagefolder",
        {"root": "{faces}/train", "split": "images", "test_fraction": 0.25, "bin": "{faces}/synthetic.bin"},
    ),
    "imagefolder-bin-named": (
        "imagefolder",
        {"root": "{faces}/train", "split": "none", "bin": "{faces}/synthetic.bin", "pairs_name": "agedb_30"},
    ),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Tiny MNIST IDX files and synthetic faces on disk (with an extra identity of one image under ``lone``)."""
    from registry.datasets.synthetic_faces import write_image_folder

    root = tmp_path_factory.mktemp("metric-names")
    write_tiny_mnist(root / "mnist")
    faces = write_image_folder(
        root / "faces",
        identities=6,
        images_per_identity=4,
        image_size=16,
        in_chans=1,
        test_identities=4,
        pairs_per_fold=2,
        write_bin=True,
    )
    shutil.copytree(faces["train"], root / "faces" / "lone")
    single = root / "faces" / "lone" / "zz_single"
    single.mkdir()
    first = sorted((root / "faces" / "lone").glob("*/*.jpg"))[0]
    shutil.copy(first, single / first.name)
    return {"mnist": str(root / "mnist"), "faces": str(root / "faces")}


def _spec(case: str, data: dict[str, str]) -> TrialSpec:
    dataset, params = CASES[case]
    params = {k: v.format(**data) if isinstance(v, str) else v for k, v in params.items()}
    return TrialSpec(
        dataset=dataset,
        dataset_params=params,
        backbone="lenet++",
        embedding_dim=2,
        epochs=1,
        batch_size=16,
        eval_batch_size=64,
    )


def test_every_registered_dataset_says_what_it_evaluates_on_and_is_run_here():
    # a dataset added without an EVALUATIONS entry (or without a case here) would leave its grids unchecked
    assert set(EVALUATIONS) == set(DATASETS.names())
    assert {dataset for dataset, _ in CASES.values()} == set(DATASETS.names())


@pytest.mark.parametrize("case", list(CASES))
def test_the_names_told_before_training_are_those_the_trial_logs(case, data):
    spec = _spec(case, data)
    DATASETS.check(spec.dataset, dict(spec.dataset_params))  # what grid validation does first
    result = run_trial(spec, TrialOptions(device="cpu", progress=False, num_workers=0))
    assert result.status == "finished"
    logged = set().union(*result.history)
    assert logged_metrics(spec) == logged


def test_the_cases_cover_each_way_of_evaluating(data):
    # the derivation's branches, stated independently: which cases have a test split, per-class metrics, and pairs
    names = {case: logged_metrics(_spec(case, data)) for case in CASES}
    assert "test_acc" not in names["imagefolder-images-rounds-to-no-test"]
    assert "test_acc" not in names["synthetic-faces-no-test-no-pairs"]
    assert "test_acc" in names["synthetic-faces-too-many-classes"]
    assert not any(".class_" in n for n in names["synthetic-faces-too-many-classes"])  # 21 classes: none per class
    assert sorted(n for n in names["mnist-limit-misses-classes"] if ".class_" in n) == [
        "test_acc.class_0",
        "test_acc.class_1",
        "test_acc.class_2",
    ]
    lone = sorted(n for n in names["imagefolder-identity-without-test-image"] if ".class_" in n)
    assert lone == [f"test_acc.class_{i}" for i in range(6)]  # the seventh identity has no test image
    assert "held_out_acc" in names["imagefolder-identities"]
    assert "lfw_val_far1e-3" in names["imagefolder-pairs-txt"]
    assert "synthetic_tar_far1e-4" in names["imagefolder-bin"] and "test_acc" in names["imagefolder-bin"]
    assert "agedb_30_auc" in names["imagefolder-bin-named"]
    assert "synthetic_acc" in names["synthetic-faces"]


def test_a_dataset_that_does_not_say_is_not_known(tiny_dataset):
    assert logged_metrics(TrialSpec(dataset=tiny_dataset)) is None
