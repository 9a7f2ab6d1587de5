"""One trial end to end on tiny generated data, on the CPU."""

from __future__ import annotations

import math

import pytest
import torch

from bench.spec import TrialSpec
from bench.trial import TrialOptions, run_trial


def spec_for(dataset: str, **kw) -> TrialSpec:
    base = dict(dataset=dataset, backbone="lenet++", loss="softmax", embedding_dim=4, epochs=1, batch_size=16,
                optimizer_params={"lr": 3e-3}, eval_batch_size=64)
    base.update(kw)
    return TrialSpec(**base)


def test_one_epoch_trial_reports_every_metric(tiny_dataset):
    result = run_trial(spec_for(tiny_dataset), TrialOptions(progress=False))
    assert result.status == "finished" and len(result.history) == 1
    assert set(result.metrics) >= {"train_loss", "train_acc", "test_acc", "lr"}
    assert 0.0 <= result.metrics["test_acc"] <= 1.0 and math.isfinite(result.metrics["train_loss"])
    assert result.images_per_second > 0


def test_same_spec_same_numbers(tiny_dataset):
    a = run_trial(spec_for(tiny_dataset, epochs=2), TrialOptions(progress=False))
    b = run_trial(spec_for(tiny_dataset, epochs=2), TrialOptions(progress=False))
    assert a.history == b.history


def test_a_few_epochs_learn_the_blobs(tiny_dataset):
    result = run_trial(spec_for(tiny_dataset, epochs=6, loss="cosface", loss_params={"s": 10.0, "m": 0.1}),
                       TrialOptions(progress=False))
    assert result.metrics["test_acc"] >= 0.9  # four bright quadrants: chance is 0.25


def test_nan_loss_is_recorded_as_diverged_not_raised(tiny_dataset):
    result = run_trial(spec_for(tiny_dataset, epochs=3, optimizer_params={"lr": 1e30}), TrialOptions(progress=False))
    assert result.status == "diverged"
    assert result.diverged["epoch"] == 0 and result.diverged["step"] >= 0
    assert "NaN or inf" in result.diverged["reason"]


def test_checkpoint_resumes_from_last_epoch(tiny_dataset, tmp_path):
    ckpt = tmp_path / "trial.pt"
    full = run_trial(spec_for(tiny_dataset, epochs=3), TrialOptions(progress=False))
    run_trial(spec_for(tiny_dataset, epochs=2), TrialOptions(progress=False, checkpoint_path=ckpt))
    state = torch.load(ckpt, weights_only=False)
    assert state["epoch"] == 1
    # A 3-epoch spec has another key, so a 2-epoch checkpoint must not be reused for it...
    fresh = run_trial(spec_for(tiny_dataset, epochs=3), TrialOptions(progress=False, checkpoint_path=ckpt))
    assert fresh.history == full.history
    # ...while the same spec picks up after its last saved epoch and ends where an unbroken run ends.
    resumed = run_trial(spec_for(tiny_dataset, epochs=3), TrialOptions(progress=False, checkpoint_path=ckpt))
    assert len(resumed.history) == 3 and resumed.history == full.history
    # that checkpoint held the last epoch: nothing trains, and the result is still the trial's (its metrics, and
    # images/s over the 3 x 80 images of the saved training time; it used to be {} and 0)
    assert resumed.metrics == full.metrics
    assert resumed.images_per_second * resumed.train_seconds == pytest.approx(3 * 80)


def test_a_checkpoint_of_a_model_of_another_shape_starts_the_trial_over(tiny_dataset, tmp_path, capsys):
    # The spec key names the configuration, not the code: a checkpoint written before a backbone gained or lost a
    # layer has the same key. Loading it raised (after copying the tensors that fit) on every resume; it is now
    # set aside and the trial trains from scratch, as an unbroken run does.
    ckpt = tmp_path / "trial.pt"
    spec = spec_for(tiny_dataset, epochs=2)
    full = run_trial(spec, TrialOptions(progress=False, checkpoint_path=ckpt))
    state = torch.load(ckpt, weights_only=False)
    name, tensor = next(iter(state["backbone"].items()))
    for change in ({"old.conv.bias": torch.zeros(3)}, {name: torch.zeros(*tensor.shape, 2)}):
        torch.save({**state, "epoch": 0, "history": state["history"][:1],
                    "backbone": {**state["backbone"], **change}}, ckpt)
        again = run_trial(spec, TrialOptions(progress=False, checkpoint_path=ckpt))
        assert again.history == full.history
        err = capsys.readouterr().err
        assert str(ckpt) in err and "starts over" in err and next(iter(change)) in err


