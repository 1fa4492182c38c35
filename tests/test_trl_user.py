"""A TRL user's second day (issue 21): TRL's data taken as TRL takes it by the trainer itself, bad
values stopped at parse time, honest records of what ran, one-line errors for what is missing.
One test (or more) per item of the issue; the distributed ones that launch processes are slow."""

import json
import math
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from data_prep.prepared import load_prepared
from napo.cards import read_card
from napo.config import NAPOConfig
from napo.trainer import NAPOTrainer

REPO = Path(__file__).resolve().parents[1]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def preference_main(argv):
    from napo.scripts.preference import main

    return main(argv)


def sft_main(argv):
    from napo.scripts.sft import main

    return main(argv)


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, tiny_item_tokens):
    """TRL's standard preference rows (rejected = ONE string) from the tiny prepared data, as a
    local dataset for dataset_name; plus the prepared dir and the tiny model."""
    data_dir, model_dir = tiny_item_tokens
    root = tmp_path_factory.mktemp("trl_user")
    rows = load_prepared(data_dir)[0]["train"]
    (root / "pairs").mkdir()
    (root / "pairs" / "train.jsonl").write_text("".join(
        json.dumps({"prompt": p, "chosen": c, "rejected": r[0]}) + "\n"
        for p, c, r in zip(rows["prompt"], rows["chosen"], rows["rejected"], strict=True)))
    return SimpleNamespace(root=root, data=root / "pairs", prepared=data_dir, model=model_dir)


def write_config(env, name, **settings) -> str:
    config = dict(
        dataset_name=str(env.data), model_name_or_path=str(env.model), output_dir=str(env.root / name),
        use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"],
        per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2, logging_steps=1, report_to="none",
        use_cpu=True, gradient_checkpointing=False, save_strategy="no", dataloader_pin_memory=False,
        eval_strategy="no", disable_tqdm=True,
    )
    config.update(settings)
    config = {k: v for k, v in config.items() if v is not None}
    path = env.root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def lora():
    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


# ---------------------------------------------------------------- 1. string `rejected` at the trainer level


def test_trainer_takes_a_string_rejected_as_one_negative_and_a_list_as_a_list(tiny_item_tokens, tmp_path):
    _, model_dir = tiny_item_tokens
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompt = "User history: <item_1> <item_2>. Next:"
    args = NAPOConfig(output_dir=str(tmp_path / "a"), loss_type="dpo", use_cpu=True, report_to="none")
    pairs = Dataset.from_dict({"prompt": [prompt] * 2, "chosen": ["<item_3>"] * 2, "rejected": [" Heat", "<item_5>"]})
    trainer = NAPOTrainer(AutoModelForCausalLM.from_pretrained(model_dir), args, train_dataset=pairs,
                          processing_class=tok, peft_config=lora())  # NAPOTrainer(model, args, ...) as TRL users write it
    assert [len(c) for c in trainer.train_dataset["completion_ids"]] == [2, 2]  # chosen + ONE negative
    assert trainer.train_dataset["rejected"] == [[" Heat"], ["<item_5>"]]
    joint = tok(prompt + " Heat")["input_ids"]
    assert trainer.train_dataset[0]["prompt_ids"] + trainer.train_dataset[0]["completion_ids"][1] == \
        joint + [tok.eos_token_id]  # the whole string, not " ", "H", "e", ...

    listwise = Dataset.from_dict({"prompt": [prompt], "chosen": ["<item_3>"], "rejected": [["<item_4>", "<item_5>"]]})
    args = NAPOConfig(output_dir=str(tmp_path / "b"), loss_type="sdpo", num_negatives=2, use_cpu=True, report_to="none")
    trainer = NAPOTrainer(AutoModelForCausalLM.from_pretrained(model_dir), args, train_dataset=listwise,
                          processing_class=tok, peft_config=lora())
    assert [len(c) for c in trainer.train_dataset["completion_ids"]] == [3]
    assert trainer.train_dataset["rejected"] == [["<item_4>", "<item_5>"]]


# ---------------------------------------------------------------- 2. the distributed strategy that ran


def fake_accelerator(kind, processes, device="cpu", backend="gloo", fsdp=None, deepspeed=None):
    return SimpleNamespace(distributed_type=kind, num_processes=processes, device=torch.device(device),
                           mixed_precision="no", state=SimpleNamespace(backend=backend, fsdp_plugin=fsdp,
                                                                       deepspeed_plugin=deepspeed))


