"""One trial: build dataset, backbone and head from a `TrialSpec`, train, evaluate every epoch.

A trial is a pure function of its spec (and the device): every random generator is seeded from
``spec.seed`` and the data order comes from a generator of its own. The hot loop never waits on the
host: losses and correct counts are summed on the device and read once per epoch, and the check for a
non-finite loss reads one device flag every `NONFINITE_CHECK_EVERY` steps (the flag records the first
bad step exactly).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.data import Batches, SkipLog, default_loader_workers
from bench.spec import TrialSpec
from registry import BACKBONES, DATASETS, LOSSES
from registry.datasets import DataBundle, PairSet, check_bundle

__all__ = ["TrialOptions", "TrialResult", "TrialState", "Pruned", "run_trial", "build_models", "load_dataset",
           "pick_device", "autocast_dtype", "at_least_fp32"]

NONFINITE_CHECK_EVERY = 50
_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Pruned(Exception):
    """Raised by an ``on_epoch`` callback to stop a trial early (a pruner's decision)."""


@dataclass
class TrialOptions:
    """How to run a trial; nothing here changes its numbers.

    Attributes:
        device: ``"cuda:1"``, ``"cpu"``...; None picks CUDA when present.
        plots: write an embedding picture per epoch (2-D/3-D scatter with class directions, GIF at the
            end; t-SNE of ten identities at the end for higher dimensions).
        artifact_dir: where pictures and curves go. None: a ``marginbench-*`` temporary folder, made at the
            first file written (a trial that writes none leaves none), removed when the trial raises; a
            trial that returns leaves it to the caller, ``result.artifacts`` naming its files.
        checkpoint_path: saved after every epoch and resumed from when it exists for the same spec.
        num_workers: DataLoader workers for on-disk datasets (None: `bench.data.default_loader_workers`).
        progress: show a progress bar over epochs.
        on_epoch: ``on_epoch(epoch, metrics)`` after each epoch; may raise `Pruned`.
        distributed: a `bench.distributed.DistContext` to train this trial with DistributedDataParallel
            across a torchrun job (same numbers as one process on the same global batch, up to float
            summation order, except that a final batch smaller than the world size is dropped); None for one
            process.
    """

    device: str | None = None
    plots: bool = False
    artifact_dir: Path | None = None
    checkpoint_path: Path | None = None
    num_workers: int | None = None
    progress: bool = True
    on_epoch: Callable[[int, dict[str, float]], None] | None = None
    distributed: Any = None


@dataclass
class TrialResult:
    """What a trial produced.

    Attributes:
        status: ``finished``, ``diverged`` or ``pruned``.
        metrics: the last epoch's metrics (``train_loss``, ``train_acc``, ``test_acc``, ...).
        history: one metrics dict per finished epoch, in order.
        epoch_times: when each epoch of ``history`` was recorded (seconds since the Unix epoch; kept in the
            checkpoint, so that a resumed trial logs its restored epochs at the time they were trained; None
            for epochs restored from a checkpoint that did not keep it).
        diverged: ``{"epoch": e, "step": s, "reason": ...}`` when the loss went NaN or inf, or (``step``
            ``"eval"``) when the test split's or the verification pairs' embeddings did.
        skipped: unreadable samples ``{path: reason}`` met while loading.
        artifacts: files written (pictures, ROC curves), to be logged.
        train_seconds: time spent in training steps (device-synchronized).
        images_per_second: training throughput.
    """

    spec: TrialSpec
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    epoch_times: list[float | None] = field(default_factory=list)
    diverged: dict[str, Any] | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    train_seconds: float = 0.0
    images_per_second: float = 0.0
    device: str = ""


def pick_device(requested: str | None = None) -> torch.device:
    """The requested device, else CUDA when available, else the CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(precision: str) -> torch.dtype | None:
    return _AUTOCAST[precision]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@lru_cache(maxsize=4)
def _load_dataset_cached(name: str, params_json: str) -> DataBundle:
    bundle = DATASETS.create(name, **json.loads(params_json))
    factory = DATASETS.entry(name).factory
    check_bundle(bundle, name, source=f"{factory.__module__}.{getattr(factory, '__qualname__', factory)}")
    return bundle


def load_dataset(spec: TrialSpec) -> DataBundle:
    """The spec's dataset, checked (`registry.datasets.check_bundle`: a factory's inconsistent bundle is an
    error here, not a crash or garbage in training); bundles are cached per process so a grid loads MNIST once."""
    return _load_dataset_cached(spec.dataset, json.dumps(dict(spec.dataset_params), sort_keys=True))


def build_models(spec: TrialSpec, bundle: DataBundle) -> tuple[nn.Module, nn.Module, nn.Module | None]:
    """``(backbone, head, center_loss or None)`` for the spec, initialised from the current RNG state."""
    backbone_params = dict(spec.backbone_params)
    if "input_size" in BACKBONES.parameters(spec.backbone) and "input_size" not in backbone_params:
        backbone_params["input_size"] = list(bundle.image_size)  # the face nets size their last layer by it
    backbone = BACKBONES.create(spec.backbone, embedding_dim=spec.embedding_dim, in_chans=bundle.in_chans,
                                **backbone_params)
    head = LOSSES.create(spec.loss, embedding_dim=spec.embedding_dim, num_classes=bundle.num_classes,
                         **spec.loss_params)
    center = None
    if spec.center_loss and float(spec.center_loss.get("weight", 0.0)) > 0:
        from registry.losses.center import CenterLoss

        center = CenterLoss(spec.embedding_dim, bundle.num_classes,
                            alpha=float(spec.center_loss.get("alpha", 0.5)))
    return backbone, head, center


def _optimizer(spec: TrialSpec, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    kw = dict(spec.optimizer_params)
    if "betas" in kw:
        kw["betas"] = tuple(kw["betas"])
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[spec.optimizer]
    return cls(params, **kw)


def _scheduler(spec: TrialSpec, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler | None:
    kw = dict(spec.scheduler_params)
    if spec.scheduler == "none":
        return None
    if spec.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(kw.get("step_size", 5)),
                                               gamma=float(kw.get("gamma", 0.1)))
    if spec.scheduler == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[int(m) for m in kw.get("milestones", [])],
                                                    gamma=float(kw.get("gamma", 0.1)))
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=spec.epochs, eta_min=float(kw.get("eta_min", 0)))


def at_least_fp32(emb: torch.Tensor) -> torch.Tensor:
    """Embeddings for a head: half precision widened to float32 (margins need fp32 cosines near +-1);
    float64 (a model built in float64, for reference runs) kept."""
    return emb if emb.dtype in (torch.float32, torch.float64) else emb.float()


def _embed(backbone: nn.Module, images: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    with torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
        return at_least_fp32(backbone(images))


PER_CLASS_MAX = 20  # test_acc.class_<i> is logged for datasets with at most this many classes


@torch.no_grad()
def evaluate_split(backbone: nn.Module, head: nn.Module, batches: Batches, dtype: torch.dtype | None,
                   *, keep: int = 0, num_classes: int = 0, stop_after_keep: bool = False
                   ) -> tuple[dict[str, float], np.ndarray | None, np.ndarray | None]:
    """Top-1 accuracy of ``head.logits(emb)`` over a split.

    Returns:
        ``({"acc": ..., "acc.class_<i>": ..., "nonfinite": n}, embeddings, labels)``: per-class accuracies
        (recall of class i) only when ``0 < num_classes <= PER_CLASS_MAX``; ``nonfinite`` the number of images
        whose embedding holds a NaN or inf (not a metric: their logits make any argmax, so the accuracy means
        nothing when it is not 0); up to ``keep`` embeddings ``(n, D)`` and labels ``(n,)``
        as numpy arrays, or None when ``keep`` is 0. Counts stay on the device until the end of the split.
        With ``stop_after_keep`` the split is read only until ``keep`` embeddings are collected (for pictures;
        the accuracy then covers those batches only).
    """
    backbone.eval()
    head.eval()
    per_class = 0 < num_classes <= PER_CLASS_MAX
    correct = torch.zeros((), dtype=torch.long, device=batches.device)
    hits = torch.zeros(max(num_classes, 1) if per_class else 1, dtype=torch.long, device=batches.device)
    counts = torch.zeros_like(hits)
    nonfinite = torch.zeros((), dtype=torch.long, device=batches.device)
    total = 0
    kept_emb, kept_lab = [], []
    n_kept = 0
    for images, labels in batches:
        emb = _embed(backbone, images, dtype)
        with torch.autocast(images.device.type, enabled=False):  # heads run in fp32
            pred = head.logits(emb).argmax(1)
        right = pred == labels
        correct += right.sum()
        nonfinite += (~torch.isfinite(emb).all(1)).sum()
        if per_class:
            hits.index_add_(0, labels, right.long())
            counts.index_add_(0, labels, torch.ones_like(labels))
        total += len(labels)
        if n_kept < keep:
            kept_emb.append(emb[: keep - n_kept].cpu())
            kept_lab.append(labels[: keep - n_kept].cpu())
            n_kept += len(kept_emb[-1])
        if stop_after_keep and n_kept >= keep:
            break
    out = {"acc": correct.item() / max(total, 1), "nonfinite": nonfinite.item()}
    if per_class:
        for c, (h, n) in enumerate(zip(hits.tolist(), counts.tolist(), strict=True)):
            if n:
                out[f"acc.class_{c}"] = h / n
    if keep:
        return out, torch.cat(kept_emb).numpy(), torch.cat(kept_lab).numpy()
    return out, None, None


def _verification(backbone: nn.Module, pairs: PairSet, device: torch.device, dtype: torch.dtype | None,
                  batch_size: int, num_workers: int) -> Any:
    """The pairs' `VerificationResult`, or, when an embedding is NaN or inf, why the trial diverged."""
    from bench.verification import pair_scores, verification_metrics

    backbone.eval()

    def embed(images: torch.Tensor) -> torch.Tensor:
        return _embed(backbone, images.to(device), dtype)

    scores = pair_scores(embed, pairs, batch_size=batch_size, flip=True, device=device, num_workers=num_workers)
    bad = int(np.sum(~np.isfinite(scores)))
    if bad:  # the model diverged where the loss did not show it (e.g. eval-mode BatchNorm statistics)
        return f"the embeddings of {bad} of {len(scores)} verification pairs ({pairs.name}) became NaN or inf"
    return verification_metrics(scores, pairs.same.numpy(), pairs.folds.numpy())