def test_reduced_precision_and_channels_last_run_and_stay_finite(tiny_dataset):
    for precision in ("bf16", "fp16"):
        result = run_trial(spec_for(tiny_dataset, epochs=2, precision=precision, channels_last=True,
                                    loss="cosface", loss_params={"s": 10.0, "m": 0.1}), TrialOptions(progress=False))
        assert result.status == "finished", precision
        assert all(math.isfinite(h["train_loss"]) for h in result.history)


def test_compiled_backbone_trains_to_the_eager_numbers(tiny_dataset):
    # `compile: true` wraps the backbone in torch.compile (inductor on the CPU): one epoch of 5 steps, the
    # same loss and accuracy as eager up to kernel fusion's float rounding.
    spec = spec_for(tiny_dataset, batch_size=16, loss="cosface", loss_params={"s": 10.0, "m": 0.1})
    eager = run_trial(spec, TrialOptions(progress=False))
    compiled = run_trial(spec.replace(compile=True), TrialOptions(progress=False))
    assert compiled.status == "finished"
    assert math.isclose(compiled.metrics["train_loss"], eager.metrics["train_loss"], rel_tol=1e-4)
    assert compiled.metrics["test_acc"] == eager.metrics["test_acc"]


def test_center_loss_moves_centres_outside_the_optimizer(tiny_dataset):
    result = run_trial(spec_for(tiny_dataset, epochs=2, center_loss={"weight": 0.01, "alpha": 0.5}),
                       TrialOptions(progress=False))
    assert result.status == "finished"


def test_a_final_batch_of_one_is_skipped_for_a_backbone_with_batchnorm(tiny_dataset, bn_backbone, tmp_path):
    # 81 images in batches of 16: five full steps and one sample left over, on which training-mode BatchNorm
    # raises; the trial finishes with five steps.
    spec = spec_for(tiny_dataset, dataset_params={"train_size": 81}, backbone=bn_backbone)
    result = run_trial(spec, TrialOptions(progress=False, device="cpu", checkpoint_path=tmp_path / "t.pt"))
    assert result.status == "finished" and math.isfinite(result.metrics["train_loss"])
    state = torch.load(tmp_path / "t.pt", weights_only=False)["backbone"]
    assert int(state["2.num_batches_tracked"]) == 5


def test_batch_size_one_is_refused_for_a_backbone_with_batchnorm(tiny_dataset, bn_backbone):
    # Every batch would be a single sample: said before training, not skipped in silence.
    with pytest.raises(ValueError, match="batch_size must be at least 2 for backbone 'bn-linear'"):
        run_trial(spec_for(tiny_dataset, backbone=bn_backbone, batch_size=1), TrialOptions(progress=False))