LAUNCH_ENV = ("ACCELERATE_USE_FSDP", "FSDP_VERSION", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE",
              "WORLD_SIZE")


def test_a_launch_that_asked_for_fsdp_or_deepspeed_and_got_ddp_stops_with_one_line(monkeypatch):
    from accelerate.utils import DistributedType

    from napo.distributed import StrategyError, check_strategy, describe

    for name in LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)
    ddp = fake_accelerator(DistributedType.MULTI_CPU, 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert describe(check_strategy(ddp)) == "DDP on 2 processes (cpu, gloo)"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    with pytest.raises(StrategyError, match=r"^the launch asked for FSDP but the processes run DDP on 2 processes "
                                            r"\(cpu, gloo\) \(accelerate runs FSDP and DeepSpeed on accelerator"):
        check_strategy(ddp)
    fsdp2 = fake_accelerator(DistributedType.FSDP, 2, "cuda", "nccl",
                             fsdp=SimpleNamespace(fsdp_version=2, reshard_after_forward=True, cpu_offload=None))
    assert describe(check_strategy(fsdp2)) == "FSDP2 (FULL_SHARD) on 2 processes (cuda, nccl)"
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(StrategyError, match="asked for FSDP1 but the processes run FSDP2"):
        check_strategy(fsdp2)
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(StrategyError, match="asked for DeepSpeed but the processes run DDP"):
        check_strategy(ddp)
    zero3 = fake_accelerator(DistributedType.DEEPSPEED, 2, "cuda", "nccl", deepspeed=SimpleNamespace(zero_stage=3))
    assert describe(check_strategy(zero3)) == "DeepSpeed ZeRO-3 on 2 processes (cuda, nccl)"
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    alone = fake_accelerator(DistributedType.NO, 1, backend=None)
    with pytest.raises(StrategyError, match="the launch started 2 processes but each runs alone"):
        check_strategy(alone)
    monkeypatch.delenv("WORLD_SIZE")
    assert check_strategy(alone)["strategy"] == "single process"


def test_the_strategy_is_in_run_json_the_log_and_the_card(pairs, capsys):
    trainer = preference_main(["--config", write_config(pairs, "strategy", loss_type="dpo")])
    out = pairs.root / "strategy"
    assert json.loads((out / "run.json").read_text())["config"]["distributed"] == {
        **trainer.strategy, "strategy": "single process", "world_size": 1, "device": "cpu"}
    assert "Distributed strategy: single process (cpu)" in capsys.readouterr().out
    assert "| strategy | single process (cpu) |" in (out / "README.md").read_text().splitlines()


def launch(config_file, script_args, env_extra=None, timeout=400):
    from helpers import run_launch

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
           "ACCELERATE_USE_CPU": "true", **(env_extra or {})}
    launcher = Path(sys.executable).with_name("accelerate")
    return run_launch([str(launcher), "launch", "--config_file", str(config_file), "recipes/napo.py", *script_args],
                      env=env, timeout=timeout, cwd=REPO)


@pytest.mark.slow
def test_two_cpu_processes_record_ddp_and_an_fsdp_launch_on_cpu_stops(pairs):
    config = write_config(pairs, "ddp", dataset_name=None, dataset_dir=str(pairs.prepared), loss_type="sdpo",
                          num_negatives=2, per_device_train_batch_size=2)
    cpu_2proc = REPO / "accelerate_configs" / "cpu_2proc.yaml"
    proc = launch(cpu_2proc, ["--config", config])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = pairs.root / "ddp"
    strategy = json.loads((out / "run.json").read_text())["config"]["distributed"]
    assert (strategy["strategy"], strategy["world_size"], strategy["backend"]) == ("DDP", 2, "gloo")
    assert "Distributed strategy: DDP on 2 processes (cpu, gloo)" in proc.stdout
    card = read_card(out)
    assert card["training"]["strategy"] == "DDP on 2 processes (cpu, gloo)"
    assert card["command"] == f"accelerate launch --config_file {cpu_2proc} recipes/napo.py --config {config}"

    # the copy of fsdp.yaml with 2 CPU processes: it used to train as DDP without a word
    fsdp = yaml.safe_load((REPO / "accelerate_configs" / "fsdp.yaml").read_text())
    fsdp.update(num_processes=2, use_cpu=True, mixed_precision="no")
    fsdp["fsdp_config"]["fsdp_cpu_ram_efficient_loading"] = False
    (pairs.root / "fsdp_cpu.yaml").write_text(yaml.safe_dump(fsdp))
    config = write_config(pairs, "fsdp", dataset_name=None, dataset_dir=str(pairs.prepared), loss_type="sdpo",
                          num_negatives=2, per_device_train_batch_size=2)
    proc = launch(pairs.root / "fsdp_cpu.yaml", ["--config", config])
    assert proc.returncode != 0
    errors = sorted({line for line in proc.stderr.splitlines() if line.startswith("error:")})
    assert errors == ["error: the launch asked for FSDP but the processes run DDP on 2 processes (cpu, gloo) "
                      "(accelerate runs FSDP and DeepSpeed on accelerator devices only; on CPU they fall back to DDP): "
                      "launch on GPUs, or use accelerate_configs/cpu_2proc.yaml (DDP) on CPU"]
    assert not (pairs.root / "fsdp" / "run.json").exists()  # stopped before writing anything