class _TrainStep(nn.Module):
    """Backbone and head as one module returning ``(loss, embeddings)`` of a batch: what DDP wraps, so the
    head's class weights are replicated and synchronized like the backbone's."""

    def __init__(self, backbone: nn.Module, head: nn.Module, center: nn.Module | None, center_weight: float,
                 dtype: torch.dtype | None) -> None:
        super().__init__()
        self.backbone, self.head, self.center = backbone, head, center
        self.center_weight, self.dtype = center_weight, dtype

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.backbone(images) if self.dtype is None else _embed(self.backbone, images, self.dtype)
        emb = at_least_fp32(emb)
        with torch.autocast(images.device.type, enabled=False):  # margins need fp32 cosines near +-1
            loss = self.head(emb, labels)
            if self.center is not None:
                loss = loss + self.center_weight * self.center(emb, labels)
        return loss, emb


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)  # a kill mid-save leaves the previous checkpoint intact
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _misfit(state: dict[str, Any], **modules: nn.Module | None) -> str:
    """Where a checkpoint's weights do not fit the models as built now (``"backbone: 3 unexpected, e.g.
    'units.0.conv.bias'"``), or ``""``. ``load_state_dict`` would raise only after copying what fits."""
    problems = []
    for name, module in modules.items():
        saved = state.get(name)
        if module is None or saved is None:
            continue
        want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        have = {k: tuple(v.shape) for k, v in saved.items()}
        missing, unexpected = sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())
        reshaped = sorted(k for k in want.keys() & have.keys() if want[k] != have[k])
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped)):
            if keys:
                problems.append(f"{name}: {len(keys)} {what}, e.g. {keys[0]!r}")
    return "; ".join(problems)


