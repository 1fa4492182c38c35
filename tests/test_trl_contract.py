"""What NAPOTrainer relies on in TRL's DPOTrainer. If one of these fails after a TRL upgrade,
napo/trainer.py must be revisited before the version range in pyproject.toml is widened.

NAPOTrainer overrides: _prepare_dataset, _set_signature_columns_if_needed, _precompute_ref_logps,
compute_loss, prediction_step, train (margin state on resume); it passes its own data_collator and
relies on DPOTrainer.__init__ for the PEFT wrapping, the frozen "ref" copy of a pretrained adapter,
no second reference model with PEFT or precomputed log-probs, metric averaging in `log`, and the
model-card tags.
"""

import inspect

import pytest
import torch
import trl
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import DPOTrainer
from trl.trainer import utils as trl_utils

from napo.collator import ListwiseCollator
from napo.config import NAPOConfig
from napo.trainer import NAPOTrainer


def params(fn):
    return list(inspect.signature(fn).parameters)


def test_trl_version_is_the_supported_one():
    major, minor = (int(x) for x in trl.__version__.split(".")[:2])
    assert (major, minor) == (1, 16), f"NAPOTrainer is pinned against trl 1.16, found {trl.__version__}"


@pytest.mark.parametrize("name, expected", [
    ("__init__", ["self", "model", "ref_model", "args", "data_collator", "train_dataset", "eval_dataset",
                  "processing_class", "compute_metrics", "callbacks", "optimizers", "quantization_config",
                  "peft_config"]),
    ("_prepare_dataset", ["self", "dataset", "processing_class", "args", "dataset_name"]),
    ("_set_signature_columns_if_needed", ["self"]),
    ("_precompute_ref_logps", ["self", "dataset", "name", "batch_size"]),
    ("compute_loss", ["self", "model", "inputs", "return_outputs", "num_items_in_batch"]),
    ("prediction_step", ["self", "model", "inputs", "prediction_loss_only", "ignore_keys"]),
    ("log", ["self", "logs", "start_time"]),
])
def test_overridden_hooks_keep_their_signatures(name, expected):
    assert params(getattr(DPOTrainer, name)) == expected
    if name != "log":  # ours mirror theirs
        assert params(getattr(NAPOTrainer, name)) == expected


def test_init_still_uses_the_hooks_we_rely_on():
    source = inspect.getsource(DPOTrainer.__init__)
    # our dataset preparation and reference precompute are called from __init__
    assert "self._prepare_dataset(train_dataset, processing_class, args, \"train\")" in source
    assert "self._precompute_ref_logps(" in source
    # no reference model is loaded for a PEFT policy or with precomputed log-probs
    assert "is_peft_model(self.model) or (args.precompute_ref_log_probs" in source
    # a pretrained adapter gets a frozen copy named "ref"
    assert 'model.add_adapter("ref", default_config)' in source
    assert "self._metrics = {\"train\": defaultdict(list), \"eval\": defaultdict(list)}" in source
    assert "self.model.add_model_tags(self._tag_names)" in source
    # use_adapter(model, None) disables adapters, use_adapter(model, "ref") switches to the copy
    assert params(trl_utils.use_adapter) == ["model", "adapter_name"]


@pytest.fixture(scope="module")
def tiny_parts():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{c: 3 + i for i, c in enumerate("abcdefghij:")}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>")
    rows = [{"prompt": "ab:", "chosen": "c", "rejected": ["d", "e"], "target": 1, "candidates": [1, 2, 3]},
            {"prompt": "ba:", "chosen": "f", "rejected": ["g", "h"], "target": 4, "candidates": [5, 4, 6]}]
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2)
    return tokenizer, Dataset.from_list(rows), config


def _trainer(tmp_path, tiny_parts, model, peft_config, **kwargs):
    tokenizer, dataset, _ = tiny_parts
    args = NAPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, gradient_checkpointing=False,
                      per_device_train_batch_size=2, max_steps=1, **kwargs)
    return NAPOTrainer(model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)


