"""Hybrid item tokens (napo.hybrid.tokens): rows = projected aux vectors, saved and restored."""

import json
import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _flags(**settings):
    base = {"per_device_train_batch_size": 4, "logging_steps": 1, "report_to": "none", "use_cpu": "true",
            "bf16": "false", "disable_tqdm": "true", "save_strategy": "no", "seed": 0}
    base.update(settings)
    out = []
    for key, value in base.items():
        out += [f"--{key}", *(value if isinstance(value, list) else [str(value)])]
    return out


def _model_and_encoder(inputs, mode="frozen", seed=0):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data_prep.prepared import load_prepared
    from napo.hybrid import build_encoder

    _, items, meta = load_prepared(inputs["data"])
    model = AutoModelForCausalLM.from_pretrained(inputs["model"])
    tokenizer = AutoTokenizer.from_pretrained(inputs["model"])
    encoder = build_encoder(model, tokenizer, meta=meta, items=items, aux_dir=str(inputs["aux"]), mode=mode, seed=seed)
    return model, tokenizer, encoder


def _token_ids(tokenizer, n=40):
    from data_prep.prompts import item_token

    return torch.tensor(tokenizer.convert_tokens_to_ids([item_token(i) for i in range(n)]))


def test_frozen_rows_are_exactly_the_projected_aux_vectors(hybrid_inputs):
    from safetensors.torch import load_file

    from napo.hybrid import tokens

    model, tokenizer, encoder = _model_and_encoder(hybrid_inputs)
    before = model.get_input_embeddings().weight.detach().clone()
    tokens.attach_frozen(model, encoder)
    ids = _token_ids(tokenizer)
    aux = load_file(str(hybrid_inputs["aux"] / "items.safetensors"))["item_vectors"]  # [40, 6]
    proj = encoder.item_projector
    with torch.no_grad():  # the projector written out by hand: Linear, GELU, Linear
        expected = proj[2](torch.nn.functional.gelu(aux @ proj[0].weight.T + proj[0].bias))
    weight = model.get_input_embeddings().weight
    projected = encoder.project()  # [40, 32], the projector over every item's aux vector
    for item in range(40):  # row(item) == projector(aux_vector(item)), bit for bit
        assert torch.equal(weight[ids[item]], projected[item])
        # one item at a time gives the same up to float rounding of a smaller matmul
        torch.testing.assert_close(weight[ids[item]], encoder.project(torch.tensor(item)), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(weight[ids], expected, rtol=1e-5, atol=1e-7)
    # the tied LM head reads the same rows; every other row is the model's own
    assert torch.equal(model.get_output_embeddings().weight, weight)
    others = torch.ones(weight.shape[0], dtype=torch.bool)
    others[ids] = False
    assert torch.equal(weight[others], before[others])
    # the projection starts on the scale of the text rows (match_scale)
    assert weight[ids].norm(dim=-1).mean().item() == pytest.approx(before[others].norm(dim=-1).mean().item(), rel=1e-4)


def test_frozen_gradients_go_to_the_projector_not_to_the_item_rows(hybrid_inputs):
    from napo.hybrid import tokens

    model, tokenizer, encoder = _model_and_encoder(hybrid_inputs)
    tokens.attach_frozen(model, encoder)
    batch = tokenizer(["This user has watched <item_3>, <item_5>. Answer:<item_7>"], return_tensors="pt")
    model(**batch, labels=batch["input_ids"]).loss.backward()
    original = model.get_input_embeddings().parametrizations.weight.original
    ids = _token_ids(tokenizer)
    assert original.grad[ids].abs().sum() == 0  # item rows are replaced, so they learn nothing
    assert original.grad.abs().sum() > 0  # text rows learn as usual
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.item_projector.parameters())


def test_trainable_rows_start_as_the_projection_and_then_are_plain_weights(hybrid_inputs):
    from napo.hybrid import tokens

    model, tokenizer, encoder = _model_and_encoder(hybrid_inputs, mode="trainable")
    tokens.init_trainable(model, encoder)
    ids = _token_ids(tokenizer)
    weight = model.get_input_embeddings().weight
    torch.testing.assert_close(weight[ids], encoder.project().detach(), rtol=0, atol=0)
    assert not tokens.is_parametrized(model) and not hasattr(model, "napo_item_encoder")
    batch = tokenizer(["This user has watched <item_3>. Answer:<item_7>"], return_tensors="pt")
    model(**batch, labels=batch["input_ids"]).loss.backward()
    assert weight.grad[ids[7]].abs().sum() > 0  # an ordinary row now


