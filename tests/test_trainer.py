"""NAPOTrainer: the loss equals a hand-assembled one, the reference is right, training works.

Everything runs on a random-init tiny Llama (hidden 32, 2 layers) over a synthetic item-token
dataset (napo.models.synthetic), with LoRA.
"""

import contextlib
import json
import math
import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import run_launch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from data_prep.prepared import load_prepared
from napo.collator import add_aux_columns
from napo.config import NAPOConfig, NAPOConfigError
from napo.trainer import NAPOTrainer

REPO = Path(__file__).resolve().parents[1]
LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


@pytest.fixture(scope="module")
def tiny(tiny_item_tokens):
    """(model dir, DatasetDict with aux columns) built once for the module."""
    data_dir, model_dir = tiny_item_tokens
    dataset, _, _ = load_prepared(data_dir)
    gen = torch.Generator().manual_seed(0)
    for split in list(dataset):
        n = len(dataset[split])
        dataset[split] = add_aux_columns(dataset[split], torch.randn(n, 6, generator=gen),
                                         torch.randn(n, 8, generator=gen))
    return model_dir, dataset


def load_model(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa", dtype=torch.float32)


def make_trainer(tmp_path, tiny, *, lora=None, model=None, train_rows=None, eval_dataset=None, **overrides):
    model_dir, dataset = tiny
    settings = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, per_device_eval_batch_size=4,
        max_steps=2, learning_rate=1e-2, logging_steps=1, report_to="none", bf16=False,
        gradient_checkpointing=False, save_strategy="no", use_cpu=True, seed=0,
        dataloader_pin_memory=False,
    )
    if overrides.get("loss_type", "napo") == "napo":
        settings["aux_dir"] = "unused-here"  # the aux columns are already joined
    settings.update(overrides)
    args = NAPOConfig(**settings)
    train = dataset["train"] if train_rows is None else dataset["train"].select(range(train_rows))
    peft_config = None if model is not None else LoraConfig(**(lora or LORA))
    return NAPOTrainer(
        model if model is not None else load_model(model_dir), args=args, train_dataset=train,
        eval_dataset=eval_dataset, processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=peft_config,
    )


# ----------------------------------------------------------------------------- config


def test_config_defaults_follow_loss_type(tmp_path):
    dpo = NAPOConfig(output_dir=str(tmp_path), loss_type="dpo")
    assert (dpo.num_negatives, dpo.reference, dpo.share_negatives, dpo.gamma0, dpo.beta) == (1, "adapter", False, 0.0, 1.0)
    sdpo = NAPOConfig(output_dir=str(tmp_path), loss_type="sdpo", reference="precomputed")
    assert (sdpo.num_negatives, sdpo.precompute_ref_log_probs, sdpo.loss_type) == (3, True, "sdpo")
    napo = NAPOConfig(output_dir=str(tmp_path), loss_type="napo", aux_dir="aux")
    assert (napo.reference, napo.share_negatives, napo.share_ratio, napo.gamma0, napo.margin_alpha,
            napo.margin_momentum, napo.num_negatives) == ("none", True, 0.7, 1.0, 0.3, 0.9, 3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(loss_type="napo"), "need the auxiliary recommender outputs: set aux_dir"),
    (dict(loss_type="dpo", num_negatives=3), "uses exactly one negative"),
    (dict(loss_type="sdpo", reference="none"), "needs a reference"),
    (dict(loss_type="sopo"), "did you mean 'sdpo'"),
    (dict(loss_type="napo", aux_dir="a", share_ratio=1.5), "share_ratio"),
    (dict(loss_type="sdpo", share_negatives=True, share_mode="rescore", aux_dir="a", reference="precomputed"),
     "no precomputed reference"),
    (dict(loss_type="napo", aux_dir="a", napo_mode="faithful", reference="adapter"), "set reference none"),
    (dict(loss_type="napo", aux_dir="a", napo_mode="faithful", length_normalize=True), "set length_normalize false"),
    (dict(loss_type="napo", aux_dir="a", margin_form="reference", margin_mode="user"), "set margin_mode batch"),
    (dict(loss_type="napo", aux_dir="a", margin_scores="everyone"), "margin_scores must be one of own, pool"),
])
def test_config_errors_are_one_clear_line(tmp_path, kwargs, message):
    with pytest.raises(NAPOConfigError, match=message) as err:
        NAPOConfig(output_dir=str(tmp_path), **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs, expected", [
    # (detach_negatives, mask_collisions, margin_form, margin_scores, disable_dropout)
    (dict(), (False, True, "corrected", "own", True)),
    (dict(margin_mode="user"), (False, True, "corrected", "pool", True)),
    (dict(napo_mode="faithful"), (True, False, "reference", "pool", False)),
    # the reference without sharing keeps the own negatives' gradients
    (dict(napo_mode="faithful", share_negatives=False), (False, False, "reference", "pool", False)),
    # each switch set alone overrides its preset and nothing else
    (dict(napo_mode="faithful", detach_negatives=False), (False, False, "reference", "pool", False)),
    (dict(share_mode="reuse", mask_collisions=False), (False, False, "corrected", "own", True)),
    (dict(margin_form="reference", margin_scores="pool"), (False, True, "reference", "pool", True)),
    (dict(napo_mode="faithful", disable_dropout=True), (True, False, "reference", "pool", True)),
])
def test_napo_mode_presets_the_five_switches(tmp_path, kwargs, expected):
    args = NAPOConfig(output_dir=str(tmp_path), loss_type="napo", aux_dir="a", **kwargs)
    assert (args.detach_negatives, args.mask_collisions, args.margin_form, args.margin_scores,
            args.disable_dropout) == expected