def test_init_wires_our_collator_dataset_and_no_reference_copy(tmp_path, tiny_parts):
    torch.manual_seed(0)
    trainer = _trainer(tmp_path, tiny_parts, LlamaForCausalLM(tiny_parts[2]),
                       LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"), loss_type="sdpo",
                       num_negatives=1)
    assert isinstance(trainer.data_collator, ListwiseCollator)
    assert trainer.train_dataset[1]["item_ids"] == [4, 5, 6]  # _prepare_dataset ran
    assert trainer.ref_model is None  # PEFT: the reference is the adapter-disabled policy
    assert set(trainer.model.peft_config) == {"default"}


def test_pretrained_adapter_gets_a_frozen_ref_copy(tmp_path, tiny_parts):
    torch.manual_seed(0)
    model = PeftModel(LlamaForCausalLM(tiny_parts[2]),
                      LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM", init_lora_weights=False))
    trainer = _trainer(tmp_path, tiny_parts, model, None, loss_type="sdpo", num_negatives=1)
    named = dict(trainer.model.named_parameters())
    ref = {n: p for n, p in named.items() if ".ref." in n}
    assert ref and all(not p.requires_grad for p in ref.values())
    for name, param in ref.items():
        assert torch.equal(param, named[name.replace(".ref.", ".default.")])


def test_reference_free_full_finetune_loads_no_second_model(tmp_path, tiny_parts):
    torch.manual_seed(0)
    trainer = _trainer(tmp_path, tiny_parts, LlamaForCausalLM(tiny_parts[2]), None, loss_type="napo",
                       share_negatives=False, margin_alpha=0.0, num_negatives=1)
    assert trainer.ref_model is None
    assert trainer.args.precompute_ref_log_probs is False and "ref_logps" not in trainer.train_dataset.column_names


def test_logged_metrics_are_averaged_by_dpo_log(tmp_path, tiny_parts):
    torch.manual_seed(0)
    trainer = _trainer(tmp_path, tiny_parts, LlamaForCausalLM(tiny_parts[2]),
                       LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"), loss_type="dpo")
    trainer.model.train()
    trainer._metrics["train"]["napo/gamma"].extend([1.0, 3.0])
    trainer.log({"loss": 0.5})
    assert trainer.state.log_history[-1]["napo/gamma"] == 2.0
    assert trainer._metrics["train"] == {}


def test_sft_fused_head_still_decides_compaction_by_use_triton():
    """napo.hub.compact_fused_head swaps ``trl.trainer.utils._use_triton`` to make SFTTrainer's fused
    LM head score only the labelled positions on a CPU; that name must still be what decides it."""
    from trl import SFTTrainer

    assert callable(trl_utils._use_triton)
    fused = inspect.getsource(trl_utils.add_fused_lm_head)
    assert "compact = _use_triton(hidden_states.device)" in fused
    assert "hidden_states[mask] if compact else" in fused
    assert "outputs = model(**inputs, fused_lm_head=True)" in inspect.getsource(SFTTrainer.compute_loss)
    assert params(SFTTrainer.compute_loss) == ["self", "model", "inputs", "return_outputs", "num_items_in_batch"]


def test_compact_fused_head_scores_only_labelled_positions(monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    from napo.hub import compact_fused_head

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    ids = torch.randint(0, 50, (2, 7))
    labels = ids.clone()
    labels[:, :5] = -100  # a 5-token prompt, 2 completion tokens: 2 x 2 scored positions after the shift
    rows = []
    real = trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply",
                        lambda hidden, *rest: rows.append(hidden.shape[0]) or real(hidden, *rest))
    stock = model(input_ids=ids, labels=labels, fused_lm_head=True)
    with compact_fused_head():
        fast = model(input_ids=ids, labels=labels, fused_lm_head=True)
    assert rows == [2 * 6, 4]  # all shifted positions, then the labelled ones only
    assert trl_utils._use_triton(torch.device("cpu")) is False  # restored after the block
    for field in ("loss", "log_probs", "entropy", "is_top1", "label_mask"):
        torch.testing.assert_close(getattr(fast, field), getattr(stock, field), rtol=0, atol=1e-6)
