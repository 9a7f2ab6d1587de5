"""Fused trials (`bench.fused`) against the same trials run one at a time by `bench.trial.run_trial`, which
shares no step code with them (no vmap, no stacking): same histories and weights up to float summation
order, same divergence and pruning, checkpoints that either path resumes."""

from __future__ import annotations

import math

import pytest
import torch

from bench.fused import fusion_key, fusion_obstacle, group_fusable, run_fused_trials
from bench.spec import TrialSpec
from bench.trial import Pruned, TrialOptions, run_trial

#: In float64 the fused and the lone trial differ only by rounding in another summation order (one grouped
#: convolution for the K trials): after a few dozen steps, far below this.
REL64 = 1e-9
#: In float32 that rounding (1e-7) is amplified by training; at the first epoch's near-tie predictions and
#: the normalised 2-D features of margin heads it reaches 1e-3 of the loss and a few images' predictions.
REL32, ACC32 = 1e-2, 0.05
#: bf16 autocast rounds to 4e-3 at every convolution; two Adam steps on the tiny set amplify that to 0.6 % of
#: the loss (as much as switching the lone trial's memory format does).
REL_BF16, ACC_BF16 = 2e-2, 0.1


@pytest.fixture
def tiny64(tiny_dataset):
    """The tiny blobs in float64, with models built in float64 (torch's default dtype) during the test."""
    from registry import DATASETS
    from registry.datasets import DataBundle, TensorSplit

    def to64(split: TensorSplit) -> TensorSplit:
        return TensorSplit(split.images.double(), split.labels)

    @DATASETS.register("tiny-blobs-64")
    def tiny_blobs_64() -> DataBundle:
        """The tiny blobs in float64."""
        b = DATASETS.create(tiny_dataset)
        return DataBundle("tiny-blobs-64", b.num_classes, b.in_chans, b.image_size, to64(b.train), to64(b.test))

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield "tiny-blobs-64"
    torch.set_default_dtype(previous)
    DATASETS.unregister("tiny-blobs-64")


def spec_for(dataset: str, **kw) -> TrialSpec:
    base = dict(dataset=dataset, backbone="lenet++", loss="softmax", embedding_dim=2, epochs=2, batch_size=16,
                optimizer_params={"lr": 3e-3}, eval_batch_size=64)
    base.update(kw)
    return TrialSpec(**base)


def mixed_specs(dataset: str, **kw) -> list[TrialSpec]:
    """Three trials that differ in everything but the backbone's shape: loss, optimizer, lr, clipping, schedule."""
    return [
        spec_for(dataset, **kw),
        spec_for(dataset, loss="cosface", loss_params={"s": 8.0, "m": 0.2}, optimizer="sgd",
                 optimizer_params={"lr": 0.05, "momentum": 0.9}, grad_clip=1.0, **kw),
        spec_for(dataset, loss="combined", loss_params={"w_norm": True, "x_norm": True, "s": 4.0, "m2": 0.2},
                 scheduler="step", scheduler_params={"step_size": 1, "gamma": 0.5}, **kw),
    ]


def opts(tmp_path=None, name: str = "", **kw) -> TrialOptions:
    ckpt = tmp_path / f"{name}.pt" if tmp_path is not None else None
    return TrialOptions(device="cpu", progress=False, checkpoint_path=ckpt, **kw)


def assert_same_history(fused: list[dict], alone: list[dict], rel: float = REL64, acc: float = 0.0) -> None:
    assert len(fused) == len(alone)
    for f, a in zip(fused, alone, strict=True):
        assert f.keys() == a.keys()
        assert f["train_loss"] == pytest.approx(a["train_loss"], rel=rel)
        assert f["lr"] == a["lr"]
        for key in f:
            if key.endswith("acc") or ".class_" in key:
                assert abs(f[key] - a[key]) <= acc + 1e-12, key


def assert_same_weights(path_a, path_b, rel: float = REL64) -> None:
    a, b = torch.load(path_a, weights_only=False), torch.load(path_b, weights_only=False)
    for part in ("backbone", "head"):
        assert a[part].keys() == b[part].keys()
        for name, value in a[part].items():
            torch.testing.assert_close(value, b[part][name], rtol=rel, atol=rel, msg=f"{part}.{name}")
    assert torch.equal(a["generator"], b["generator"])  # the data order went on identically