def test_reference_adapter_needs_lora(tmp_path, tiny):
    with pytest.raises(ValueError, match="needs a LoRA"):
        make_trainer(tmp_path, tiny, model=load_model(tiny[0]), loss_type="sdpo")


# ----------------------------------------------------------------------------- the loss by hand


def brute_logps(model, prompt_ids, completion_ids):
    """Sum of log p(completion | prompt) from one plain forward of prompt + completion."""
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
    logprobs = model(input_ids=ids).logits.float().log_softmax(-1)[0]
    start = len(prompt_ids)
    return sum(logprobs[start + j - 1, tok] for j, tok in enumerate(completion_ids))


def hand_loss(trainer, rows, batch, gamma=None):
    """The loss of one batch assembled by hand from the rows (no napo.scoring/sharing/losses).
    ``gamma``: the margin (default gamma0, the first training batch's bias-corrected value)."""
    args, model = trainer.args, trainer.model
    beta, k = args.beta, args.num_negatives
    item_ids = batch["item_ids"].tolist()
    completions = {}  # item id -> token ids (rescore scores borrowed items under one's own prompt)
    for row in rows:
        for item, comp in zip(row["item_ids"], row["completion_ids"], strict=True):
            completions.setdefault(item, comp)

    def score(b, item, reference):
        context = model.disable_adapter() if reference else contextlib.nullcontext()
        tokens = completions[item][:1] if args.scoring == "answer" else completions[item]  # answer: no EOS term
        with context, torch.no_grad():
            return float(brute_logps(model, rows[b]["prompt_ids"], tokens))

    n = len(rows)
    user = torch.tensor([row["aux_user_vector"] for row in rows], dtype=torch.float64)
    sim = user @ user.T
    sim.fill_diagonal_(-math.inf)
    num_partners = int(args.share_ratio * (n - 1)) if args.share_negatives else 0
    losses = []
    for b in range(n):
        chosen = item_ids[b][0]
        pool = [(b, i) for i in item_ids[b][1:]]  # (whose prompt scores it, item)
        partners = sorted(range(n), key=lambda j: (-sim[b, j].item(), j))[:num_partners]
        for p in partners:
            for item in item_ids[p][1:]:
                if item == chosen or item in [i for _, i in pool]:
                    continue
                pool.append((b if args.share_mode == "rescore" else p, item))
        c = score(b, chosen, False)
        rejected = [score(o, i, False) for o, i in pool]
        if args.reference != "none":
            c -= score(b, chosen, True)
            rejected = [r - score(o, i, True) for r, (o, i) in zip(rejected, pool, strict=True)]
        margin = args.gamma0 if gamma is None else gamma
        z = torch.logsumexp(torch.tensor([beta * (r - c) for r in rejected]), 0)
        losses.append(float(F.softplus(margin + z)))
    assert len(item_ids[0]) == k + 1
    return sum(losses) / n


