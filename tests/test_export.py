"""napo-export: the merged model computes the adapter model's candidate log-probs (fp32, 1e-5)."""

import json

import pytest
import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from data_prep.prepared import load_prepared
from napo.eval.rank import LikelihoodScorer
from napo.scripts.export import main as export


def candidate_logps(model, tokenizer, data_dir) -> torch.Tensor:
    """[8, C] summed log-probs of every candidate of 8 test rows (napo.eval.rank's scorer)."""
    dataset, _, _ = load_prepared(data_dir)
    return LikelihoodScorer(model, tokenizer)(dataset["test"][:8], range(8))


def adapter_logps(adapter_dir, data_dir) -> torch.Tensor:
    """The adapter applied (not merged) on its full-precision base."""
    base = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter_dir)
    return candidate_logps(model, AutoTokenizer.from_pretrained(adapter_dir), data_dir)


def check_round_trip(adapter_dir, out_dir, data_dir) -> torch.Tensor:
    assert export(["--adapter", str(adapter_dir), "--output_dir", str(out_dir)]) == 0
    assert not (out_dir / "adapter_config.json").exists()  # a full model, no PEFT needed
    merged = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    merged_logps = candidate_logps(merged, AutoTokenizer.from_pretrained(out_dir), data_dir)
    expected = adapter_logps(adapter_dir, data_dir)
    torch.testing.assert_close(merged_logps, expected, atol=1e-5, rtol=0)
    return expected


def test_merged_model_scores_like_the_adapter(tmp_path, tiny_item_tokens):
    data_dir, model_dir = tiny_item_tokens
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = PeftModel(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                                      init_lora_weights=False))  # random B: the merge changes the weights
    lora.save_pretrained(tmp_path / "adapter")
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(tmp_path / "adapter")
    expected = check_round_trip(tmp_path / "adapter", tmp_path / "merged", data_dir)
    plain = candidate_logps(AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir),
                            data_dir)
    assert (expected - plain).abs().max() > 1e-2  # the adapter matters: the equality above is not vacuous


def test_unreachable_base_is_one_line(tmp_path, capsys):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "nobody/absent-base"}))
    with pytest.raises(SystemExit) as stop:
        export(["--adapter", str(tmp_path / "adapter"), "--output_dir", str(tmp_path / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"error: cannot reach the base model 'nobody/absent-base' of adapter '{tmp_path / 'adapter'}': ")
    assert err[0].endswith("(check network access, or pass --base_model with a local copy)")
