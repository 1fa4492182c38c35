"""MF / LightGCN backbones and the uniform negative sampler."""

import numpy as np
import torch

from napo.recsys.cf import MF, LightGCN, UniformNegatives, normalized_adjacency


def _graph():
    user = np.array([0, 0, 1, 2, 2, 2])
    item = np.array([0, 1, 1, 0, 2, 3])
    return user, item


def test_adjacency_is_symmetric_normalised():
    user, item = _graph()
    a = normalized_adjacency(user, item, 3, 4).to_dense()
    deg = torch.tensor([2, 1, 3, 2, 2, 1, 1], dtype=torch.float32)  # users 0..2, items 0..3
    assert torch.allclose(a, a.T)
    # entry (u, U + i) = 1 / sqrt(deg_u deg_i)
    assert a[0, 3 + 1].item() == torch.tensor(1 / (2 * 2) ** 0.5).item()
    assert a[2, 3 + 3].item() == torch.tensor(1 / (3 * 1) ** 0.5).item()
    assert a[1, 3 + 0].item() == 0.0
    assert torch.allclose(a.sum(), sum(1 / (deg[u] * deg[3 + i]) ** 0.5 * 2 for u, i in zip(user, item, strict=False)))


def test_lightgcn_zero_layers_equals_mf():
    user, item = _graph()
    torch.manual_seed(0)
    mf = MF(3, 4, 8)
    g = LightGCN(3, 4, normalized_adjacency(user, item, 3, 4), 8, num_layers=0)
    g.load_state_dict(mf.state_dict(), strict=False)
    for a, b in zip(mf(), g(), strict=True):
        assert torch.equal(a, b)


def test_lightgcn_layer_mean_readout():
    user, item = _graph()
    g = LightGCN(3, 4, normalized_adjacency(user, item, 3, 4), 5, num_layers=2)
    a = g.adjacency.to_dense()
    e0 = torch.cat([g.user, g.item])
    want = (e0 + a @ e0 + a @ (a @ e0)) / 3
    u, i = g()
    assert torch.allclose(torch.cat([u, i]), want, atol=1e-6)


def test_negatives_avoid_training_items():
    rng = np.random.default_rng(0)
    user = np.repeat(np.arange(20), 6)
    item = np.concatenate([rng.choice(12, 6, replace=False) for _ in range(20)])
    neg = UniformNegatives(user, item, 12, torch.Generator().manual_seed(0))
    train = {u: set(item[user == u].tolist()) for u in range(20)}
    users = torch.arange(20)
    j, ok = neg.sample(users, 8)
    for u in range(20):
        for x, good in zip(j[u].tolist(), ok[u].tolist(), strict=False):
            assert good == (x not in train[u])
    assert ok.float().mean() > 0.9  # redraws remove most hits (half the catalogue is positive)
    shared, mask = neg.sample_shared(users, 30)
    want = torch.tensor([[x not in train[u] for x in shared.tolist()] for u in range(20)])
    assert torch.equal(mask, want)