@pytest.mark.parametrize("overrides", [
    dict(loss_type="dpo"),
    dict(loss_type="sdpo", beta=0.5),
    dict(loss_type="napo"),
    dict(loss_type="napo", share_mode="reuse"),
    dict(loss_type="napo", share_mode="rescore", scoring="naive"),
    dict(loss_type="sdpo", share_negatives=True, aux_dir="a", gamma0=0.5, margin_alpha=0.0),
    dict(loss_type="napo", scoring="answer"),
    dict(loss_type="napo", share_mode="reuse", scoring="answer"),
    dict(loss_type="sdpo", scoring="answer"),
])
def test_loss_equals_hand_assembled(tmp_path, tiny, overrides):
    # a random (non-zero) LoRA so that policy and reference differ
    trainer = make_trainer(tmp_path, tiny, lora={**LORA, "init_lora_weights": False}, **overrides)
    rows = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer._prepare_inputs(trainer.data_collator(rows))
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    expected = hand_loss(trainer, rows, batch)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    logged = trainer._metrics["train"]
    k = trainer.args.num_negatives
    if trainer.args.share_negatives:
        assert logged["napo/pool_size"][-1] > k and 0 < logged["napo/shared_fraction"][-1] < 1
    else:
        assert logged["napo/pool_size"][-1] == k and logged["napo/shared_fraction"][-1] == 0
    assert logged["napo/gamma"][-1] == pytest.approx(trainer.args.gamma0)
    # the reference's accuracy is over the own negatives: never below the pool's (a superset)
    assert logged["rewards/accuracies"][-1] >= logged["pool/rewards/accuracies"][-1]


def _own_negative_scores(batch):
    mask = batch["completion_mask"][:, 1:]
    return batch["aux_scores"][:, 1:][mask].double()


def test_dynamic_margin_through_the_trainer_over_several_steps(tmp_path, tiny):
    """gamma_t = gamma0 * (1 - alpha * (M_t - M_bar)), M_bar the bias-corrected average of the
    previous batches' M_t: checked numerically against the loss and the logged values."""
    trainer = make_trainer(tmp_path, tiny, loss_type="napo", lora={**LORA, "init_lora_weights": False},
                           gamma0=1.5, margin_alpha=0.5, margin_clamp=False)
    trainer.model.train()
    means, gammas = [], []
    for start in (0, 4, 8, 12):
        rows = [trainer.train_dataset[i] for i in range(start, start + 4)]
        batch = trainer._prepare_inputs(trainer.data_collator(rows))
        m_t = _own_negative_scores(batch).mean().item()
        if means:  # bias-corrected moving average of the previous batches (momentum 0.9)
            ema = 0.0
            for m in means:
                ema = 0.9 * ema + 0.1 * m
            m_bar = ema / (1 - 0.9 ** len(means))
        else:
            m_bar = m_t
        gamma = 1.5 * (1 - 0.5 * (m_t - m_bar))
        loss = trainer.compute_loss(trainer.model, batch)
        assert loss.item() == pytest.approx(hand_loss(trainer, rows, batch, gamma=gamma), abs=1e-5)
        logged = trainer._metrics["train"]
        assert logged["napo/gamma"][-1] == pytest.approx(gamma, abs=1e-6)
        assert logged["napo/m_t"][-1] == pytest.approx(m_t, abs=1e-6)
        means.append(m_t)
        gammas.append(gamma)
    assert max(abs(g - 1.5) for g in gammas[1:]) > 1e-3  # the margin really moved


