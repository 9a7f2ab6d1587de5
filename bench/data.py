"""Minibatches from a split, whichever form it has: a `TensorSplit` on the device, or a Dataset streamed
through DataLoader workers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset

from registry.datasets import SkippedSample, TensorSplit
from registry.datasets._collate import collate_skipping

__all__ = ["Batches", "SkipLog"]


@dataclass
class SkipLog:
    """Unreadable samples met while loading, reported once at the end of the trial."""

    samples: dict[str, str] = field(default_factory=dict)

    def add(self, skipped: list[SkippedSample]) -> None:
        for s in skipped:
            self.samples.setdefault(s.path, s.reason)

    def __len__(self) -> int:
        return len(self.samples)


class Batches:
    """Iterates ``(images, labels)`` batches of a split on ``device``.

    A `TensorSplit` is moved to the device once and indexed there (no host round trip per step); a
    Dataset goes through a DataLoader with pinned memory, workers and prefetching, unreadable samples
    are dropped and logged in ``skips``.

    Args:
        split: the data.
        batch_size: images per batch.
        device: where batches go.
        shuffle: new order each epoch from ``generator``.
        drop_last: drop the last incomplete batch (training).
        generator: CPU generator driving the order (seeded by the trial).
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
        if isinstance(split, TensorSplit):
            images = split.images.to(device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            self.tensors: TensorSplit | None = TensorSplit(images, split.labels.to(device))
            self.loader = None
        else:
            self.tensors = None
            self.loader = DataLoader(
                split, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, generator=generator,
                num_workers=num_workers, pin_memory=device.type == "cuda", collate_fn=collate_skipping,
                persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers > 0 else None)

    @property
    def num_samples(self) -> int:
        return len(self.tensors) if self.tensors is not None else len(self.loader.dataset)  # type: ignore[union-attr,arg-type]

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.tensors is not None:
            n = len(self.tensors)
            if self.shuffle:
                order = torch.randperm(n, generator=self.generator).to(self.device)
            else:
                order = None
            stop = n - n % self.batch_size if self.drop_last else n
            for start in range(0, stop, self.batch_size):
                if order is None:
                    yield (self.tensors.images[start:start + self.batch_size],
                           self.tensors.labels[start:start + self.batch_size])
                else:
                    idx = order[start:start + self.batch_size]
                    yield self.tensors.images[idx], self.tensors.labels[idx]
            return
        assert self.loader is not None
        for images, labels, skipped in self.loader:
            if skipped:
                self.skips.add(skipped)
            if len(labels) == 0:
                continue
            images = images.to(self.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, labels.to(self.device, non_blocking=True)