def test_projector_init_is_seeded(hybrid_inputs):
    _, _, a = _model_and_encoder(hybrid_inputs, seed=3)
    _, _, b = _model_and_encoder(hybrid_inputs, seed=3)
    _, _, c = _model_and_encoder(hybrid_inputs, seed=4)
    assert torch.equal(a.project(), b.project()) and not torch.equal(a.project(), c.project())


# --------------------------------------------------------------------------- SFT -> NAPO -> eval


@pytest.fixture(scope="module")
def sft_run(hybrid_inputs, tmp_path_factory):
    """A few full fine-tuning SFT steps with frozen hybrid item tokens."""
    from napo.scripts import sft

    out = tmp_path_factory.mktemp("hybrid_sft") / "sft"
    trainer = sft.main(["--dataset_dir", str(hybrid_inputs["data"]), "--model_name_or_path",
                        str(hybrid_inputs["model"]), "--output_dir", str(out), "--item_embeddings", "aux",
                        "--item_aux_dir", str(hybrid_inputs["aux"]), "--use_peft", "false",
                        "--activation_checkpointing", "false", *_flags(max_steps=6, learning_rate=3e-3)])
    return trainer, out


def _scores(model, tokenizer, data_dir, split="test"):
    from napo.eval.rank import LikelihoodScorer
    from napo.eval.runner import load_split

    rows, _, _ = load_split(data_dir, split)
    return LikelihoodScorer(model.eval(), tokenizer)(rows[0:len(rows)], list(range(len(rows))))


def test_sft_trains_the_projector_and_saves_rows_equal_to_it(sft_run, hybrid_inputs):
    from transformers import AutoModelForCausalLM

    from napo.hybrid.encoder import load_encoder

    trainer, out = sft_run
    record = json.loads((out / "hybrid_items.json").read_text())
    assert record["form"] == "tokens" and record["mode"] == "frozen" and record["num_items"] == 40
    encoder = load_encoder(out)
    _, tokenizer, initial = _model_and_encoder(hybrid_inputs)
    assert not torch.equal(encoder.project(), initial.project())  # the projector trained
    saved = AutoModelForCausalLM.from_pretrained(out)  # a plain load of the standard layout
    ids = _token_ids(tokenizer)
    with torch.no_grad():
        assert torch.equal(saved.get_input_embeddings().weight[ids], encoder.project())
    assert not any("parametrizations" in k or "napo_item_encoder" in k for k in saved.state_dict())


def test_sft_save_load_round_trip_gives_identical_scores(sft_run, hybrid_inputs):
    from trl import ModelConfig

    from napo.eval.config import EvalArguments
    from napo.hybrid import encoder_of
    from napo.hybrid import tokens as hybrid_tokens
    from napo.models.loading import load_for_evaluation, load_model_and_tokenizer

    trainer, out = sft_run
    in_memory = _scores(trainer.model, trainer.processing_class, hybrid_inputs["data"])
    restored, tok = load_model_and_tokenizer(ModelConfig(model_name_or_path=str(out)))
    assert hybrid_tokens.is_parametrized(restored) and encoder_of(restored).mode == "frozen"
    evaluated, _ = load_for_evaluation(EvalArguments(model_name_or_path=str(out), dataset_dir=str(hybrid_inputs["data"]), output_dir="unused"))
    assert not hybrid_tokens.is_parametrized(evaluated)  # baked in for evaluation
    assert torch.equal(_scores(restored, tok, hybrid_inputs["data"]), in_memory)
    assert torch.equal(_scores(evaluated, tok, hybrid_inputs["data"]), in_memory)


@pytest.fixture(scope="module")
def napo_run(sft_run, hybrid_inputs, tmp_path_factory):
    from napo.scripts import preference

    _, sft_out = sft_run
    out = tmp_path_factory.mktemp("hybrid_napo") / "napo"
    trainer = preference.main([
        "--dataset_dir", str(hybrid_inputs["data"]), "--sft_adapter", str(sft_out), "--output_dir", str(out),
        "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "q_proj", "v_proj",
        "--aux_dir", str(hybrid_inputs["aux"]), "--loss_type", "napo", "--gradient_checkpointing", "false",
        "--eval_strategy", "no", *_flags(max_steps=4, learning_rate=1e-2)])
    return trainer, out


