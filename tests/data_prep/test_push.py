"""data_prep.push: a prepared directory as a Hub dataset repo (recording stand-in, no network)."""

import json
from types import SimpleNamespace

from datasets import load_dataset
from huggingface_hub import HfApi

from data_prep.prepared import load_prepared
from data_prep.push import main, stage
from data_prep.synthetic import synthetic_prepared


def test_push_is_one_repo_one_upload_and_reads_back(tmp_path, monkeypatch):
    data = synthetic_prepared(tmp_path / "data", num_items=30, rows=(6, 3, 3), num_candidates=5, seed=1)
    calls = []

    def create_repo(api, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs.get("repo_type")))
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(api, *, repo_id, folder_path, **kwargs):
        staged = tmp_path / "uploaded"
        import shutil

        shutil.copytree(folder_path, staged)  # the folder is temporary: keep what was uploaded
        calls.append(("upload_folder", repo_id, kwargs.get("repo_type")))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    assert main([str(data), "--repo-id", "me/synthetic-recs"]) == 0
    assert calls == [("create_repo", "me/synthetic-recs", "dataset"), ("upload_folder", "me/synthetic-recs", "dataset")]

    dataset, items, meta = load_prepared(data)
    up = tmp_path / "uploaded"
    lines = (up / "README.md").read_text().splitlines()
    assert f"| fingerprint (sha256 of meta.json) | {meta['fingerprint']} |" in lines
    assert "| train examples | 6 |" in lines and "| test examples | 3 |" in lines and "| items | 30 |" in lines
    assert "| candidates per example | 5 |" in lines
    assert 'dataset = load_dataset("me/synthetic-recs")  # or dataset_name: me/synthetic-recs in a napo config' in lines
    assert json.loads((up / "meta.json").read_text()) == meta
    back = load_dataset(str(up))  # the README's configs map the splits to their parquet files
    assert sorted(back) == sorted(dataset)
    for split in dataset:
        assert back[split]["rejected"] == dataset[split]["rejected"]
        assert back[split]["candidates"] == dataset[split]["candidates"]
        assert back[split]["prompt"] == dataset[split]["prompt"]


def test_stage_only_writes_the_folder(tmp_path):
    data = synthetic_prepared(tmp_path / "data", num_items=30, rows=(4, 2, 2), num_candidates=5, seed=2)
    out = stage(data, tmp_path / "stage")
    assert sorted(p.name for p in (out / "data").iterdir()) == ["test.parquet", "train.parquet", "valid.parquet"]
    assert main([str(data)]) == 2  # neither --repo-id nor --stage-dir


def test_pushed_folder_trains_through_dataset_name_with_its_meta(tmp_path):
    """The published folder, read back as `dataset_name`, keeps meta.json (fingerprint) and items."""
    from napo.config import DatasetArguments
    from napo.data import has_item_ids, load_training_data

    data = synthetic_prepared(tmp_path / "data", num_items=30, rows=(4, 2, 2), num_candidates=5, seed=3)
    out = stage(data, tmp_path / "stage")
    dataset, items, meta = load_training_data(DatasetArguments(dataset_name=str(out)))
    _, items0, meta0 = load_prepared(data)
    assert meta["fingerprint"] == meta0["fingerprint"] and meta["source"] == "dataset_name"
    assert items["item_id"].tolist() == items0["item_id"].tolist()
    assert has_item_ids(dataset["train"])  # sharing and the margin may use it
