"""Hyperparameter tuning of the recommenders without an LLM, on the VALID split only, with Optuna
(the script: napo.scripts.tune = `napo-tune`).

One study per model x dataset (default name `<config stem>@<dataset fingerprint>`), in Optuna's
storage: an SQLite file by default, or any database URL that several machines share. A trial
draws settings from the model's search space (napo.recsys.spaces), trains with the config's
epoch cap (`max_epochs`: the epoch budget, the same for every model of a study set) and early
stopping on valid, exactly as `napo-recsys` does, and its value is the best valid selection
metric of that fit; the test split is never scored. The study stops when `trials` trials have
finished (complete or pruned), whoever ran them.

Resuming: a killed process leaves its trial RUNNING; every worker's heartbeat marks a trial
whose heartbeat is older than the grace period as failed, and Optuna re-enqueues its settings
(RetryHeartbeatStaleTrialCallback), so rerunning the same command continues the trial count and re-runs
only the trial that was cut. Finished trials are never re-run. The sampler's seed is the given
seed plus the number of trials already in the study, so a resumed process does not replay the
first process's draws.

The best trial's settings go to a YAML file that `recipes/recsys.py --config` takes as it is:
the base config's keys, the command-line overrides and the searched values, with the trial's
valid metric in a comment. With the same software, seed and thread counts (`threads: 1`, or
`thread_policy: fixed`), training it gives the trial's valid metric again.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import warnings
from pathlib import Path

import yaml

from data_prep.errors import UserError
from napo.recsys.loop import FitResult
from napo.recsys.spaces import get_space, space_name
from napo.utils import set_seed

# what a resumed study must share with the one that made it (the sampler's seed may differ)
STUDY_KEYS = ("space", "max_epochs", "metric", "dataset_fingerprint", "base_config")
UNCHECKED = ("threads", "thread_policy")  # fields that do not change what a trial learns


class TuneError(UserError):
    """A one-line problem with a tuning run."""


def _optuna():
    try:
        import optuna
    except ImportError as err:
        raise TuneError("napo-tune needs Optuna: pip install -e '.[tune]'") from err
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


# ---------------------------------------------------------------------------------------------
# one trial = one fit on valid


class Trainer:
    """Loads a prepared directory once and fits a config on it as napo-recsys does (same data,
    same seeding, same selection), returning the FitResult."""

    def __init__(self, cfg, dataset_dir: str):
        from napo.recsys.cf_train import CF_MODELS, CFConfig

        self.dataset_dir = dataset_dir
        self.cf = isinstance(cfg, CFConfig)
        if cfg.model in ("MostPop", "Pop"):
            raise TuneError(f"model {cfg.model}: nothing to tune (no trained parameters)")
        from data_prep.cf import is_cf_directory

        self.cf_protocol = is_cf_directory(dataset_dir)
        if self.cf:
            from napo.recsys.cf_candidates import load_candidate_splits
            from napo.recsys.cf_train import load_data

            if self.cf_protocol:
                self.data, self.meta = load_data(dataset_dir)
                self.metric = cfg.select_metric
            else:
                if cfg.sampler == "shapley":
                    raise TuneError("sampler shapley needs the CF protocol's validation items")
                self.data, self.rows, self.meta = load_candidate_splits(dataset_dir)
                self.metric = "ndcg@10"
        else:
            if self.cf_protocol:
                raise TuneError(f"{dataset_dir}: a CF-protocol directory; use a CF model ({', '.join(CF_MODELS)})")
            self._splits: dict[int, tuple] = {}
            splits = self.splits(cfg.max_len)
            use_full = cfg.select_protocol == "full" or splits[0]["valid"].candidates is None
            self.metric = f"full/{cfg.select_metric}" if use_full else cfg.select_metric
            self.meta = splits[3]

    def splits(self, max_len: int):
        from napo.recsys.data import load_dataset_dir

        if max_len not in self._splits:
            self._splits[max_len] = load_dataset_dir(self.dataset_dir, max_len)
        return self._splits[max_len]

    def fit(self, cfg, report=None) -> FitResult:
        set_seed(cfg.seed)
        if self.cf:
            from napo.recsys import cf_train

            validate = None
            if not self.cf_protocol:
                from napo.recsys.cf_candidates import fold_in, row_metrics

                def validate(m):
                    return row_metrics(fold_in(m, cfg, self.rows["valid"])[1], self.rows["valid"])["ndcg@10"]

            model = cf_train.build_model(cfg, self.data)
            return cf_train.fit(model, cfg, self.data, progress=False, validate=validate, report=report)
        from napo.recsys.train import fit, make_model

        splits, num_items, counts, _ = self.splits(cfg.max_len)
        model = make_model(cfg, num_items, counts)
        return fit(model, cfg, splits["train"], splits["valid"], counts, progress=False, report=report)


def trial_config(base, params: dict):
    """The base config with a trial's values (the config class checks them)."""
    return dataclasses.replace(base, **params)


# ---------------------------------------------------------------------------------------------
# the study


