"""The CF comparators through the recsys recipe (recipes/recsys.py = napo.scripts.recsys): the CF
protocol gives the numbers of the former `python -m napo.recsys.cf_train` entry point (gone: the
library has no script entries), the
20-candidate fold-in scores napo-eval's sampled rows with napo-eval's metrics, --help lists the
CF settings, and mismatched model / directory pairs are one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from napo.eval.report import load_per_row
from napo.eval.runner import load_split, sample_rows
from napo.eval.stats import compare_runs, row_values
from napo.recsys import cf_candidates, cf_train
from napo.scripts import evaluate as napo_eval
from napo.scripts import recsys

COMMON = ["--quiet", "--threads", "1", "--dim", "8", "--batch_size", "64"]
MF_SSM = ["--model", "MF", "--loss", "ssm", "--lr", "0.05", "--num_negatives", "16"]


def _metrics(out):
    return json.loads((out / "metrics.json").read_text())


def _history(out):
    return json.loads((out / "run.json").read_text())["config"]["history"]


def test_cf_protocol_through_the_recipe_keeps_the_former_numbers(cf_dir, tmp_path):
    argv = ["--dataset_dir", str(cf_dir / "cf"), *COMMON, *MF_SSM, "--max_epochs", "12", "--eval_every", "3"]
    assert recsys.main([*argv, "--output_dir", str(tmp_path / "recipe")]) == 0
    m = _metrics(tmp_path / "recipe")
    # Known answers: what `python -m napo.recsys.cf_train` wrote before it became the recipe
    # (commit 28b68f1, its own fit loop), same arguments, same tiny log, torch CPU, 1 thread.
    assert m["ndcg@20"] == pytest.approx(0.44707296957906784, abs=1e-6)
    assert m["ndcg@10"] == pytest.approx(0.4299137777027483, abs=1e-6)
    assert m["valid/ndcg@20"] == pytest.approx(0.4998100726729106, abs=1e-6)
    assert (m["recall@20"], m["train/best_epoch"], m["train/epochs"]) == (1.0, 3, 12)
    assert (m["train/stopped_by"], m["train/stopped_by_clock"]) == ("max_epochs", False)
    fit = json.loads((tmp_path / "recipe" / "run.json").read_text())["config"]["fit"]
    assert (fit["epochs"], fit["best_epoch"], fit["stopped_by"], fit["stopped_by_clock"]) == (12, 3, "max_epochs", False)
    assert [r["threads"] for r in _history(tmp_path / "recipe")] == [1] * 12
    assert {"recall@10", "ndcg@50", "pop/hr@20/tail", "valid/recall@20", "train/fit_seconds"} <= set(m)
    per_row = load_per_row(tmp_path / "recipe")  # per-user values: what napo.eval.stats pairs
    for key in ("recall@20", "ndcg@20", "ndcg@10"):
        assert row_values(per_row, key).mean() == pytest.approx(m[key]), key


def test_cf_library_modules_have_no_script_entry():
    """The library never imports a script: the CF modules have no `python -m` entry, and no
    module of napo/recsys points up at napo.scripts."""
    for module in (cf_train, cf_candidates):
        assert not hasattr(module, "main")
    for path in Path(cf_train.__file__).parent.glob("*.py"):
        imports = re.findall(r"^\s*(?:from|import) (napo\.scripts\S*)", path.read_text(), re.M)
        assert not imports, f"{path.name} imports {imports}"


def test_shapley_through_the_recipe_keeps_the_former_numbers(cf_dir, tmp_path):
    assert recsys.main(["--dataset_dir", str(cf_dir / "cf"), "--output_dir", str(tmp_path), *COMMON,
                        "--model", "MF", "--sampler", "shapley", "--lr", "0.02", "--max_epochs", "6",
                        "--eval_every", "3", "--shapley_warmup_epochs", "2", "--shapley_refresh_epochs", "2",
                        "--shapley_players", "40", "--shapley_permutations", "8", "--shapley_val_users", "30",
                        "--shapley_eta", "5"]) == 0
    m = _metrics(tmp_path)  # known answers of the former entry point, as above
    assert m["ndcg@20"] == pytest.approx(0.4521030903308202, abs=1e-6)
    assert m["valid/ndcg@20"] == pytest.approx(0.45010329779826663, abs=1e-6)


def test_candidate_rows_are_napo_evals_rows(cf_dir):
    n = 54  # test rows of the tiny candidate-list directory
    rows, _, _ = load_split(cf_dir / "seq", "test", max_examples=20, sample_seed=42)
    assert len(rows) == 20 and sample_rows(n, 20, 42) == rows["row_index"]
    assert sample_rows(n, 20, 7) != sample_rows(n, 20, 42)
    assert sample_rows(n, 20) == list(range(20)) and sample_rows(n) == list(range(n))
    assert sample_rows(n, 100, 42) == list(range(n))


def test_candidate_protocol_scores_the_same_rows_with_napo_eval_metrics(cf_dir, tmp_path):
    seq = cf_dir / "seq"
    assert recsys.main(["--dataset_dir", str(seq), "--output_dir", str(tmp_path / "mf"), *COMMON, *MF_SSM,
                        "--max_epochs", "10", "--test_max_examples", "20", "--test_sample_seed", "42"]) == 0
    m = _metrics(tmp_path / "mf")
    assert (m["test/num_examples"], m["test/sample_seed"]) == (20, 42)
    assert napo_eval.main(["--scores_from_aux", str(tmp_path / "mf" / "aux"), "--dataset_dir", str(seq),
                           "--output_dir", str(tmp_path / "eval"), "--max_examples", "20",
                           "--sample_seed", "42", "--no_progress"]) == 0
    rank = json.loads((tmp_path / "eval" / "metrics.json").read_text())["rank"]
    shared = set(rank) & set(m)
    assert {"hr@1", "hr@5", "ndcg@10", "mrr", "pop/hr@1/head", "pop/hr@10/tail"} <= shared
    assert {k: m[k] for k in shared} == pytest.approx({k: rank[k] for k in shared}, abs=1e-12)
    # both wrote the same rows and ranks: a paired comparison of the two is exactly zero
    same = compare_runs(tmp_path / "mf", tmp_path / "eval", "mrr")
    assert (same.rows, same.diff, same.low, same.high, same.p) == (20, 0.0, 0.0, 0.0, 1.0)
    # the full test split (no sample) is the former cf_candidates run: known answers
    assert recsys.main(["--dataset_dir", str(seq), "--output_dir", str(tmp_path / "all"), *COMMON, *MF_SSM,
                        "--max_epochs", "10"]) == 0
    full = _metrics(tmp_path / "all")
    assert full["hr@1"] == pytest.approx(0.24074074074074073, abs=1e-9)
    assert full["mrr"] == pytest.approx(0.48919753086419754, abs=1e-6)
    assert full["valid/ndcg@10"] == pytest.approx(0.6203967318266563, abs=1e-6)
    assert "test/num_examples" not in full and full["hr@1"] != m["hr@1"]


def test_help_lists_the_cf_settings(capsys):
    assert recsys.main(["--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--hidden", "--max_len", "--test_max_examples", "--test_sample_seed", "--dim", "--tau",
                 "--tau2", "--activation", "--shapley_eta", "--num_layers", "MostPop | MF | LightGCN"):
        assert flag in text, flag


@pytest.mark.parametrize("directory,extra,words", [
    ("cf", ["--model", "SASRec"], "CF-protocol directory"),
    ("cf", ["--model", "MF", "--test_max_examples", "5"], "candidate-list data only"),
    ("seq", ["--model", "MF", "--sampler", "shapley"], "sampler shapley"),
    ("cf", ["--model", "LightGCN", "--save_every", "2"], "sequential models only"),
    ("cf", ["--model", "MF", "--hidden", "8"], "--hidden"),
])
def test_mismatches_are_one_line_errors(cf_dir, tmp_path, capsys, directory, extra, words):
    with pytest.raises(SystemExit) as stop:
        recsys.main(["--dataset_dir", str(cf_dir / directory), "--output_dir", str(tmp_path / "o"), "--quiet", *extra])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and words in err and "\n" not in err