def test_faithful_margin_uses_the_whole_reused_pool(tmp_path, tiny):
    """faithful: M_t is the mean aux score over the local pool as the reference code builds it
    (partners' scores, repeats and the user's own positive included), the average updated first."""
    trainer = make_trainer(tmp_path, tiny, loss_type="napo", napo_mode="faithful", margin_alpha=0.3)
    assert trainer.args.share_mode == "reuse"
    trainer.model.train()
    rows = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer._prepare_inputs(trainer.data_collator(rows))
    user = batch["aux_user_vector"].double()
    sim = user @ user.T
    sim.fill_diagonal_(-math.inf)
    s = int(0.7 * 3)
    scores = []
    for b in range(4):
        partners = sorted(range(4), key=lambda j: (-sim[b, j].item(), j))[:s]
        for r in [b, *partners]:
            scores += batch["aux_scores"][r, 1:].tolist()
    m_t = sum(scores) / len(scores)
    m_bar = 0.1 * m_t  # starts at 0, updated before gamma
    trainer.compute_loss(trainer.model, batch)
    assert trainer._metrics["train"]["napo/gamma"][-1] == pytest.approx(1 - 0.3 * (m_t - m_bar), abs=1e-6)


def _scored_batch(trainer, monkeypatch):
    """(loss, its outputs, every scored log-prob [B, M] with its graph) of a 4-row training-mode batch."""
    import napo.trainer as trainer_module

    captured = {}
    real = trainer_module.completion_logps

    def spy(model, batch, **kwargs):
        out = real(model, batch, **kwargs)
        captured["logps"] = out[0]
        return out

    monkeypatch.setattr(trainer_module, "completion_logps", spy)
    trainer.model.train()
    rows = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer._prepare_inputs(trainer.data_collator(rows))
    loss, out = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    return loss, out, captured["logps"]


@pytest.mark.parametrize("mode", ["reuse", "rescore", "faithful"])
def test_gradient_reaches_a_borrowed_negative_only_where_it_should(tmp_path, tiny, monkeypatch, mode):
    """d loss_b / d (the log-prob of a negative b borrowed from partner p):
    reuse: that log-prob lives in p's row (scored under p's prompt) and gets gradient from b;
    rescore: b scores the item under its OWN prompt, so b's loss does not touch p's row;
    faithful: every negative is detached, so b's loss reaches no negative at all."""
    overrides = {"napo_mode": "faithful"} if mode == "faithful" else {"share_mode": mode}
    trainer = make_trainer(tmp_path, tiny, loss_type="napo", margin_alpha=0.0, **overrides)
    _, out, logps = _scored_batch(trainer, monkeypatch)
    k = trainer.args.num_negatives
    b = 0
    (grad,) = torch.autograd.grad(out["losses"][b], logps, retain_graph=True)
    partners = [p for p in range(4) if p != b]
    assert grad[b, 0].abs() > 0  # the positive is always trained
    if mode == "reuse":
        assert any(grad[p, 1:k + 1].abs().sum() > 0 for p in partners)
    elif mode == "rescore":
        assert all(grad[p].abs().sum() == 0 for p in partners)
        assert grad[b, k + 1:].abs().sum() > 0  # the borrowed items, scored in b's own row
    else:
        assert grad[:, 1:].abs().sum() == 0


def _negative_gradient(trainer, monkeypatch):
    """d (mean loss of a 4-row batch) / d (every scored log-prob), [B, M]."""
    loss, _, logps = _scored_batch(trainer, monkeypatch)
    (grad,) = torch.autograd.grad(loss, logps)
    return grad


@pytest.mark.parametrize("share", [False, True])
def test_faithful_detaches_negatives_only_with_sharing(tmp_path, tiny, monkeypatch, share):
    """The reference code computes its all-gathered pool under no_grad and, with sharing, reads
    the own negatives from it; without sharing (batch_shared=False) the own negatives keep their
    gradient: a true softmax-SimPO."""
    trainer = make_trainer(tmp_path, tiny, loss_type="napo", napo_mode="faithful", share_negatives=share,
                           margin_alpha=0.0)
    grad = _negative_gradient(trainer, monkeypatch)
    assert grad[:, 0].abs().sum() > 0  # the positives are trained either way
    k = trainer.args.num_negatives
    if share:
        assert grad[:, 1:].abs().sum() == 0
    else:
        assert (grad[:, 1:k + 1].abs() > 0).all()  # every own negative is pushed down


