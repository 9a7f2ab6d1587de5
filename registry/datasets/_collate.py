"""The DataLoader collate for on-disk datasets: unreadable samples are dropped from the batch and handed
back, so the trial can count them and report every one at the end instead of crashing."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import default_collate

from registry.datasets._types import SkippedSample

__all__ = ["collate_skipping"]


def collate_skipping(
    batch: Sequence[tuple[torch.Tensor, int] | SkippedSample],
) -> tuple[torch.Tensor, torch.Tensor, list[SkippedSample]]:
    """Stacks the readable items of a batch and returns the skipped ones beside them.

    Args:
        batch: items of a Dataset: ``(image (C, H, W), label int)`` or a `SkippedSample`; images keep
            their dtype (float32, or uint8 pixels).

    Returns:
        ``(images (B, C, H, W), labels int64 (B,), skipped)``; ``B`` may be smaller than ``len(batch)``,
        and is 0 (``images`` then has shape ``(0,)``) when every item was unreadable.

    Example:
        >>> DataLoader(dataset, batch_size=128, collate_fn=collate_skipping)
    """
    good = [item for item in batch if not isinstance(item, SkippedSample)]
    skipped = [item for item in batch if isinstance(item, SkippedSample)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    # default_collate stacks straight into shared memory inside a DataLoader worker: no second copy on the
    # way to the main process
    images = default_collate([image for image, _ in good])
    labels = torch.as_tensor([int(label) for _, label in good], dtype=torch.long)
    return images, labels, skipped
