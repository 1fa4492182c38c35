"""CF comparators (MostPop, MF, LightGCN; BPR, SSM, BSL, PSL; Triplet-Shapley resampling) on a
CF-protocol directory (`python -m data_prep ... --protocol cf`): config, data, scoring, training.

    napo-recsys --config recipes/configs/ml-100k/mf-bpr.yaml \
        --dataset_dir runs/data/ml-100k-cf --output_dir runs/cf/mf-bpr [--seed 1] [--tau 0.1]

(`python recipes/recsys.py` is the same: this module is library code, with no `-m` entry.)
Every CFConfig field can be set in the YAML file and overridden on the command line. Protocol:
full ranking over all items; the user's training items are excluded (at test also the
validation items, unless `mask_valid_at_test: false`, the PSL benchmark's protocol; ids the items
table lacks are never ranked); recall@k and ndcg@k (napo.eval.metrics.set_metrics_per_user) averaged over
users with at least one held-out item. Model selection: valid ndcg@20 every `eval_every` epochs,
stop after `patience` evaluations without improvement; the best state is restored (the shared
loop, napo.recsys.loop). The recipe writes
OUT/metrics.json (recall@k, ndcg@k, pop/... on test; valid/...; train/...), OUT/checkpoint/
(model.safetensors + config.json) and OUT/run.json.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from napo.eval.metrics import popularity_report, set_metrics_per_user
from napo.recsys.cf import (
    LOSSES,
    MODELS,
    PSL_ACTIVATIONS,
    UniformNegatives,
    build_backbone,
    cf_loss,
)
from napo.recsys.loop import FitResult, run_epochs
from napo.recsys.shapley_sampler import MODES as SHAPLEY_MODES
from napo.recsys.shapley_sampler import ShapleySampler, ShapleySettings
from napo.threads import POLICIES, apply_threads

KS = (10, 20, 50)
SAMPLERS = ("uniform", "shapley")
CF_MODELS = ("MostPop", *MODELS)  # the recsys recipe runs these with CFConfig


@dataclass
class CFConfig:
    """Every hyperparameter of a CF run (YAML keys = field names = CLI flags)."""

    model: str = field(default="MF", metadata={"help": "MostPop, MF or LightGCN", "choices": list(CF_MODELS)})
    dim: int = field(default=64, metadata={"help": "embedding size d"})
    num_layers: int = field(default=2, metadata={"help": "LightGCN propagation layers (0 = MF)"})
    init_std: float = field(default=0.1, metadata={"help": "std of the normal embedding init"})
    loss: str = field(default="bpr", metadata={"help": "bpr (dot product) | ssm | bsl | psl (cosine scores)",
                                               "choices": list(LOSSES)})
    num_negatives: int = field(default=1, metadata={"help": "uniform negatives per positive (not the user's training items)"})
    tau: float = field(default=0.1, metadata={"help": "temperature on the RAW cosine difference: SSM exp((c_uj - c_ui)/tau); "
                                                      "BSL tau1; PSL (the PSL paper's tau = tau / 2)"})
    tau2: float = field(default=0.1, metadata={"help": "BSL negative-side temperature (raw cosine); tau2 = tau gives SSM"})
    activation: str = field(default="tanh", metadata={"help": "PSL surrogate: tanh | atan | relu | exp (exp = SSM)",
                                                      "choices": list(PSL_ACTIVATIONS)})
    shared_negatives: bool = field(default=True, metadata={"help": "softmax family: one set of num_negatives uniform items per batch "
                                                                   "(a matmul) instead of per positive; the user's training items are "
                                                                   "masked. BPR always draws its negatives per positive"})
    include_positive: bool = field(default=False, metadata={"help": "SSM: positive also in the denominator"})
    sampler: str = field(default="uniform", metadata={"help": "uniform | shapley (Triplet-Shapley resampling; BPR only)",
                                                      "choices": list(SAMPLERS)})
    l2: float = field(default=0.0, metadata={"help": "L2 on the batch's layer-0 embeddings, l2 * mean squared norm"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam weight decay"})
    batch_size: int = field(default=1024, metadata={"help": "training pairs per step"})
    max_epochs: int = field(default=200, metadata={"help": "upper bound on epochs"})
    eval_every: int = field(default=5, metadata={"help": "epochs between validations"})
    patience: int = field(default=5, metadata={"help": "validations without improvement before stopping"})
    select_metric: str = field(default="ndcg@20", metadata={"help": "valid metric for model selection"})
    mask_valid_at_test: bool = field(default=True, metadata={"help": "test ranking also excludes the user's validation "
                                                                      "items (false: only training items, as the PSL benchmark)"})
    max_minutes: float = field(default=0.0, metadata={"help": "safety valve only: stop after this many minutes (0 = off); "
                                                              "a run it stops says so (train/stopped_by_clock)"})
    seed: int = field(default=42, metadata={"help": "random seed (init, shuffling, negatives)"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads at most (0 = OMP_NUM_THREADS when set, else every usable core)"})
    thread_policy: str = field(default="adaptive", metadata={"help": "adaptive (fewer threads while other processes keep "
                                                                   "the cores busy, re-checked every epoch; napo.threads) or fixed (exactly `threads`)"})
    shapley_warmup_epochs: int = field(default=20, metadata={"help": "uniform BPR epochs before the first valuation"})
    shapley_refresh_epochs: int = field(default=10, metadata={"help": "epochs between valuations"})
    shapley_rounds: int = field(default=3, metadata={"help": "valuations at most"})
    shapley_players: int = field(default=512, metadata={"help": "triplets valued per round"})
    shapley_permutations: int = field(default=30, metadata={"help": "Monte Carlo permutations per round"})
    shapley_val_users: int = field(default=300, metadata={"help": "validation users in the utility"})
    shapley_eta: float = field(default=0.1, metadata={"help": "step size of the one-step lookahead game (too large a step "
                                                              "overshoots: v_gain < 0 in the round log)"})
    shapley_pool: int = field(default=4, metadata={"help": "negatives per positive that TIP chooses from"})
    shapley_uniform_mix: float = field(default=0.5, metadata={"help": "uniform share of the resampling mixture"})
    shapley_mode: str = field(default="resample", metadata={"help": "how the values are used: resample (TIP picks the negative), "
                                                                "weight (the authors' code: BPR terms weighted by clipped TIP values), "
                                                                "resample_weight, direct (valued triplets drawn directly, no TIP)"})
    shapley_tip_folds: int = field(default=5, metadata={"help": "k of TIP's held-out (k-fold) R^2, logged every round (0 = skip)"})

    def __post_init__(self):
        choices = {"model": CF_MODELS, "loss": LOSSES, "activation": PSL_ACTIVATIONS,
                   "sampler": SAMPLERS, "thread_policy": POLICIES, "shapley_mode": SHAPLEY_MODES}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}: {getattr(self, key)!r} is not one of {', '.join(allowed)}")
        if self.sampler == "shapley" and self.loss != "bpr":
            raise ValueError("sampler: shapley resamples BPR triplets; set loss: bpr")
        if self.select_metric not in {f"{m}@{k}" for m in ("recall", "ndcg") for k in KS}:
            raise ValueError(f"select_metric: {self.select_metric!r}; use recall@k or ndcg@k, k in {KS}")

    @property
    def cosine(self) -> bool:
        """The softmax family scores cosines (training and evaluation); BPR dot products."""
        return self.loss != "bpr"

    def shapley(self) -> ShapleySettings:
        return ShapleySettings(
            warmup_epochs=self.shapley_warmup_epochs, refresh_epochs=self.shapley_refresh_epochs,
            rounds=self.shapley_rounds, players=self.shapley_players,
            permutations=self.shapley_permutations, val_users=self.shapley_val_users,
            eta=self.shapley_eta, pool=self.shapley_pool, uniform_mix=self.shapley_uniform_mix,
            mode=self.shapley_mode, tip_folds=self.shapley_tip_folds)


# ---------------------------------------------------------------------------------------------
# data


@dataclass
class CFData:
    num_users: int
    num_items: int
    train: tuple[np.ndarray, np.ndarray]  # (user [T], item [T])
    valid: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    train_counts: np.ndarray  # [I]
    # ids below num_items that the items table lacks (Beauty's never-used id 0): never ranked
    absent: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def by_user(self, split: str) -> dict[int, np.ndarray]:
        user, item = getattr(self, split)
        if len(user) == 0:
            return {}
        order = np.argsort(user, kind="stable")
        u, it = user[order], item[order]
        keys, starts = np.unique(u, return_index=True)
        return {int(k): v for k, v in zip(keys, np.split(it, starts[1:]), strict=True)}


def load_data(path: str | Path) -> tuple[CFData, dict]:
    from data_prep.cf import load_cf

    splits, items, meta = load_cf(path)
    num_items = int(items["item_id"].max()) + 1
    counts = np.zeros(num_items, np.int64)
    counts[items["item_id"].to_numpy()] = items["train_count"].to_numpy()
    absent = np.setdiff1d(np.arange(num_items), items["item_id"].to_numpy())
    return CFData(meta["counts"]["users"], num_items, splits["train"], splits["valid"],
                  splits["test"], counts, absent), meta


# ---------------------------------------------------------------------------------------------
# scoring and evaluation


def vectors(model, cfg: CFConfig) -> tuple[torch.Tensor, torch.Tensor]:
    users, items = model()
    if cfg.cosine:
        users, items = F.normalize(users, dim=-1), F.normalize(items, dim=-1)
    return users, items


@torch.no_grad()
def evaluate(score_rows, data: CFData, split: str, ks=KS, pop: bool = False, chunk: int = 1024,
             per_user: dict | None = None, mask_valid: bool = True) -> dict:
    """Average recall@k / ndcg@k over users with items in `split`; `score_rows(users [b]) ->
    [b, I]` scores. Training items are excluded, at test also validation items (unless
    `mask_valid` is False: the PSL benchmark's protocol), and always the ids the items table
    lacks. A dict passed as `per_user` receives "users" [U] and each metric's per-user values
    [U] (the rows that napo.eval.stats pairs)."""
    targets = data.by_user(split)
    exclude = [data.by_user("train")] + ([data.by_user("valid")] if split == "test" and mask_valid else [])
    users = np.array(sorted(targets))
    per = {f"{m}@{k}": [] for k in ks for m in ("recall", "ndcg")}
    tops, flat_t = [], []
    empty = np.zeros(0, np.int64)
    for start in range(0, len(users), chunk):
        ub = users[start:start + chunk]
        s = score_rows(torch.from_numpy(ub)).double().numpy()
        tg = [targets[u] for u in ub]
        ex = [np.concatenate([data.absent, *(e.get(u, empty) for e in exclude)]) for u in ub]
        for key, v in set_metrics_per_user(s, tg, ex, ks).items():
            per[key].append(v)
        if pop:  # top-20 lists, targets placed after every item tied with them (pessimistic)
            for r, (t, e) in enumerate(zip(tg, ex, strict=True)):
                s[r, e] = -np.inf
                s[r, t] = np.nextafter(s[r, t], -np.inf)
            top = torch.topk(torch.from_numpy(s), max(ks[:2]), dim=1).indices.numpy()
            sizes = [len(t) for t in tg]
            tops.append(np.repeat(top, sizes, axis=0))
            flat_t += tg
    out = {k: float(np.concatenate(v).mean()) for k, v in per.items()}
    if per_user is not None:
        per_user.update({"users": users, **{k: np.concatenate(v) for k, v in per.items()}})
    if pop:
        out.update(popularity_report(np.concatenate(tops), np.concatenate(flat_t), data.train_counts, ks[:2]))
    return out


def model_scorer(model, cfg: CFConfig):
    users, items = vectors(model, cfg)
    return lambda ub: users[ub] @ items.T


def popularity_scorer(data: CFData):
    counts = torch.from_numpy(data.train_counts).float()
    return lambda ub: counts[None].expand(len(ub), -1)


# ---------------------------------------------------------------------------------------------
# training


def fit(model, cfg: CFConfig, data: CFData, progress: bool = True, validate=None, report=None) -> FitResult:
    """Adam over shuffled training pairs in the shared loop (napo.recsys.loop); validation every
    `eval_every` epochs (default: valid `select_metric` of the CF protocol; pass
    `validate(model) -> float` to override); `report(epoch, valid)` after every validation."""
    start = time.time()
    threads = apply_threads(cfg.threads, cfg.thread_policy)
    validate = validate or (lambda m: evaluate(model_scorer(m, cfg), data, "valid", KS)[cfg.select_metric])
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    t_user, t_item = data.train
    negatives = UniformNegatives(t_user, t_item, data.num_items, gen)
    shapley = None
    if cfg.sampler == "shapley":
        shapley = ShapleySampler(cfg.shapley(), negatives, t_user, t_item, data.by_user("valid"),
                                 data.by_user("train"), cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    users_all, items_all = torch.from_numpy(t_user.copy()), torch.from_numpy(t_item.copy())

    def train_epoch(epoch: int, deadline: float) -> dict:
        record: dict = {}
        if shapley is not None:
            with torch.no_grad():
                u_vec, i_vec = model()
            if shapley.due(epoch):
                record["shapley"] = shapley.refresh(u_vec, i_vec, epoch)
            shapley.set_vectors(u_vec, i_vec)
        model.train()
        perm = torch.randperm(len(t_user), generator=gen)
        total, steps = 0.0, 0
        for b in range(0, len(perm), cfg.batch_size):
            idx = perm[b: b + cfg.batch_size]
            loss = _batch_loss(model, cfg, users_all[idx], items_all[idx], negatives, shapley)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
        record["loss"] = total / max(steps, 1)
        return record  # the whole epoch runs: the clock is checked between epochs

    return run_epochs(model, train_epoch, validate, max_epochs=cfg.max_epochs, eval_every=cfg.eval_every,
                      patience=cfg.patience, max_minutes=cfg.max_minutes, desc=f"{cfg.model}-{cfg.loss}",
                      progress=progress, start=start, threads=threads, report=report)


def _batch_loss(model, cfg: CFConfig, u: torch.Tensor, i: torch.Tensor, negatives: UniformNegatives,
                shapley: ShapleySampler | None) -> torch.Tensor:
    """The loss of one batch of (user u [B], positive item i [B]) pairs, negatives drawn here."""
    weight = None
    if shapley is not None:
        u, i, j, mask, weight = shapley.sample(u, i)
    elif cfg.shared_negatives and cfg.loss != "bpr":
        j, mask = negatives.sample_shared(u, cfg.num_negatives)  # [K], [B, K]
    else:
        j, mask = negatives.sample(u, cfg.num_negatives)  # [B, K]
    users, items = vectors(model, cfg)
    eu = users[u]  # [B, d]
    pos = (eu * items[i]).sum(-1)  # [B]
    if j.dim() == 1:
        neg = eu @ items[j].T  # [B, K]
        j = j[None]  # [1, K] for the L2 term
    else:
        neg = torch.einsum("bd,bkd->bk", eu, items[j])  # [B, K]
    loss = cf_loss(cfg.loss, pos, neg, tau=cfg.tau, tau2=cfg.tau2, activation=cfg.activation,
                   include_positive=cfg.include_positive, neg_mask=mask, weight=weight)
    if cfg.l2:
        loss = loss + cfg.l2 * (model.user[u].pow(2).sum() + model.item[i].pow(2).sum()) / len(u) \
            + cfg.l2 * model.item[j].pow(2).sum() / j.numel()
    return loss


def build_model(cfg: CFConfig, data: CFData):
    torch.manual_seed(cfg.seed)
    return build_backbone(cfg.model, data.num_users, data.num_items, *data.train, cfg.dim,
                          cfg.num_layers, cfg.init_std)


# ---------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(model, cfg, directory: Path, **extra) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({**asdict(cfg), **extra}, indent=2) + "\n")
