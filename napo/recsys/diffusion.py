"""Diffusion comparators: DreamRec (Yang et al. 2023) and PreferDiff (Liu et al. 2025).

One conditional generator of the next item's embedding, as a SeqRecommender:
    c     = Enc(history)                      SASRec-style encoder, [B, d] (the condition)
    x0    = E[target]                         learned item embedding (row i + 1; row 0 = pad), [B, d]
    x_t   = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps,   t ~ U{0..T-1}, eps ~ N(0, I)
    x0^   = F(x_t, c, t) = Out([x_t ; c ; tau(t)])     x0-prediction; tau = sinusoid -> MLP
with ab_t = prod_{k<=t} (1 - beta_k) (linear or cosine beta schedule). Classifier-free guidance:
during training c is replaced by a learned null vector c0 with probability p_uncond; at sampling
    x0^ = (1 + w) F(x_t, c, t) - w F(x_t, c0, t)       (one doubled batch, not two calls).

Objectives (`objective`):
- dreamrec:   L = mean_{b,j} (x0 - x0^)^2                       (MSE, no negatives)
- preferdiff: with d(a, b) = (cos(a, b) - 1)^2, the centroid of the in-batch negatives
  n_b = mean_{j : target_j != target_b} E[target_j] (an accidental hit is not a negative; the
  official code keeps it), n_t = sqrt(ab_t) n_b + sqrt(1 - ab_t) eps' (independent noise, same t),
  pos_b = d(x0_b, F(x_t, c_b, t_b)), neg_b = d(n_b, F(n_t, c_b, t_b))                      [B]
    form "paper":    L = mean_b [ lam pos_b + (1 - lam) softplus(gamma (pos_b - neg_b)) ]
    form "faithful": P = mean_b pos_b, N = mean_b neg_b over rows with a negative (the official
                     code: the BPR term at batch level, on batch means)
                     L = lam P + (1 - lam) softplus(gamma (P - N))
  (softplus(z) = -log sigma(-z)). Rows without a negative (batch of one) get no preference term.

Ranking: the generated embedding x0^ [B, d] is the user vector (`encode`), and every item is
scored by one matrix product x0^ @ E[1:]^T (padding row excluded); `score_items: cosine` scores
with unit-norm item rows instead. Samplers: DDIM (eta 0 = deterministic given x_T) over the
steps T-1, T-1-s, ..., then the final x0^; or DDPM ancestral over all T steps. x_T is drawn from a
seeded torch.Generator (`reseed`), so a sampling run is reproducible; all users of a batch and
both guidance halves go through each step together.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from napo.recsys.models import SeqRecommender, _Block

OBJECTIVES = ("dreamrec", "preferdiff")
PREFERDIFF_FORMS = ("paper", "faithful")
SCHEDULES = ("linear", "cosine")
SAMPLERS = ("ddim", "ddpm")


# ---------------------------------------------------------------------------------------------
# schedules and sampler steps (pure functions)


def make_betas(schedule: str, steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """beta_t, t = 0..T-1, float64 [T]. linear: evenly from beta_start to beta_end; cosine
    (Nichol & Dhariwal 2021): ab(t) = cos^2(((t/T) + s) / (1 + s) * pi/2), s = 0.008,
    beta_t = 1 - ab(t+1)/ab(t) clipped to [1e-4, 0.9999]."""
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    if schedule == "cosine":
        s = 0.008
        x = torch.arange(steps + 1, dtype=torch.float64) / steps
        ab = torch.cos((x + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - ab[1:] / ab[:-1]).clamp(1e-4, 0.9999)
    raise ValueError(f"unknown beta schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def ddim_step(x_t: torch.Tensor, x0_hat: torch.Tensor, ab_t: float, ab_prev: float, eta: float = 0.0,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """DDIM (Song et al. 2021) from x_t to the previous kept step:
    eps^ = (x_t - sqrt(ab_t) x0^) / sqrt(1 - ab_t),
    sigma = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev),
    x_prev = sqrt(ab_prev) x0^ + sqrt(1 - ab_prev - sigma^2) eps^ + sigma z."""
    eps = (x_t - math.sqrt(ab_t) * x0_hat) / math.sqrt(1 - ab_t)
    sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab_t)) * math.sqrt(max(1 - ab_t / ab_prev, 0.0))
    x = math.sqrt(ab_prev) * x0_hat + math.sqrt(max(1 - ab_prev - sigma ** 2, 0.0)) * eps
    if sigma > 0 and noise is not None:
        x = x + sigma * noise
    return x


def ddpm_step(x_t: torch.Tensor, x0_hat: torch.Tensor, beta_t: float, ab_t: float, ab_prev: float,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """DDPM ancestral step from the posterior q(x_{t-1} | x_t, x0^) (Ho et al. 2020):
    mu = beta_t sqrt(ab_prev) / (1 - ab_t) x0^ + (1 - ab_prev) sqrt(1 - beta_t) / (1 - ab_t) x_t,
    var = (1 - ab_prev) / (1 - ab_t) beta_t;  x_{t-1} = mu + sqrt(var) z (z = None: the mean)."""
    mu = (beta_t * math.sqrt(ab_prev) / (1 - ab_t)) * x0_hat \
        + ((1 - ab_prev) * math.sqrt(1 - beta_t) / (1 - ab_t)) * x_t
    if noise is not None:
        mu = mu + math.sqrt((1 - ab_prev) / (1 - ab_t) * beta_t) * noise
    return mu


def sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer sinusoidal embedding of integer steps: t [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]  # [B, half]
    emb = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(emb, (0, dim - emb.shape[1]))


def cosine_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """d(a, b) = (cos(a, b) - 1)^2 per row: [B, d] x [B, d] -> [B]."""
    return (F.cosine_similarity(a, b, dim=-1) - 1) ** 2


def preferdiff_loss(pos_err: torch.Tensor, neg_err: torch.Tensor, has_neg: torch.Tensor,
                    lam: float, gamma: float, form: str = "paper") -> torch.Tensor:
    """pos_err, neg_err [B] cosine errors, has_neg [B] bool -> scalar (formulas: module docstring)."""
    if form == "paper":
        pref = F.softplus(gamma * (pos_err - neg_err)) * has_neg.float()  # [B]
        return (lam * pos_err + (1 - lam) * pref).mean()
    if form == "faithful":
        p = pos_err.mean()
        if not bool(has_neg.any()):
            return lam * p
        n = neg_err[has_neg].mean()
        return lam * p + (1 - lam) * F.softplus(gamma * (p - n))
    raise ValueError(f"unknown preferdiff_form {form!r}; choose one of {', '.join(PREFERDIFF_FORMS)}")


# ---------------------------------------------------------------------------------------------
# the model


class DiffusionRec(SeqRecommender):
    """Conditional diffusion over next-item embeddings (formulas: module docstring)."""

    supports_all_positions = True

    def __init__(self, num_items: int, hidden: int = 64, num_blocks: int = 1, num_heads: int = 2,
                 dropout: float = 0.1, max_len: int = 10, *, objective: str = "preferdiff",
                 steps: int = 2000, schedule: str = "linear", beta_start: float = 1e-4,
                 beta_end: float = 0.02, p_uncond: float = 0.1, guidance: float = 2.0,
                 sampler: str = "ddim", ddim_stride: int = 100, eta: float = 0.0,
                 lam: float = 0.4, gamma: float = 5.0, preferdiff_form: str = "paper",
                 denoiser: str = "linear", score_items: str = "dot", sample_seed: int = 0):
        super().__init__(num_items, hidden, max_len)
        for name, value, allowed in (("objective", objective, OBJECTIVES), ("sampler", sampler, SAMPLERS),
                                     ("preferdiff_form", preferdiff_form, PREFERDIFF_FORMS),
                                     ("denoiser", denoiser, ("linear", "mlp")),
                                     ("score_items", score_items, ("dot", "cosine"))):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        if hidden % num_heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by num_heads ({num_heads})")
        if not 1 <= ddim_stride <= steps:
            raise ValueError(f"ddim_stride must lie in [1, diffusion_steps={steps}], got {ddim_stride}")
        self.objective, self.form, self.sampler = objective, preferdiff_form, sampler
        self.steps, self.stride, self.eta = steps, ddim_stride, eta
        self.p_uncond, self.guidance, self.lam, self.gamma = p_uncond, guidance, lam, gamma
        self.score_items = score_items
        betas = make_betas(schedule, steps, beta_start, beta_end)  # float64 [T]
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("alpha_bar", torch.cumprod(1 - betas, 0), persistent=False)
        # history encoder (SASRec-style, pre-norm blocks shared with models.SASRec)
        self.item_emb = nn.Embedding(num_items + 1, hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.emb_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(hidden, num_heads, dropout) for _ in range(num_blocks))
        self.final_norm = nn.LayerNorm(hidden)
        # N(0, 1) item rows, as both official codes: x0 then has the scale of the noise
        nn.init.normal_(self.item_emb.weight, std=1.0)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        nn.init.normal_(self.pos_emb.weight, std=1.0)  # as the official code (nn.Embedding's default)
        # denoiser F(x_t, c, t) and the learned null condition
        self.null_cond = nn.Parameter(torch.randn(hidden))
        self.step_mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))
        if denoiser == "linear":
            self.denoiser = nn.Linear(3 * hidden, hidden)
        else:
            self.denoiser = nn.Sequential(nn.Linear(3 * hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))
        self._gen: torch.Generator | None = None
        self.sample_seed = sample_seed

    # -- condition -----------------------------------------------------------------------------

    def _embed(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-aligned history [B, L] -> block input [B, L, d] and the attention mask [B, 1, L, L]."""
        length = seq.shape[1]
        pos = torch.arange(self.max_len - length, self.max_len, device=seq.device)
        x = self.emb_dropout(self.item_emb(seq) + self.pos_emb(pos)[None]) * (seq > 0).unsqueeze(-1)
        causal = torch.ones(length, length, dtype=torch.bool, device=seq.device).tril()
        allowed = causal[None] & (seq > 0)[:, None, :]
        return x, (allowed | torch.eye(length, dtype=torch.bool, device=seq.device)[None])[:, None]

    def _encode_all(self, seq: torch.Tensor) -> torch.Tensor:
        """History states [B, L] -> [B, L, d]; the condition is the state at the last column."""
        x, allowed = self._embed(seq)
        for block in self.blocks:
            x = block(x, allowed)
        return self.final_norm(x)

    def condition(self, seq: torch.Tensor) -> torch.Tensor:
        """c = encoder state at the last history item: [B, L] -> [B, d]. Equals
        encode_all(seq)[:, -1], but the last block computes its output at the last position only
        (most of the encoder's cost at large d when each row trains one target)."""
        x, allowed = self._embed(self._prepare(seq))
        if not len(self.blocks):
            return self.final_norm(x[:, -1])
        for block in self.blocks[:-1]:
            x = block(x, allowed)
        return self.final_norm(self.blocks[-1](x, allowed, last_only=True)[:, -1])

    # -- denoiser ------------------------------------------------------------------------------

    def denoise(self, x_t: torch.Tensor, c: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0^ = F(x_t, c, t): x_t [B, d] or [K, B, d] (K noisy inputs under the same condition
        and step), c [B, d], t [B] int -> shaped as x_t.

        The linear denoiser is W [x_t ; c ; tau] + b = W_x x_t + (W_c c + W_tau tau + b): the
        bracket is computed once for all K inputs (the same numbers as K calls on the concatenation)."""
        steps, row = t.unique(return_inverse=True)  # sampling: one step for the whole batch
        tau = self.step_mlp(sinusoid(steps, self.hidden))[row]  # [B, d]
        if isinstance(self.denoiser, nn.Linear):
            weight, d = self.denoiser.weight, self.hidden  # weight [d, 3d]: columns of x_t, c, tau
            shared = F.linear(torch.cat([c, tau], dim=-1), weight[:, d:], self.denoiser.bias)  # [B, d]
            return F.linear(x_t, weight[:, :d]) + shared
        c, tau = c.expand(x_t.shape), tau.expand(x_t.shape)
        return self.denoiser(torch.cat([x_t, c, tau], dim=-1))

    def guided(self, x_t: torch.Tensor, c: torch.Tensor, t: torch.Tensor, w: float) -> torch.Tensor:
        """(1 + w) F(x_t, c, t) - w F(x_t, c0, t): [B, d] -> [B, d]. The linear denoiser is affine
        in c, so this is one call F(x_t, (1 + w) c - w c0, t); the MLP runs one doubled batch."""
        b = x_t.shape[0]
        if isinstance(self.denoiser, nn.Linear):
            return self.denoise(x_t, (1 + w) * c - w * self.null_cond, t)
        both = self.denoise(torch.cat([x_t, x_t]), torch.cat([c, self.null_cond.expand(b, -1)]),
                            torch.cat([t, t]))  # [2B, d]
        cond, uncond = both[:b], both[b:]
        return (1 + w) * cond - w * uncond

    # -- training ------------------------------------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps: [B, d], [B], [B, d] -> [B, d]."""
        ab = self.alpha_bar[t].to(x0.dtype)[:, None]  # [B, 1]
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def diffusion_loss(self, c: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """c [B, d] conditions, target [B] item ids (unshifted) -> scalar loss (module docstring)."""
        b = c.shape[0]
        drop = torch.rand(b, device=c.device) < self.p_uncond  # condition dropout for CFG
        c = torch.where(drop[:, None], self.null_cond.expand(b, -1), c)
        t = torch.randint(0, self.steps, (b,), device=c.device)
        x0 = self.item_emb(target + 1)  # [B, d]
        x_t = self.q_sample(x0, t, torch.randn_like(x0))
        if self.objective == "dreamrec":
            return F.mse_loss(self.denoise(x_t, c, t), x0)
        other = target[:, None] != target[None, :]  # [B, B] in-batch negatives (no accidental hits)
        count = other.sum(1)  # [B]
        centroid = (other.to(x0.dtype) @ x0) / count.clamp(min=1)[:, None]  # [B, d]
        has_neg = count > 0
        n_t = self.q_sample(centroid, t, torch.randn_like(x0))
        x0_hat, neg_hat = self.denoise(torch.stack([x_t, n_t]), c, t)  # one step embedding for both
        pos_err = cosine_error(x0, x0_hat)  # [B]
        neg_err = torch.where(has_neg, cosine_error(centroid, neg_hat), torch.zeros_like(pos_err))
        return preferdiff_loss(pos_err, neg_err, has_neg, self.lam, self.gamma, self.form)

    def training_loss(self, seq: torch.Tensor, target: torch.Tensor, all_positions: bool = False) -> torch.Tensor:
        """The loss fit() uses for this model: seq [B, L] shifted ids, target [B] ids -> scalar.
        all_positions: also every history item as a target of the items before it."""
        if not all_positions:
            return self.diffusion_loss(self.condition(seq), target)
        full = torch.cat([seq, target[:, None] + 1], dim=1)[:, -(self.max_len + 1):]
        inp, labels = full[:, :-1], full[:, 1:] - 1
        states = self.encode_all(inp)  # [B, L, d]
        keep = (inp > 0) & (labels >= 0)
        keep[:, -1] = True  # the row's own example, even with an empty history
        return self.diffusion_loss(states[keep], labels[keep])

    # -- sampling ------------------------------------------------------------------------------

    def reseed(self, seed: int | None = None) -> None:
        """Restart the sampling noise stream (x_T and DDPM noise) from `seed` (default sample_seed)."""
        self.sample_seed = self.sample_seed if seed is None else seed
        self._gen = None

    def _generator(self, device: torch.device) -> torch.Generator:
        if self._gen is None or self._gen.device != torch.device(device):
            self._gen = torch.Generator(device=device).manual_seed(self.sample_seed)
        return self._gen

    def ddim_timesteps(self) -> list[int]:
        """Network steps of DDIM: T-1, T-1-s, ... (>= 0); the last one jumps to x0."""
        return list(range(self.steps - 1, -1, -self.stride))

    @torch.no_grad()
    def sample(self, c: torch.Tensor, *, sampler: str | None = None, guidance: float | None = None,
               x_T: torch.Tensor | None = None, generator: torch.Generator | None = None,
               stochastic: bool = True) -> torch.Tensor:
        """Generate x0 for conditions c [B, d] -> [B, d]. stochastic=False drops the per-step
        noise (DDPM's posterior-mean path; DDIM with eta > 0 becomes its mean update)."""
        sampler = sampler or self.sampler
        w = self.guidance if guidance is None else guidance
        gen = generator or self._generator(c.device)
        x = x_T if x_T is not None else torch.randn(c.shape, generator=gen, device=c.device, dtype=c.dtype)

        def noise():
            return torch.randn(c.shape, generator=gen, device=c.device, dtype=c.dtype) if stochastic else None

        ab = self.alpha_bar.tolist()
        if sampler == "ddpm":
            betas = self.betas.tolist()
            for t in range(self.steps - 1, -1, -1):
                x0_hat = self.guided(x, c, torch.full((c.shape[0],), t, device=c.device), w)
                if t == 0:
                    return x0_hat
                x = ddpm_step(x, x0_hat, betas[t], ab[t], ab[t - 1], noise())
        taus = self.ddim_timesteps()
        for i, t in enumerate(taus):
            x0_hat = self.guided(x, c, torch.full((c.shape[0],), t, device=c.device), w)
            if i == len(taus) - 1:
                return x0_hat
            x = ddim_step(x, x0_hat, ab[t], ab[taus[i + 1]], self.eta, noise() if self.eta > 0 else None)
        return x

    # -- SeqRecommender seams ------------------------------------------------------------------

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """User vector = the generated next-item embedding x0^: [B, L] -> [B, d]."""
        return self.sample(self.condition(seq))

    def item_vectors(self) -> torch.Tensor:  # [num_items, d], padding row excluded
        e = self.item_emb.weight[1:]
        return F.normalize(e, dim=-1) if self.score_items == "cosine" else e
