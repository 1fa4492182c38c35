import pytest
from trl import ModelConfig, SFTConfig, TrlParser

from napo.models.recipe_args import DatasetArguments, parse_recipe_args


def _parser():
    return TrlParser((DatasetArguments, SFTConfig, ModelConfig))


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text + "bf16: false\nuse_cpu: true\n")
    return str(path)


def test_valid_config_and_command_line_override(tmp_path):
    cfg = _write(tmp_path, "dataset_dir: D\nlearning_rate: 0.25\nlora_r: 8\noutput_dir: O\n")
    data, training, model = parse_recipe_args(_parser(), ["--config", cfg, "--lora_r", "4"])
    assert data.dataset_dir == "D" and training.learning_rate == 0.25 and training.output_dir == "O"
    assert model.lora_r == 4


def test_unknown_yaml_key_names_file_line_column(tmp_path, capsys):
    cfg = _write(tmp_path, "dataset_dir: D\noutput_dir: O\n  # comment\nlerning_rate: 1.0e-5\n")
    with pytest.raises(SystemExit) as exit_info:
        parse_recipe_args(_parser(), ["--config", cfg])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {cfg}:4:1: unknown key 'lerning_rate'; did you mean 'learning_rate'?"]


def test_yaml_syntax_error_and_missing_file(tmp_path, capsys):
    cfg = _write(tmp_path, "dataset_dir: D\nlearning_rate: [1\n")  # unclosed list
    with pytest.raises(SystemExit):
        parse_recipe_args(_parser(), ["--config", cfg])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {cfg}:3:5: invalid YAML (expected ',' or ']'")
    with pytest.raises(SystemExit):
        parse_recipe_args(_parser(), ["--config", str(tmp_path / "none.yaml")])
    assert "cannot read config file" in capsys.readouterr().err


def test_unknown_command_line_flag(tmp_path, capsys):
    cfg = _write(tmp_path, "dataset_dir: D\noutput_dir: O\n")
    with pytest.raises(SystemExit) as exit_info:
        parse_recipe_args(_parser(), ["--config", cfg, "--lerning_rate", "3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: unknown command-line option '--lerning_rate'; did you mean '--learning_rate'?"]


CONFIG_DIR = __import__("pathlib").Path(__file__).resolve().parents[2] / "recipes" / "configs"


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*/sft*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_sft_configs_parse(path):
    # bf16 needs a GPU: override it so that the paper configs parse on a CPU-only machine
    data, training, model = parse_recipe_args(_parser(), ["--config", str(path), "--bf16", "false", "--use_cpu", "true"])
    assert data.dataset_dir and training.output_dir and model.model_name_or_path
    if model.use_peft:
        assert training.ddp_find_unused_parameters is False