def open_study(storage: str, name: str, attrs: dict, *, seed: int, prune: bool, heartbeat: int):
    """Create or load the study; a loaded study must have been made with the same `attrs`."""
    optuna = _optuna()
    if "://" not in storage:
        raise TuneError(f"storage {storage!r}: give a database URL, e.g. sqlite:///runs/tune/study.db")
    if storage.startswith("sqlite:///"):
        Path(storage[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # Optuna >= 4.9
        retry = {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)}
    else:
        retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=2)}
    rdb = optuna.storages.RDBStorage(storage, heartbeat_interval=heartbeat, grace_period=2 * heartbeat, **retry)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0) if prune else optuna.pruners.NopPruner()
    study = optuna.create_study(study_name=name, storage=rdb, direction="maximize", load_if_exists=True,
                                pruner=pruner)
    if not study.user_attrs:
        for key, value in attrs.items():
            study.set_user_attr(key, value)
    else:
        for key in STUDY_KEYS:
            if study.user_attrs.get(key) != attrs.get(key):
                raise TuneError(f"study {name!r} in {storage} was made with {key} {study.user_attrs.get(key)!r}, "
                                f"not {attrs.get(key)!r}; use the same settings or another --study_name")
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    return study


def finished(study) -> int:
    """Trials that count towards the budget: complete or pruned."""
    from optuna.trial import TrialState

    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)


def run_study(study, trainer: Trainer, base, space: str, trials: int, *, log=print):
    """Run trials until `trials` have finished (complete or pruned) in the whole study."""
    optuna = _optuna()
    from optuna.trial import TrialState

    from napo.nonfinite import NonFiniteError

    search = get_space(space)

    def objective(trial) -> float:
        cfg = trial_config(base, search(trial))
        report = None
        if not isinstance(study.pruner, optuna.pruners.NopPruner):
            def report(epoch, score):
                trial.report(score, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"valid {score:.4f} at epoch {epoch}")
        result = trainer.fit(cfg, report)
        for key, value in result.record().items():
            trial.set_user_attr(key, value)
        return result.best_valid if math.isfinite(result.best_valid) else float("nan")

    def progress(study, trial) -> None:
        attrs = trial.user_attrs
        value = "-" if trial.value is None else f"{trial.value:.4f}"
        log(f"trial {trial.number} {trial.state.name.lower()}: valid {trainer.metric} {value}, "
            f"epochs {attrs.get('epochs', '-')} (best {attrs.get('best_epoch', '-')}, stopped by "
            f"{attrs.get('stopped_by', '-')}), {attrs.get('fit_seconds', 0):.0f} s, {trial.params}")
        failed = sum(t.state == TrialState.FAIL for t in study.trials)
        if finished(study) >= trials or failed >= trials:
            study.stop()

    if finished(study) < trials:
        study.optimize(objective, callbacks=[progress], catch=(NonFiniteError,), gc_after_trial=True)
    return study


# ---------------------------------------------------------------------------------------------
# outputs


def best_yaml(study, base, base_yaml: str | None, override_keys: list[str], config_path: str | None) -> str:
    """The best trial's config as YAML text: the base YAML's keys, the overridden keys and the
    searched keys, with their values in the trial's config; a comment says where it comes from."""
    best = study.best_trial
    cfg = trial_config(base, best.params)
    values = dataclasses.asdict(cfg)
    loaded = {}
    if base_yaml:
        loaded = yaml.safe_load(Path(base_yaml).read_text(encoding="utf-8")) or {}
    keys = list(loaded) + [k for k in [*override_keys, *best.params] if k not in loaded]
    out = {k: (values[k] if k in values else loaded[k]) for k in keys}
    attrs, u = best.user_attrs, study.user_attrs
    when = datetime.date.today().isoformat()
    header = [
        f"# napo-tune {when}: the best of {finished(study)} finished trials of study {study.study_name!r}",
        f"# (space {u.get('space')}, epoch budget {u.get('max_epochs')}, seed {u.get('seed')}, "
        f"dataset fingerprint {u.get('dataset_fingerprint')}, from {config_path or 'defaults'}):",
        f"# trial {best.number}, valid {u.get('metric')} = {best.value!r} (epochs {attrs.get('epochs')}, "
        f"best epoch {attrs.get('best_epoch')}, stopped by {attrs.get('stopped_by')}).",
        f"# searched: {', '.join(best.params)}. Test was never scored while tuning.",
        "# python recipes/recsys.py --config THIS_FILE --dataset_dir DIR --output_dir OUT",
    ]
    return "\n".join(header) + "\n" + yaml.safe_dump(out, sort_keys=False, default_flow_style=False)


def trials_table(study) -> str:
    """Markdown: every trial, best first, with its epochs and what stopped it."""
    rows = sorted(study.trials, key=lambda t: (t.value is None, -(t.value or 0.0)))
    metric = study.user_attrs.get("metric", "valid")
    lines = [f"| trial | state | valid {metric} | epochs | best epoch | stopped by | seconds | settings |",
             "|---|---|---|---|---|---|---|---|"]
    for t in rows:
        a = t.user_attrs
        value = "-" if t.value is None else f"{t.value:.4f}"
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        lines.append(f"| {t.number} | {t.state.name.lower()} | {value} | {a.get('epochs', '-')} | "
                     f"{a.get('best_epoch', '-')} | {a.get('stopped_by', '-')} | {a.get('fit_seconds', '-')} | {params} |")
    return "\n".join(lines)


def study_attrs(base, trainer: Trainer, space: str, seed: int) -> dict:
    """The study's record of how it was made; `base_config` digests every base setting."""
    import hashlib
    import json

    settings = {k: v for k, v in dataclasses.asdict(base).items() if k not in UNCHECKED}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"space": space, "max_epochs": base.max_epochs, "metric": trainer.metric,
            "dataset_fingerprint": trainer.meta.get("fingerprint"), "base_config": digest,
            "seed": seed, "train_seed": base.seed}


def default_study_name(config_path: str | None, base, trainer: Trainer) -> str:
    stem = Path(config_path).stem if config_path else f"{base.model}-{space_name(base)}"
    return f"{stem}@{trainer.meta.get('fingerprint')}"
