"""Hyperparameter search spaces of the recommenders without an LLM: the one registry that
`napo-tune` (napo.recsys.tuning) draws from.

A space is a function `space(trial) -> {config field: value}` over an Optuna trial (any object
with `suggest_float` / `suggest_categorical` works, so this module does not import Optuna). Its
name is picked from the run's config by `space_name`: the loss for the CF comparators (`bpr`,
`ssm`, `bsl`, `psl`; `bpr-shapley` with the Shapley sampler; MF and LightGCN share them), the
model for the sequential ones (`SASRec`, `GRU4Rec`, `Caser`). Another model family adds its own
with `@register("Name")` (DreamRec / PreferDiff: their papers' grids).

Ranges are at least as wide as the papers' grids (shared/papers/cf.md 2.4; every temperature is
on the RAW cosine difference, twice the PSL paper's half-cosine tau):
- BPR: lr 1e-4..1e-1 and L2 1e-6..3e-2 (log), the PSL benchmark's BPR grid (lr 1e-4..1e-1) and
  the L2 range where Beauty's MF-BPR still improved (issue 20: L2 1e-2..3e-2);
- SSM: lr 1e-3..1e-1, weight decay {0, 1e-6, 1e-5, 1e-4}, tau 0.01..0.5 (the SL code's grid);
- BSL: SSM's, with tau1 (`tau`) and tau2 drawn independently, so tau1 >= tau2 (every optimum in
  the PSL paper's tables) and tau1 < tau2 are both searched;
- PSL: SSM's, with tau 0.01..0.5 (the paper's half-cosine 0.025..0.25 is 0.05..0.5 here) and the
  activation in {tanh, atan, relu};
- BPR with Triplet Shapley: BPR's, plus the valuation step eta 1e-3..1 and the uniform share
  0..0.9 (resample / direct modes);
- SASRec, GRU4Rec, Caser: lr 1e-4..1e-2 (log), dropout 0..0.6.
"""

from __future__ import annotations

from collections.abc import Callable

Space = Callable[[object], dict]
SPACES: dict[str, Space] = {}
WEIGHT_DECAYS = (0.0, 1e-6, 1e-5, 1e-4)  # the PSL benchmark's grid


def register(name: str) -> Callable[[Space], Space]:
    """Decorator: `@register("PreferDiff") def space(trial): ...` adds a space under `name`."""

    def add(space: Space) -> Space:
        if name in SPACES:
            raise ValueError(f"search space {name!r} is already registered")
        SPACES[name] = space
        return space

    return add


def space_name(cfg) -> str:
    """The registry key of a run's config (a CFConfig or a RecConfig)."""
    loss, model = getattr(cfg, "loss", None), cfg.model
    if hasattr(cfg, "shapley_eta"):  # a CF comparator: the loss decides
        return "bpr-shapley" if cfg.sampler == "shapley" else loss
    return model


def get_space(name: str) -> Space:
    if name not in SPACES:
        raise KeyError(f"no search space {name!r}; registered: {', '.join(sorted(SPACES))}")
    return SPACES[name]


@register("bpr")
def bpr(trial) -> dict:
    return {"lr": trial.suggest_float("lr", 1e-4, 1e-1, log=True),
            "l2": trial.suggest_float("l2", 1e-6, 3e-2, log=True)}


def _softmax(trial) -> dict:
    return {"lr": trial.suggest_float("lr", 1e-3, 1e-1, log=True),
            "weight_decay": trial.suggest_categorical("weight_decay", WEIGHT_DECAYS),
            "tau": trial.suggest_float("tau", 0.01, 0.5, log=True)}


@register("ssm")
def ssm(trial) -> dict:
    return _softmax(trial)


@register("bsl")
def bsl(trial) -> dict:
    return {**_softmax(trial), "tau2": trial.suggest_float("tau2", 0.01, 0.5, log=True)}


@register("psl")
def psl(trial) -> dict:
    return {**_softmax(trial), "activation": trial.suggest_categorical("activation", ("tanh", "atan", "relu"))}


@register("bpr-shapley")
def bpr_shapley(trial) -> dict:
    return {**bpr(trial), "shapley_eta": trial.suggest_float("shapley_eta", 1e-3, 1.0, log=True),
            "shapley_uniform_mix": trial.suggest_float("shapley_uniform_mix", 0.0, 0.9)}


def _sequential(trial) -> dict:
    return {"lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
            "dropout": trial.suggest_float("dropout", 0.0, 0.6)}


for _name in ("SASRec", "GRU4Rec", "Caser"):
    register(_name)(_sequential)