def test_fused_trials_match_trials_run_alone(tiny64, tmp_path):
    specs = mixed_specs(tiny64)
    fused = run_fused_trials(specs, [opts(tmp_path, f"fused{i}") for i in range(3)])
    for i, spec in enumerate(specs):
        alone = run_trial(spec, opts(tmp_path, f"alone{i}"))
        assert fused[i].status == alone.status == "finished"
        assert_same_history(fused[i].history, alone.history)
        assert_same_weights(tmp_path / f"fused{i}.pt", tmp_path / f"alone{i}.pt")
        assert fused[i].images_per_second > 0


def test_trials_with_different_seeds_read_their_own_order(tiny64, tmp_path):
    specs = [spec_for(tiny64, seed=s) for s in (0, 1, 0)]
    fused = run_fused_trials(specs, [opts(tmp_path, f"fused{i}") for i in range(3)])
    for i, spec in enumerate(specs):
        alone = run_trial(spec, opts(tmp_path, f"alone{i}"))
        assert_same_history(fused[i].history, alone.history)
        assert_same_weights(tmp_path / f"fused{i}.pt", tmp_path / f"alone{i}.pt")
    assert fused[0].history[0]["train_loss"] != fused[1].history[0]["train_loss"]


def test_batchnorm_running_statistics_are_kept_per_trial(tiny64, tmp_path):
    specs = [spec_for(tiny64, backbone="mini-resnet18", epochs=1),
             spec_for(tiny64, backbone="mini-resnet18", epochs=1, optimizer_params={"lr": 1e-2})]
    run_fused_trials(specs, [opts(tmp_path, f"fused{i}") for i in range(2)])
    for i, spec in enumerate(specs):
        run_trial(spec, opts(tmp_path, f"alone{i}"))
        assert_same_weights(tmp_path / f"fused{i}.pt", tmp_path / f"alone{i}.pt")  # includes running_mean/var
    state = torch.load(tmp_path / "fused0.pt", weights_only=False)["backbone"]
    tracked = [v for k, v in state.items() if k.endswith("num_batches_tracked")]
    assert tracked and all(int(v) == 5 for v in tracked)  # 80 images / 16: five training steps


def test_a_diverging_trial_leaves_the_group_and_the_others_finish(tiny64):
    specs = [spec_for(tiny64, epochs=3, optimizer_params={"lr": 1e30}), spec_for(tiny64, epochs=3)]
    fused = run_fused_trials(specs, [opts(), opts()])
    alone = [run_trial(s, opts()) for s in specs]
    assert fused[0].status == alone[0].status == "diverged"
    assert fused[0].diverged == alone[0].diverged
    assert fused[1].status == "finished"
    assert_same_history(fused[1].history, alone[1].history)


def test_a_pruned_trial_stops_and_the_others_go_on(tiny64):
    def prune(epoch: int, metrics: dict[str, float]) -> None:
        raise Pruned("pruner")

    specs = [spec_for(tiny64, epochs=3), spec_for(tiny64, epochs=3, loss="cosface")]
    fused = run_fused_trials(specs, [opts(on_epoch=prune), opts()])
    assert fused[0].status == "pruned" and len(fused[0].history) == 1
    assert fused[1].status == "finished" and len(fused[1].history) == 3
    assert_same_history(fused[1].history, run_trial(specs[1], opts()).history)


def test_trials_of_different_lengths_end_on_their_own_epoch(tiny64):
    specs = [spec_for(tiny64, epochs=1), spec_for(tiny64, epochs=3)]
    fused = run_fused_trials(specs, [opts(), opts()])
    assert [len(r.history) for r in fused] == [1, 3]
    for spec, result in zip(specs, fused, strict=True):
        assert_same_history(result.history, run_trial(spec, opts()).history)


def test_checkpoints_resume_across_fused_and_alone(tiny64, tmp_path):
    """A fused group stopped after epoch 0: one trial resumes alone, one resumes fused beside a fresh trial."""
    stop_after_first = {"n": 0}

    def interrupt(epoch: int, metrics: dict[str, float]) -> None:
        stop_after_first["n"] += 1
        if stop_after_first["n"] == 2:  # both trials have saved epoch 0
            raise KeyboardInterrupt

    specs = mixed_specs(tiny64, epochs=3)[:2]
    with pytest.raises(KeyboardInterrupt):
        run_fused_trials(specs, [opts(tmp_path, "a", on_epoch=interrupt), opts(tmp_path, "b", on_epoch=interrupt)])
    assert torch.load(tmp_path / "a.pt", weights_only=False)["epoch"] == 0
    full = [run_trial(s, opts()) for s in specs]

    resumed_alone = run_trial(specs[0], opts(tmp_path, "a"))
    assert_same_history(resumed_alone.history, full[0].history)

    fresh = mixed_specs(tiny64, epochs=3)[2]
    resumed_fused, fresh_result = run_fused_trials([specs[1], fresh], [opts(tmp_path, "b"), opts()])
    assert_same_history(resumed_fused.history, full[1].history)
    assert_same_history(fresh_result.history, run_trial(fresh, opts()).history)


