"""AdaFace and CurricularFace class weights start as the authors' ``head.py`` draws them.

Both heads normalize ``W`` inside the graph, so the starting row norm sets how far an optimizer step turns a
class (``1 / ||W_j||^2`` with SGD). The references are the authors' init lines, run here on their ``(D, C)``
kernel:

* mk-minchul/AdaFace: ``kernel.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)``: every class column of norm 1;
* HuangYG123/CurricularFace: ``nn.init.normal_(kernel, std=0.01)``.
"""

from __future__ import annotations

import torch

from registry import LOSSES

C, D = 1000, 512


def test_adaface_class_rows_start_at_the_authors_unit_norm():
    reference = torch.empty(D, C, dtype=torch.float64).uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)
    torch.manual_seed(0)
    head = LOSSES.create("adaface", embedding_dim=D, num_classes=C)
    torch.testing.assert_close(head.weight.norm(dim=1).double(), reference.norm(dim=0), rtol=0, atol=1e-6)
    # the directions are a uniform draw from the cube, as the authors' uniform_(-1, 1) before renorm
    ratio = head.weight.abs().max(dim=1).values / head.weight.abs().mean(dim=1)
    ref_ratio = reference.abs().max(dim=0).values / reference.abs().mean(dim=0)
    assert abs(ratio.mean().item() - ref_ratio.mean().item()) < 0.02 * ref_ratio.mean().item()


def test_curricularface_class_weights_start_normal_with_the_authors_std():
    reference = torch.nn.init.normal_(torch.empty(D, C, dtype=torch.float64), std=0.01)
    torch.manual_seed(0)
    w = LOSSES.create("curricularface", embedding_dim=D, num_classes=C).weight.detach().double()
    # 512,000 draws: the std is known to about 0.1 %, the mean to 1.4e-5
    assert abs(w.std().item() - reference.std().item()) < 0.01 * reference.std().item()
    assert abs(w.mean().item()) < 1e-4
    row, ref_row = w.norm(dim=1), reference.norm(dim=0)
    assert abs(row.median().item() - ref_row.median().item()) < 0.01 * ref_row.median().item()
