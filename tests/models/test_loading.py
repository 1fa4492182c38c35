import json

import pytest
import torch
from trl import ModelConfig, SFTConfig

from napo.models.loading import (
    ModelLoadError,
    load_model_and_tokenizer,
    load_tokenizer,
    model_init_kwargs,
)


def test_init_kwargs_from_configs(tmp_path):
    args = ModelConfig(model_name_or_path="x", dtype="bfloat16", attn_implementation="eager")
    training = SFTConfig(output_dir=str(tmp_path), activation_checkpointing=True, use_cpu=True, bf16=False)
    kwargs = model_init_kwargs(args, training)
    assert kwargs["dtype"] is torch.bfloat16 and kwargs["attn_implementation"] == "eager"
    assert kwargs["trust_remote_code"] is False and kwargs["use_cache"] is False
    assert "quantization_config" not in kwargs and "device_map" not in kwargs
    assert model_init_kwargs(ModelConfig(model_name_or_path="x", dtype="auto"))["dtype"] == "auto"


def test_load_tiny_model_and_tokenizer(tiny_token_model):
    model, tok = load_model_and_tokenizer(ModelConfig(model_name_or_path=str(tiny_token_model)),
                                          padding_side="left")
    assert tok.padding_side == "left" and tok.pad_token_id == 0
    assert model.config.pad_token_id == tok.pad_token_id == model.generation_config.pad_token_id
    assert next(model.parameters()).dtype == torch.float32


def test_pad_token_fallback_is_eos_without_unk(tiny_token_model, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_token_model)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert "pad_token" not in cfg or cfg["pad_token"] is None
    reloaded = load_tokenizer(str(tmp_path))
    assert reloaded.pad_token == reloaded.eos_token == "</s>"


def test_adapter_dir_is_merged_or_kept(tiny_token_model, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_token_model)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    torch.manual_seed(0)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # non-zero B so that the adapter changes the outputs
            param.data.normal_(0, 0.5)
    peft_model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_token_model).save_pretrained(tmp_path)
    x = torch.tensor([[1, 5, 9, 13, 21]])
    with torch.no_grad():
        expected = peft_model.eval()(input_ids=x).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_token_model)(input_ids=x).logits
    assert not torch.allclose(expected, plain, atol=1e-4)

    merged, _ = load_model_and_tokenizer(ModelConfig(model_name_or_path=str(tmp_path)))
    assert not isinstance(merged, PeftModel)
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(input_ids=x).logits, expected, atol=1e-5, rtol=1e-4)

    kept, _ = load_model_and_tokenizer(ModelConfig(model_name_or_path=str(tmp_path)), merge_adapter=False)
    assert isinstance(kept, PeftModel)
    assert any(p.requires_grad for n, p in kept.named_parameters() if "lora_" in n)


def test_missing_model_is_one_clear_line(tmp_path):
    with pytest.raises(ModelLoadError) as err:
        load_model_and_tokenizer(ModelConfig(model_name_or_path=str(tmp_path / "nope")))
    assert "\n" not in str(err.value) and "nope" in str(err.value)
    with pytest.raises(ModelLoadError, match="model_name_or_path is not set"):
        load_model_and_tokenizer(ModelConfig())
