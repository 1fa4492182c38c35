"""Tune a recommender without an LLM on the VALID split with Optuna, and write the best config.

    napo-tune --config recipes/configs/beauty/mf-bpr.yaml --dataset_dir runs/data/beauty-cf \
        --output_dir runs/tune/beauty/mf-bpr --trials 20 [--max_epochs 60] [--storage sqlite:///S.db]

(`python -m napo.scripts.tune` is the same.) The `--config` is the model's recipe YAML, and any
of its fields can be overridden as in napo-recsys (`--max_epochs` is the epoch budget of every
trial; `--threads 1` for reproducible trials). The space (napo.recsys.spaces) follows from the
config: the loss for MF / LightGCN, the model for SASRec / GRU4Rec / Caser. Writes
OUT/best.yaml (pass it to `recipes/recsys.py --config`) and OUT/trials.md (every trial with its
valid metric, epochs and what stopped it); the study itself lives in `--storage` (default
sqlite:///OUT/study.db), so the same command resumes a killed run, and other machines join it
through a shared database URL. Needs the `tune` extra (`pip install -e '.[tune]'`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.errors import UserError
from napo.scripts.parser import ScriptParser, config_path, fail, peek

DESCRIPTION = __doc__.split("\n\n")[0]


@dataclass
class TuneArguments:
    """Where napo-tune reads and writes, and the study's budget (beside the model's config)."""

    dataset_dir: str | None = field(default=None, metadata={"help": "prepared dataset directory (python -m data_prep ...)"})
    output_dir: str | None = field(default=None, metadata={"help": "where best.yaml and trials.md go"})
    trials: int = field(default=20, metadata={"help": "finished trials (complete or pruned) the study stops at, all workers together"})
    storage: str | None = field(default=None, metadata={"help": "Optuna storage URL (default sqlite:///OUTPUT_DIR/study.db; "
                                                                "a shared database URL lets several machines work on one study)"})
    study_name: str | None = field(default=None, metadata={"help": "default: <config stem>@<dataset fingerprint>"})
    space: str | None = field(default=None, metadata={"help": "search space name (napo.recsys.spaces; default: from the config)"})
    sampler_seed: int = field(default=0, metadata={"help": "TPE sampler seed (plus the number of trials already in the study)"})
    prune: bool = field(default=False, metadata={"help": "stop trials whose valid curve falls below the median of earlier "
                                                         "trials at the same epoch (Optuna's MedianPruner)"})
    heartbeat: int = field(default=60, metadata={"help": "seconds between a trial's heartbeats; a trial silent for twice "
                                                         "this long is failed and re-queued (a killed worker)"})

    def __post_init__(self):
        for name in ("dataset_dir", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"{name} is not set: pass --{name}")
        if self.trials < 1 or self.heartbeat < 1:
            raise ValueError("trials and heartbeat must be >= 1")


def main(argv=None) -> int:
    from napo.recsys.cf_train import CF_MODELS, CFConfig
    from napo.recsys.train import RecConfig

    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        ScriptParser((TuneArguments, RecConfig), description=DESCRIPTION).print_help()
        print("\nCF comparators (model: MF | LightGCN) read these settings instead of the sequential model's:\n")
        print(ScriptParser((CFConfig,)).format_help().split("\n\n", 1)[1])
        return 0
    settings = CFConfig if peek(argv, "model") in CF_MODELS else RecConfig
    args, base = ScriptParser((TuneArguments, settings)).parse(argv)
    fields = set(settings.__dataclass_fields__)
    overrides = [a[2:].split("=", 1)[0] for a in config_path(argv)[1] if a.startswith("--")]
    overrides = [k for k in overrides if k in fields]
    path = config_path(argv)[0]
    try:
        from napo.recsys import tuning
        from napo.recsys.spaces import get_space, space_name

        space = args.space or space_name(base)
        try:
            get_space(space)
        except KeyError as err:
            raise tuning.TuneError(str(err.args[0])) from err
        out = Path(args.output_dir)
        storage = args.storage or f"sqlite:///{(out / 'study.db').as_posix()}"
        trainer = tuning.Trainer(base, args.dataset_dir)
        name = args.study_name or tuning.default_study_name(path, base, trainer)
        study = tuning.open_study(storage, name, tuning.study_attrs(base, trainer, space, args.sampler_seed),
                                  seed=args.sampler_seed, prune=args.prune, heartbeat=args.heartbeat)
        print(f"study {name!r} in {storage}: {tuning.finished(study)} of {args.trials} trials finished; "
              f"space {space}, epoch budget {base.max_epochs}, valid {trainer.metric}", flush=True)
        tuning.run_study(study, trainer, base, space, args.trials, log=lambda line: print(line, flush=True))
        if not any(t.value is not None for t in study.trials):
            raise tuning.TuneError(f"study {name!r} has no complete trial; see the lines above")
        out.mkdir(parents=True, exist_ok=True)
        text = tuning.best_yaml(study, base, path, overrides, path)
        (out / "best.yaml").write_text(text, encoding="utf-8")
        (out / "trials.md").write_text(tuning.trials_table(study) + "\n", encoding="utf-8")
    except UserError as err:
        fail(err)
    best = study.best_trial
    print(f"best: trial {best.number}, valid {trainer.metric} {best.value:.4f}, {best.params} -> {out / 'best.yaml'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