class TrialState:
    """One trial's models, optimizer, data order and record, and what happens between epochs: evaluation,
    pictures, checkpoint, the pruner's callback. `run_trial` drives one through its training steps;
    `bench.fused` drives several through shared ones.

    Building it seeds every generator from ``spec.seed``, builds the models and resumes from
    ``options.checkpoint_path`` when it holds this spec (``start_epoch`` is then the next epoch).

    Args:
        spec, options: the trial.
        device: where it trains.
        train, test: `Batches` to use instead of the trial's own (trials fused on one device share them);
            a shared training `Batches` must be driven by a generator seeded like this trial's.
    """

    def __init__(self, spec: TrialSpec, options: TrialOptions, device: torch.device, *,
                 train: Batches | None = None, test: Batches | None = None) -> None:
        self.spec, self.options, self.device = spec, options, device
        self.dist = dist = options.distributed
        self.dtype = autocast_dtype(spec.precision)
        self.bundle = bundle = load_dataset(spec)
        seed_everything(spec.seed)
        self.backbone, self.head, self.center = backbone, head, center = build_models(spec, bundle)
        # Training-mode BatchNorm raises on a single sample (one value per channel after a pooled or fully
        # connected layer), so a backbone with BatchNorm skips a final training batch of one.
        self.min_batch = 2 if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules()) else 1
        if spec.batch_size < self.min_batch:
            raise ValueError(f"batch_size must be at least 2 for backbone {spec.backbone!r} (its BatchNorm cannot "
                             f"normalize a single sample in training), but got batch_size={spec.batch_size}")
        backbone.to(device)
        head.to(device)
        if center is not None:
            center.to(device)
        if spec.channels_last:
            backbone.to(memory_format=torch.channels_last)
        self.params = list(backbone.parameters()) + list(head.parameters())
        self.optimizer = _optimizer(spec, self.params)
        self.scheduler = _scheduler(spec, self.optimizer)
        self.scaler = torch.amp.GradScaler(device.type, enabled=spec.precision == "fp16")

        generator = torch.Generator().manual_seed(spec.seed)
        self.skips = SkipLog()
        self.loader_workers = (options.num_workers if options.num_workers is not None
                               else default_loader_workers(device))
        self.train = train if train is not None else Batches(
            bundle.train, spec.batch_size, device, shuffle=True, drop_last=False, generator=generator,
            num_workers=self.loader_workers, channels_last=spec.channels_last, skips=self.skips)
        self.test = test if test is not None else (
            Batches(bundle.test, spec.eval_batch_size, device, num_workers=self.loader_workers,
                    channels_last=spec.channels_last, skips=self.skips) if bundle.test is not None else None)

        self.result = TrialResult(spec=spec, status="finished", device=str(device))
        self.images_seen = 0  # before _resume, which restores it with the training time
        self.start_epoch = self._resume()
        self._own_artifact_dir: Path | None = None  # the temporary folder made by `artifact_dir`, if any
        self.frames: list[Path] = []
        self.grad_clip = float(spec.grad_clip) if spec.grad_clip else None
        self.center_weight = float(spec.center_loss.get("weight", 0.0)) if center is not None else 0.0
        self.main = dist is None or dist.is_main
        self._picture_batches: Batches | None = None
        self._pairs: PairSet | None = None  # bundle.pairs, decoded at the first evaluation (`decoded_pairs`)

    @property
    def artifact_dir(self) -> Path:
        """``options.artifact_dir``, else a temporary folder made at the first call (see `TrialOptions`)."""
        if self.options.artifact_dir is not None:
            return self.options.artifact_dir
        if self._own_artifact_dir is None:
            self._own_artifact_dir = Path(tempfile.mkdtemp(prefix="marginbench-"))
        return self._own_artifact_dir

    def discard_artifacts(self) -> None:
        """Removes the temporary folder `artifact_dir` made, if any (the trial raised: nobody will read it)."""
        if self._own_artifact_dir is not None:
            shutil.rmtree(self._own_artifact_dir, ignore_errors=True)
            self._own_artifact_dir = None

    def _resume(self) -> int:
        """Loads the checkpoint when it holds this spec; the epoch to start from."""
        path = self.options.checkpoint_path
        if path is None or not path.exists():
            return 0
        # on the CPU: its RNG states must be CPU ByteTensors (set_rng_state refuses them on a GPU); load_state_dict
        # copies the weights to the models' device and the optimizer's state to its parameters'
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("spec_key") != self.spec.key():
            return 0
        misfit = _misfit(state, backbone=self.backbone, head=self.head, center=self.center)
        if misfit:  # the same spec under other code (a layer added or dropped): its weights cannot continue here
            print(f"marginbench: {path} was saved by a model of another shape ({misfit}); the trial starts over",
                  file=sys.stderr)
            return 0
        self.backbone.load_state_dict(state["backbone"])
        self.head.load_state_dict(state["head"])
        if self.center is not None and state.get("center") is not None:
            self.center.load_state_dict(state["center"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        assert self.train.generator is not None
        self.train.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.result.history = state["history"]
        self.result.epoch_times = state.get("epoch_times") or [None] * len(state["history"])  # older checkpoints
        # a checkpoint of the last epoch (the process died before the trial was recorded; in a fused group a
        # short trial's stays until the whole group ends) trains nothing more: its result is that epoch's
        self.result.metrics = dict(state["history"][-1]) if state["history"] else {}
        self.result.train_seconds = state.get("train_seconds", 0.0)
        self.images_seen = state.get("images_seen", 0)  # with train_seconds: images/s over the whole trial
        if state.get("status") == "pruned":
            self.result.status = "pruned"
            return self.spec.epochs
        return state["epoch"] + 1

    def optimizer_step(self) -> None:
        """Clips (when the spec says so) and applies the gradients that ``backward`` left."""
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def end_epoch(self, epoch: int, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int,
                  first_bad: torch.Tensor, seconds: float) -> bool:
        """Records a trained epoch: divergence, metrics, evaluation, pictures, checkpoint, the callback.

        Under DDP the ranks then agree (`bench.distributed.agree`): rank 0's pruner stops every rank, and an
        error on any rank (rank 0's checkpoint, pictures or callback) is raised on every rank.

        Args:
            epoch: the epoch just trained (from 0).
            loss_sum, correct: the epoch's summed training loss (finite steps) and correct predictions,
                device scalars.
            seen: images trained on.
            first_bad: device scalar, the first step whose loss was NaN or inf, -1 for none.
            seconds: the epoch's training time.

        Returns:
            True when the trial stops here (diverged or pruned).
        """
        if self.dist is None:
            return self._end_epoch(epoch, loss_sum, correct, seen, first_bad, seconds)
        from bench import distributed

        try:
            stop, error = self._end_epoch(epoch, loss_sum, correct, seen, first_bad, seconds), None
        except Exception as err:
            stop, error = False, err
        stop = distributed.agree(error, stop, self.dist, self.device)  # rank 0's pruner decides for all
        if error is not None:
            raise error
        if stop and self.result.status == "finished":
            self.result.status = "pruned"
        return stop

    def _diverge(self, epoch: int, step: int | str, reason: str) -> bool:
        """Ends the trial as diverged at ``epoch``, ``step`` the training step or ``"eval"``; True (it stops)."""
        self.result.status = "diverged"
        self.result.diverged = {"epoch": epoch, "step": step, "reason": reason}
        return True

    def _end_epoch(self, epoch: int, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int,
                   first_bad: torch.Tensor, seconds: float) -> bool:
        """`end_epoch` on this rank alone: no collective, so that a failure here can be agreed."""
        spec, options, device, result = self.spec, self.options, self.device, self.result
        result.train_seconds += seconds
        self.images_seen += seen
        bad_step = int(first_bad.item())
        if bad_step >= 0:
            return self._diverge(epoch, bad_step, f"training loss became NaN or inf at epoch {epoch}, step {bad_step}")
        if seen == 0:  # else train_acc 0.0 of nothing is logged as a result, and the objective looks missing
            skipped = self.skips.samples
            example = next(iter(skipped.items()), None)
            why = (f"all {len(skipped)} training images seen were unreadable (e.g. {example[0]}: {example[1]}); "
                   f"replace or remove them" if example else "the training split is empty")
            raise ValueError(f"epoch {epoch} trained on no images: {why}")
        metrics = {"train_loss": loss_sum.item() / max(seen, 1), "train_acc": correct.item() / max(seen, 1),
                   "lr": self.optimizer.param_groups[0]["lr"]}
        if self.scheduler is not None:
            self.scheduler.step()
        keep = 2000 if options.plots else 0
        emb_np = lab_np = None
        # under DDP only rank 0 evaluates: its metrics are the ones kept (the weights are the same on every rank); a
        # divergence it finds stops every rank at the agreement that follows (`end_epoch`)
        if self.test is not None and self.main:
            split, emb_np, lab_np = evaluate_split(self.backbone, self.head, self.test, self.dtype, keep=keep,
                                                   num_classes=self.bundle.num_classes)
            bad = split.pop("nonfinite")
            if bad:  # the model diverged where the loss did not show it (e.g. eval-mode BatchNorm statistics)
                return self._diverge(epoch, "eval", f"the embeddings of {bad} test images became NaN or inf at "
                                                    f"epoch {epoch}, the training loss being finite")
            metrics.update({f"test_{k}": v for k, v in split.items()})
        if self.bundle.pairs is not None and self.main:  # they cost more than the training steps on a face grid
            if self._pairs is None:  # decoded once: image files are not decoded again at every epoch
                from bench.verification import decoded_pairs

                self._pairs = decoded_pairs(self.bundle.pairs, batch_size=spec.eval_batch_size,
                                            num_workers=self.loader_workers)
            ver = _verification(self.backbone, self._pairs, device, self.dtype, spec.eval_batch_size,
                                self.loader_workers)
            if isinstance(ver, str):  # non-finite embeddings: a diverged trial, as a NaN loss is
                return self._diverge(epoch, "eval", f"{ver} at epoch {epoch}, the training loss being finite")
            metrics.update(ver.as_metrics(self.bundle.pairs.name))
            if epoch == spec.epochs - 1:
                from bench.verification import plot_roc

                result.artifacts.append(plot_roc(ver, self.artifact_dir / f"roc_{self.bundle.pairs.name}.png"))
        if options.plots and self.main and emb_np is None and (spec.embedding_dim <= 3 or epoch == spec.epochs - 1):
            # no closed-set test split (a face grid tested on pairs): picture the training identities
            if self._picture_batches is None:
                self._picture_batches = Batches(self.bundle.train, spec.eval_batch_size, device,
                                                num_workers=self.loader_workers, channels_last=spec.channels_last)
            _, emb_np, lab_np = evaluate_split(self.backbone, self.head, self._picture_batches, self.dtype,
                                               keep=keep, stop_after_keep=True)
        if options.plots and emb_np is not None:
            self.frames += _plot_epoch(emb_np, lab_np, self.head, spec, epoch, self.artifact_dir)
        result.history.append(metrics)
        result.epoch_times.append(time.time())
        result.metrics = metrics
        stop = False
        if options.on_epoch is not None:
            try:
                options.on_epoch(epoch, metrics)
            except Pruned:
                stop = True
        if stop:
            result.status = "pruned"
        # after the pruner's decision, so that a pruned trial's checkpoint says so: in a fused group it stays until
        # the group ends, and a retry after a kill in that time must end pruned, not train on past the pruning
        if options.checkpoint_path is not None and self.main:
            _save_checkpoint(options.checkpoint_path, {
                "spec_key": spec.key(), "epoch": epoch, "backbone": self.backbone.state_dict(),
                "head": self.head.state_dict(), "center": self.center.state_dict() if self.center is not None else None,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "scaler": self.scaler.state_dict(), "generator": self.train.order_state(),
                "torch_rng": torch.get_rng_state(), "history": result.history, "epoch_times": result.epoch_times,
                "train_seconds": result.train_seconds,
                "images_seen": self.images_seen, "status": result.status})
        return stop

    def finish(self) -> TrialResult:
        """The result, with the GIF of the epochs' pictures and the throughput."""
        result = self.result
        if self.frames:
            result.artifacts += self.frames
            if self.spec.embedding_dim in (2, 3) and len(self.frames) > 1:
                from bench.embedding_plots import make_gif

                result.artifacts.append(make_gif(self.frames, self.artifact_dir / "embeddings.gif"))
        result.skipped = dict(self.skips.samples)
        result.images_per_second = (self.images_seen / result.train_seconds if result.train_seconds > 0
                                    else math.nan)
        return result


def run_trial(spec: TrialSpec, options: TrialOptions | None = None) -> TrialResult:
    """Trains and evaluates one trial.

    Returns:
        A `TrialResult`; a loss that turns NaN or inf ends the trial with status ``diverged`` (not an
        exception), a `Pruned` raised by ``options.on_epoch`` with status ``pruned``.

    Raises:
        Whatever building the dataset or models raises (bad parameters should have been caught by the
        grid's validation before training), and whatever an epoch raises (its temporary artifact folder, if
        it made one, removed first).
    """
    options = options or TrialOptions()
    dist = options.distributed
    if dist is not None:
        if spec.center_loss and float(spec.center_loss.get("weight", 0.0)) > 0:
            raise ValueError("center_loss is not supported under DistributedDataParallel (its centres move "
                             "outside the optimizer); run the trial on one process")
    device = pick_device(dist.device if dist is not None else options.device)
    if device.type == "cuda" and device.index is not None:  # plain "cuda" is the current device already, and
        torch.cuda.set_device(device)  # set_device refuses it (ValueError: a torch.device with an index)
    if dist is None:
        trial = TrialState(spec, options, device)
    else:  # a rank that cannot build the trial (read its checkpoint...) fails every rank, before DDP's collectives
        trial = _agreed_trial_state(spec, options, device, dist)
    try:
        return _train(trial)
    except BaseException:
        trial.discard_artifacts()
        raise


def _train(trial: TrialState) -> TrialResult:
    """`run_trial`'s epochs on a built trial."""
    from bench import distributed

    spec, options, device, dist = trial.spec, trial.options, trial.device, trial.dist
    head, center, train = trial.head, trial.center, trial.train
    model_fn = torch.compile(trial.backbone) if spec.compile else trial.backbone
    progress = _progress(range(trial.start_epoch, spec.epochs), spec, options.progress and trial.main,
                         initial=trial.start_epoch)
    train_step: nn.Module = _TrainStep(model_fn, head, center, trial.center_weight, trial.dtype)
    # an error in DDP's construction or a training step leaves the other ranks in a collective: noted, so that a
    # torchrun worker stops rather than start its next trial out of step (errors in end_epoch are agreed)
    if dist is not None:
        with distributed.out_of_step_on_error(dist):
            train_step = distributed.wrap(train_step, dist)

    for epoch in progress:
        with distributed.out_of_step_on_error(dist):
            trial.backbone.train()
            head.train()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), dtype=torch.long, device=device)
            first_bad = torch.full((), -1, dtype=torch.long, device=device)
            seen = 0
            _sync(device)
            t0 = time.perf_counter()
            for step, (images, labels) in enumerate(train):
                if len(labels) < trial.min_batch:
                    continue
                scale = 1.0
                if dist is not None:
                    if len(labels) < dist.world_size:
                        continue  # every rank drops a final batch too small to split
                    images, labels, scale = distributed.shard_batch(images, labels, dist)
                loss, emb = train_step(images, labels)
                with torch.autocast(device.type, enabled=False), torch.no_grad():
                    correct += (head.logits(emb.detach()).argmax(1) == labels).sum()
                trial.optimizer.zero_grad(set_to_none=True)
                trial.scaler.scale(loss if scale == 1.0 else loss * scale).backward()
                trial.optimizer_step()
                if center is not None:
                    center.update(emb.detach(), labels)
                detached = loss.detach()
                bad = ~torch.isfinite(detached)
                first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, step), first_bad)
                loss_sum += torch.where(bad, torch.zeros_like(detached), detached) * len(labels)
                seen += len(labels)
                if (step + 1) % NONFINITE_CHECK_EVERY == 0 and (
                        first_bad.item() >= 0 if dist is None else distributed.any_true(first_bad >= 0, dist, device)):
                    break
            if dist is not None:
                seen_t = torch.tensor(seen, device=device)
                distributed.all_sum([loss_sum, correct, seen_t], dist)
                distributed.first_bad_step(first_bad, dist)
                seen = int(seen_t.item())
            _sync(device)
        stop = trial.end_epoch(epoch, loss_sum, correct, seen, first_bad, time.perf_counter() - t0)
        if hasattr(progress, "set_postfix") and trial.result.history:
            progress.set_postfix({k: round(v, 4) for k, v in trial.result.metrics.items()
                                  if k != "lr" and ".class_" not in k})
        if stop:
            break
    if hasattr(progress, "close"):
        progress.close()
    return trial.finish()


