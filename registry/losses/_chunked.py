"""Class-chunked margin cross-entropy for heads with very many classes.

The plain head materialises the ``(B, C)`` cosine matrix, its softmax and their gradients, plus a
normalized copy of the ``(C, D)`` weights: at a million classes that is several GiB. Here the log-sum-exp
over the non-target classes is computed chunk by chunk of classes by a custom autograd function that keeps
only ``(B, chunk)`` temporaries and recomputes each chunk's cosines in the backward pass. The target
logit, where the margin lives, is only ``B`` numbers and goes through ordinary autograd:

    loss_i = logaddexp(LSE_{j != y_i}(s cos theta_ij), s phi(cos theta_iy)) - s phi(cos theta_iy)

which is exactly cross-entropy over the margin-applied logits, without cancellation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["chunked_margin_cross_entropy", "check_chunk_classes", "DEFAULT_CHUNK_CLASSES"]

DEFAULT_CHUNK_CLASSES = 65536
_EPS = 1e-12  # F.normalize's eps


def check_chunk_classes(chunk_classes: int) -> int:
    """``chunk_classes`` as an int >= 0 (0: never chunk); a clear error otherwise."""
    if isinstance(chunk_classes, bool) or not isinstance(chunk_classes, int) or chunk_classes < 0:
        raise ValueError(f"chunk_classes must be an integer >= 0 (0 never chunks), but got {chunk_classes!r}")
    return chunk_classes


class _ChunkedCosines(torch.autograd.Function):
    """``(LSE_{j != y}(s * <x_hat, w_hat_j>), <x_hat, w_hat_y>)`` over class chunks; returns two ``(B,)`` tensors.

    The target cosine is computed here too, so that the backward pass writes every class's gradient into one
    ``(C, D)`` buffer (a gather through autograd would add a second dense ``(C, D)`` gradient and their sum).
    """

    @staticmethod
    def forward(ctx, x_hat: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, scale: float,
                chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        b = x_hat.shape[0]
        running_max = torch.full((b,), -torch.inf, dtype=x_hat.dtype, device=x_hat.device)
        running_sum = torch.zeros(b, dtype=x_hat.dtype, device=x_hat.device)
        rows = torch.arange(b, device=x_hat.device)
        for start in range(0, weight.shape[0], chunk):
            z = _chunk_logits(x_hat, weight[start:start + chunk], labels, rows, start, scale)
            new_max = torch.maximum(running_max, z.max(1).values)
            # a row that has seen only its own target so far (chunk_classes=1, label 0) has new_max = -inf:
            # shift by a finite stand-in there, so exp(-inf - -inf) = NaN never enters the sum (it stays 0)
            shift = new_max.clamp_min(torch.finfo(new_max.dtype).min)
            running_sum = running_sum * torch.exp(running_max - shift) + z.sub_(shift[:, None]).exp_().sum(1)
            running_max = new_max
            del z  # in-place above: one (B, chunk) buffer alive at a time
        lse = running_max + torch.log(running_sum)
        w_y = weight[labels]
        cos_y = (x_hat * (w_y / w_y.norm(dim=1, keepdim=True).clamp_min(_EPS))).sum(1)
        ctx.save_for_backward(x_hat, weight, labels, lse, cos_y)
        ctx.scale, ctx.chunk = scale, chunk
        return lse, cos_y

    @staticmethod
    def backward(ctx, grad_lse: torch.Tensor, grad_cos_y: torch.Tensor):  # type: ignore[override]
        x_hat, weight, labels, lse, cos_y = ctx.saved_tensors
        scale, chunk = ctx.scale, ctx.chunk
        rows = torch.arange(x_hat.shape[0], device=x_hat.device)
        grad_x = torch.zeros_like(x_hat) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        for start in range(0, weight.shape[0], chunk):
            w = weight[start:start + chunk]
            norm = w.norm(dim=1, keepdim=True).clamp_min(_EPS)
            w_hat = w / norm
            z = _chunk_logits(x_hat, w, labels, rows, start, scale, w_hat=w_hat)
            g_cos = z.sub_(lse[:, None]).exp_().mul_(grad_lse[:, None] * scale)  # d/d cos, 0 at the target
            if grad_x is not None:
                grad_x += g_cos @ w_hat
            if grad_w is not None:
                g_what = g_cos.t() @ x_hat
                # backward of w_hat = w / ||w||: (g - w_hat <g, w_hat>) / ||w||
                dot = (g_what * w_hat).sum(1, keepdim=True)
                grad_w[start:start + chunk] = g_what.addcmul_(w_hat, dot, value=-1.0).div_(norm)
        w_y = weight[labels]
        norm_y = w_y.norm(dim=1, keepdim=True).clamp_min(_EPS)
        w_hat_y = w_y / norm_y
        if grad_x is not None:
            grad_x += grad_cos_y[:, None] * w_hat_y
        if grad_w is not None:  # d cos_y / d w_y = (x_hat - w_hat_y cos_y) / ||w_y||
            grad_w.index_add_(0, labels, grad_cos_y[:, None] * (x_hat - w_hat_y * cos_y[:, None]) / norm_y)
        return grad_x, grad_w, None, None, None


def _chunk_logits(x_hat: torch.Tensor, w: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, start: int,
                  scale: float, *, w_hat: torch.Tensor | None = None) -> torch.Tensor:
    if w_hat is None:
        w_hat = w / w.norm(dim=1, keepdim=True).clamp_min(_EPS)
    z = (x_hat @ w_hat.t()).mul_(scale)
    local = labels - start
    inside = (local >= 0) & (local < w.shape[0])
    z[rows[inside], local[inside]] = -torch.inf  # the target class is not in the non-target sum
    return z


def chunked_margin_cross_entropy(emb: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, scale: float,
                                 target_fn: Callable[[torch.Tensor], torch.Tensor], *,
                                 chunk_classes: int = DEFAULT_CHUNK_CLASSES) -> torch.Tensor:
    """Mean cross-entropy of ``s * cos`` logits with the target cosine replaced by ``target_fn(cos_y)``.

    Args:
        emb: embeddings ``(B, D)`` (normalized here).
        weight: class weights ``(C, D)`` (normalized here, chunk by chunk).
        labels: ``(B,)`` class indices.
        scale: s.
        target_fn: the head's margin on the target cosine, e.g. ``lambda c: c - m`` for CosFace
            (elementwise on a ``(B,)`` tensor of cosines, in cosine units).
        chunk_classes: classes per chunk; beyond the weights and their gradient, peak memory is about
            ``3 * B * chunk_classes`` floats.

    Returns:
        Scalar loss, equal to ``F.cross_entropy`` over the full margin-applied logits.
    """
    x_hat = F.normalize(emb, dim=1)
    lse_rest, cos_y = _ChunkedCosines.apply(x_hat, weight, labels, float(scale), int(chunk_classes))
    target = scale * target_fn(cos_y)
    return (torch.logaddexp(lse_rest, target) - target).mean()