def test_in_float32_fused_trials_stay_close_to_trials_run_alone(tiny_dataset, tmp_path):
    specs = mixed_specs(tiny_dataset, epochs=3)
    fused = run_fused_trials(specs, [opts(tmp_path, f"fused{i}") for i in range(3)])
    for i, spec in enumerate(specs):
        alone = run_trial(spec, opts(tmp_path, f"alone{i}"))
        assert_same_history(fused[i].history, alone.history, rel=REL32, acc=ACC32)
        assert_same_weights(tmp_path / f"fused{i}.pt", tmp_path / f"alone{i}.pt", rel=REL32)


def test_bf16_channels_last_fused_trials_stay_close_to_trials_run_alone(tiny_dataset, tmp_path):
    # Autocast and the channels-last layout inside vmap. One full-batch step an epoch, so the first epoch's
    # loss is the untrained models' forward pass: equal up to bf16 rounding, and unlike fp32's (autocast is
    # on). Later epochs carry bf16's 4e-3 rounding through Adam's updates.
    specs = mixed_specs(tiny_dataset, epochs=3, batch_size=80, precision="bf16", channels_last=True)
    fused = run_fused_trials(specs, [opts(tmp_path, f"fused{i}") for i in range(3)])
    fp32 = run_fused_trials([s.replace(precision="fp32") for s in specs], [opts() for _ in specs])
    # softmax's untrained loss sits at log(4) whatever the rounding, the margin heads' do not
    first_bf16, first_fp32 = ([r.history[0]["train_loss"] for r in rs] for rs in (fused, fp32))
    assert max(abs(b / f - 1) for b, f in zip(first_bf16, first_fp32, strict=True)) > 1e-5
    for i, spec in enumerate(specs):
        alone = run_trial(spec, opts())
        assert fused[i].status == alone.status == "finished"
        first, first_alone = fused[i].history[0]["train_loss"], alone.history[0]["train_loss"]
        assert first == pytest.approx(first_alone, rel=1e-3)
        assert_same_history(fused[i].history, alone.history, rel=REL_BF16, acc=ACC_BF16)
        weights = torch.load(tmp_path / f"fused{i}.pt", weights_only=False)
        assert all(w.dtype == torch.float32 for w in weights["backbone"].values() if w.is_floating_point())


def test_fusion_keys_and_groups():
    base = TrialSpec(dataset="digits", backbone="lenet++", loss="softmax")
    other_loss = base.replace(loss="arcface", optimizer="sgd", seed=3, epochs=4)
    other_batch = base.replace(batch_size=64)
    fp16 = base.replace(precision="fp16")
    assert fusion_key(base) == fusion_key(other_loss) != fusion_key(other_batch)
    assert fusion_key(fp16) is None and "fp16" in fusion_obstacle(fp16)
    assert fusion_key(base.replace(compile=True)) is None
    specs = [base, other_batch, other_loss, fp16, base, other_batch, base]
    assert group_fusable(specs, 2) == [[0, 2], [1, 5], [3], [4, 6]]
    assert group_fusable(specs, 1) == [[i] for i in range(len(specs))]


def test_what_cannot_be_fused_runs_one_after_another(tiny_dataset):
    specs = [spec_for(tiny_dataset, epochs=1, precision="fp16"), spec_for(tiny_dataset, epochs=1)]
    fused = run_fused_trials(specs, [opts(), opts()])
    for spec, result in zip(specs, fused, strict=True):
        assert result.history == run_trial(spec, opts()).history  # the same code path: identical numbers
        assert math.isfinite(result.metrics["train_loss"])


