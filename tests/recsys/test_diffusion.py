"""DreamRec / PreferDiff: the losses against formulas written here, the samplers against each
other and the DDPM posterior, guidance, seeding, learning, checkpoints."""

import math

import numpy as np
import pytest
import torch

from napo.recsys.data import load_dataset_dir
from napo.recsys.diffusion import (
    DiffusionRec,
    cosine_error,
    ddim_step,
    ddpm_step,
    make_betas,
    preferdiff_loss,
    sinusoid,
)
from napo.recsys.train import (
    RecConfig,
    fit,
    infer,
    load_checkpoint,
    make_model,
    save_checkpoint,
    split_metrics,
)


def _model(**kw):
    torch.manual_seed(0)
    args = dict(hidden=8, num_blocks=1, num_heads=2, dropout=0.0, steps=50, ddim_stride=1)
    return DiffusionRec(12, **{**args, **kw}).eval()


def _reference_preferdiff(model, seq, target, form):
    """PreferDiff's loss written out with loops, on the same random draws as the model."""
    torch.manual_seed(7)
    b = len(target)
    drop = torch.rand(b) < model.p_uncond
    t = torch.randint(0, model.steps, (b,))
    eps_pos = torch.randn(b, model.hidden)
    eps_neg = torch.randn(b, model.hidden)
    c = model.condition(seq)
    betas = np.linspace(1e-4, 0.02, model.steps)
    ab = np.cumprod(1 - betas)
    pos, neg, has = [], [], []
    for i in range(b):
        ci = model.null_cond if drop[i] else c[i]
        a = float(ab[t[i]])
        e = model.item_emb.weight[target[i] + 1]
        negs = [model.item_emb.weight[target[j] + 1] for j in range(b) if target[j] != target[i]]
        xt = math.sqrt(a) * e + math.sqrt(1 - a) * eps_pos[i]
        fe = model.denoise(xt[None], ci[None], t[i:i + 1])[0]
        pos.append((torch.dot(e, fe) / (e.norm() * fe.norm()) - 1) ** 2)
        has.append(bool(negs))
        if negs:
            n = torch.stack(negs).mean(0)
            nt = math.sqrt(a) * n + math.sqrt(1 - a) * eps_neg[i]
            fn = model.denoise(nt[None], ci[None], t[i:i + 1])[0]
            neg.append((torch.dot(n, fn) / (n.norm() * fn.norm()) - 1) ** 2)
        else:
            neg.append(torch.tensor(0.0))
    lam, g = model.lam, model.gamma
    if form == "paper":
        terms = [lam * p + (1 - lam) * (-torch.log(torch.sigmoid(-g * (p - n))) if h else 0.0)
                 for p, n, h in zip(pos, neg, has, strict=True)]
        return torch.stack(terms).mean()
    p = torch.stack(pos).mean()
    n = torch.stack([x for x, h in zip(neg, has, strict=True) if h]).mean()
    return lam * p + (1 - lam) * -torch.log(torch.sigmoid(-g * (p - n)))


@pytest.mark.parametrize("form", ["paper", "faithful"])
def test_preferdiff_loss_matches_the_formula(form):
    model = _model(objective="preferdiff", preferdiff_form=form, lam=0.3, gamma=2.0, p_uncond=0.5)
    seq = torch.tensor([[0, 0, 3, 4], [0, 1, 2, 5], [0, 0, 0, 7], [6, 7, 8, 9], [0, 0, 2, 3]])
    target = torch.tensor([5, 2, 5, 11, 0])  # rows 0 and 2 share a target: not each other's negative
    torch.manual_seed(7)
    got = model.training_loss(seq, target)
    want = _reference_preferdiff(model, seq, target, form)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    # a batch of one has no negative: only the generation term remains
    torch.manual_seed(7)
    one = model.training_loss(seq[:1], target[:1])
    torch.manual_seed(7)
    assert one.item() == pytest.approx(model.lam * _reference_pos_only(model, seq[:1], target[:1]), rel=1e-5)


