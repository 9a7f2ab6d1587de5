"""Minibatches from a split, whichever form it has: a `TensorSplit` on the device, or a Dataset streamed
through DataLoader workers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from registry.datasets import SkippedSample, TensorSplit
from registry.datasets._collate import collate_skipping
from registry.datasets._images import normalize_uint8

__all__ = ["Batches", "EpochBatchSampler", "SkipLog", "default_loader_workers"]

#: Most DataLoader workers one trial starts by default: enough to decode ~30k 112x112 JPEGs a second.
MAX_LOADER_WORKERS = 16


def default_loader_workers(device: torch.device, cores: int | None = None) -> int:
    """DataLoader workers for one trial's on-disk splits.

    On the CPU none: the same cores train, and a decoding process beside torch's threads costs more than
    the decoding (measured: a 112x112 JPEG folder fed MobileNetV3 at 0.77 of its in-memory speed with one
    worker on 2 cores, at 1.00 with none). Otherwise the trial's cores (``cores``; None: torch's thread
    count, which `bench.workers` sets to each worker's share) less one for the training loop, between 1 and
    `MAX_LOADER_WORKERS`.
    """
    if device.type == "cpu":
        return 0
    if cores is None:
        cores = torch.get_num_threads()
    return max(1, min(MAX_LOADER_WORKERS, cores - 1))


def batches_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    """Batches of ``batch_size`` in ``n`` samples: the last one shorter, or dropped with ``drop_last``."""
    return n // batch_size if drop_last else -(-n // batch_size)


@dataclass
class SkipLog:
    """Unreadable samples met while loading, reported once at the end of the trial."""

    samples: dict[str, str] = field(default_factory=dict)

    def add(self, skipped: list[SkippedSample]) -> None:
        for s in skipped:
            self.samples.setdefault(s.path, s.reason)

    def __len__(self) -> int:
        return len(self.samples)


class EpochBatchSampler(Sampler[list[int]]):
    """Index batches of ``n`` samples, epoch after epoch without end: each epoch a new permutation drawn from
    ``generator``, cut into ``batch_size`` pieces (the last one shorter unless ``drop_last``).

    One DataLoader iterator over it keeps the workers decoding across epoch boundaries; a fresh iterator per
    epoch (what ``shuffle=True`` does) leaves every worker idle until its first batch of the new epoch is
    decoded, at batch 1024 a pause as long as a few training steps, every epoch. The sampler runs ahead of
    training by the batches in flight, so it records the generator state before each epoch's permutation
    (``state_before``): a checkpoint must store that state, not the generator's current one.

    With ``coins`` each index comes as ``(index, coin)``, the coin (a random flip, say) drawn from the same
    generator after the epoch's permutation: so it depends on the seed and the epoch only, not on which loader
    worker decodes the item, and a resumed trial draws the same ones.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, *, drop_last: bool = False,
                 coins: bool = False) -> None:
        self.n, self.batch_size, self.generator, self.drop_last = n, batch_size, generator, drop_last
        self.coins = coins
        self.state_before: dict[int, torch.Tensor] = {}

    def __iter__(self) -> Iterator[list[Any]]:
        if batches_per_epoch(self.n, self.batch_size, self.drop_last) == 0:  # would draw permutations forever
            raise ValueError(f"{self.n} samples make no batch of {self.batch_size} (drop_last={self.drop_last})")
        epoch = 0
        while True:
            self.state_before[epoch] = self.generator.get_state()
            order: list[Any] = torch.randperm(self.n, generator=self.generator).tolist()
            if self.coins:
                flips = torch.randint(0, 2, (self.n,), generator=self.generator).bool().tolist()
                order = list(zip(order, flips, strict=True))
            for b in range(batches_per_epoch(self.n, self.batch_size, self.drop_last)):
                yield order[b * self.batch_size:(b + 1) * self.batch_size]
            epoch += 1