def test_a_short_trials_final_checkpoint_resumes_to_its_metrics(tiny64, tmp_path):
    """Killed while a longer trial of its group trains on, a finished short trial's last checkpoint stays; the
    retry trains nothing more and must return that epoch's metrics (else the objective looks missing)."""
    short, long_ = spec_for(tiny64, epochs=1), spec_for(tiny64, epochs=3, loss="cosface")

    def kill(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_fused_trials([short, long_], [opts(tmp_path, "short"), opts(tmp_path, "long", on_epoch=kill)])
    assert torch.load(tmp_path / "short.pt", weights_only=False)["epoch"] == 0
    full = run_trial(short, opts())
    for resumed in (run_trial(short, opts(tmp_path, "short")),
                    run_fused_trials([short, long_], [opts(tmp_path, "short"), opts(tmp_path, "long")])[0]):
        assert resumed.status == "finished"
        assert_same_history(resumed.history, full.history)
        assert resumed.metrics == resumed.history[-1]
        assert resumed.metrics["test_acc"] == full.metrics["test_acc"]


def test_a_pruned_trials_checkpoint_resumes_pruned(tiny64, tmp_path):
    """A pruned trial's checkpoint stays until its group ends; after a kill in that time the retry (its pruner
    knows nothing yet) must end pruned at the same epoch, not train on past the pruning."""
    pruned, long_ = spec_for(tiny64, epochs=3), spec_for(tiny64, epochs=3, loss="cosface")

    def prune(epoch: int, metrics: dict[str, float]) -> None:
        raise Pruned("pruner")

    def kill(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_fused_trials([pruned, long_], [opts(tmp_path, "pruned", on_epoch=prune),
                                           opts(tmp_path, "long", on_epoch=kill)])
    first = run_fused_trials([pruned, long_], [opts(on_epoch=prune), opts()])[0]
    for retry in (run_trial(pruned, opts(tmp_path, "pruned")),
                  run_fused_trials([pruned, long_], [opts(tmp_path, "pruned"), opts(tmp_path, "long")])[0]):
        assert retry.status == "pruned"
        assert_same_history(retry.history, first.history)
        assert len(retry.history) == 1 and retry.metrics == retry.history[-1]


def test_backbones_with_dropout_train_one_after_another(tiny64, monkeypatch):
    """Under vmap dropout draws from torch's one global generator (left by the last trial built), not each
    trial's own seed: such trials are not fused, so each equals the trial run alone."""
    pytest.importorskip("timm")
    specs = [spec_for(tiny64, backbone="timm/resnet10t", backbone_params={"drop_rate": 0.5}, embedding_dim=4,
                      epochs=1, seed=s) for s in (0, 1)]
    assert "dropout" in fusion_obstacle(specs[0])
    assert group_fusable(specs, 2) == [[0], [1]]
    alone = [run_trial(spec, opts()).history for spec in specs]
    assert [r.history for r in run_fused_trials(specs, [opts(), opts()])] == alone
    # dropout the spec does not name (a default): run_fused_trials finds it in the built backbone
    import bench.fused

    monkeypatch.setattr(bench.fused, "fusion_obstacle", lambda spec: None)
    assert group_fusable(specs, 2) == [[0, 1]]
    assert [r.history for r in run_fused_trials(specs, [opts(), opts()])] == alone


def test_fused_trials_skip_a_final_batch_of_one_for_a_backbone_with_batchnorm(tiny_dataset, bn_backbone, tmp_path):
    # 81 images in batches of 16: the sixth batch holds one sample, which training-mode BatchNorm refuses.
    specs = [spec_for(tiny_dataset, dataset_params={"train_size": 81}, backbone=bn_backbone, epochs=1, seed=s)
             for s in (0, 1)]
    fused = run_fused_trials(specs, [opts(tmp_path, f"fused{i}") for i in range(2)])
    assert [r.status for r in fused] == ["finished", "finished"]
    state = torch.load(tmp_path / "fused0.pt", weights_only=False)["backbone"]
    assert int(state["2.num_batches_tracked"]) == 5


def test_a_failed_fused_group_leaves_no_temporary_folder(tiny_dataset, tmp_path, monkeypatch):
    # as run_trial: the group's pictures, written before a callback raised, went into marginbench-* folders
    # that nobody removed
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def fail(epoch, metrics):
        raise RuntimeError("callback failed")

    specs = [spec_for(tiny_dataset, epochs=1, seed=s) for s in (0, 1)]
    options = [TrialOptions(progress=False, plots=True), TrialOptions(progress=False, plots=True, on_epoch=fail)]
    with pytest.raises(RuntimeError, match="callback failed"):
        run_fused_trials(specs, options)
    assert list(tmp_path.glob("marginbench-*")) == []
