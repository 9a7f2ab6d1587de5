"""Trials fused into one program: several trials that share a backbone architecture and a device-resident
dataset train together, one step for all of them.

Separate processes on one GPU plateau (each small step pays its kernel launches and the GPU's context
switches); here the K backbones run as one batched program: every step stacks the trials' own parameters
(``torch.stack``, differentiable, so gradients land back in each trial's tensors) and calls the backbone
once under ``torch.func.vmap`` (a convolution over K weight sets becomes one grouped convolution). Heads,
optimizers, schedulers, gradient clipping and CenterLoss stay per trial, exactly as in `bench.trial`: the
trials may differ in loss, margin, optimizer, learning rate, schedule, clipping and seed. Because the
trials' parameters are disjoint, the gradient of the summed losses is each trial's own gradient.

Each trial keeps everything `bench.trial.run_trial` keeps (`bench.trial.TrialState`): its data order
(trials whose order generators are in the same state read one shared stream), its per-epoch evaluation,
pictures, checkpoint (the same file format: a fused trial resumes alone and the other way round), its
``on_epoch`` callback; a trial that diverges or is pruned leaves the group and the others go on. The
numbers equal a sequential run's up to float summation order (a grouped convolution adds in another order).

Fusable: the same dataset, backbone, backbone params, embedding size, batch size and precision, a dataset
held in memory (a `TensorSplit`), fp32 or bf16, no ``compile``, no DistributedDataParallel
(`fusion_obstacle` says why not). `run_fused_trials` runs anything else one trial after another.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch.func import functional_call, vmap

from bench.data import Batches
from bench.spec import TrialSpec
from bench.trial import (
    NONFINITE_CHECK_EVERY,
    TrialOptions,
    TrialResult,
    TrialState,
    _sync,
    at_least_fp32,
    build_models,
    load_dataset,
    pick_device,
    run_trial,
)
from registry.datasets import TensorSplit

__all__ = ["fusion_key", "fusion_obstacle", "group_fusable", "run_fused_trials"]


def fusion_obstacle(spec: TrialSpec) -> str | None:
    """Why this trial cannot train fused with others (None: it can, if its data is held in memory)."""
    if spec.precision == "fp16":
        return "precision fp16 (each trial needs its own loss scale)"
    if spec.compile:
        return "compile: true"
    drops = {k: v for k, v in spec.backbone_params.items() if k in _DROPOUT_PARAMS and v}
    if drops:
        return f"dropout in the backbone ({drops}: under vmap it draws from one global generator, not the trial's)"
    return None


#: Backbone parameters that switch on dropout or stochastic depth (`registry.backbones`).
_DROPOUT_PARAMS = ("dropout", "drop_rate", "drop_path_rate")


def _stochastic(module: torch.nn.Module) -> bool:
    """Whether training mode draws random numbers (dropout, stochastic depth): fused, the K trials' draws come
    from torch's one global generator in another order than each trial's alone."""
    for m in module.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
        if any(float(getattr(m, a, 0.0) or 0.0) > 0 for a in ("drop_prob", "drop_rate")):
            return True  # timm: DropPath / DropBlock's drop_prob, a model's F.dropout at drop_rate
    return False


def fusion_key(spec: TrialSpec) -> str | None:
    """Trials with equal keys can train as one program; None when `fusion_obstacle` names a reason.

    The key holds what fixes the backbone's shapes and the batches: dataset and its params, backbone and
    its params, embedding size, batch sizes, precision and memory format.
    """
    if fusion_obstacle(spec) is not None:
        return None
    return json.dumps([spec.dataset, dict(spec.dataset_params), spec.backbone, dict(spec.backbone_params),
                       spec.embedding_dim, spec.batch_size, spec.eval_batch_size, spec.precision,
                       spec.channels_last], sort_keys=True, default=str)


def group_fusable(specs: Sequence[TrialSpec], max_group: int) -> list[list[int]]:
    """Indices of ``specs`` in groups of at most ``max_group`` that can train fused, in first-seen order;
    a trial that cannot be fused is a group of its own."""
    groups: list[list[int]] = []
    open_groups: dict[str, list[int]] = {}
    for i, spec in enumerate(specs):
        key = fusion_key(spec)
        group = open_groups.get(key) if key is not None else None
        if group is None or len(group) >= max_group:
            group = [i]
            groups.append(group)
            if key is not None:
                open_groups[key] = group
        else:
            group.append(i)
    return groups


def run_fused_trials(specs: Sequence[TrialSpec], options: Sequence[TrialOptions]) -> list[TrialResult]:
    """Trains the trials as one program when they can be fused, else one after another.

    Args:
        specs: the trials; fused when all have the same `fusion_key` and a dataset held in memory.
        options: one `TrialOptions` per trial (its device, checkpoint, pictures, callback); the first one's
            device and progress setting serve the group.

    Returns:
        One `TrialResult` per spec, in order, as `bench.trial.run_trial` would return it. A trial's
        ``train_seconds`` is the group's training time (the steps are shared).
    """
    if len(specs) != len(options):
        raise ValueError(f"run_fused_trials: {len(specs)} specs but {len(options)} options")
    keys = {fusion_key(s) for s in specs}
    if (len(specs) < 2 or None in keys or len(keys) > 1 or any(o.distributed is not None for o in options)
            or not isinstance(load_dataset(specs[0]).train, TensorSplit)
            or _stochastic(_meta_backbone(specs[0]))):  # a default the spec does not name (fusion_obstacle: those)
        return [run_trial(s, o) for s, o in zip(specs, options, strict=True)]
    return _FusedGroup(specs, options).run()


def _meta_backbone(spec: TrialSpec) -> torch.nn.Module:
    """The spec's backbone built on the meta device: its modules and settings, no memory, no random draws."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return build_models(spec, load_dataset(spec))[0]