# ---------------------------------------------------------------- 3. a used output_dir


def test_a_new_run_in_a_used_output_dir_is_refused_unless_overwritten(pairs, capsys):
    out = pairs.root / "used"
    (out / "checkpoint-9").mkdir(parents=True)
    (out / "run.json").write_text('{"old": true}')
    (out / "napo_card.json").write_text("{}")
    (out / "notes.txt").write_text("mine")  # not a run file: left alone
    config = write_config(pairs, "used", loss_type="dpo")
    with pytest.raises(SystemExit) as exit_info:
        preference_main(["--config", config])
    assert exit_info.value.code == 2
    assert error_lines(capsys) == [
        f"error: output_dir {out} holds another run (checkpoint-9, napo_card.json, run.json): choose a new "
        "output_dir, resume it with --resume_from_checkpoint true, or pass --overwrite_output_dir true to replace it"]
    assert json.loads((out / "run.json").read_text()) == {"old": True}  # untouched
    preference_main(["--config", config, "--overwrite_output_dir", "true"])
    assert not (out / "checkpoint-9").exists() and (out / "notes.txt").read_text() == "mine"
    assert "config" in json.loads((out / "run.json").read_text()) and (out / "adapter_model.safetensors").is_file()


def test_claim_output_dir_lets_a_resume_and_a_fresh_directory_through(tmp_path):
    from napo.checkpoints import claim_output_dir

    assert claim_output_dir(tmp_path / "new", overwrite=False, resuming=False) == []
    (tmp_path / "old" / "checkpoint-2").mkdir(parents=True)
    assert claim_output_dir(tmp_path / "old", overwrite=False, resuming=True) == []
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "README.md").write_text("a user's folder")
    assert claim_output_dir(tmp_path / "plain", overwrite=False, resuming=False) == []


# ---------------------------------------------------------------- 4. the model card of a TRL-pairs run


@pytest.fixture(scope="module")
def pairs_run(pairs):
    return preference_main(["--config", write_config(pairs, "sdpo-pairs", loss_type="sdpo", num_negatives=1)])


def test_the_card_of_a_pairs_run_says_what_trained(pairs, pairs_run):
    lines = (pairs.root / "sdpo-pairs" / "README.md").read_text().splitlines()
    assert ("Negatives per example: K = 1, drawn from the 1 rejected completion(s) of each row (with one negative, "
            "the S-DPO loss is the DPO loss).") in lines
    assert "| num_negatives | 1 |" in lines and "| rejected_per_row | 1 |" in lines
    assert not any(line.startswith("| num_train_epochs") for line in lines)  # max_steps sets the length
    assert "| max_steps | 2 |" in lines and "| length | max_steps (num_train_epochs is not used) |" in lines
    history = pairs_run.state.log_history
    train_loss = next(h["train_loss"] for h in history if "train_loss" in h)
    last = [h for h in history if "loss" in h][-1]
    results = lines[lines.index("## Training results"):]
    assert f"| train_loss (mean over the run) | {train_loss:g} |" in results
    assert f"| rewards/accuracies (last log, step 2) | {last['rewards/accuracies']:g} |" in results
    # the trainer's own save_metrics / save_state wrote the results and the state
    out = pairs.root / "sdpo-pairs"
    assert json.loads((out / "train_results.json").read_text())["train_loss"] == train_loss
    assert json.loads((out / "all_results.json").read_text())["global_step"] == 2
    assert json.loads((out / "trainer_state.json").read_text())["log_history"] == history


