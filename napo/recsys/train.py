"""One small training loop for every id-based recommender, plus evaluation and checkpoints.

Training examples are the rows of the train split (history -> target). With
`all_positions: true` a model that supports it (SASRec, GRU4Rec) also predicts every history item
from the items before it (the usual SASRec objective); use it for data with one row per user
(e.g. Amazon sequences). Rows of sliding-window data (LastFM) already make every interaction a
target once, so there it only repeats examples and the default is off.

Model selection uses the valid split only: evaluation every `eval_every` epochs, the best
`select_metric` state is kept and restored, training stops after `patience` evaluations without
improvement (or after `max_minutes`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from data_prep.errors import UserError
from napo.eval.metrics import (
    FULL_KS,
    full_ranks,
    popularity_report,
    ranked_candidates,
    ranking_metrics,
    top_items,
)
from napo.eval.results import full_results
from napo.nonfinite import NonFiniteError, check_mode, nonfinite_gradients, nonfinite_message
from napo.recsys import state as train_state
from napo.recsys.data import SeqSplit
from napo.recsys.diffusion_config import DIFFUSION_MODELS, build_diffusion
from napo.recsys.loop import FitResult, LoopState, run_epochs
from napo.recsys.losses import LOSSES, bce_loss, full_ce_loss, sampled_softmax_loss
from napo.recsys.models import MODELS, SeqRecommender, build_model
from napo.recsys.samplers import build_sampler


class RecConfigError(UserError):
    """A one-line problem with a recommender run's settings."""