class _FusedGroup:
    """K `TrialState`s trained by shared, vmapped steps."""

    def __init__(self, specs: Sequence[TrialSpec], options: Sequence[TrialOptions]) -> None:
        self.device = device = pick_device(options[0].device)
        if device.type == "cuda" and device.index is not None:  # as in bench.trial.run_trial: set_device
            torch.cuda.set_device(device)  # refuses plain "cuda", which is the current device already
        spec0 = specs[0]
        bundle = load_dataset(spec0)
        train_split = _resident(bundle.train, device)
        test = (Batches(_resident(bundle.test, device), spec0.eval_batch_size, device,
                        channels_last=spec0.channels_last) if bundle.test is not None else None)
        self.trials = [
            TrialState(spec, opt, device, test=test, train=Batches(
                train_split, spec.batch_size, device, shuffle=True, generator=torch.Generator().manual_seed(spec.seed),
                channels_last=spec.channels_last))
            for spec, opt in zip(specs, options, strict=True)]
        self.template = copy.deepcopy(self.trials[0].backbone).to("meta")
        self.param_names = [n for n, _ in self.template.named_parameters()]
        self.buffer_names = [n for n, _ in self.template.named_buffers()]
        first = min(t.start_epoch for t in self.trials)
        self.epochs: Any = range(first, max(s.epochs for s in specs))
        if options[0].progress:
            from tqdm.auto import tqdm

            self.epochs = tqdm(self.epochs, desc=f"{len(specs)} fused trials", unit="epoch", initial=first,
                               total=max(s.epochs for s in specs), leave=False, dynamic_ncols=True)

    def _embed(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
               images: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template, (params, buffers), (images,))

    def run(self) -> list[TrialResult]:
        try:
            return self._run()
        except BaseException:
            for trial in self.trials:  # as run_trial does: a failed group's temporary artifact folders go
                trial.discard_artifacts()
            raise

    def _run(self) -> list[TrialResult]:
        done: set[int] = set()
        for epoch in self.epochs:
            running = [k for k, t in enumerate(self.trials)
                       if k not in done and t.start_epoch <= epoch < t.spec.epochs]
            if running:
                done |= self._epoch(epoch, running)
        if hasattr(self.epochs, "close"):
            self.epochs.close()
        return [t.finish() for t in self.trials]

    def _epoch(self, epoch: int, running: list[int]) -> set[int]:
        """Trains one epoch of the running trials; the ones that stop here (diverged, pruned)."""
        trials, device = self.trials, self.device
        streams: dict[bytes, int] = {}  # generator state -> the trial whose Batches is read for all of them
        reads = {k: streams.setdefault(bytes(trials[k].train.generator.get_state().numpy()), k) for k in running}
        leaders = sorted(set(reads.values()))
        for k in running:
            trials[k].backbone.train()
            trials[k].head.train()
        loss_sum = {k: torch.zeros((), device=device) for k in running}
        correct = {k: torch.zeros((), dtype=torch.long, device=device) for k in running}
        first_bad = {k: torch.full((), -1, dtype=torch.long, device=device) for k in running}
        seen = 0
        stopped: set[int] = set()
        active = list(running)
        _sync(device)
        t0 = time.perf_counter()
        for step, batches in enumerate(zip(*(trials[k].train for k in leaders), strict=True)):
            if not active:
                continue  # drain the streams: each leader's generator must finish the epoch
            if len(batches[0][1]) < trials[active[0]].min_batch:
                continue  # a final batch of one, which BatchNorm cannot train on (`TrialState.min_batch`)
            by_leader = dict(zip(leaders, batches, strict=True))
            losses, hits = self._step([(k, *by_leader[reads[k]]) for k in active])
            n = len(batches[0][1])
            for k, loss, hit in zip(active, losses, hits, strict=True):
                correct[k] += hit
                bad = ~torch.isfinite(loss)
                first_bad[k] = torch.where(bad & (first_bad[k] < 0), torch.full_like(first_bad[k], step), first_bad[k])
                loss_sum[k] += torch.where(bad, torch.zeros_like(loss), loss) * n
            seen += n
            if (step + 1) % NONFINITE_CHECK_EVERY == 0:
                bad_now = torch.stack([first_bad[k] for k in active]).ge(0).tolist()
                for k, is_bad in zip(list(active), bad_now, strict=True):
                    if is_bad:  # leaves the group at once, as a sequential trial stops at this check
                        _sync(device)
                        trials[k].end_epoch(epoch, loss_sum[k], correct[k], seen, first_bad[k],
                                            time.perf_counter() - t0)
                        active.remove(k)
                        stopped.add(k)
        _sync(device)
        seconds = time.perf_counter() - t0
        for k in running:
            if reads[k] != k:  # it drew the same permutation as its leader: leave its generator where that one is
                trials[k].train.generator.set_state(trials[reads[k]].train.generator.get_state())
        for k in active:
            if trials[k].end_epoch(epoch, loss_sum[k], correct[k], seen, first_bad[k], seconds):
                stopped.add(k)
        return stopped

    def _step(self, batch: list[tuple[int, torch.Tensor, torch.Tensor]]
              ) -> tuple[list[torch.Tensor], dict[int, torch.Tensor]]:
        """One training step of the trials ``[(k, images, labels), ...]``.

        Returns:
            The detached losses and the correct predictions (device scalars, in ``batch`` order), the
            predictions taken before the step, as `bench.trial.run_trial` takes them.
        """
        trials = [self.trials[k] for k, _, _ in batch]
        shared = all(images is batch[0][1] for _, images, _ in batch)
        images = batch[0][1] if shared else torch.stack([images for _, images, _ in batch])
        params = {n: torch.stack([t.backbone.get_parameter(n) for t in trials]) for n in self.param_names}
        buffers = {n: torch.stack([t.backbone.get_buffer(n) for t in trials]) for n in self.buffer_names}
        dtype = trials[0].dtype
        with torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
            emb = vmap(self._embed, in_dims=(0, 0, None if shared else 0), randomness="different")(
                params, buffers, images)  # (K, B, D)
        emb = at_least_fp32(emb)
        total: list[torch.Tensor] = []
        with torch.autocast(images.device.type, enabled=False):  # heads in fp32, as in bench.trial
            for i, (t, (_, _, labels)) in enumerate(zip(trials, batch, strict=True)):
                loss = t.head(emb[i], labels)
                if t.center is not None:
                    loss = loss + t.center_weight * t.center(emb[i], labels)
                total.append(loss)
        for t in trials:
            t.optimizer.zero_grad(set_to_none=True)
        torch.stack(total).sum().backward()  # disjoint parameters: each trial gets its own loss's gradient
        with torch.no_grad():
            for n in self.buffer_names:  # running statistics updated in the stacked copy go back to each trial
                for i, t in enumerate(trials):
                    t.backbone.get_buffer(n).copy_(buffers[n][i])
        detached = emb.detach()
        hits = []
        with torch.no_grad():
            for i, (t, (_, _, labels)) in enumerate(zip(trials, batch, strict=True)):
                hits.append((t.head.logits(detached[i]).argmax(1) == labels).sum())
        for i, (t, (_, _, labels)) in enumerate(zip(trials, batch, strict=True)):
            t.optimizer_step()
            if t.center is not None:
                t.center.update(detached[i], labels)
        return [loss.detach() for loss in total], hits


def _resident(split: Any, device: torch.device) -> TensorSplit:
    """The split's tensors on the device, once for all the group's trials."""
    return TensorSplit(split.images.to(device), split.labels.to(device))
