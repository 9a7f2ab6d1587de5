"""Every head against the paper's formula, written here in float64 NumPy (never the heads' own helpers).

Logits must match to 1e-6 on random embeddings and on 2-D embeddings placed at chosen angles from their
class weight: near 0, near j*pi/m for every integer margin m (where psi changes branch), near pi - m for
additive angular margins (where ArcFace falls back) and near pi.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from registry import LOSSES

TOL = 1e-6
C = 5
INT_MARGINS = (1, 2, 3, 4)
ARC_MARGINS = (0.1, 0.2, 0.3, 0.5, 1.0)


# ---------------------------------------------------------------------------------------------------------
# the papers' formulas, float64
# ---------------------------------------------------------------------------------------------------------
def ref_cos(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    xn = np.linalg.norm(x, axis=1, keepdims=True)
    wn = np.linalg.norm(w, axis=1)
    return np.clip((x @ w.T) / np.maximum(xn, 1e-12) / np.maximum(wn, 1e-12), -1.0, 1.0)


def ref_psi(theta: np.ndarray, m: float) -> np.ndarray:
    """(-1)^k cos(m theta) - 2k, k = floor(m theta / pi) (L-Softmax Eq. 6, SphereFace Eq. 7)."""
    k = np.floor(m * theta / np.pi)
    return (-1.0) ** k * np.cos(m * theta) - 2.0 * k


def ref_arc(theta: np.ndarray, m: float, easy: bool = False) -> np.ndarray:
    """cos(theta + m); insightface: cos(theta) - m sin(m) where theta + m > pi; easy: margin only if cos > 0."""
    if easy:
        return np.where(np.cos(theta) > 0, np.cos(theta + m), np.cos(theta))
    return np.where(theta + m <= np.pi, np.cos(theta + m), np.cos(theta) - m * np.sin(m))


def with_target(plain: np.ndarray, labels: np.ndarray, target: np.ndarray) -> np.ndarray:
    out = plain.copy()
    out[np.arange(len(labels)), labels] = target
    return out


def ref_logits(name: str, params: dict, x: np.ndarray, w: np.ndarray, y: np.ndarray | None, state: dict) -> np.ndarray:
    """The paper's logits for head ``name``; ``state`` holds the head's buffers (lambda's iteration, t, s, ...)."""
    rows = np.arange(len(x))
    xn = np.linalg.norm(x, axis=1, keepdims=True)
    wn = np.linalg.norm(w, axis=1)
    if name == "softmax":
        return x @ w.T + (state["bias"] if params.get("bias", True) else 0.0)
    if name == "center":
        return x @ w.T + (state["bias"] if params.get("bias", True) else 0.0)
    if name == "modified-softmax":
        return xn * ref_cos(x, w)
    if name == "norm-softmax":
        return params.get("s", 16.0) * ref_cos(x, w)
    if name in ("lsoftmax", "sphereface"):
        m = params.get("m", 4)
        it = state["iteration"]
        lam = max(params.get("lambda_min", 5.0), params.get("base", 1000.0) *
                  (1 + params.get("gamma", 0.12) * it) ** (-params.get("power", 1.0)))
        cos = ref_cos(x, w)
        mag = xn * wn if name == "lsoftmax" else xn * np.ones_like(wn)
        if y is None:
            return mag * cos
        c = cos[rows, y]
        t = (lam * c + ref_psi(np.arccos(c), m)) / (1 + lam)
        return with_target(mag * cos, y, mag[rows, y] * t)
    if name == "cosface":
        s, m = params.get("s", 64.0), params.get("m", 0.35)
        cos = ref_cos(x, w)
        return s * cos if y is None else with_target(s * cos, y, s * (cos[rows, y] - m))
    if name in ("arcface", "subcenter-arcface"):
        s, m = params.get("s", 64.0), params.get("m", 0.5)
        cos = ref_cos(x, w)
        if name == "subcenter-arcface":
            cos = cos.reshape(len(x), -1, params.get("k", 3)).max(axis=2)
        if y is None:
            return s * cos
        return with_target(s * cos, y, s * ref_arc(np.arccos(cos[rows, y]), m, params.get("easy_margin", False)))
    if name == "combined":
        p = {"w_norm": True, "x_norm": True, "s": 64.0, "m1": 1.0, "m2": 0.3, "m3": 0.2, **params}
        mag = p["s"] * (np.ones_like(xn) if p["x_norm"] else xn) * (np.ones_like(wn) if p["w_norm"] else wn)
        cos = ref_cos(x, w)
        if y is None:
            return mag * cos
        theta = np.arccos(cos[rows, y])
        if p["m1"] == 1:
            f = ref_arc(theta, p["m2"])
        else:  # psi over the angle m1 theta + m2
            phi = p["m1"] * theta + p["m2"]
            k = np.floor(phi / np.pi)
            f = (-1.0) ** k * np.cos(phi) - 2.0 * k
        return with_target(mag * cos, y, mag[rows, y] * (f - p["m3"]))
    if name in ("adacos", "adacos-fixed"):
        return state["s"] * ref_cos(x, w)
    if name == "curricularface":
        s, m, t = params.get("s", 64.0), params.get("m", 0.5), state["t"]
        cos = ref_cos(x, w)
        if y is None:
            return s * cos
        theta_y = np.arccos(cos[rows, y])
        cos_theta_m = np.cos(theta_y + m)[:, None]
        target = np.where(cos[rows, y] > np.cos(np.pi - m), np.cos(theta_y + m), cos[rows, y] - np.sin(np.pi - m) * m)
        out = np.where(cos > cos_theta_m, cos * (t + cos), cos)
        return s * with_target(out, y, target)
    if name == "adaface":
        s, m, h, eps = params.get("s", 64.0), params.get("m", 0.4), params.get("h", 0.333), 1e-3
        cos = ref_cos(x, w)
        if y is None:
            return s * cos
        cos = np.clip(cos, -1 + eps, 1 - eps)
        norms = np.clip(xn[:, 0], 0.001, 100)
        z = np.clip((norms - state["batch_mean"]) / (state["batch_std"] + eps) * h, -1, 1)
        theta_m = np.clip(np.arccos(cos[rows, y]) - m * z, eps, np.pi - eps)
        return s * with_target(cos, y, np.cos(theta_m) - (m + m * z))
    raise KeyError(f"no reference for {name!r}: add one here")


def ref_cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    mx = logits.max(axis=1, keepdims=True)
    lse = mx[:, 0] + np.log(np.exp(logits - mx).sum(axis=1))
    return float(np.mean(lse - logits[np.arange(len(y)), y]))


# ---------------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------------
def probe_angles(margins: tuple[float, ...] = ARC_MARGINS) -> np.ndarray:
    """Angles near 0, near j*pi/m (m = 1..4), near pi - m (the additive margins) and near pi."""
    near = [0.0, 1e-9, 1e-6, 1e-3, np.pi - 1e-3, np.pi - 1e-6, np.pi - 1e-9, np.pi]
    for m in INT_MARGINS:
        for j in range(1, m + 1):
            near += [j * np.pi / m + d for d in (-1e-3, -1e-6, 1e-6, 1e-3)]
    for m in margins:
        near += [np.pi - m + d for d in (-1e-3, -1e-6, 1e-6, 1e-3)]
    return np.clip(np.array(near), 0.0, np.pi)


def placed_batch(angles: np.ndarray, rng: np.random.Generator, rows_per_class: int = 1):
    """2-D weights at spread directions with random norms; each embedding at ``angle`` from its class weight."""
    n_w = C * rows_per_class
    phi_w = rng.uniform(0, 2 * np.pi, n_w)
    w = rng.uniform(0.5, 2.0, (n_w, 1)) * np.stack([np.cos(phi_w), np.sin(phi_w)], 1)
    y = rng.integers(0, C, len(angles))
    row = y * rows_per_class  # the first sub-centre of the class
    sign = rng.choice([-1.0, 1.0], len(angles))
    phi = phi_w[row] + sign * angles
    x = rng.uniform(0.5, 3.0, (len(angles), 1)) * np.stack([np.cos(phi), np.sin(phi)], 1)
    return x, w, y


def random_batch(rng: np.random.Generator, d: int = 6, b: int = 32, rows_per_class: int = 1):
    x = rng.normal(size=(b, d)) * rng.uniform(0.3, 3.0, (b, 1))
    w = rng.normal(size=(C * rows_per_class, d))
    y = rng.integers(0, C, b)
    return x, w, y


def head_state(head: torch.nn.Module) -> dict:
    state = {k: v.detach().double().numpy() if v.is_floating_point() else int(v) for k, v in head.state_dict().items()
             if k != "weight"}
    return {k: (float(v) if isinstance(v, np.ndarray) and v.ndim == 0 else v) for k, v in state.items()}


def build(name: str, params: dict, w: np.ndarray, d: int) -> torch.nn.Module:
    head = LOSSES.create(name, embedding_dim=d, num_classes=C, **params).double().eval()
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w))
    return head