def test_preference_stage_trains_the_projector_as_a_saved_module(napo_run, sft_run, hybrid_inputs):
    from napo.hybrid import encoder_of
    from napo.hybrid.encoder import load_encoder, projector_state

    trainer, out = napo_run
    assert json.loads((out / "adapter_config.json").read_text())["modules_to_save"] == ["item_projector"]
    trained = projector_state(encoder_of(trainer.model))
    sft_projector = load_encoder(sft_run[1]).projector.state_dict()
    assert any(not torch.equal(trained[k], sft_projector[k]) for k in trained)  # it moved in the policy
    # the adapter-disabled reference still has the SFT projector
    with trainer.model.disable_adapter():
        reference = projector_state(encoder_of(trainer.model))
    assert all(torch.equal(reference[k], sft_projector[k]) for k in reference)
    saved = load_encoder(out).projector.state_dict()
    assert all(torch.equal(saved[k], trained[k]) for k in saved)


def test_preference_adapter_round_trip_gives_identical_scores(napo_run, sft_run, hybrid_inputs):
    from napo.eval.config import EvalArguments
    from napo.models.loading import load_for_evaluation

    trainer, out = napo_run
    in_memory = _scores(trainer.model, trainer.processing_class, hybrid_inputs["data"])
    model, tok = load_for_evaluation(EvalArguments(model_name_or_path=str(sft_run[1]), adapter=str(out),
                                                   dataset_dir=str(hybrid_inputs["data"]), output_dir="unused"))
    torch.testing.assert_close(_scores(model, tok, hybrid_inputs["data"]), in_memory, rtol=1e-5, atol=1e-4)


def test_item_embeddings_none_bakes_in_the_rows_and_trains_plain(sft_run, hybrid_inputs):
    from trl import ModelConfig

    from data_prep.prepared import load_prepared
    from napo.hybrid import HybridArguments, encoder_of, prepare
    from napo.models.loading import load_model_and_tokenizer

    _, out = sft_run
    model, tok = load_model_and_tokenizer(ModelConfig(model_name_or_path=str(out)))
    before = _scores(model, tok, hybrid_inputs["data"])
    _, items, meta = load_prepared(hybrid_inputs["data"])
    assert prepare(model, tok, HybridArguments(item_embeddings="none"), meta=meta, items=items, aux_dir=None, seed=0) is None
    assert encoder_of(model) is None
    assert torch.equal(_scores(model, tok, hybrid_inputs["data"]), before)


def test_resume_restores_rows_and_projector(sft_run, hybrid_inputs, tmp_path):
    from napo.hybrid.tokens import plain_state_dict

    trainer, _ = sft_run
    trainer._save(str(tmp_path))
    encoder = trainer.model.napo_item_encoder
    before = _scores(trainer.model, trainer.processing_class, hybrid_inputs["data"])
    # what the model computes with: every weight as used (item rows = projection) and the projector
    state = {**plain_state_dict(trainer.model), **trainer.model.napo_item_encoder.state_dict()}
    state = {k: v.detach().clone() for k, v in state.items()}
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.5)
    assert not torch.equal(_scores(trainer.model, trainer.processing_class, hybrid_inputs["data"]), before)
    trainer._load_from_checkpoint(str(tmp_path))
    assert torch.equal(_scores(trainer.model, trainer.processing_class, hybrid_inputs["data"]), before)
    after = {**plain_state_dict(trainer.model), **trainer.model.napo_item_encoder.state_dict()}
    assert set(after) == set(state) and all(torch.equal(after[k], v) for k, v in state.items())
    assert encoder is trainer.model.napo_item_encoder