@dataclass
class RecConfig:
    """Every hyperparameter of an id-based recommender run (YAML keys = field names)."""

    model: str = field(default="SASRec", metadata={"help": "Pop, SASRec, GRU4Rec, Caser, DreamRec or PreferDiff (MF, LightGCN, MostPop: the CF comparators, with the CF settings below)"})
    hidden: int = field(default=64, metadata={"help": "embedding / hidden size d"})
    num_blocks: int = field(default=2, metadata={"help": "transformer blocks (SASRec) or GRU layers"})
    num_heads: int = field(default=1, metadata={"help": "attention heads (SASRec)"})
    dropout: float = field(default=0.2, metadata={"help": "dropout rate"})
    max_len: int = field(default=10, metadata={"help": "history window (most recent items)"})
    loss: str = field(default="ce", metadata={"help": "ce (full softmax), bce, sampled_softmax"})
    sampler: str = field(default="random", metadata={"help": "negative sampler for bce / sampled_softmax"})
    num_negatives: int = field(default=1, metadata={"help": "negatives per example"})
    alpha: float = field(default=0.75, metadata={"help": "popularity sampler exponent (count^alpha)"})
    pool_factor: int = field(default=5, metadata={"help": "adaptive samplers score pool_factor*K items"})
    mixed_fraction: float = field(default=0.5, metadata={"help": "in-batch share of mixed samplers"})
    logq: bool = field(default=False, metadata={"help": "logQ correction for sampled_softmax"})
    all_positions: bool = field(default=False, metadata={"help": "also train on every history position"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam weight decay"})
    batch_size: int = field(default=256, metadata={"help": "training batch size"})
    max_epochs: int = field(default=200, metadata={"help": "upper bound on epochs"})
    eval_every: int = field(default=1, metadata={"help": "epochs between validations"})
    patience: int = field(default=5, metadata={"help": "validations without improvement before stopping"})
    select_metric: str = field(default="ndcg@10", metadata={"help": "valid metric for selection (candidate protocol, or full ranking when the split has no candidates)"})
    select_protocol: str = field(default="auto", metadata={"help": "auto (candidates when the split has them), candidates or full"})
    max_minutes: float = field(default=0.0, metadata={"help": "wall-clock training budget (0 = none)"})
    exclude_history: bool = field(default=False, metadata={"help": "full ranking: drop history items from the ranking"})
    eval_batch_size: int = field(default=512, metadata={"help": "rows per inference batch"})
    seed: int = field(default=42, metadata={"help": "random seed"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = leave as is)"})
    # DreamRec / PreferDiff (napo.recsys.diffusion); ignored by the other models
    diffusion_steps: int = field(default=2000, metadata={"help": "diffusion steps T"})
    beta_schedule: str = field(default="linear", metadata={"help": "linear or cosine"})
    beta_start: float = field(default=1e-4, metadata={"help": "linear schedule: first beta"})
    beta_end: float = field(default=0.02, metadata={"help": "linear schedule: last beta"})
    p_uncond: float = field(default=0.1, metadata={"help": "condition dropout (classifier-free guidance)"})
    guidance_w: float = field(default=2.0, metadata={"help": "guidance weight w"})
    diffusion_sampler: str = field(default="ddim", metadata={"help": "ddim or ddpm"})
    ddim_stride: int = field(default=100, metadata={"help": "DDIM step stride"})
    ddim_eta: float = field(default=0.0, metadata={"help": "DDIM eta (0 = deterministic given x_T)"})
    preferdiff_lambda: float = field(default=0.4, metadata={"help": "PreferDiff weight of the generation term"})
    preferdiff_gamma: float = field(default=5.0, metadata={"help": "PreferDiff scale inside the sigmoid"})
    preferdiff_form: str = field(default="paper", metadata={"help": "paper (per example) or faithful (batch level, official code)"})
    denoiser: str = field(default="linear", metadata={"help": "linear (3d->d) or mlp (3d->2d->d)"})
    score_items: str = field(default="dot", metadata={"help": "diffusion ranking: dot or cosine with the generated embedding"})
    sample_seed: int = field(default=0, metadata={"help": "seed of the diffusion sampler's noise"})

    def __post_init__(self):
        if self.select_protocol not in ("auto", "candidates", "full"):
            raise RecConfigError(f"select_protocol must be auto, candidates or full, got {self.select_protocol!r}")
        if self.loss not in LOSSES:
            raise RecConfigError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.model not in MODELS and self.model not in DIFFUSION_MODELS:
            known = [*MODELS, *DIFFUSION_MODELS]
            raise RecConfigError(f"unknown model {self.model!r}; choose one of {', '.join(known)}")

    @classmethod
    def from_dict(cls, values: dict) -> RecConfig:
        """A config from a mapping (a checkpoint's config.json); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise RecConfigError(f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
        return cls(**values)


@dataclass
class RecRunArguments:
    """Where a recommender run reads and writes (the script's arguments beside RecConfig)."""

    dataset_dir: str | None = field(default=None, metadata={"help": "prepared dataset directory (python -m data_prep ...)"})
    output_dir: str | None = field(default=None, metadata={"help": "where metrics.json, aux/, checkpoint/ and run.json go"})
    quiet: bool = field(default=False, metadata={"help": "no progress bars"})
    save_every: int = field(default=0, metadata={"help": "write a resumable training checkpoint to "
                                                         "OUT/checkpoints/epoch-N every N epochs (0 = never)"})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "resume from a checkpoint "
                                               "directory, or true = the newest under OUT/checkpoints"})
    nonfinite: str = field(default="stop", metadata={"help": "on a NaN/inf loss or gradient: stop (one line) or skip the batch"})
    test_max_examples: int | None = field(default=None, metadata={"help": "test metrics on N rows only (aux/ keeps "
                                          "every row): the first N, or with test_sample_seed the rows napo-eval "
                                          "--max_examples N --sample_seed S evaluates (candidate-list data only)"})
    test_sample_seed: int | None = field(default=None, metadata={"help": "with test_max_examples: a seeded uniform "
                                         "sample of test rows (napo.eval.runner.sample_rows)"})

    def __post_init__(self):
        try:
            check_mode(self.nonfinite)
        except ValueError as err:
            raise RecConfigError(str(err)) from err
        for name in ("dataset_dir", "output_dir"):
            if not getattr(self, name):
                raise RecConfigError(f"{name} is not set: add `{name}: DIR` to the config or pass --{name}")
        if self.test_max_examples is not None and self.test_max_examples < 1:
            raise RecConfigError(f"test_max_examples must be >= 1, got {self.test_max_examples}")


def make_model(cfg: RecConfig, num_items: int, train_counts=None) -> SeqRecommender:
    if cfg.model in DIFFUSION_MODELS:
        return build_diffusion(cfg, num_items)
    return build_model(cfg.model, num_items, hidden=cfg.hidden, num_blocks=cfg.num_blocks,
                       num_heads=cfg.num_heads, dropout=cfg.dropout, max_len=cfg.max_len,
                       train_counts=None if train_counts is None else torch.as_tensor(train_counts))


# ---------------------------------------------------------------------------------------------
# inference


@dataclass
class SplitOutputs:
    """Per-row outputs of a model on one split."""

    user_vectors: np.ndarray  # float32 [N, d]
    candidate_scores: np.ndarray | None  # float32 [N, C]
    full_ranks: np.ndarray  # int64 [N], pessimistic rank of the target in the catalogue
    top_items: np.ndarray  # int64 [N, R], best first over the catalogue

    def take(self, keep) -> SplitOutputs:
        """The rows at positions `keep`, in that order (see SeqSplit.take)."""
        keep = np.asarray(keep, dtype=np.int64)
        return SplitOutputs(self.user_vectors[keep],
                            None if self.candidate_scores is None else self.candidate_scores[keep],
                            self.full_ranks[keep], self.top_items[keep])


@torch.no_grad()
def infer(model: SeqRecommender, split: SeqSplit, *, batch_size: int = 512, top_r: int = 10,
          exclude_history: bool = False, progress: bool = False) -> SplitOutputs:
    """Run the model over a split in chunks (never holds [N, num_items] at once)."""
    model.eval()
    vecs, cands, ranks, tops = [], [], [], []
    n = len(split)
    for start in tqdm(range(0, n, batch_size), desc="infer", disable=not progress, leave=False):
        sl = slice(start, start + batch_size)
        seq = torch.from_numpy(split.seq[sl])
        h = model.encode(seq)
        scores = model.score(h)  # [b, num_items]
        vecs.append(h.float().numpy())
        if split.candidates is not None:
            cands.append(torch.gather(scores, 1, torch.from_numpy(split.candidates[sl])).float().numpy())
        s = scores.float().numpy()
        exclude = [row[row > 0] - 1 for row in split.seq[sl]] if exclude_history else None
        ranks.append(full_ranks(s, split.target[sl], exclude))
        tops.append(top_items(s, top_r, exclude))
    d = model.hidden
    return SplitOutputs(
        user_vectors=np.concatenate(vecs) if vecs else np.zeros((0, d), np.float32),
        candidate_scores=np.concatenate(cands) if cands else None,
        full_ranks=np.concatenate(ranks) if ranks else np.zeros(0, np.int64),
        top_items=np.concatenate(tops) if tops else np.zeros((0, top_r), np.int64),
    )


CANDIDATE_KS = (1, 5, 10, 20)


def split_metrics(split: SeqSplit, out: SplitOutputs, train_counts=None, pop_ks=(1, 10)) -> dict:
    """Candidate-protocol metrics (plain keys), full ranking (`full/...`) and, with train_counts,
    popularity reports of both (`pop/...` over candidate lists, `full/pop/...` over the catalogue)."""
    metrics: dict[str, float] = {}
    if out.candidate_scores is not None:
        metrics.update(ranking_metrics(out.candidate_scores, split.target_index, CANDIDATE_KS))
        if train_counts is not None:
            ranked = ranked_candidates(out.candidate_scores, split.candidates, split.target_index)
            metrics.update(popularity_report(ranked, split.target, train_counts, pop_ks))
    full = full_results(out.full_ranks, out.top_items, split.target, train_counts, FULL_KS, pop_ks)
    metrics.update({f"full/{k}": v for k, v in full.items()})
    return metrics


def validation_score(model: SeqRecommender, split: SeqSplit, cfg: RecConfig) -> tuple[float, dict]:
    out = infer(model, split, batch_size=cfg.eval_batch_size, exclude_history=cfg.exclude_history)
    metrics = split_metrics(split, out)
    use_full = cfg.select_protocol == "full" or split.candidates is None
    key = f"full/{cfg.select_metric}" if use_full else cfg.select_metric
    if key not in metrics:
        raise ValueError(f"select_metric {cfg.select_metric!r} is not computed; use one of "
                         f"{', '.join(k for k in metrics if '/' not in k)}")
    return metrics[key], metrics


# ---------------------------------------------------------------------------------------------
# training


def _batch_loss(model: SeqRecommender, cfg: RecConfig, sampler, seq: torch.Tensor,
                target: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "training_loss"):  # models with their own objective (DreamRec, PreferDiff)
        return model.training_loss(seq, target, all_positions=cfg.all_positions)
    if cfg.all_positions and model.supports_all_positions:
        full = torch.cat([seq, target[:, None] + 1], dim=1)[:, -(cfg.max_len + 1):]
        inp, labels = full[:, :-1], full[:, 1:] - 1
        h_all = model.encode_all(inp)  # [B, L, d]
        keep = (inp > 0) & (labels >= 0)
        keep[:, -1] = True  # the row's own example, even with an empty history
        rows = torch.nonzero(keep)[:, 0]
        h, target, seq = h_all[keep], labels[keep], inp[rows]
    else:
        h = model.encode(seq)
    if cfg.loss == "ce":
        return full_ce_loss(h, model.item_vectors(), target)
    vectors = model.item_vectors()
    hd = h.detach()
    negs = sampler.sample(target, seq, cfg.num_negatives,
                          score_fn=lambda ids: (vectors.detach()[ids] * hd[:, None]).sum(-1))
    pos = (vectors[target] * h).sum(-1)
    neg = (vectors[negs] * h[:, None]).sum(-1)
    mask = negs != target[:, None]
    if cfg.loss == "bce":
        return bce_loss(pos, neg, mask)
    if cfg.logq:
        return sampled_softmax_loss(pos, neg, mask, sampler.log_q(target), sampler.log_q(negs))
    return sampled_softmax_loss(pos, neg, mask)


def fit(model: SeqRecommender, cfg: RecConfig, train: SeqSplit, valid: SeqSplit,
        train_counts=None, progress: bool = True, *, checkpoint_dir: str | Path | None = None,
        save_every: int = 0, resume_from: str | Path | None = None, nonfinite: str = "stop") -> FitResult:
    """Train with Adam and early stopping on `valid`; the best state is loaded back into model.

    With ``save_every`` > 0 a training checkpoint (napo/recsys/state.py) goes to
    ``checkpoint_dir/epoch-N`` after every ``save_every``-th epoch; ``resume_from`` (such a
    directory) restores model, Adam, the data-order / sampler / dropout RNGs, the best state and the
    early-stopping counters, so the resumed run ends exactly as an uninterrupted one would.
    ``nonfinite``: a NaN/inf loss or gradient stops the run (``stop``, NonFiniteError) or the
    batch is skipped (``skip``, counted in the epoch record as ``skipped``).
    """
    start = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:  # Popularity: nothing to learn
        score, _ = validation_score(model, valid, cfg)
        return FitResult(0, score, 0, time.time() - start, [{"epoch": 0, "valid": score}])
    gen = torch.Generator().manual_seed(cfg.seed)
    sampler, sampler_gen = None, None
    if cfg.loss != "ce":
        sampler_gen = torch.Generator().manual_seed(cfg.seed + 1)
        sampler = build_sampler(cfg.sampler, model.num_items, train_counts, alpha=cfg.alpha,
                                pool_factor=cfg.pool_factor, mixed_fraction=cfg.mixed_fraction,
                                generator=sampler_gen)
        if cfg.logq and cfg.loss == "sampled_softmax":
            sampler.log_q(torch.zeros(1, dtype=torch.long))  # fail now, not mid-training
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    generators = {"order": gen, "sampler": sampler_gen}
    seq_all, tgt_all = torch.from_numpy(train.seq), torch.from_numpy(train.target)
    loop = LoopState()
    if resume_from is not None:
        counters, loop.best_state = train_state.load(resume_from, model=model, optimizer=opt, generators=generators)
        loop.best, loop.best_epoch, loop.bad = float(counters["best"]), counters["best_epoch"], counters["bad"]
        loop.history, loop.epoch = counters["history"], counters["epoch"]

    def train_epoch(epoch: int, deadline: float) -> dict:
        model.train()
        perm = torch.randperm(len(train), generator=gen)
        total, steps, skipped = 0.0, 0, 0
        for batch, b in enumerate(range(0, len(train), cfg.batch_size)):
            idx = perm[b: b + cfg.batch_size]
            loss = _batch_loss(model, cfg, sampler, seq_all[idx], tgt_all[idx])
            opt.zero_grad(set_to_none=True)
            bad_loss = not bool(torch.isfinite(loss.detach()))
            if not bad_loss:
                loss.backward()
            if bad_loss or nonfinite_gradients(params):
                if nonfinite == "stop":
                    where = f"epoch {epoch} batch {batch + 1}"
                    last = train_state.last_checkpoint(checkpoint_dir) if checkpoint_dir else None
                    raise NonFiniteError(nonfinite_message("loss" if bad_loss else "gradient", where, last))
                opt.zero_grad(set_to_none=True)
                skipped += 1
                continue
            opt.step()
            total, steps = total + loss.item(), steps + 1
            if time.time() > deadline:
                break
        return {"loss": total / max(steps, 1), **({"skipped": skipped} if skipped else {})}

    def save(epoch: int, state: LoopState) -> None:
        if save_every and checkpoint_dir is not None and epoch % save_every == 0:
            train_state.save(checkpoint_dir, epoch, model=model, optimizer=opt, generators=generators,
                             counters=state.counters(), best_state=state.best_state)

    return run_epochs(model, train_epoch, lambda m: validation_score(m, valid, cfg)[0],
                      max_epochs=cfg.max_epochs, eval_every=cfg.eval_every, patience=cfg.patience,
                      max_minutes=cfg.max_minutes, desc=cfg.model, progress=progress, state=loop,
                      after_epoch=save, start=start)


# ---------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(model: SeqRecommender, cfg: RecConfig, directory: str | Path) -> Path:
    """DIR/model.safetensors + DIR/config.json (config fields + num_items)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({**asdict(cfg), "num_items": model.num_items}, indent=2) + "\n")
    return d


def load_checkpoint(directory: str | Path) -> tuple[SeqRecommender, RecConfig]:
    d = Path(directory)
    values = json.loads((d / "config.json").read_text())
    num_items = values.pop("num_items")
    cfg = RecConfig.from_dict(values)
    model = make_model(cfg, num_items)
    model.load_state_dict(load_file(str(d / "model.safetensors")))
    model.eval()
    return model, cfg