class Batches:
    """Iterates ``(images, labels)`` batches of a split on ``device``.

    A `TensorSplit` is moved to the device once and indexed there (no host round trip per step); a
    Dataset goes through a DataLoader with pinned memory, workers and prefetching, unreadable samples
    are dropped and logged in ``skips``; uint8 images are scaled to ``[-1, 1]`` after the copy, on
    ``device`` (`registry.datasets._images.normalize_uint8`). A shuffled Dataset is read through one
    DataLoader iterator for the whole trial (`EpochBatchSampler`): each ``iter()`` is one epoch of it.

    Args:
        split: the data.
        batch_size: images per batch.
        device: where batches go.
        shuffle: new order each epoch from ``generator``.
        drop_last: drop the last incomplete batch (training).
        generator: CPU generator driving the order (seeded by the trial; None: torch's global one).
        num_workers: DataLoader workers for Dataset splits.
        channels_last: return images in channels_last memory format.
    """

    def __init__(self, split: TensorSplit | Dataset, batch_size: int, device: torch.device, *,
                 shuffle: bool = False, drop_last: bool = False, generator: torch.Generator | None = None,
                 num_workers: int = 2, channels_last: bool = False, skips: SkipLog | None = None) -> None:
        self.batch_size, self.device, self.shuffle, self.drop_last = batch_size, device, shuffle, drop_last
        self.generator = generator
        self.channels_last = channels_last
        self.skips = skips if skips is not None else SkipLog()
        self.sampler: EpochBatchSampler | None = None
        self._stream: Iterator | None = None
        self._epochs_started = 0
        self._left_in_epoch = 0
        if isinstance(split, TensorSplit):
            images = split.images.to(device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            self.tensors: TensorSplit | None = TensorSplit(images, split.labels.to(device))
            self.loader = None
            return
        self.tensors = None
        workers = dict(num_workers=num_workers, pin_memory=device.type == "cuda", collate_fn=collate_skipping,
                       prefetch_factor=2 if num_workers > 0 else None)
        if shuffle:
            if generator is None:  # as DataLoader does without one: a seed from torch's global generator
                generator = self.generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
            # a Dataset that `takes_coins` (random flips) gets them with its indices, drawn from the order's
            # generator at a fixed point of each epoch; worker seeds come from a generator of their own (workers
            # draw from it in no fixed order), so that a resumed trial draws the same permutations
            self.sampler = EpochBatchSampler(len(split), batch_size, generator, drop_last=drop_last,
                                             coins=bool(getattr(split, "takes_coins", False)))
            seeds = torch.Generator().manual_seed(generator.initial_seed())
            self.loader = DataLoader(split, batch_sampler=self.sampler, generator=seeds, **workers)
        else:
            self.loader = DataLoader(split, batch_size=batch_size, drop_last=drop_last,
                                     persistent_workers=num_workers > 0, **workers)

    @property
    def num_samples(self) -> int:
        return len(self.tensors) if self.tensors is not None else len(self.loader.dataset)  # type: ignore[union-attr,arg-type]

    def __len__(self) -> int:
        return batches_per_epoch(self.num_samples, self.batch_size, self.drop_last)

    def order_state(self) -> torch.Tensor | None:
        """The order generator's state to checkpoint after an epoch: restoring it before the next ``iter()``
        (of a new `Batches`) gives that epoch the same order as this one would get."""
        if self.generator is None:
            return None
        if self.sampler is not None:
            state = self.sampler.state_before.get(self._epochs_started)
            if state is not None:
                return state
        return self.generator.get_state()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.tensors is not None:
            yield from self._tensor_batches()
        elif self.sampler is None:
            yield from self._moved(iter(self.loader))  # type: ignore[arg-type]
        else:
            yield from self._moved(self._next_epoch_of_stream())

    def _next_epoch_of_stream(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[SkippedSample]]]:
        """The next epoch's collated batches from the trial-long loader iterator; what an epoch left early
        did not take is skipped first, so that every epoch starts on its own permutation."""
        assert self.sampler is not None
        if len(self) == 0:  # drop_last with fewer samples than a batch: an empty epoch, as for a TensorSplit
            return
        if self._stream is None:
            self._stream = iter(self.loader)  # type: ignore[arg-type]
        for _ in range(self._left_in_epoch):
            next(self._stream)
        self.sampler.state_before.pop(self._epochs_started - 1, None)
        self._epochs_started += 1
        self._left_in_epoch = len(self)
        while self._left_in_epoch:
            self._left_in_epoch -= 1
            yield next(self._stream)

    def _tensor_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        assert self.tensors is not None
        n = len(self.tensors)
        order = torch.randperm(n, generator=self.generator).to(self.device) if self.shuffle else None
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            if order is None:
                yield (self.tensors.images[start:start + self.batch_size],
                       self.tensors.labels[start:start + self.batch_size])
            else:
                idx = order[start:start + self.batch_size]
                yield self.tensors.images[idx], self.tensors.labels[idx]

    def _moved(self, items: Iterator[tuple[torch.Tensor, torch.Tensor, list[SkippedSample]]],
               ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Collated batches on the device, scaled when uint8; skipped samples logged, empty batches dropped."""
        for images, labels, skipped in items:
            if skipped:
                self.skips.add(skipped)
            if len(labels) == 0:
                continue
            images = images.to(self.device, non_blocking=True)
            if images.dtype == torch.uint8:
                images = normalize_uint8(images)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, labels.to(self.device, non_blocking=True)
