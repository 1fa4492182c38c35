import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from napo.margin import DynamicMargin


def batch_with_mean(mean: float) -> torch.Tensor:
    """[2, 3] scores whose mean is `mean` (rows differ so per-user means differ)."""
    return torch.tensor([[mean - 1, mean, mean + 1], [mean + 2, mean, mean - 2]])


def test_scripted_sequence_batch_mode():
    margin = DynamicMargin(gamma0=1.0, alpha=0.3, momentum=0.9)
    # step 1: no past -> M_bar := M_1 -> gamma = gamma0; then ema = 0.1 * 2, M_bar = 0.2 / 0.1 = 2
    assert margin(batch_with_mean(2.0)).item() == pytest.approx(1.0)
    assert margin.m_bar == pytest.approx(2.0)
    # step 2: gamma = 1 - 0.3 * (4 - 2) = 0.4; ema = 0.18 + 0.4 = 0.58, M_bar = 0.58 / 0.19
    assert margin(batch_with_mean(4.0)).item() == pytest.approx(0.4)
    assert margin.m_bar == pytest.approx(0.58 / 0.19)
    # step 3: gamma = 1 - 0.3 * (1 - 0.58 / 0.19)
    assert margin(batch_with_mean(1.0)).item() == pytest.approx(1 - 0.3 * (1 - 0.58 / 0.19))
    assert margin.steps == 3


def test_bias_correction_first_step():
    corrected = DynamicMargin(momentum=0.9, clamp_min=None)
    plain = DynamicMargin(momentum=0.9, clamp_min=None, bias_correction=False)
    assert corrected(batch_with_mean(5.0)).item() == pytest.approx(1.0)
    assert corrected.m_bar == pytest.approx(5.0)  # not 0.1 * 5
    # without correction the average starts at 0: gamma_1 = 1 - 0.3 * 5
    assert plain(batch_with_mean(5.0)).item() == pytest.approx(1.0 - 1.5)
    assert plain.m_bar == pytest.approx(0.5)


def test_no_movement_in_eval():
    margin = DynamicMargin()
    margin(batch_with_mean(2.0))
    state = margin.state_dict()
    margin.eval()
    g_eval = margin(batch_with_mean(3.0))
    assert g_eval.item() == pytest.approx(1 - 0.3 * (3 - 2))
    assert margin(batch_with_mean(50.0), training=False).item() == 0.0  # clamped
    assert margin.state_dict() == state
    # the explicit argument overrides the switch
    margin(batch_with_mean(4.0), training=True)
    assert margin.steps == 2


def test_clamp():
    for clamp, want in ((0.0, 0.0), (0.2, 0.2), (None, 1 - 0.3 * 8)):
        margin = DynamicMargin(clamp_min=clamp)
        margin(batch_with_mean(2.0))
        assert margin(batch_with_mean(10.0)).item() == pytest.approx(want)


def _reference_replica(batch_means, gamma0=1.0, alpha=0.3, momentum=0.9):
    """The reference code's margin, written out in plain Python (napo-reference.md 2.4.2)."""
    m_bar, gammas = 0.0, []
    for m_t in batch_means:
        m_bar = momentum * m_bar + (1 - momentum) * m_t  # updated first: the batch is inside
        gammas.append(gamma0 * (1 - alpha * (m_t - m_bar)))
    return gammas


def test_faithful_equals_the_reference_sequence():
    # the worked example: batch means 2, 4, 1, 3 -> 0.460, -0.026, 0.887, 0.358 (gamma0 1, alpha 0.3, m 0.9)
    want = [0.460, -0.026, 0.887, 0.358]
    assert _reference_replica([2.0, 4.0, 1.0, 3.0]) == pytest.approx(want, abs=5e-4)
    margin = DynamicMargin(faithful=True, bias_correction=True, clamp_min=0.0)  # both overridden
    got = [margin(batch_with_mean(m)).item() for m in (2.0, 4.0, 1.0, 3.0)]
    assert got == pytest.approx(_reference_replica([2.0, 4.0, 1.0, 3.0]), abs=1e-6)
    assert got[1] < 0  # no clamp


def test_faithful_matches_the_replica_on_random_inputs_and_moves_in_eval():
    g = torch.Generator().manual_seed(0)
    for gamma0, alpha, momentum in ((1.0, 0.3, 0.9), (1.5, 0.5, 0.8), (1.0, 0.1, 0.0)):
        margin = DynamicMargin(gamma0=gamma0, alpha=alpha, momentum=momentum, faithful=True)
        batches = [torch.randn(4, 6, generator=g) * 2 + 1 for _ in range(7)]
        mask = torch.rand(4, 6, generator=g) > 0.3
        got = []
        for i, b in enumerate(batches):
            margin.train(i % 2 == 0)  # the reference updates on eval batches too
            got.append(margin(b, mask).item())
        means = [b[mask].double().mean().item() for b in batches]
        assert got == pytest.approx(_reference_replica(means, gamma0, alpha, momentum), abs=1e-5)
        assert margin.steps == 7


def test_default_mode_compares_with_previous_batches():
    margin = DynamicMargin()  # bias-corrected average of PREVIOUS training batches
    assert margin(batch_with_mean(2.0)).item() == pytest.approx(1.0)  # no past: gamma0
    assert margin(batch_with_mean(4.0)).item() == pytest.approx(1 - 0.3 * (4 - 2))
    assert margin.last == {"m_t": 4.0, "m_bar": 2.0}


def test_user_mode_masked_and_dtype():
    margin = DynamicMargin(mode="user", clamp_min=None)
    scores = torch.tensor([[1.0, 3.0, float("nan")], [4.0, 4.0, 4.0], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[True, True, False], [True, True, True], [False, False, False]])
    # global mean of the real negatives = (1 + 3 + 12) / 5 = 3.2 = M_bar on the first step
    gamma = margin(scores, mask)
    assert gamma.shape == (3,) and gamma.dtype == torch.float32
    torch.testing.assert_close(gamma, torch.tensor([1 - 0.3 * (2 - 3.2), 1 - 0.3 * (4 - 3.2), 1.0]))
    assert margin.m_bar == pytest.approx(3.2)


def test_state_dict_round_trip_resumes_identically():
    a = DynamicMargin()
    for m in (1.0, 2.0, 3.0):
        a(batch_with_mean(m))
    b = DynamicMargin()
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert a(batch_with_mean(7.0)).item() == b(batch_with_mean(7.0)).item()
    assert a.state_dict() == b.state_dict()


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="mode"):
        DynamicMargin(mode="global")
    with pytest.raises(ValueError, match="momentum"):
        DynamicMargin(momentum=1.0)


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        margin = DynamicMargin()
        local = [torch.tensor([[1.0, 2.0]]), torch.tensor([[7.0, 0.0], [3.0, 3.0]])]
        gammas = [margin(local[rank]).item(), margin(local[rank] + 2 * rank).item()]
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"gammas": gammas, "state": margin.state_dict()}, f)
    finally:
        dist.destroy_process_group()


def test_two_processes_agree_with_global_batch(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    single = DynamicMargin()
    first = torch.tensor([1.0, 2.0, 7.0, 0.0, 3.0, 3.0])[None]  # mean 16 / 6
    second = torch.tensor([1.0, 2.0, 9.0, 2.0, 5.0, 5.0])[None]
    want = [single(first).item(), single(second).item()]
    for r in results:
        assert r["gammas"] == pytest.approx(want, abs=1e-6)
        assert r["state"]["ema"] == pytest.approx(single.ema) and r["state"]["steps"] == 2
    assert want[1] == pytest.approx(1 - 0.3 * (24 / 6 - 16 / 6))
