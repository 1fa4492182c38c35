"""Hub integration through a recording stand-in of the Hub API (no network): our model card for
every method, one create_repo and one upload per push, evaluation rows on the card, adapters and
bases given as Hub ids (resolved from a local Hub cache, offline), and the merged export."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub import HfApi

from data_prep.prepared import load_prepared
from napo.auxiliary import write_aux
from napo.cards import read_card
from napo.hub import hub_id_of, record_base_in_adapter_config

BASE_ID = "napo-test/tiny-llama"
REVISION = "0" * 40


def cache_repo(cache: Path, repo_id: str, files_from: Path) -> Path:
    """Put ``files_from`` into a Hub cache as ``repo_id`` at main (what a download leaves behind)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    shutil.copytree(files_from, snapshot, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


class RecordingHub:
    """Stand-in for huggingface_hub.HfApi's write methods: records calls and the card uploaded."""

    def __init__(self):
        self.calls = []

    def install(self, monkeypatch):
        hub = self

        def create_repo(api, repo_id, **kwargs):
            hub.calls.append(("create_repo", repo_id))
            return SimpleNamespace(repo_id=repo_id)

        def upload_folder(api, *, repo_id, folder_path, **kwargs):
            folder = Path(folder_path)
            readme = (folder / "README.md").read_text() if (folder / "README.md").is_file() else None
            files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
            hub.calls.append(("upload_folder", repo_id, readme, files))
            return f"https://huggingface.co/{repo_id}/commit/{REVISION}"

        def forbidden(api, *args, **kwargs):
            raise AssertionError("only create_repo and upload_folder are expected")

        monkeypatch.setattr("napo.preflight.hub_problem", lambda: None)  # the stand-in is reachable and logged in
        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
        for name in ("upload_file", "create_commit", "delete_file"):
            monkeypatch.setattr(HfApi, name, forbidden)

    def take(self):
        calls, self.calls = self.calls, []
        return calls


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_item_tokens):
    """Tiny data + aux outputs, and the tiny model reachable as the Hub id BASE_ID (offline cache)."""
    data_dir, model_dir = tiny_item_tokens
    root = tmp_path_factory.mktemp("hub")
    cache_repo(root / "cache", BASE_ID, model_dir)
    dataset, _, meta = load_prepared(data_dir)
    gen = torch.Generator().manual_seed(0)
    for split in dataset:
        n = len(dataset[split])
        write_aux(root / "aux", split, torch.randn(n, 6, generator=gen), torch.randn(n, 8, generator=gen),
                  dataset_fingerprint=meta["fingerprint"], model="SASRec")
    mp = pytest.MonkeyPatch()
    mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root / "cache"))
    hub = RecordingHub()
    hub.install(mp)
    yield SimpleNamespace(root=root, data=data_dir, meta=meta, hub=hub)
    mp.undo()


COMMON = dict(per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2, logging_steps=1, report_to="none",
              use_cpu=True, gradient_checkpointing=False, save_strategy="no", dataloader_pin_memory=False,
              eval_strategy="no", push_to_hub=True)


def run(env, module, name, **settings):
    config = {"dataset_dir": str(env.data), "output_dir": str(env.root / name), **COMMON, **settings}
    path = env.root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    import importlib

    return importlib.import_module(module).main(["--config", str(path)]), path


def card_lines(readme: str) -> list[str]:
    return readme.splitlines()


@pytest.fixture(scope="module")
def sft(env):
    trainer, path = run(env, "napo.scripts.sft", "sft", model_name_or_path=BASE_ID, use_peft=True, lora_r=4,
                        lora_alpha=8, lora_target_modules=["q_proj", "v_proj"], hub_model_id="me/sft-tiny")
    return trainer, path, env.hub.take()


