"""End-to-end: recipes/recsys.py on the tiny cycle dataset; aux rows match a direct forward pass."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep.prepared import load_prepared
from napo.auxiliary import load_aux, load_item_vectors
from napo.eval.report import load_per_row
from napo.eval.stats import row_values
from napo.recsys.train import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def _recipe():
    return importlib.import_module("napo.scripts.recsys")


@pytest.fixture(scope="module")
def run_dir(cycle_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("sasrec-run")
    rc = _recipe().main(["--config", str(ROOT / "recipes/configs/lastfm/sasrec-tiny.yaml"),
                         "--dataset_dir", str(cycle_dataset), "--output_dir", str(out),
                         "--max_epochs", "3", "--quiet"])
    assert rc == 0
    return out


def test_outputs(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10", "mrr", "full/hr@10", "full/ndcg@10",
                "pop/hr@10/head", "pop/balance@10", "full/pop/coverage@10", "valid/hr@1"):
        assert 0.0 <= metrics[key] <= 1.0 or np.isnan(metrics[key]), key
    assert metrics["hr@1"] <= metrics["hr@5"] <= metrics["hr@10"]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["seed"] == 0 and run["config"]["model"] == "SASRec"
    assert (run_dir / "checkpoint" / "model.safetensors").is_file()
    # per-row results (napo.eval.stats pairs runs on them) agree with the averaged metrics
    per_row = load_per_row(run_dir)
    assert per_row["split"] == "test" and per_row["rows"] == list(range(len(per_row["rows"])))
    for key in ("hr@1", "ndcg@10", "mrr", "full/hr@10", "full/ndcg@10"):
        assert row_values(per_row, key).mean() == pytest.approx(metrics[key]), key


def test_aux_rows_match_a_direct_forward_pass(run_dir, cycle_dataset):
    dd, _, meta = load_prepared(cycle_dataset)
    model, _ = load_checkpoint(run_dir / "checkpoint")
    for split in ("train", "valid", "test"):
        vectors, scores = load_aux(run_dir / "aux", split, meta)
        assert vectors.shape == (dd[split].num_rows, model.hidden)
        assert scores.shape == (dd[split].num_rows, 10)
    vectors, scores = load_aux(run_dir / "aux", "test", meta)
    # a row whose history is shorter than the window (so the batch had padding in front)
    lengths = [len(h) for h in dd["test"]["history"]]
    i = int(np.argmin(lengths))
    assert lengths[i] < 10
    row = dd["test"][i]
    with torch.no_grad():
        h = model.encode_all(torch.tensor([row["history"]]) + 1)[0, -1]  # no padding at all
        direct = model.item_vectors()[torch.tensor(row["candidates"])] @ h
    torch.testing.assert_close(vectors[i], h, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scores[i], direct, rtol=1e-5, atol=1e-5)
    # the item vectors score ANY item for a user: the candidates' scores come out again
    items = load_item_vectors(run_dir / "aux", num_items=40)
    all_rows = vectors @ items.T  # [N, num_items]
    candidates = torch.tensor(dd["test"]["candidates"])
    torch.testing.assert_close(all_rows.gather(1, candidates), scores, rtol=1e-4, atol=1e-4)


def test_bad_dataset_dir_is_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        _recipe().main(["--dataset_dir", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_bad_flag_and_bad_value(tmp_path, cycle_dataset, capsys):
    for extra, message in ((["--hiden", "3"], "unknown command-line option '--hiden'; did you mean '--hidden'?"),
                           (["--loss", "bpr"], "invalid choice: 'bpr'")):
        with pytest.raises(SystemExit) as stop:
            _recipe().main(["--dataset_dir", str(cycle_dataset), "--output_dir", str(tmp_path / "o"), *extra])
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2 and message in err and "\n" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # a fresh interpreter: ~5 s
def test_recsys_script_does_not_import_trl(cycle_dataset, tmp_path):
    """The id-recommender script pays for no LLM trainer stack (no TRL, PEFT or bitsandbytes import)."""
    code = (
        "import sys; from napo.scripts.recsys import main; "
        f"rc = main(['--config', {str(ROOT / 'recipes/configs/lastfm/sasrec-tiny.yaml')!r}, "
        f"'--dataset_dir', {str(cycle_dataset)!r}, '--output_dir', {str(tmp_path / 'o')!r}, "
        "'--max_epochs', '1', '--quiet']); "
        "print('trl loaded:', sorted(m for m in sys.modules if m.split('.')[0] in ('trl', 'peft', 'bitsandbytes'))[:3]); "
        "sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "trl loaded: []" in proc.stdout
    assert (tmp_path / "o" / "metrics.json").is_file()


def test_model_card(run_dir, cycle_dataset):
    """README.md: SASRec and its paper, the dataset fingerprint, the test metrics of metrics.json."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    meta = json.loads((Path(cycle_dataset) / "meta.json").read_text())
    lines = (run_dir / "README.md").read_text().splitlines()
    assert lines[:5] == ["---", "tags:", "- recommendation", "- sasrec", "---"]  # no trl / peft: no LLM
    assert "SASRec: Self-Attentive Sequential Recommendation (ICDM 2018, arXiv:1808.09781)." in lines
    assert f"| fingerprint | {meta['fingerprint']} |" in lines
    row = next(line for line in lines if line.startswith("| napo-recsys |"))
    assert f"| {metrics['hr@1']:.4f} |" in row and row.endswith(f"| {metrics['mrr']:.4f} |")
    assert lines[lines.index("## Command") + 3].startswith("napo-recsys --config ")


def test_napo_eval_full_ranking_of_the_aux_equals_the_recsys_run(run_dir, cycle_dataset, tmp_path):
    """napo-eval --scores_from_aux --rank_over both ranks the catalogue by user @ item vectors with
    the evaluator's code path (the one the LLM's full ranking takes): the same per-row full ranks
    and the same full/ metrics as the recommender's own test evaluation."""
    from napo.scripts.evaluate import main as eval_main

    out = tmp_path / "eval"
    assert eval_main(["--scores_from_aux", str(run_dir / "aux"), "--dataset_dir", str(cycle_dataset),
                      "--output_dir", str(out), "--rank_over", "both", "--no_progress"]) == 0
    recsys, evaluated = load_per_row(run_dir), load_per_row(out)
    assert evaluated["rows"] == recsys["rows"]
    np.testing.assert_array_equal(evaluated["ranks"]["full"], recsys["ranks"]["full"])
    np.testing.assert_array_equal(evaluated["ranks"]["rank"], recsys["ranks"]["rank"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    full = json.loads((out / "metrics.json").read_text())["full"]
    for key in ("hr@1", "hr@10", "ndcg@10", "ndcg@50", "mrr", "pop/coverage@10", "pop/hr@10/head"):
        assert full[key] == pytest.approx(metrics[f"full/{key}"], nan_ok=True), key