def test_faithful_trains_with_the_adapters_dropout(tmp_path, tiny):
    """TRL switches dropout off by default; the reference code keeps the SFT adapter's LoRA
    dropout (0.1). faithful keeps it: two training-mode passes over one batch differ, and agree
    in eval mode; the corrected default still switches it off."""
    losses = {}
    for mode in ("faithful", "corrected"):
        torch.manual_seed(0)
        sft = PeftModel(load_model(tiny[0]), LoraConfig(**{**LORA, "lora_dropout": 0.1, "init_lora_weights": False}))
        trainer = make_trainer(tmp_path / mode, tiny, model=sft, loss_type="napo", napo_mode=mode,
                               share_mode="reuse", margin_alpha=0.0)
        rates = {m.p for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout)}
        assert rates == ({0.1} if mode == "faithful" else {0.0})
        rows = [trainer.train_dataset[i] for i in range(4)]
        batch = trainer._prepare_inputs(trainer.data_collator(rows))
        with torch.no_grad():
            trainer.model.train()
            train = [trainer.compute_loss(trainer.model, batch).item() for _ in range(2)]
            trainer.model.eval()
            evals = [trainer.compute_loss(trainer.model, batch).item() for _ in range(2)]
        assert evals[0] == evals[1]
        losses[mode] = train
    assert losses["faithful"][0] != losses["faithful"][1]
    assert losses["corrected"][0] == losses["corrected"][1]


def _train_losses(tmp_path, tiny, lora_dropout=0.1, **overrides):
    torch.manual_seed(0)
    sft = PeftModel(load_model(tiny[0]), LoraConfig(**{**LORA, "lora_dropout": lora_dropout, "init_lora_weights": False}))
    trainer = make_trainer(tmp_path, tiny, model=sft, loss_type="napo", max_steps=3, train_rows=12,
                           margin_alpha=0.5, **overrides)
    trainer.train()
    history = trainer.state.log_history
    return [(h["loss"], h["napo/gamma"], h["napo/pool_size"]) for h in history if "loss" in h]


CORRECTED_SWITCHES = dict(detach_negatives=False, mask_collisions=True, margin_form="corrected",
                          margin_scores="own", disable_dropout=True)
REFERENCE_SWITCHES = dict(detach_negatives=True, mask_collisions=False, margin_form="reference",
                          margin_scores="pool", disable_dropout=False)


def test_the_five_switches_are_the_whole_difference_between_faithful_and_reuse(tmp_path, tiny):
    """faithful with the five switches set to corrected's values trains exactly as reuse does,
    and reuse with the reference's values exactly as faithful: no other difference is hidden in
    napo_mode. (LoRA dropout 0.1, so the dropout switch matters too.)"""
    faithful = _train_losses(tmp_path / "f", tiny, napo_mode="faithful")
    reuse = _train_losses(tmp_path / "r", tiny, share_mode="reuse")
    assert faithful != reuse
    assert _train_losses(tmp_path / "f2r", tiny, napo_mode="faithful", **CORRECTED_SWITCHES) == reuse
    assert _train_losses(tmp_path / "r2f", tiny, share_mode="reuse", **REFERENCE_SWITCHES) == faithful


def test_switched_off_dropout_trains_as_no_dropout(tmp_path, tiny):
    """The tiny NAPO configs carry the reference's LoRA dropout 0.1 for faithful; with
    disable_dropout (every other mode) the run is the one of lora_dropout 0.0, step for step."""
    assert _train_losses(tmp_path / "a", tiny, share_mode="reuse") == \
        _train_losses(tmp_path / "b", tiny, lora_dropout=0.0, share_mode="reuse")