def test_lora_sft_keeps_the_projector_in_the_adapter(hybrid_inputs, tmp_path):
    """A LoRA SFT (a Hub model's case): the projector is a modules_to_save module of the adapter, the
    encoder's files sit beside it, and evaluation on the plain base restores both."""
    from napo.eval.config import EvalArguments
    from napo.models.loading import load_for_evaluation
    from napo.scripts import sft

    trainer = sft.main(["--dataset_dir", str(hybrid_inputs["data"]), "--model_name_or_path", str(hybrid_inputs["model"]),
                        "--output_dir", str(tmp_path / "lora"), "--item_embeddings", "aux", "--item_aux_dir",
                        str(hybrid_inputs["aux"]), "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8",
                        "--lora_target_modules", "q_proj", "v_proj", "--activation_checkpointing", "false",
                        *_flags(max_steps=3, learning_rate=1e-2)])
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["item_projector"]
    in_memory = _scores(trainer.model, trainer.processing_class, hybrid_inputs["data"])
    model, tok = load_for_evaluation(EvalArguments(model_name_or_path=str(hybrid_inputs["model"]),
                                                   adapter=str(tmp_path / "lora"), dataset_dir=str(hybrid_inputs["data"]), output_dir="unused"))
    torch.testing.assert_close(_scores(model, tok, hybrid_inputs["data"]), in_memory, rtol=1e-5, atol=1e-4)


def test_bad_settings_fail_with_one_line(hybrid_inputs, tmp_path, capsys):
    from data_prep.synthetic import synthetic_prepared
    from napo.scripts import sft

    common = ["--model_name_or_path", str(hybrid_inputs["model"]), "--output_dir", str(tmp_path / "o"),
              "--use_peft", "false", *_flags(max_steps=1)]
    with pytest.raises(SystemExit) as stop:
        sft.main(["--dataset_dir", str(hybrid_inputs["data"]), "--item_embeddings", "aux", *common])
    assert stop.value.code == 2
    assert "set item_aux_dir" in capsys.readouterr().err.strip().splitlines()[-1]
    titles = synthetic_prepared(tmp_path / "titles", num_items=40, rows=(4, 2, 2), num_candidates=8)
    with pytest.raises(SystemExit):
        sft.main(["--dataset_dir", str(titles), "--item_embeddings", "aux", "--item_aux_dir",
                  str(hybrid_inputs["aux"]), *common])
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: item_embeddings aux needs item tokens")



def test_trainable_rows_with_lora_are_refused_with_one_line(hybrid_inputs, tmp_path, capsys):
    from napo.scripts import sft

    with pytest.raises(SystemExit) as stop:
        sft.main(["--dataset_dir", str(hybrid_inputs["data"]), "--model_name_or_path", str(hybrid_inputs["model"]),
                  "--output_dir", str(tmp_path / "o"), "--item_embeddings", "aux", "--item_embeddings_mode",
                  "trainable", "--item_aux_dir", str(hybrid_inputs["aux"]), "--use_peft", "true",
                  *_flags(max_steps=1)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: item_embeddings_mode trainable with LoRA (use_peft) is not supported")
    assert not (tmp_path / "o" / "adapter_config.json").exists()


def test_item_softmax_sft_trains_the_projector(hybrid_inputs, tmp_path):
    """SFT's item_softmax (cross-entropy over the item rows at the answer position) reads the LM
    head's item rows: with frozen hybrid rows they are the projection, so the projector learns."""
    from napo.hybrid.encoder import load_encoder
    from napo.scripts import sft

    out = tmp_path / "softmax"
    trainer = sft.main(["--dataset_dir", str(hybrid_inputs["data"]), "--model_name_or_path", str(hybrid_inputs["model"]),
                        "--output_dir", str(out), "--item_embeddings", "aux", "--item_aux_dir", str(hybrid_inputs["aux"]),
                        "--item_softmax", "true", "--use_peft", "false", "--activation_checkpointing", "false",
                        *_flags(max_steps=4, learning_rate=1e-2, lr_scheduler_type="constant", max_train_samples=4)])
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses[-1] < losses[0]  # one repeated batch: the item softmax goes down
    _, _, initial = _model_and_encoder(hybrid_inputs)
    trained = load_encoder(out)
    assert not torch.equal(trained.project(), initial.project())


def test_export_bakes_the_trained_projection_into_a_plain_model(napo_run, sft_run, hybrid_inputs, tmp_path):
    from transformers import AutoModelForCausalLM

    from napo.scripts.export import main as export

    trainer, adapter = napo_run
    in_memory = _scores(trainer.model, trainer.processing_class, hybrid_inputs["data"])
    assert export(["--adapter", str(adapter), "--output_dir", str(tmp_path / "merged")]) == 0
    assert not (tmp_path / "merged" / "hybrid_items.json").exists()  # nothing left to restore
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(_scores(merged, trainer.processing_class, hybrid_inputs["data"]), in_memory,
                               rtol=1e-5, atol=1e-4)
