"""napo.scripts.parser.ScriptParser: YAML + command line, strict, one-line errors."""

from pathlib import Path

import pytest
from trl import ModelConfig

from napo.config import AdapterArguments, DatasetArguments, NAPOConfig, RecSFTConfig
from napo.scripts.parser import ScriptParser, config_path


def _parser():
    return ScriptParser((DatasetArguments, RecSFTConfig, ModelConfig))  # napo-sft's settings


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text + "bf16: false\nuse_cpu: true\n")
    return str(path)


def _error_lines(capsys):
    return capsys.readouterr().err.strip().splitlines()


def test_valid_config_and_command_line_override(tmp_path):
    cfg = _write(tmp_path, "dataset_dir: D\nlearning_rate: 0.25\nlora_r: 8\noutput_dir: O\n")
    data, training, model = _parser().parse(["--config", cfg, "--lora_r", "4"])
    assert data.dataset_dir == "D" and training.learning_rate == 0.25 and training.output_dir == "O"
    assert model.lora_r == 4


def test_config_with_equals_sign_is_read(tmp_path):
    cfg = _write(tmp_path, "dataset_dir: D\nlearning_rate: 0.25\noutput_dir: O\n")
    data, training, _ = _parser().parse([f"--config={cfg}"])
    assert data.dataset_dir == "D" and training.learning_rate == 0.25
    assert config_path(["--a", "1", f"--config={cfg}"]) == (cfg, ["--a", "1"])
    assert config_path(["--config"]) == ("", [])


def test_unknown_yaml_key_names_file_line_column(tmp_path, capsys):
    cfg = _write(tmp_path, "dataset_dir: D\noutput_dir: O\n  # comment\nlerning_rate: 1.0e-5\n")
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse(["--config", cfg])
    assert exit_info.value.code == 2
    assert _error_lines(capsys) == [f"error: {cfg}:4:1: unknown key 'lerning_rate'; did you mean 'learning_rate'?"]


def test_yaml_syntax_error_and_missing_file(tmp_path, capsys):
    cfg = _write(tmp_path, "dataset_dir: D\nlearning_rate: [1\n")  # unclosed list
    with pytest.raises(SystemExit):
        _parser().parse(["--config", cfg])
    err = _error_lines(capsys)
    assert len(err) == 1 and err[0].startswith(f"error: {cfg}:3:5: invalid YAML (expected ',' or ']'")
    with pytest.raises(SystemExit):
        _parser().parse(["--config", str(tmp_path / "none.yaml")])
    assert "cannot read config file" in capsys.readouterr().err


def test_unknown_flag_bad_value_and_failed_check_are_one_line(tmp_path, capsys):
    cfg = _write(tmp_path, "dataset_dir: D\noutput_dir: O\n")
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse(["--config", cfg, "--lerning_rate", "3"])
    assert exit_info.value.code == 2
    assert _error_lines(capsys) == ["error: unknown command-line option '--lerning_rate'; did you mean '--learning_rate'?"]
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse(["--config", cfg, "--learning_rate", "fast"])
    err = _error_lines(capsys)
    assert exit_info.value.code == 2 and len(err) == 1 and "learning_rate" in err[0]
    with pytest.raises(SystemExit) as exit_info:  # DatasetArguments.__post_init__
        _parser().parse(["--output_dir", "O", "--use_cpu", "true", "--bf16", "false"])
    assert exit_info.value.code == 2
    assert _error_lines(capsys) == [
        "error: invalid settings: give exactly one of dataset_dir (a prepared directory) and dataset_name (a Hub id "
        "or a path for datasets.load_dataset), in the config or as --dataset_dir / --dataset_name"
    ]


def test_env_section_sets_variables(tmp_path, monkeypatch):
    monkeypatch.delenv("NAPO_TEST_ENV", raising=False)
    cfg = _write(tmp_path, "dataset_dir: D\noutput_dir: O\nenv:\n  NAPO_TEST_ENV: 7\n")
    _parser().parse(["--config", cfg])
    import os

    assert os.environ["NAPO_TEST_ENV"] == "7"


CONFIG_DIR = Path(__file__).resolve().parents[2] / "recipes" / "configs"


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*/sft*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_sft_configs_parse(path):
    # bf16 needs a GPU: override it so that the paper configs parse on a CPU-only machine
    data, training, model = _parser().parse(["--config", str(path), "--bf16", "false", "--use_cpu", "true"])
    assert data.dataset_dir and training.output_dir and model.model_name_or_path
    if model.use_peft:
        assert training.ddp_find_unused_parameters is False


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*/*-history.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_history_prompt_configs_parse(path):
    """The full-catalogue pipeline's configs: SFT with item_softmax, NAPO with scoring answer."""
    if path.name.startswith("sft"):
        _, training, _ = _parser().parse(["--config", str(path)])
        assert training.item_softmax is True
    else:
        parser = ScriptParser((DatasetArguments, AdapterArguments, NAPOConfig, ModelConfig))
        _, _, training, _ = parser.parse(["--config", str(path)])
        assert training.scoring == "answer" and training.share_mode == "rescore"