def test_sft_push_is_one_repo_one_upload_with_our_card(env, sft):
    trainer, config, calls = sft
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    assert calls[0][1] == "me/sft-tiny" and calls[1][1] == "me/sft-tiny"
    readme, files = calls[1][2], calls[1][3]
    assert "adapter_model.safetensors" in files and "README.md" in files and "napo_card.json" in files
    lines = card_lines(readme)
    assert lines[:10] == ["---", f"base_model: {BASE_ID}", "library_name: peft", "pipeline_tag: text-generation",
                          "tags:", "- recommendation", "- sft", "- trl", "- peft", "---"]
    assert "A recommender trained with **SFT**: supervised fine-tuning: the model learns to answer each " \
           "candidate-list prompt with the next item (the LLaRA / S-DPO first stage)." in lines
    assert f"Base model: [{BASE_ID}](https://huggingface.co/{BASE_ID})." in lines
    assert "| lora_r | 4 |" in lines and "| lora_alpha | 8 |" in lines and "| lora_target_modules | q_proj, v_proj |" in lines
    assert "Quantization: none (full-precision base)." in lines
    assert f"| fingerprint | {env.meta['fingerprint']} |" in lines and "| item_format | token |" in lines
    assert "No evaluation has been run on this output yet (`napo-eval` adds it here)." in lines
    i = lines.index("## Command")
    assert lines[i + 2 : i + 5] == ["```bash", f"napo-sft --config {config}", "```"]
    assert "@inproceedings{liao2024llara," in lines and "@software{vonwerra2020trl," in lines
    adapter_config = json.loads((env.root / "sft" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == BASE_ID


@pytest.mark.parametrize("loss_type,display,bib", [
    ("dpo", "DPO", "@inproceedings{rafailov2023direct,"),
    ("sdpo", "S-DPO", "@inproceedings{chen2024softmax,"),
    ("napo", "NAPO", "@article{napo2025,"),
])
def test_preference_push_names_its_method(env, sft, loss_type, display, bib):
    extra = {"aux_dir": str(env.root / "aux")} if loss_type == "napo" else {}
    trainer, config = run(env, "napo.scripts.preference", loss_type, sft_adapter=str(env.root / "sft"),
                          loss_type=loss_type, hub_model_id=f"me/{loss_type}-tiny", **extra)
    calls = env.hub.take()
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    lines = card_lines(calls[1][2])
    assert f"- {display.lower()}" in lines and f"base_model: {BASE_ID}" in lines
    assert f"# {loss_type}-tiny" in lines
    assert any(line.startswith(f"A recommender trained with **{display}**: ") for line in lines)
    others = {"DPO", "S-DPO", "NAPO"} - {display}
    assert not any(line.startswith(f"A recommender trained with **{o}**") for o in others for line in lines)
    assert f"| loss_type | {loss_type} |" in lines and bib in lines
    assert f"Training continued the adapter `{env.root / 'sft'}` (its frozen copy is the reference)." in lines
    if loss_type == "napo":
        assert "| share_negatives | True |" in lines and "| margin_alpha | 0.3 |" in lines
    else:
        assert not any(line.startswith("| share_negatives") for line in lines)
    assert lines[lines.index("## Command") + 3] == f"napo-train --config {config}"


def evaluate(env, out, adapter, **extra):
    from napo.scripts.evaluate import main

    argv = ["--model_name_or_path", BASE_ID, "--adapter", adapter, "--dataset_dir", str(env.data),
            "--split", "test", "--output_dir", str(out), "--max_examples", "4", "--no_progress", "true",
            "--dtype", "float32"]
    assert main(argv) == 0
    return json.loads((out / "metrics.json").read_text())


def test_evaluation_updates_the_card_and_export_pushes_it_once(env, sft):
    if not (env.root / "napo" / "napo_card.json").is_file():
        pytest.skip("needs test_preference_push_names_its_method[napo]")
    metrics = evaluate(env, env.root / "eval-napo", str(env.root / "napo"))
    rank = metrics["rank"]
    record = read_card(env.root / "napo")
    assert record["evaluations"][-1]["metrics"]["hr@1"] == rank["hr@1"]
    from napo.scripts.export import main as export

    assert export(["--adapter", str(env.root / "napo"), "--output_dir", str(env.root / "napo-merged"),
                   "--push_to_hub", "true", "--hub_model_id", "me/napo-merged"]) == 0
    calls = env.hub.take()
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"] and calls[0][1] == "me/napo-merged"
    lines = card_lines(calls[1][2])
    assert "library_name: transformers" in lines and "model.safetensors" in calls[1][3]
    header = lines.index("| evaluation | dataset | split | examples | hr@1 | hr@5 | hr@10 | ndcg@5 | ndcg@10 | mrr |")
    row = lines[header + 2]
    assert row.startswith(f"| eval-napo | {metrics['dataset']} | test | 4 | {rank['hr@1']:.4f} | ")
    assert row.endswith(f" | {rank['mrr']:.4f} |")
    assert f"The LoRA adapter `{env.root / 'napo'}` was merged into the full-precision base: this is a full " \
           "model (loads without PEFT)." in lines


def test_adapter_given_as_a_hub_id_evaluates_like_the_local_dir(env, sft):
    cache_repo(Path(huggingface_hub.constants.HF_HUB_CACHE), "me/sft-tiny", env.root / "sft")
    local = evaluate(env, env.root / "eval-local", str(env.root / "sft"))
    remote = evaluate(env, env.root / "eval-hub", "me/sft-tiny")
    assert remote["rank"] == local["rank"] and remote["num_examples"] == 4
    from napo.models.loading import ModelLoadError, resolve_adapter

    with pytest.raises(ModelLoadError, match=r"cannot reach adapter 'me/absent'"):
        resolve_adapter("me/absent")


def test_hub_ids_behind_local_paths(tmp_path):
    (tmp_path / "empty").mkdir()
    snapshot = cache_repo(tmp_path / "cache", "org/model", tmp_path / "empty")
    assert hub_id_of(str(snapshot)) == "org/model"
    assert hub_id_of("org/model") == "org/model" and hub_id_of(str(tmp_path)) is None
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(snapshot)}))
    assert hub_id_of(str(tmp_path / "adapter")) == "org/model"
    record_base_in_adapter_config(tmp_path / "adapter", "org/model")  # the snapshot path -> the Hub id
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text()) == {"base_model_name_or_path": "org/model"}