def test_reference_is_the_adapter_disabled_policy(tmp_path, tiny):
    trainer = make_trainer(tmp_path, tiny, loss_type="sdpo", max_steps=3, learning_rate=5e-2)
    trainer.train()
    rows = [trainer.train_dataset[i] for i in range(2)]
    batch = trainer._prepare_inputs(trainer.data_collator(rows))
    ref = trainer._reference_logps(trainer.model, batch)
    model = trainer.model
    for b, row in enumerate(rows):
        for m in range(batch["item_ids"].shape[1]):
            comp = row["completion_ids"][row["item_ids"].index(batch["item_ids"][b, m].item())]
            with torch.no_grad(), model.disable_adapter():
                base = float(brute_logps(model, row["prompt_ids"], comp))
            with torch.no_grad():
                policy = float(brute_logps(model, row["prompt_ids"], comp))
            assert ref[b, m].item() == pytest.approx(base, abs=1e-4)
            assert abs(policy - base) > 1e-4  # training moved the policy away from the reference


def test_sft_adapter_is_continued_and_its_frozen_copy_is_the_reference(tmp_path, tiny):
    torch.manual_seed(1)
    sft = PeftModel(load_model(tiny[0]), LoraConfig(**{**LORA, "init_lora_weights": False}))
    trainer = make_trainer(tmp_path, tiny, model=sft, loss_type="sdpo", num_negatives=3)
    model = trainer.model
    assert set(model.peft_config) == {"default", "ref"}
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".ref." in n)
    assert any(p.requires_grad for n, p in model.named_parameters() if ".default." in n)
    rows = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer._prepare_inputs(trainer.data_collator(rows))
    model.train()
    # policy == reference (the SFT adapter) at the start: every reward is 0 and the S-DPO loss is
    # softplus(log K) = log(1 + K), whatever the logps
    loss = trainer.compute_loss(model, batch)
    assert loss.item() == pytest.approx(math.log(1 + 3), abs=1e-5)
    with torch.no_grad(), model.disable_adapter():  # the base model is NOT the reference
        base = float(brute_logps(model, rows[0]["prompt_ids"], rows[0]["completion_ids"][0]))
    ref = trainer._reference_logps(model, batch)
    assert abs(ref[0, 0].item() - base) > 1e-4


def test_reference_pass_has_no_dropout(tmp_path, tiny):
    """A continued SFT adapter with LoRA dropout 0.1 (the papers' setting): its frozen copy, the
    reference, is evaluated without dropout even while the policy trains."""
    torch.manual_seed(2)
    sft = PeftModel(load_model(tiny[0]), LoraConfig(**{**LORA, "lora_dropout": 0.1, "init_lora_weights": False}))
    trainer = make_trainer(tmp_path, tiny, model=sft, loss_type="sdpo")
    rows = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer._prepare_inputs(trainer.data_collator(rows))
    trainer.model.train()
    first = trainer._reference_logps(trainer.model, batch)
    second = trainer._reference_logps(trainer.model, batch)
    assert torch.equal(first, second) and trainer.model.training  # deterministic, mode restored
    trainer.model.eval()
    torch.testing.assert_close(trainer._reference_logps(trainer.model, batch), first)


def test_sharing_without_item_ids_refuses(tmp_path, tiny):
    model_dir, dataset = tiny
    no_ids = dataset["train"].remove_columns(["target", "candidates"])
    with pytest.raises(NAPOConfigError, match="needs item ids"):
        make_trainer(tmp_path, (model_dir, {"train": no_ids}), loss_type="napo")