def test_more_negatives_than_the_rows_have_is_refused_at_load_time(pairs, capsys):
    with pytest.raises(SystemExit) as exit_info:
        preference_main(["--config", write_config(pairs, "sdpo3", loss_type="sdpo", num_negatives=3)])
    assert exit_info.value.code == 2
    assert error_lines(capsys) == [
        "error: num_negatives 3 > 1: the rows of the train dataset have at most 1 rejected completion(s) to draw "
        "from; set num_negatives to at most 1 (TRL's pairs have one: set num_negatives 1, e.g. loss_type dpo)"]


# ---------------------------------------------------------------- 5. bad values stop at parse time


@pytest.mark.parametrize("line, message", [
    ("share_mode: rescor", "share_mode: 'rescor' is not one of: reuse, rescore; did you mean 'rescore'?"),
    ("margin_mode: usr", "margin_mode: 'usr' is not one of: batch, user; did you mean 'user'?"),
    ("napo_mode: faithfull", "napo_mode: 'faithfull' is not one of: corrected, faithful; did you mean 'faithful'?"),
    ("nonfinite: ignore", "nonfinite: 'ignore' is not one of: stop, skip"),
    ("beta:   abc", "beta: 'abc' is not a valid float"),
    ("num_negatives: [1, 2]", "num_negatives: expects one value, got a list [1, 2]"),
    ("use_peft: maybe", "use_peft: 'maybe' is not a valid boolean (true/false)"),
])
def test_yaml_values_are_checked_at_parse_time_with_file_line_column(pairs, capsys, line, message):
    path = pairs.root / "bad.yaml"
    path.write_text(f"dataset_name: {pairs.data}\noutput_dir: {pairs.root / 'never'}\n{line}\n")
    column = len(line.split(":")[0]) + 1 + len(line.split(":", 1)[1]) - len(line.split(":", 1)[1].lstrip()) + 1
    with pytest.raises(SystemExit) as exit_info:
        preference_main(["--config", str(path)])
    assert exit_info.value.code == 2
    assert error_lines(capsys) == [f"error: {path}:3:{column}: {message}"]
    assert not (pairs.root / "never").exists()


def test_command_line_values_are_checked_by_argparse(pairs, capsys):
    with pytest.raises(SystemExit) as exit_info:
        preference_main(["--dataset_name", str(pairs.data), "--margin_mode", "usr"])
    assert exit_info.value.code == 2
    assert error_lines(capsys) == ["error: argument --margin_mode/--margin-mode: invalid choice: 'usr' (choose from "
                                   "'batch', 'user'); see --help"]


def test_every_enum_like_option_is_a_choices_field():
    from dataclasses import fields

    from napo.eval.config import EvalArguments
    from napo.guards import GuardArguments
    from napo.recsys.cf_train import CFConfig
    from napo.recsys.train import RecConfig, RecRunArguments

    expected = {
        NAPOConfig: ("loss_type", "negative_sampling", "reference", "scoring", "similarity", "share_mode", "napo_mode",
                     "margin_mode"),
        GuardArguments: ("nonfinite",),
        EvalArguments: ("mode", "scoring", "containment", "dtype"),
        RecConfig: ("model", "loss", "sampler", "select_protocol", "beta_schedule", "diffusion_sampler",
                    "preferdiff_form", "denoiser", "score_items"),
        RecRunArguments: ("nonfinite",),
        CFConfig: ("model", "loss", "activation", "sampler"),
    }
    for cls, names in expected.items():
        by_name = {f.name: f for f in fields(cls)}
        for name in names:
            choices = by_name[name].metadata.get("choices")
            assert choices and by_name[name].default in [*choices, None], (cls.__name__, name)


def test_num_negatives_above_the_candidates_is_refused_at_load_time(pairs, capsys):
    config = write_config(pairs, "k40", dataset_name=None, dataset_dir=str(pairs.prepared), loss_type="sdpo",
                          num_negatives=40)
    with pytest.raises(SystemExit) as exit_info:
        preference_main(["--config", config])
    assert exit_info.value.code == 2
    assert error_lines(capsys) == [
        "error: num_negatives 40 > 7: the rows of the train dataset have at most 7 rejected completion(s) to draw "
        "from; set num_negatives to at most 7"]