class _NanInEval(torch.nn.Module):
    """Linear in training, NaN in eval: a model broken where the training loss does not show it (as eval-mode
    BatchNorm statistics can break)."""

    def __init__(self, embedding_dim: int, in_chans: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(in_chans * 64, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x.flatten(1))
        return y if self.training else y * math.nan


@pytest.fixture
def nan_in_eval():
    from registry import BACKBONES

    @BACKBONES.register("nan-in-eval")
    def nan_in_eval(embedding_dim: int, in_chans: int) -> torch.nn.Module:
        """Linear in training, NaN in eval (for tests)."""
        return _NanInEval(embedding_dim, in_chans)

    yield "nan-in-eval"
    BACKBONES.unregister("nan-in-eval")


def test_nan_verification_embeddings_are_recorded_as_diverged_not_raised(tiny_dataset, nan_in_eval):
    # the pair scores are NaN, which the metrics refuse; the trial must end diverged, not raise
    import numpy as np

    from registry import DATASETS
    from registry.datasets import DataBundle, PairSet

    @DATASETS.register("tiny-blobs-pairs")
    def tiny_blobs_pairs() -> DataBundle:
        """The tiny blobs' training split, with pairs over their test images (for tests)."""
        blobs = DATASETS.create(tiny_dataset)
        n = 20  # pairs of test images 2k, 2k+1; two folds
        pairs = PairSet(blobs.test.images, torch.arange(0, 2 * n, 2), torch.arange(1, 2 * n, 2),
                        torch.from_numpy(np.arange(n) % 2 == 0), torch.arange(n) // (n // 2), name="lfw")
        return DataBundle("tiny-blobs-pairs", 4, 1, (8, 8), blobs.train, None, pairs)

    try:
        result = run_trial(spec_for("tiny-blobs-pairs", backbone=nan_in_eval, epochs=2), TrialOptions(progress=False))
    finally:
        DATASETS.unregister("tiny-blobs-pairs")
    assert result.status == "diverged" and result.history == []
    assert result.diverged["epoch"] == 0 and result.diverged["step"] == "eval"
    assert "20 of 20 verification pairs (lfw) became NaN or inf" in result.diverged["reason"]


def test_nan_test_embeddings_are_recorded_as_diverged_not_as_an_accuracy(tiny_dataset, nan_in_eval):
    # NaN logits argmax to class 0: the old code logged test_acc = the share of class 0 (0.25 here) as finished
    from registry import DATASETS

    test_size = len(DATASETS.create(tiny_dataset).test.labels)
    result = run_trial(spec_for(tiny_dataset, backbone=nan_in_eval, epochs=2), TrialOptions(progress=False))
    assert result.status == "diverged" and result.history == [] and "test_acc" not in result.metrics
    assert result.diverged["epoch"] == 0 and result.diverged["step"] == "eval"
    assert f"the embeddings of {test_size} test images became NaN or inf at epoch 0" in result.diverged["reason"]


class _Reached(Exception):
    """Raised in place of the first step after choosing the device: the test machine has no GPU to go on with."""


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_a_cuda_device_without_an_index_is_accepted_by_the_trial_and_the_fused_group(tiny_dataset, monkeypatch,
                                                                                   device):
    # `pick_device` gives plain "cuda" when no --device is given (every step of bench/gpu_checks.sh), and
    # torch.cuda.set_device raises ValueError for a device without an index. The calls below reach torch's own
    # check of set_device's argument (which needs no GPU), not the driver this machine lacks.
    from torch.cuda._utils import _get_device_index

    import bench.fused
    import bench.trial

    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(_get_device_index(d)))

    def reached(*args, **kwargs):
        raise _Reached

    monkeypatch.setattr(bench.trial, "TrialState", reached)
    monkeypatch.setattr(bench.fused, "load_dataset", reached)
    spec = spec_for(tiny_dataset)
    with pytest.raises(_Reached):
        run_trial(spec, TrialOptions(device=device, progress=False))
    with pytest.raises(_Reached):
        bench.fused._FusedGroup([spec, spec], [TrialOptions(device=device, progress=False)] * 2)
    assert chosen == ([] if device == "cuda" else [0, 0])  # "cuda:0" is made the current device, as before


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")  # meta weights stay empty
def test_a_checkpoint_resumes_on_a_device_other_than_the_cpu(tiny_dataset, tmp_path):
    # The checkpoint's RNG states (torch's and the data order's) are CPU ByteTensors, which set_rng_state and
    # Generator.set_state accept on the CPU only; read with map_location=<the trial's device> they came back on
    # the GPU and a resumed trial stopped with TypeError 'RNG state must be a torch.ByteTensor'. The meta device
    # stands in for the GPU here: no memory, same refusal.
    from bench.trial import TrialState

    ckpt = tmp_path / "trial.pt"
    spec = spec_for(tiny_dataset, epochs=2)
    full = run_trial(spec, TrialOptions(progress=False, checkpoint_path=ckpt))
    saved = torch.load(ckpt, weights_only=False)
    state = TrialState(spec, TrialOptions(progress=False, checkpoint_path=ckpt), torch.device("meta"))
    assert state.start_epoch == 2 and state.result.history == full.history
    assert torch.equal(torch.get_rng_state(), saved["torch_rng"])
    assert torch.equal(state.train.generator.get_state(), saved["generator"])
    assert state.backbone.fc.weight.device.type == "meta"  # the models stay on the trial's device


@pytest.fixture
def temp_root(tmp_path, monkeypatch):
    """tempfile's folder, pointed at an empty one for the test: what a trial leaves there shows."""
    import tempfile

    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def test_a_trial_without_an_artifact_folder_leaves_no_temporary_folder(tiny_dataset, temp_root):
    # bench perf calls run_trial without an artifact folder: every call left an empty marginbench-* folder in
    # the temp dir, also when the trial raised; a picture written before the error was left there too
    def fail(epoch, metrics):
        raise RuntimeError("callback failed")

    run_trial(spec_for(tiny_dataset), TrialOptions(progress=False))
    with pytest.raises(RuntimeError, match="callback failed"):
        run_trial(spec_for(tiny_dataset), TrialOptions(progress=False, on_epoch=fail))
    with pytest.raises(RuntimeError, match="callback failed"):  # 2-D: a picture is written before the callback
        run_trial(spec_for(tiny_dataset, embedding_dim=2), TrialOptions(progress=False, plots=True, on_epoch=fail))
    assert [p.name for p in temp_root.glob("marginbench-*")] == []
    # a trial that returns pictures keeps them, where result.artifacts says, for the caller
    result = run_trial(spec_for(tiny_dataset, embedding_dim=2), TrialOptions(progress=False, plots=True))
    assert [p.name for p in result.artifacts] == ["embeddings_epoch000.png"] and result.artifacts[0].is_file()
    assert [p.name for p in temp_root.glob("marginbench-*")] == [result.artifacts[0].parent.name]