def test_precomputed_reference_equals_adapter_reference(tmp_path, tiny):
    losses = []
    for reference in ("adapter", "precomputed"):
        trainer = make_trainer(tmp_path / reference, tiny, lora={**LORA, "init_lora_weights": False},
                               loss_type="sdpo", reference=reference)
        assert ("ref_logps" in trainer.train_dataset.column_names) == (reference == "precomputed")
        rows = [trainer.train_dataset[i] for i in range(4)]
        batch = trainer._prepare_inputs(trainer.data_collator(rows))
        trainer.model.train()
        losses.append(trainer.compute_loss(trainer.model, batch).item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_margin_moves_in_training_only(tmp_path, tiny):
    _, dataset = tiny
    trainer = make_trainer(tmp_path, tiny, loss_type="napo", eval_dataset=dataset["valid"], max_steps=2)
    trainer.evaluate()
    assert trainer.margin.state_dict() == {"ema": 0.0, "steps": 0}
    trainer.train()
    state = trainer.margin.state_dict()
    assert state["steps"] == 2 and state["ema"] != 0.0
    metrics = trainer.evaluate()
    assert trainer.margin.state_dict() == state
    assert math.isfinite(metrics["eval_loss"]) and "eval_napo/gamma" in metrics


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("loss_type", ["dpo", "sdpo", "napo"])
def test_trains_on_a_repeated_batch_saves_and_reloads(tmp_path, tiny, loss_type):
    trainer = make_trainer(tmp_path, tiny, loss_type=loss_type, train_rows=4, max_steps=8,
                           learning_rate=2e-2, lr_scheduler_type="constant")
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.05
    trainer.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "napo" in card and loss_type in card

    rows = [trainer.train_dataset[i] for i in range(2)]
    reloaded = PeftModel.from_pretrained(load_model(tiny[0]), tmp_path / "adapter")
    reloaded.eval()
    trainer.model.eval()
    with torch.no_grad():
        for row in rows:
            for comp in row["completion_ids"][:3]:
                a = float(brute_logps(trainer.model, row["prompt_ids"], comp))
                b = float(brute_logps(reloaded, row["prompt_ids"], comp))
                assert a == pytest.approx(b, abs=1e-5)


# ----------------------------------------------------------------------------- two processes

TWO_PROC_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from accelerate import PartialState
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from datasets import load_from_disk
    from napo.config import NAPOConfig
    from napo.trainer import NAPOTrainer

    model_dir, data_dir, out, per_device, mode = sys.argv[1:6]
    # mode: a NAPO share_mode ("reuse", "rescore"), or "sdpo" (no sharing; reference = adapter off)
    method = dict(loss_type="sdpo") if mode == "sdpo" else dict(loss_type="napo", aux_dir="unused", share_mode=mode)
    args = NAPOConfig(output_dir=out, **method,
                      per_device_train_batch_size=int(per_device), max_steps=2, learning_rate=5e-2,
                      optim="sgd", lr_scheduler_type="constant", logging_steps=1, report_to="none",
                      bf16=False, gradient_checkpointing=False, save_strategy="no", use_cpu=True,
                      train_sampling_strategy="sequential", ddp_find_unused_parameters=False,
                      dataloader_pin_memory=False, seed=0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa", dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                      task_type="CAUSAL_LM", init_lora_weights=False)
    trainer = NAPOTrainer(model, args=args, train_dataset=load_from_disk(data_dir),
                          processing_class=AutoTokenizer.from_pretrained(model_dir), peft_config=lora)
    trainer.train()
    if PartialState().is_main_process:
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        weights = [p.detach().double().sum().item() for n, p in sorted(trainer.model.named_parameters())
                   if p.requires_grad]
        json.dump({"losses": losses, "weights": weights}, open(out + "/result.json", "w"))
    trainer.end()  # destroy the process group: a live one may abort a worker at exit
""")


def _run_two_proc_case(tmp_path, tiny, processes, mode):
    model_dir, dataset = tiny
    data_dir = tmp_path / "train8"
    if not data_dir.exists():
        dataset["train"].select(range(8)).save_to_disk(str(data_dir))
    script = tmp_path / "two_proc.py"
    script.write_text(TWO_PROC_SCRIPT)
    out = tmp_path / f"out{processes}-{mode}"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(REPO)}
    per_device = str(8 // processes)
    if processes == 1:
        cmd = [sys.executable, str(script)]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--mixed_precision", "no", "--num_machines", "1", "--dynamo_backend", "no",
               "--main_process_port", str(29500 + os.getpid() % 1000), str(script)]
    cmd += [str(model_dir), str(data_dir), str(out), per_device, mode]
    proc = run_launch(cmd, env=env, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["reuse", "rescore", "sdpo"])
def test_two_processes_match_one_process(tmp_path, tiny, mode):
    """Global batch 8 = 2 processes x 4 or 1 x 8: same losses over two SGD steps (so the same
    gradients, including those of negatives shared across processes, and S-DPO's reference pass
    with the adapter switched off inside DDP) and the same weights."""
    one = _run_two_proc_case(tmp_path, tiny, 1, mode)
    two = _run_two_proc_case(tmp_path, tiny, 2, mode)
    assert len(one["losses"]) == 2
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-5)
    assert two["weights"] == pytest.approx(one["weights"], abs=1e-4)


def test_margin_state_is_checkpointed_and_restored(tmp_path, tiny):
    """2 steps + checkpoint + resume to step 3 leaves the margin where 3 straight steps do."""
    straight = make_trainer(tmp_path, tiny, loss_type="napo", max_steps=3, save_strategy="steps", save_steps=2)
    straight.train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert json.loads((checkpoint / "napo_margin.json").read_text())["steps"] == 2
    resumed = make_trainer(tmp_path, tiny, loss_type="napo", max_steps=3, save_strategy="no")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.margin.state_dict()["steps"] == 3
    assert resumed.margin.state_dict()["ema"] == pytest.approx(straight.margin.state_dict()["ema"], abs=1e-12)


def test_resample_draws_new_negatives_each_epoch(tmp_path, tiny):
    seen = {}
    for sampling in ("fixed", "resample"):
        trainer = make_trainer(tmp_path / sampling, tiny, loss_type="sdpo", negative_sampling=sampling,
                               train_rows=4, max_steps=-1, num_train_epochs=3, learning_rate=0.0,
                               train_sampling_strategy="sequential")
        batches = seen[sampling] = []
        compute_loss = trainer.compute_loss

        def spy(model, inputs, *args, _inner=compute_loss, _out=batches, **kwargs):
            _out.append(inputs["item_ids"][:, 1:].tolist())
            return _inner(model, inputs, *args, **kwargs)

        trainer.compute_loss = spy
        trainer.train()
        assert len(batches) == 3
    assert seen["fixed"][0] == seen["fixed"][1] == seen["fixed"][2]
    assert seen["resample"][1] != seen["resample"][0] or seen["resample"][2] != seen["resample"][0]


def test_missing_aux_columns_fail_clearly(tmp_path, tiny):
    model_dir, dataset = tiny
    bare = dataset["train"].remove_columns(["aux_user_vector", "aux_scores"])
    args = NAPOConfig(output_dir=str(tmp_path), loss_type="napo", aux_dir="a", use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="no 'aux_user_vector' column"):
        NAPOTrainer(load_model(model_dir), args=args, train_dataset=bare,
                    processing_class=AutoTokenizer.from_pretrained(model_dir), peft_config=LoraConfig(**LORA))
    args = NAPOConfig(output_dir=str(tmp_path), loss_type="napo", aux_dir="a", share_negatives=False,
                      use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="eval_dataset has no 'aux_scores' column"):
        NAPOTrainer(load_model(model_dir), args=args, train_dataset=dataset["train"], eval_dataset=bare,
                    processing_class=AutoTokenizer.from_pretrained(model_dir), peft_config=LoraConfig(**LORA))


def test_gradient_checkpointing_gives_the_same_loss(tmp_path, tiny):
    losses = []
    for checkpointing in (False, True):
        trainer = make_trainer(tmp_path / str(checkpointing), tiny, lora={**LORA, "init_lora_weights": False},
                               loss_type="sdpo", gradient_checkpointing=checkpointing)
        rows = [trainer.train_dataset[i] for i in range(4)]
        batch = trainer._prepare_inputs(trainer.data_collator(rows))
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        grads = [p.grad.norm().item() for p in trainer.model.parameters() if p.requires_grad]
        losses.append((loss.item(), grads))
    assert losses[0][0] == pytest.approx(losses[1][0], abs=1e-6)
    assert losses[0][1] == pytest.approx(losses[1][1], rel=1e-4)