def compare(name: str, params: dict, x: np.ndarray, w: np.ndarray, y: np.ndarray, *, setup=None) -> None:
    head = build(name, params, w, x.shape[1])
    if setup is not None:
        setup(head)
    state = head_state(head)
    emb, labels = torch.from_numpy(x), torch.from_numpy(y)
    with torch.no_grad():
        got_margin = head.logits(emb, labels).numpy()
        got_plain = head.logits(emb).numpy()
    np.testing.assert_allclose(got_margin, ref_logits(name, params, x, w, y, state), rtol=0, atol=TOL)
    np.testing.assert_allclose(got_plain, ref_logits(name, params, x, w, None, state), rtol=0, atol=TOL)


# ---------------------------------------------------------------------------------------------------------
# configurations: every head, every m
# ---------------------------------------------------------------------------------------------------------
def _set_buffers(**values):
    def setup(head):
        with torch.no_grad():
            for key, value in values.items():
                getattr(head, key).fill_(value)
            if getattr(head, "bias", None) is not None:
                head.bias.copy_(torch.linspace(-1, 1, C, dtype=torch.float64))
    return setup


CASES = [
    ("softmax", {}, _set_buffers()),
    ("softmax", {"bias": False}, None),
    ("center", {}, _set_buffers()),
    ("modified-softmax", {}, None),
    ("norm-softmax", {}, None),
    ("norm-softmax", {"s": 4.0}, None),
    *[("lsoftmax", {"m": m}, _set_buffers(iteration=it)) for m in INT_MARGINS for it in (0, 37, 100000)],
    *[("lsoftmax", {"m": m, "base": 0.0, "lambda_min": 0.0}, None) for m in INT_MARGINS],
    *[("sphereface", {"m": m}, _set_buffers(iteration=it)) for m in INT_MARGINS for it in (0, 37, 100000)],
    *[("sphereface", {"m": m, "base": 0.0, "lambda_min": 0.0}, None) for m in INT_MARGINS],
    *[("cosface", {"s": s, "m": m}, None) for s, m in ((64.0, 0.35), (4.0, 0.1), (30.0, 0.4))],
    *[("arcface", {"m": m}, None) for m in ARC_MARGINS],
    *[("arcface", {"s": 4.0, "m": m, "easy_margin": True}, None) for m in (0.1, 0.5)],
    *[("subcenter-arcface", {"m": m, "k": k}, None) for m in (0.2, 0.5) for k in (1, 3)],
    *[("combined", {"w_norm": wn, "x_norm": xn, "s": s, "m1": m1, "m2": m2, "m3": m3}, None)
      for wn in (True, False) for xn in (True, False) for s in (1.0, 4.0) for m1 in (1, 2, 3, 4, 2.5)
      for m2 in (0.0, 0.3) for m3 in (0.0, 0.2)],
    ("adacos", {}, _set_buffers(s=7.3)),
    ("adacos-fixed", {}, None),
    *[("curricularface", {"m": m}, _set_buffers(t=t)) for m in (0.2, 0.5) for t in (0.0, 0.3, 0.9)],
    *[("adaface", {"m": m}, _set_buffers(batch_mean=bm, batch_std=bs)) for m in (0.2, 0.4)
      for bm, bs in ((20.0, 100.0), (1.5, 0.7))],
]