# ---------------------------------------------------------------- 6. missing extras, an offline push


def test_missing_extras_and_an_offline_push_are_one_line(pairs, capsys, monkeypatch):
    from transformers.integrations import integration_utils
    from transformers.quantizers import quantizer_bnb_4bit
    from transformers.utils import import_utils

    monkeypatch.setattr(integration_utils, "is_tensorboard_available", lambda: False)  # as if not installed
    with pytest.raises(SystemExit) as exit_info:
        preference_main(["--config", write_config(pairs, "tb", loss_type="dpo", report_to="tensorboard")])
    assert exit_info.value.code == 2
    assert error_lines(capsys) == ["error: report_to tensorboard: the tensorboard package is not installed; install "
                                   "tensorboard (the tracking extra: pip install -e '.[tracking]'), or set report_to none"]

    for module in (import_utils, quantizer_bnb_4bit):
        monkeypatch.setattr(module, "is_bitsandbytes_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        sft_main(["--config", write_config(pairs, "q4", load_in_4bit=True, bf16=False)])
    assert exit_info.value.code == 2
    assert error_lines(capsys) == ["error: load_in_4bit quantizes the base with bitsandbytes, which is not installed: "
                                   "pip install -e '.[qlora]' (bitsandbytes >= 0.45), or set load_in_4bit false"]

    assert os.environ["HF_HUB_OFFLINE"] == "1"  # tests/conftest.py
    with pytest.raises(SystemExit) as exit_info:
        preference_main(["--config", write_config(pairs, "push", loss_type="dpo", push_to_hub=True, hub_model_id="me/x")])
    assert exit_info.value.code == 2
    err = error_lines(capsys)
    assert len(err) == 1 and err[0].startswith("error: push_to_hub needs the Hugging Face Hub: HF_HUB_OFFLINE is set")
    for name in ("tb", "q4", "push"):
        assert not (pairs.root / name).exists()


# ---------------------------------------------------------------- 7. loss_type napo on data without item ids


def test_napo_on_trl_pairs_says_what_works_instead_of_set_aux_dir(pairs, capsys):
    with pytest.raises(SystemExit) as exit_info:
        preference_main(["--config", write_config(pairs, "napo", loss_type="napo")])
    assert exit_info.value.code == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "set aux_dir" not in err[0]
    assert f"{pairs.data} has no item ids (columns target, candidates), so loss_type napo's negative sharing and " \
           "dynamic margin cannot work on it" in err[0]
    assert "What works on this data: loss_type dpo or sdpo (against a reference, num_negatives 1 (one rejected per " \
           "row)), or loss_type napo with share_negatives false and margin_alpha 0 (reference-free, fixed margin " \
           "gamma0, num_negatives 1 (one rejected per row))" in err[0]
    # what it suggests does work: reference-free NAPO without sharing and margin
    trainer = preference_main(["--config", write_config(pairs, "napo-plain", loss_type="napo", share_negatives=False,
                                                        margin_alpha=0.0, num_negatives=1)])
    assert trainer.state.global_step == 2


# ---------------------------------------------------------------- 8. --help


def test_help_lists_the_toolkit_options_first(capsys):
    with pytest.raises(SystemExit) as exit_info:
        preference_main(["--help"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "usage: napo.py [--config FILE] [--OPTION VALUE ...]" or lines[0].endswith(
        "[--config FILE] [--OPTION VALUE ...]")
    first = next(i for i, line in enumerate(lines) if line.strip().startswith("--"))
    assert lines.index("NAPOConfig options (napo.config):") < 10
    position = {name: next(i for i, line in enumerate(lines) if line.strip().startswith(f"--{name} "))
                for name in ("loss_type", "share_mode", "margin_mode", "dataset_name", "sft_adapter", "nonfinite",
                             "output_dir", "per_device_train_batch_size", "model_name_or_path")}
    heading = next(i for i, line in enumerate(lines) if line.startswith("TRL and transformers options"))
    assert first < position["loss_type"] < position["share_mode"] < position["margin_mode"] < heading
    assert max(position[n] for n in ("dataset_name", "sft_adapter", "nonfinite")) < heading
    assert heading < min(position[n] for n in ("output_dir", "per_device_train_batch_size", "model_name_or_path"))
    assert "Everything below is TRL's and transformers' own" in " ".join(lines[heading:heading + 4])


def test_the_parser_is_trl_parser_made_strict():
    from trl import TrlParser

    from napo.scripts.parser import ScriptParser

    assert issubclass(ScriptParser, TrlParser)


# ---------------------------------------------------------------- 9. adapters name their base absolutely


def test_adapter_names_its_base_by_absolute_path_and_loads_from_another_directory(pairs, tmp_path, monkeypatch):
    from peft import AutoPeftModelForCausalLM

    (tmp_path / "work").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    relative = os.path.relpath(pairs.model, tmp_path / "work")
    config = write_config(pairs, "sft-rel", model_name_or_path=relative, output_dir="sft-rel", bf16=False)
    sft_main(["--config", config])
    adapter = tmp_path / "work" / "sft-rel"
    stored = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert stored == str(Path(pairs.model).resolve())
    assert read_card(adapter)["base_model_path"] == str(Path(pairs.model).resolve())
    monkeypatch.chdir(tmp_path / "elsewhere")
    model = AutoPeftModelForCausalLM.from_pretrained(adapter)
    assert model.peft_config["default"].base_model_name_or_path == stored


# ---------------------------------------------------------------- 10. conversational rows


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_item_tokens):
    tok = AutoTokenizer.from_pretrained(tiny_item_tokens[1])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def test_conversational_preference_rows_get_the_chat_template_as_trl_renders_them(tiny_item_tokens, chat_tokenizer,
                                                                                  tmp_path):
    from trl.data_utils import apply_chat_template

    user = [{"role": "user", "content": "I liked <item_1> and <item_2>. Next?"}]
    answer = [{"role": "assistant", "content": "<item_3>"}]
    pair = {"prompt": user, "chosen": answer, "rejected": [{"role": "assistant", "content": "<item_4>"}]}
    listwise = {"prompt": user, "chosen": answer, "rejected": [[{"role": "assistant", "content": "<item_4>"}],
                                                               [{"role": "assistant", "content": "<item_5>"}]]}
    trl = apply_chat_template(pair, chat_tokenizer)
    other = apply_chat_template({**pair, "rejected": listwise["rejected"][1]}, chat_tokenizer)
    assert trl["prompt"] == "<|user|>I liked <item_1> and <item_2>. Next?\n<|assistant|>" and trl["chosen"] == "<item_3>\n"
    for rows, rejected, k in ((pair, [trl["rejected"]], 1), (listwise, [trl["rejected"], other["rejected"]], 2)):
        args = NAPOConfig(output_dir=str(tmp_path / f"k{k}"), loss_type="sdpo", num_negatives=k, use_cpu=True,
                          report_to="none")
        trainer = NAPOTrainer(AutoModelForCausalLM.from_pretrained(tiny_item_tokens[1]), args,
                              train_dataset=Dataset.from_list([rows]), processing_class=chat_tokenizer, peft_config=lora())
        row = trainer.train_dataset[0]
        assert (row["prompt"], row["chosen"], row["rejected"]) == (trl["prompt"], trl["chosen"], rejected)
        joint = chat_tokenizer(trl["prompt"] + trl["chosen"])["input_ids"]
        assert row["prompt_ids"] + row["completion_ids"][0] == joint + [chat_tokenizer.eos_token_id]


def test_sft_trains_on_conversational_rows(pairs, chat_tokenizer, tmp_path):
    model = tmp_path / "chat-model"
    shutil.copytree(pairs.model, model)
    chat_tokenizer.save_pretrained(model)
    rows = [{"prompt": [{"role": "user", "content": f"History {i}: <item_{i}>. Next?"}],
             "completion": [{"role": "assistant", "content": f"<item_{i + 1}>"}]} for i in range(8)]
    (tmp_path / "chat").mkdir()
    (tmp_path / "chat" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    trainer = sft_main(["--config", write_config(pairs, "sft-chat", dataset_name=str(tmp_path / "chat"),
                                                 model_name_or_path=str(model), bf16=False)])
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert trainer.state.global_step == 2 and all(math.isfinite(x) for x in losses)
    first = trainer.train_dataset[0]
    supervised = chat_tokenizer.decode([t for t in first["labels"] if t != -100]).replace(" ", "")
    assert supervised.startswith("<item_1>") and "History" not in supervised  # the templated answer, not the prompt