def _reference_pos_only(model, seq, target):
    torch.manual_seed(7)
    drop = torch.rand(1) < model.p_uncond
    t = torch.randint(0, model.steps, (1,))
    eps = torch.randn(1, model.hidden)
    c = model.null_cond[None] if drop[0] else model.condition(seq)
    a = float(np.cumprod(1 - np.linspace(1e-4, 0.02, model.steps))[t[0]])
    e = model.item_emb.weight[target + 1]
    fe = model.denoise(math.sqrt(a) * e + math.sqrt(1 - a) * eps, c, t)
    return ((torch.nn.functional.cosine_similarity(e, fe) - 1) ** 2).item()


def _plain_preferdiff_step(model, seq, target, seed):
    """The training step before the fast paths, written out: the condition from the full encoder
    output, the step embedding and the linear denoiser on the concatenation [x_t ; c ; tau], once
    for the positive and once for the centroid. Loss and gradients of every parameter."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    c = model.encode_all(seq)[:, -1]
    b = len(target)
    drop = torch.rand(b) < model.p_uncond
    c = torch.where(drop[:, None], model.null_cond.expand(b, -1), c)
    t = torch.randint(0, model.steps, (b,))
    x0 = model.item_emb(target + 1)
    x_t = model.q_sample(x0, t, torch.randn_like(x0))
    tau = model.step_mlp(sinusoid(t, model.hidden))
    other = target[:, None] != target[None, :]
    centroid = (other.float() @ x0) / other.sum(1).clamp(min=1)[:, None]
    n_t = model.q_sample(centroid, t, torch.randn_like(x0))
    pos = cosine_error(x0, model.denoiser(torch.cat([x_t, c, tau], -1)))
    neg = cosine_error(centroid, model.denoiser(torch.cat([n_t, c, tau], -1)))
    loss = preferdiff_loss(pos, neg, other.any(1), model.lam, model.gamma, model.form)
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("blocks", [1, 2])
@pytest.mark.parametrize("form", ["paper", "faithful"])
def test_fast_training_step_equals_the_plain_one(blocks, form):
    # dropout 0 in train mode: both paths draw the same random numbers (condition dropout, t, noises)
    model = _model(hidden=16, num_blocks=blocks, steps=2000, preferdiff_form=form, p_uncond=0.3).train()
    seq = torch.tensor([[0, 0, 3, 4], [1, 2, 5, 0], [0, 0, 0, 7], [6, 7, 8, 9], [0, 0, 0, 0], [0, 2, 3, 11]])
    target = torch.tensor([5, 2, 5, 11, 0, 1])  # a right-padded row, an empty history, a repeated target
    want_loss, want_grads = _plain_preferdiff_step(model, seq, target, seed=11)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(11)
    loss = model.training_loss(seq, target)
    loss.backward()
    torch.testing.assert_close(loss.detach(), want_loss, rtol=1e-5, atol=1e-7)
    grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == want_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, want_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("blocks", [0, 1, 3])
def test_condition_is_the_last_encoder_state(blocks):
    model = _model(hidden=16, num_blocks=blocks)
    seq = torch.tensor([[0, 0, 3, 4, 9], [1, 2, 5, 0, 0], [0, 0, 0, 0, 0], [6, 7, 8, 9, 10]])
    torch.testing.assert_close(model.condition(seq), model.encode_all(seq)[:, -1], rtol=1e-5, atol=1e-6)


def test_denoiser_splits_and_guidance_by_linearity_match_the_plain_formulas():
    model = _model(hidden=8)
    x, c, t = torch.randn(2, 4, 8), torch.randn(4, 8), torch.tensor([0, 5, 17, 5])
    tau = model.step_mlp(sinusoid(t, 8))
    for k in range(2):  # K stacked inputs under one condition = K calls on the concatenation
        torch.testing.assert_close(model.denoise(x, c, t)[k], model.denoiser(torch.cat([x[k], c, tau], -1)))
    mlp = _model(hidden=8, denoiser="mlp")
    tau = mlp.step_mlp(sinusoid(t, 8))
    torch.testing.assert_close(mlp.denoise(x, c, t)[1], mlp.denoiser(torch.cat([x[1], c, tau], -1)))
    for m in (model, mlp):  # guidance against the two conditional calls it stands for
        want = 3.5 * m.denoiser(torch.cat([x[0], c, tau if m is mlp else model.step_mlp(sinusoid(t, 8))], -1)) \
            - 2.5 * m.denoiser(torch.cat([x[0], m.null_cond.expand(4, -1), m.step_mlp(sinusoid(t, 8))], -1))
        torch.testing.assert_close(m.guided(x[0], c, t, 2.5), want, rtol=1e-5, atol=1e-5)


def test_embeddings_start_as_the_official_code():
    # item rows and positions N(0, 1) (nn.Embedding's default, kept by the official code)
    model = DiffusionRec(500, hidden=256, max_len=10)
    assert model.item_emb.weight[1:].std().item() == pytest.approx(1.0, abs=0.02)
    assert model.pos_emb.weight.std().item() == pytest.approx(1.0, abs=0.05)
    assert model.item_emb.weight[0].abs().sum().item() == 0.0


def test_dreamrec_loss_is_mse_of_x0():
    model = _model(objective="dreamrec", p_uncond=0.0)
    seq, target = torch.tensor([[0, 1, 2], [3, 4, 5]]), torch.tensor([3, 9])
    torch.manual_seed(3)
    got = model.training_loss(seq, target)
    torch.manual_seed(3)
    torch.rand(2)
    t = torch.randint(0, model.steps, (2,))
    eps = torch.randn(2, model.hidden)
    ab = torch.tensor(np.cumprod(1 - np.linspace(1e-4, 0.02, model.steps)), dtype=torch.float32)[t][:, None]
    x0 = model.item_emb.weight[target + 1]
    pred = model.denoise(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, model.condition(seq), t)
    assert got.item() == pytest.approx(((pred - x0) ** 2).mean().item(), rel=1e-5)


def test_ddim_eta0_is_the_x0_interpolation_and_eta1_is_the_ddpm_posterior():
    betas = make_betas("linear", 20)
    ab = torch.cumprod(1 - betas, 0).tolist()
    x_t, x0 = torch.tensor([[0.3, -1.2]]), torch.tensor([[1.0, 0.5]])
    t = 9
    # eta 0: x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev) * eps^, eps^ from x_t
    eps = (x_t - math.sqrt(ab[t]) * x0) / math.sqrt(1 - ab[t])
    want0 = math.sqrt(ab[t - 1]) * x0 + math.sqrt(1 - ab[t - 1]) * eps
    torch.testing.assert_close(ddim_step(x_t, x0, ab[t], ab[t - 1], eta=0.0), want0)
    # eta 1 (no noise) is the DDPM posterior mean; eta 0 is not (a different, deterministic path)
    mean = ddpm_step(x_t, x0, float(betas[t]), ab[t], ab[t - 1])
    torch.testing.assert_close(ddim_step(x_t, x0, ab[t], ab[t - 1], eta=1.0), mean)
    assert not torch.allclose(want0, mean)
    # posterior mean written from Ho et al. eq. 7
    b = float(betas[t])
    ref = b * math.sqrt(ab[t - 1]) / (1 - ab[t]) * x0 + (1 - ab[t - 1]) * math.sqrt(1 - b) / (1 - ab[t]) * x_t
    torch.testing.assert_close(mean, ref)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddim_stride_1_follows_the_ddpm_path(schedule):
    model = _model(schedule=schedule, eta=1.0, guidance=2.0)
    c = model.condition(torch.tensor([[0, 1, 2], [4, 5, 6], [0, 0, 9]]))
    x_T = torch.randn(3, model.hidden, generator=torch.Generator().manual_seed(1))
    # deterministic: the posterior-mean path (no per-step noise) of both samplers
    ddpm = model.sample(c, sampler="ddpm", x_T=x_T, stochastic=False)
    ddim = model.sample(c, sampler="ddim", x_T=x_T, stochastic=False)
    torch.testing.assert_close(ddim, ddpm, rtol=1e-4, atol=1e-5)
    # stochastic, same generator: identical draws, identical samples
    a = model.sample(c, sampler="ddpm", generator=torch.Generator().manual_seed(5))
    b = model.sample(c, sampler="ddim", generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_guidance():
    model = _model()
    x, c, t = torch.randn(4, 8), torch.randn(4, 8), torch.tensor([0, 5, 17, 49])
    torch.testing.assert_close(model.guided(x, c, t, 0.0), model.denoise(x, c, t))
    w = 2.5
    null = model.null_cond.expand(4, -1)
    want = (1 + w) * model.denoise(x, c, t) - w * model.denoise(x, null, t)
    torch.testing.assert_close(model.guided(x, c, t, w), want)


def test_sampling_is_seeded_and_scores_exclude_padding():
    model = _model(steps=200, ddim_stride=20)
    assert model.ddim_timesteps() == list(range(199, -1, -20))
    seq = torch.tensor([[0, 1, 2], [3, 4, 5]])
    model.reseed(3)
    a = model(seq)
    model.reseed(3)
    b = model(seq)
    model.reseed(4)
    c = model(seq)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert a.shape == (2, 12)  # 12 items; the padding row is not a candidate
    torch.testing.assert_close(a, model.sample(model.condition(seq), generator=torch.Generator().manual_seed(3))
                               @ model.item_emb.weight[1:].T)


TINY = dict(hidden=32, num_blocks=1, num_heads=2, dropout=0.0, lr=0.01, batch_size=64, max_epochs=30,
            patience=30, select_metric="hr@1", threads=1, diffusion_steps=100, ddim_stride=10,
            guidance_w=0.0, seed=0)


@pytest.mark.parametrize("name", ["DreamRec", "PreferDiff"])
def test_learns_the_cycle_and_round_trips(cycle_dataset, tmp_path, name):
    cfg = RecConfig.from_dict({**TINY, "model": name})
    torch.manual_seed(0)
    splits, num_items, counts, _ = load_dataset_dir(cycle_dataset, cfg.max_len)
    model = make_model(cfg, num_items, counts)
    result = fit(model, cfg, splits["train"], splits["valid"], counts, progress=False)
    losses = [h["loss"] for h in result.history]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
    model.reseed(0)
    out = infer(model, splits["test"])
    metrics = split_metrics(splits["test"], out, counts)
    assert metrics["hr@1"] >= 0.3, (metrics["hr@1"], result.history)  # chance 0.1 (10 candidates)
    assert result.best_valid == max(h["valid"] for h in result.history if "valid" in h)
    save_checkpoint(model, cfg, tmp_path / "ckpt")
    loaded, cfg2 = load_checkpoint(tmp_path / "ckpt")
    assert cfg2 == cfg and type(loaded) is type(model)
    loaded.reseed(0)
    np.testing.assert_allclose(infer(loaded, splits["test"]).candidate_scores, out.candidate_scores,
                               rtol=1e-5, atol=1e-5)


def test_bad_settings_fail_in_one_line():
    with pytest.raises(ValueError, match="preferdiff_form"):
        DiffusionRec(5, preferdiff_form="batch")
    with pytest.raises(ValueError, match="ddim_stride"):
        DiffusionRec(5, steps=10, ddim_stride=20)
    with pytest.raises(ValueError, match="beta schedule"):
        DiffusionRec(5, schedule="sqrt")


def test_configs_load():
    from pathlib import Path

    import yaml

    paths = sorted(Path(__file__).parents[2].glob("recipes/configs/*/*dreamrec*.yaml")) + \
        sorted(Path(__file__).parents[2].glob("recipes/configs/*/*preferdiff*.yaml"))
    assert len(paths) == 12
    for path in paths:
        cfg = RecConfig.from_dict(yaml.safe_load(path.read_text()))
        assert cfg.model in ("DreamRec", "PreferDiff") and cfg.diffusion_steps == 2000, path
        assert cfg.max_minutes == 0, path  # no clock decides a number
        if path.parent.name in ("beauty", "sports"):  # the papers' protocol: valid Recall@5, patience 10
            assert (cfg.select_metric, cfg.select_protocol, cfg.patience) == ("hr@5", "full", 10), path
            assert not cfg.all_positions and cfg.guidance_w == {"beauty": 8, "sports": 2}[path.parent.name], path
            assert cfg.model == "DreamRec" or cfg.preferdiff_form == "faithful", path
        if cfg.hidden == 3072:  # the papers' settings
            assert (cfg.lr, cfg.batch_size, cfg.ddim_stride) == (1e-4, 256, 100), path
        else:
            make_model(cfg, 50)  # CPU-sized: builds
        if path.stem.endswith("-cpu"):  # a width that works, lr scaled as lr * d = 0.384
            assert cfg.hidden >= 512 and cfg.lr * cfg.hidden == pytest.approx(0.384), path