def _agreed_trial_state(spec: TrialSpec, options: TrialOptions, device: torch.device, dist: Any) -> TrialState:
    """`TrialState` under DDP, its errors agreed over the ranks (`bench.distributed.agree`)."""
    from bench import distributed

    try:
        trial, error = TrialState(spec, options, device), None
    except Exception as err:
        trial, error = None, err
    distributed.agree(error, False, dist, device)
    if error is not None:
        raise error
    assert trial is not None
    return trial


def _plot_epoch(emb: np.ndarray, labels: np.ndarray, head: nn.Module, spec: TrialSpec, epoch: int,
                artifact_dir: Path) -> list[Path]:
    from bench.embedding_plots import plot_embeddings

    if spec.embedding_dim > 3 and epoch != spec.epochs - 1:
        return []  # t-SNE once, at the end
    weights = head.weight.detach().float().cpu().numpy() if spec.embedding_dim <= 3 else None
    if weights is not None and len(weights) != head.num_classes:  # sub-centres: rows j*K..j*K+K-1 are class j's
        weights = weights.reshape(head.num_classes, -1, spec.embedding_dim)
    name = f"embeddings_epoch{epoch:03d}.png" if spec.embedding_dim <= 3 else "embeddings_tsne.png"
    return [plot_embeddings(emb, labels, weights, artifact_dir / name, title=f"{spec.label} epoch {epoch + 1}")]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _progress(epochs: range, spec: TrialSpec, enabled: bool, *, initial: int) -> Any:
    if not enabled:
        return epochs
    from tqdm.auto import tqdm

    return tqdm(epochs, desc=f"{spec.label} seed {spec.seed}", unit="epoch", total=spec.epochs, initial=initial,
                leave=False, dynamic_ncols=True)