def _case_id(case) -> str:
    name, params, setup = case
    return name + "".join(f"-{k}={v}" for k, v in params.items()) + ("-state" if setup else "")


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{_case_id(c)}" for i, c in enumerate(CASES)])
def test_logits_match_paper_at_placed_angles(case):
    # 2-D embeddings at angles near 0, j*pi/m, pi - m and pi from their class weight; both logits paths.
    name, params, setup = case
    rng = np.random.default_rng(0)
    rows = params.get("k", 3) if name == "subcenter-arcface" else 1
    x, w, y = placed_batch(probe_angles(), rng, rows_per_class=rows)
    compare(name, params, x, w, y, setup=setup)


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{_case_id(c)}" for i, c in enumerate(CASES)])
def test_logits_match_paper_on_random_embeddings(case):
    name, params, setup = case
    rng = np.random.default_rng(1)
    rows = params.get("k", 3) if name == "subcenter-arcface" else 1
    x, w, y = random_batch(rng, rows_per_class=rows)
    compare(name, params, x, w, y, setup=setup)


def test_every_registered_head_has_a_reference_case():
    # A newly registered head fails here until this file computes its formula.
    assert {name for name, _, _ in CASES} == set(LOSSES.names())


def test_psi_reference_is_monotonic_and_continuous():
    # Sanity of the reference itself: psi decreases over [0, pi] and equals cos at m = 1.
    theta = np.linspace(0, np.pi, 20001)
    for m in INT_MARGINS:
        psi = ref_psi(theta, m)
        assert np.all(np.diff(psi) <= 1e-12) and np.max(np.abs(np.diff(psi))) < 1e-2
    np.testing.assert_allclose(ref_psi(theta, 1), np.cos(theta), atol=1e-15)


