"""Each loss against a direct float64 numpy computation of its formula."""

import numpy as np
import torch

from bids_semantoks.pretrain.losses import coding_rate, coding_rate_loss, masked_token_loss, ttr_loss


def _unit(rng, *shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _rate_np(z, eps):
    m, p = z.shape
    return 0.5 * np.linalg.slogdet(np.eye(p) + p / (m * eps) * z.T @ z)[1]


def _cr_loss_np(s, t, eps):
    v = s.shape[0]
    align = np.mean([np.mean(np.sum(s[a] * t[b], -1)) for a in range(v) for b in range(v) if a != b])
    m, p = s.shape[1], s.shape[2]
    gamma = (p + m) / (p * m)  # SimDINO's balancing factor
    rate = gamma * np.mean([_rate_np((s[a] + t[a]) / 2, eps) for a in range(v)])
    return -align - rate, align, rate


def test_coding_rate_matches_numpy():
    rng = np.random.default_rng(0)
    z = _unit(rng, 24, 16)
    got = coding_rate(torch.tensor(z, dtype=torch.float32), eps=0.05).item()
    assert np.isclose(got, _rate_np(z, 0.05), rtol=1e-4)


def test_coding_rate_loss_matches_numpy():
    rng = np.random.default_rng(1)
    for v in (2, 3):
        s, t = _unit(rng, v, 20, 16), _unit(rng, v, 20, 16)
        total, align, rate = coding_rate_loss(torch.tensor(s).float(), torch.tensor(t).float(), eps=0.05)
        ref = _cr_loss_np(s, t, 0.05)
        np.testing.assert_allclose([total.item(), align.item(), rate.item()], ref, rtol=1e-4, atol=1e-5)


def test_coding_rate_loss_teacher_detached():
    rng = np.random.default_rng(2)
    s = torch.tensor(_unit(rng, 2, 10, 8)).float().requires_grad_()
    t = torch.tensor(_unit(rng, 2, 10, 8)).float().requires_grad_()
    coding_rate_loss(s, t)[0].backward()
    assert s.grad is not None and t.grad is None


def test_masked_token_loss_matches_numpy():
    rng = np.random.default_rng(3)
    n, k, p = 6, 45, 8
    s, t = _unit(rng, n, k, p), _unit(rng, n, k, p)
    mask = rng.random((n, k)) < 0.4
    mask[2] = False  # a pair without masked tokens counts in n, adds 0
    ref = 0.0
    for j in range(n):
        if mask[j].any():
            ref += np.sum(np.sum(s[j] * t[j], -1)[mask[j]]) / mask[j].sum()
    ref = -ref / n
    got = masked_token_loss(torch.tensor(s).float(), torch.tensor(t).float(), torch.tensor(mask)).item()
    assert np.isclose(got, ref, rtol=1e-5, atol=1e-6)


def test_ttr_loss_is_coding_rate_over_sample_network_rows():
    rng = np.random.default_rng(4)
    v, b, nn, p = 2, 5, 9, 16
    s, t = _unit(rng, v, b, nn, p), _unit(rng, v, b, nn, p)
    got = ttr_loss(torch.tensor(s).float(), torch.tensor(t).float(), eps=0.05)[0].item()
    ref = _cr_loss_np(s.reshape(v, b * nn, p), t.reshape(v, b * nn, p), 0.05)[0]
    assert np.isclose(got, ref, rtol=1e-4)


def test_paper_scale_constant():
    """p/(m eps) = 128 / (512 * 0.05) = 5 at the paper's settings: rate of orthonormal rows."""
    z = torch.zeros(512, 128)
    z[torch.arange(128), torch.arange(128)] = 1.0
    # Z^T Z = I -> R = 1/2 * 128 * log(1 + 5)
    assert np.isclose(coding_rate(z, 0.05).item(), 0.5 * 128 * np.log(6.0), rtol=1e-5)


def test_rate_is_balanced_against_alignment():
    """With SimDINO's gamma the rate of a well-spread batch is O(1), like the alignment
    (here 2.6; unbalanced it is 110 and drowns the alignment term)."""
    rng = np.random.default_rng(5)
    one = _unit(rng, 64, 128)
    s = np.stack([one, one])  # both views identical: alignment 1
    _, align, rate = coding_rate_loss(torch.tensor(s).float(), torch.tensor(s).float(), eps=0.05)
    assert np.isclose(align.item(), 1.0, atol=1e-5)
    assert 0.3 < rate.item() < 5.0  # unbalanced: 110
