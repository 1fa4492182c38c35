"""CF training entry points on a tiny clustered log (cf_dir, conftest.py): metrics, checkpoint
round trip, CLI errors, the 20-candidate fold-in."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from napo.eval.metrics import set_ranking_metrics
from napo.recsys import cf_candidates, cf_train
from napo.scripts import recsys


def _run(cf_dir, out, *extra):
    """The recsys recipe with a CF model (MF unless `--model` says otherwise)."""
    model = [] if "--model" in extra else ["--model", "MF"]
    return recsys.main(["--dataset_dir", str(cf_dir), "--output_dir", str(out), "--quiet", "--threads", "1",
                        *model, *map(str, extra)])


def test_mostpop_equals_independent_computation(cf_dir, tmp_path):
    assert _run(cf_dir / "cf", tmp_path, "--model", "MostPop") == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    data, _ = cf_train.load_data(cf_dir / "cf")
    test, train, valid = data.by_user("test"), data.by_user("train"), data.by_user("valid")
    users = sorted(test)
    scores = np.tile(data.train_counts.astype(float), (len(users), 1))
    ex = [np.concatenate([train[u], valid.get(u, [])]).astype(int) for u in users]
    want = set_ranking_metrics(scores, [test[u] for u in users], ex, (20,))
    assert m["recall@20"] == pytest.approx(want["recall@20"]) and m["ndcg@20"] == pytest.approx(want["ndcg@20"])
    assert "pop/hr@20/head" in m and "valid/ndcg@20" in m


@pytest.mark.parametrize("model,loss", [("MF", "ssm"), ("LightGCN", "bpr")])
def test_training_learns_the_groups_and_checkpoint_round_trips(cf_dir, tmp_path, model, loss):
    extra = ["--lr", "0.05" if loss == "ssm" else "0.02", "--num_negatives", "16" if loss == "ssm" else "1"]
    assert _run(cf_dir / "cf", tmp_path, "--model", model, "--loss", loss, "--max_epochs", "30",
                "--eval_every", "5", "--batch_size", "64", "--dim", "8", *extra) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    pop = cf_train.evaluate(cf_train.popularity_scorer(cf_train.load_data(cf_dir / "cf")[0]),
                            cf_train.load_data(cf_dir / "cf")[0], "test")
    assert m["recall@10"] > pop["recall@10"] + 0.1  # the taste groups are learned
    cfg = cf_train.CFConfig(**{k: v for k, v in json.loads((tmp_path / "checkpoint/config.json").read_text()).items()
                               if k not in ("num_users", "num_items")})
    data, _ = cf_train.load_data(cf_dir / "cf")
    net = cf_train.build_model(cfg, data)
    net.load_state_dict(load_file(str(tmp_path / "checkpoint/model.safetensors")))
    again = cf_train.evaluate(cf_train.model_scorer(net, cfg), data, "test")
    assert again["ndcg@20"] == pytest.approx(m["ndcg@20"], abs=1e-9)


def test_shapley_sampler_runs_rounds_and_logs_values(cf_dir, tmp_path):
    assert _run(cf_dir / "cf", tmp_path, "--sampler", "shapley", "--lr", "0.02", "--max_epochs", "6",
                "--eval_every", "3", "--batch_size", "64", "--dim", "8", "--shapley_warmup_epochs", "2",
                "--shapley_refresh_epochs", "2", "--shapley_players", "40", "--shapley_permutations", "8",
                "--shapley_val_users", "30", "--shapley_eta", "5") == 0
    run = json.loads((tmp_path / "run.json").read_text())
    rounds = [r["shapley"] for r in run["config"]["history"] if "shapley" in r]
    assert [r["epoch"] for r in rounds] == [3, 5]
    assert all(r["players"] > 30 and 0 <= r["phi_positive"] <= 1 for r in rounds)
    assert all(r["var_cv"] <= r["var_plain"] for r in rounds)  # the fitted covariate never adds variance
    assert all(-1 <= r["v_gain"] <= 1 and "tip_r2_heldout" in r for r in rounds)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["shapley/rounds"] == 2
    assert m["shapley/tip_r2_heldout"] == pytest.approx(np.mean([r["tip_r2_heldout"] for r in rounds]))


@pytest.mark.parametrize("mode", ["weight", "resample_weight", "direct"])
def test_every_shapley_mode_trains_through_the_recipe(cf_dir, tmp_path, mode, capsys):
    assert _run(cf_dir / "cf", tmp_path, "--sampler", "shapley", "--shapley_mode", mode, "--lr", "0.02",
                "--max_epochs", "4", "--eval_every", "2", "--batch_size", "64", "--dim", "8",
                "--shapley_warmup_epochs", "1", "--shapley_refresh_epochs", "2", "--shapley_players", "40",
                "--shapley_permutations", "4", "--shapley_val_users", "30") == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["shapley/rounds"] == 2 and m["train/epochs"] == 4
    assert ("shapley/tip_r2_heldout" in m) == (mode != "direct")
    if "shapley/tip_r2_heldout" in m and m["shapley/tip_r2_heldout"] <= 0:
        assert "TIP's held-out R^2" in capsys.readouterr().err


def test_unknown_config_key_is_one_line_error(cf_dir, tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: MF\ntemprature: 0.1\n")
    with pytest.raises(SystemExit) as stop:
        recsys.main(["--config", str(cfg), "--dataset_dir", str(cf_dir / "cf"), "--output_dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and str(cfg) in err and "temprature" in err and "\n" not in err
    with pytest.raises(SystemExit) as stop:
        _run(cf_dir / "cf", tmp_path / "o", "--loss", "softmax")
    assert stop.value.code == 2 and "loss" in capsys.readouterr().err


def test_candidate_protocol_fold_in(cf_dir, tmp_path):
    data, rows, _ = cf_candidates.load_candidate_splits(cf_dir / "seq")
    # the graph holds exactly the train rows' users and items
    tr = rows["train"]
    assert data.train[0].max() + 1 == data.num_users
    assert set(data.train[1].tolist()) == set(np.concatenate([*tr.history, tr.target]).tolist())
    cfg = cf_train.CFConfig(model="MF", loss="ssm", dim=4)
    net = cf_train.build_model(cfg, data)
    scores = cf_candidates.candidate_scores(net, cfg, rows["test"])
    _, items = cf_train.vectors(net, cfg)
    h = torch.nn.functional.normalize(items[torch.from_numpy(rows["test"].history[0])].mean(0), dim=0)
    want = (items[torch.from_numpy(rows["test"].candidates[0])] @ h).detach().numpy()
    np.testing.assert_allclose(scores[0], want, rtol=1e-5, atol=1e-6)
    assert _run(cf_dir / "seq", tmp_path, "--model", "MF", "--loss", "ssm", "--lr", "0.05",
                "--num_negatives", "16", "--max_epochs", "10", "--dim", "8", "--batch_size", "64") == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 <= m["hr@1"] <= m["hr@5"] <= m["hr@10"] == pytest.approx(1.0)  # 10 candidates
    assert "valid/ndcg@10" in m and "pop/hr@10/head" in m


def test_bpr_draws_one_negative_per_positive(cf_dir, monkeypatch):
    from napo.recsys.cf import UniformNegatives

    calls = []
    real = UniformNegatives.sample

    def spy(self, users, k):
        calls.append((len(users), k))
        return real(self, users, k)

    def no_shared(*_):
        raise AssertionError("BPR must not share one negative across the batch")

    monkeypatch.setattr(UniformNegatives, "sample", spy)
    monkeypatch.setattr(UniformNegatives, "sample_shared", no_shared)
    data, _ = cf_train.load_data(cf_dir / "cf")
    cfg = cf_train.CFConfig(model="MF", loss="bpr", max_epochs=1, batch_size=64, dim=4)
    cf_train.fit(cf_train.build_model(cfg, data), cfg, data, progress=False)
    assert calls and all(k == 1 for _, k in calls) and sum(b for b, _ in calls) == len(data.train[0])


def test_psl_benchmark_masking_keeps_valid_items_rankable(cf_dir, tmp_path):
    assert _run(cf_dir / "cf", tmp_path, "--model", "MostPop", "--mask_valid_at_test", "false") == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    data, _ = cf_train.load_data(cf_dir / "cf")
    test, train = data.by_user("test"), data.by_user("train")
    users = sorted(test)
    scores = np.tile(data.train_counts.astype(float), (len(users), 1))
    want = set_ranking_metrics(scores, [test[u] for u in users], [train[u] for u in users], (20,))
    masked = set_ranking_metrics(scores, [test[u] for u in users],
                                 [np.concatenate([train[u], data.by_user("valid").get(u, [])]).astype(int)
                                  for u in users], (20,))
    assert m["ndcg@20"] == pytest.approx(want["ndcg@20"]) and want["ndcg@20"] != pytest.approx(masked["ndcg@20"])


def test_ids_missing_from_the_items_table_are_never_ranked():
    # 3 users, items 1..5 in the table; id 0 (like Beauty's unused id 0) scores highest for everyone
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    data = cf_train.CFData(3, 6, (np.array([0, 1, 2]), np.array([1, 2, 3])), empty,
                           (np.array([0, 1, 2]), np.array([4, 5, 4])), np.ones(6, np.int64), np.array([0]))
    scores = torch.tensor([10.0, 0.0, 0.0, 0.0, 1.0, 0.5])
    got = cf_train.evaluate(lambda ub: scores.expand(len(ub), -1), data, "test", ks=(1,))
    assert got["recall@1"] == pytest.approx(2 / 3)  # users 0 and 2 hit item 4 at rank 1; user 1's 5 is 2nd
    data.absent = np.zeros(0, np.int64)
    assert cf_train.evaluate(lambda ub: scores.expand(len(ub), -1), data, "test", ks=(1,))["recall@1"] == 0.0