# ---------------------------------------------------------------------------------------------------------
# training steps of the stateful heads: state advanced once, before the step's logits
# ---------------------------------------------------------------------------------------------------------
def test_sphereface_training_forward_uses_the_incremented_iteration():
    rng = np.random.default_rng(2)
    x, w, y = random_batch(rng, d=3)
    head = build("sphereface", {"m": 4}, w, 3).train()
    loss = head(torch.from_numpy(x), torch.from_numpy(y)).item()
    assert int(head.iteration) == 1  # Caffe: iter_ += 1 before lambda is computed
    assert loss == pytest.approx(ref_cross_entropy(ref_logits("sphereface", {"m": 4}, x, w, y, {"iteration": 1}), y),
                                 abs=TOL)


def test_adacos_dynamic_scale_follows_eq_15():
    # s_t = log(B_avg) / cos(min(pi/4, theta_med)), B_avg from the previous s over non-target classes.
    rng = np.random.default_rng(3)
    x, w, y = random_batch(rng, d=3, b=9)
    head = build("adacos", {}, w, 3).train()
    s0 = math.sqrt(2) * math.log(C - 1)
    assert float(head.s) == pytest.approx(s0, abs=TOL)  # stored as a float32 buffer until .double()
    loss = head(torch.from_numpy(x), torch.from_numpy(y)).item()
    cos = ref_cos(x, w)
    target = np.zeros_like(cos, dtype=bool)
    target[np.arange(len(y)), y] = True
    b_avg = np.exp(s0 * cos)[~target].sum() / len(x)
    theta_med = np.sort(np.arccos(cos[target]))[(len(x) - 1) // 2]  # torch.median: the lower median
    s1 = np.log(b_avg) / np.cos(min(np.pi / 4, theta_med))
    assert float(head.s) == pytest.approx(s1, abs=TOL)
    assert loss == pytest.approx(ref_cross_entropy(s1 * cos, y), abs=TOL)


def test_adacos_fixed_scale_never_moves():
    rng = np.random.default_rng(3)
    x, w, y = random_batch(rng, d=3)
    head = build("adacos-fixed", {}, w, 3).train()
    head(torch.from_numpy(x), torch.from_numpy(y))
    assert float(head.s) == pytest.approx(math.sqrt(2) * math.log(C - 1), abs=TOL)


def test_curricularface_t_is_an_ema_of_target_cosines_taken_before_the_logits():
    rng = np.random.default_rng(4)
    x, w, y = random_batch(rng, d=3)
    head = build("curricularface", {}, w, 3).train()
    loss = head(torch.from_numpy(x), torch.from_numpy(y)).item()
    t1 = 0.01 * ref_cos(x, w)[np.arange(len(y)), y].mean() + 0.99 * 0.0
    assert float(head.t) == pytest.approx(t1, abs=1e-12)
    assert loss == pytest.approx(ref_cross_entropy(ref_logits("curricularface", {}, x, w, y, {"t": t1}), y), abs=TOL)


def test_adaface_batch_statistics_are_emas_taken_before_the_logits():
    rng = np.random.default_rng(5)
    x, w, y = random_batch(rng, d=3)
    head = build("adaface", {}, w, 3).train()
    loss = head(torch.from_numpy(x), torch.from_numpy(y)).item()
    norms = np.clip(np.linalg.norm(x, axis=1), 0.001, 100)
    mean, std = 0.01 * norms.mean() + 0.99 * 20.0, 0.01 * norms.std(ddof=1) + 0.99 * 100.0
    assert float(head.batch_mean) == pytest.approx(mean, abs=1e-12)
    assert float(head.batch_std) == pytest.approx(std, abs=1e-12)
    state = {"batch_mean": mean, "batch_std": std}
    assert loss == pytest.approx(ref_cross_entropy(ref_logits("adaface", {}, x, w, y, state), y), abs=TOL)


def test_adaface_single_sample_batch_keeps_std_finite():
    # Unbiased std of one value is NaN; the head skips the std update rather than poisoning the EMA.
    head = LOSSES.create("adaface", embedding_dim=3, num_classes=C).train()
    head(torch.randn(1, 3), torch.tensor([2]))
    assert torch.isfinite(head.batch_std) and float(head.batch_std) == 100.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_adaface_takes_acos_strictly_inside_minus_one_one_in_every_dtype(dtype, monkeypatch):
    # acos' is infinite at +-1; the authors' clamp to 1 - 1e-3 rounds back to 1 in bfloat16 (spacing 2^-8 there),
    # which gave an infinite gradient under bf16 autocast on torch 2.11
    seen = []
    real_acos = torch.acos
    monkeypatch.setattr(torch, "acos", lambda x: seen.append(x.detach().float()) or real_acos(x))
    head = LOSSES.create("adaface", embedding_dim=3, num_classes=C)
    cos_y = torch.tensor([1.0, -1.0, 0.9995, 0.0], dtype=dtype)
    head.target_cosine(cos_y, torch.randn(4, 3, dtype=dtype), torch.zeros(4, dtype=torch.long))
    (taken,) = seen
    assert float(taken.abs().max()) < 1.0
    if dtype == torch.float32:  # where the dtype resolves it, the authors' eps = 1e-3 exactly
        assert float(taken.max()) == pytest.approx(1 - 1e-3, abs=1e-7)


def test_eval_mode_forward_leaves_state_alone():
    rng = np.random.default_rng(6)
    x, w, y = random_batch(rng, d=3)
    for name in ("sphereface", "lsoftmax", "adacos", "curricularface", "adaface"):
        head = build(name, {}, w, 3)
        before = {k: v.clone() for k, v in head.state_dict().items()}
        head(torch.from_numpy(x), torch.from_numpy(y))
        head.logits(torch.from_numpy(x), torch.from_numpy(y))
        after = head.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), name


def test_adacos_keeps_the_last_scale_where_eq_15_overflows():
    # In 2-D, Eq. 15 makes s grow geometrically; an update that overflows is skipped instead of giving inf.
    head = LOSSES.create("adacos", embedding_dim=2, num_classes=C).train()
    head.s.fill_(3e38)
    emb = torch.nn.functional.normalize(head.weight.detach(), dim=1)[[0, 1, 2]] * 2
    head(emb, torch.tensor([1, 2, 3]))
    assert torch.isfinite(head.s) and float(head.s) == pytest.approx(3e38, rel=1e-6)
