"""LLaRA's placeholder form (napo.hybrid.placeholders): positions, embeddings, curriculum, SFT, eval."""

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")

H, C = 7, 9  # placeholder token ids in the hand-written cases


def test_position_items_align_from_the_end():
    from napo.hybrid.placeholders import position_items

    ids = {"history": H, "candidates": C}
    input_ids = torch.tensor([
        [1, 5, H, 5, H, 5, H, 4, 5, C, 5, C, 3],
        [1, 5, H, 4, 5, C, 5, C, 3, 0, 0, 0, 0],  # left-truncated: only the last history item is left
    ])
    rows = [{"history": [10, 11, 12], "candidates": [20, 21]}, {"history": [30, 31, 32], "candidates": [40, 41]}]
    got = position_items(input_ids, rows, ids)
    expected = torch.full(input_ids.shape, -1)
    expected[0, [2, 4, 6, 9, 11]] = torch.tensor([10, 11, 12, 20, 21])
    expected[1, [2, 5, 7]] = torch.tensor([32, 40, 41])
    assert torch.equal(got, expected)


def test_more_placeholders_than_items_is_an_error():
    from napo.hybrid import HybridError
    from napo.hybrid.placeholders import position_items

    with pytest.raises(HybridError, match="2 history placeholders for 1 history items"):
        position_items(torch.tensor([[1, H, H]]), [{"history": [3], "candidates": []}], {"history": H, "candidates": C})


def test_strip_placeholders_shortens_every_token_list():
    from napo.hybrid.placeholders import strip_placeholders

    ex = {"input_ids": [1, 5, H, 6, C, 2], "labels": [-100, -100, -100, -100, -100, 2], "history": [3]}
    out = strip_placeholders(ex, {H, C})
    assert out == {"input_ids": [1, 5, 6, 2], "labels": [-100, -100, -100, 2], "history": [3]}


def test_curriculum_share_grows_linearly_and_batches_follow_it():
    from napo.hybrid.placeholders import CurriculumCollator, hybrid_share

    assert [hybrid_share("linear", s, 4) for s in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert hybrid_share("none", 0, 4) == 1.0

    def base(examples):  # stands in for TRL's padding collator
        width = max(len(e["input_ids"]) for e in examples)
        return {"input_ids": torch.tensor([e["input_ids"] + [0] * (width - len(e["input_ids"])) for e in examples])}

    collator = CurriculumCollator(base, {"history": H, "candidates": C}, "linear", seed=0)
    example = {"input_ids": [1, 5, H, 6, C, 2], "history": [3], "candidates": [4]}
    kinds = []
    for step in range(200):
        collator.step, collator.max_steps = step, 200
        batch = collator([example])
        hybrid = "position_items" in batch
        kinds.append(hybrid)
        if hybrid:
            assert batch["input_ids"].tolist() == [[1, 5, H, 6, C, 2]]
            assert batch["position_items"].tolist() == [[-1, -1, 3, -1, 4, -1]]
        else:
            assert batch["input_ids"].tolist() == [[1, 5, 6, 2]]
    assert not any(kinds[:10]) and all(kinds[-5:])  # share 0 at the start, ~1 at the end
    assert 70 < sum(kinds) < 130  # about half over a linear ramp
    assert collator.counts == {"hybrid": sum(kinds), "text": 200 - sum(kinds)}


# --------------------------------------------------------------------------- a tiny LLaRA model


@pytest.fixture(scope="module")
def llara(tmp_path_factory):
    """(data dir, tiny model dir with the placeholder tokens, aux dir with item vectors [30, 6])."""
    from data_prep.prepared import load_prepared
    from data_prep.synthetic import synthetic_prepared
    from napo.auxiliary import write_item_vectors
    from napo.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("llara")
    data = synthetic_prepared(root / "data", num_items=30, rows=(12, 6, 6), num_candidates=6, item_placeholders=True)
    load_prepared(data)
    build_tiny_model(data, root / "model", hidden_size=32, num_layers=2, num_heads=2, vocab_size=300)
    write_item_vectors(root / "aux", torch.randn(30, 6, generator=torch.Generator().manual_seed(2)))
    return data, root / "model", root / "aux", root


def _sft(llara, out, steps, curriculum="linear", extra=()):
    from napo.scripts import sft

    data, model, aux, _ = llara
    flags = {"per_device_train_batch_size": 4, "logging_steps": 1, "report_to": "none", "use_cpu": "true",
             "bf16": "false", "disable_tqdm": "true", "save_strategy": "no", "seed": 0, "max_steps": steps,
             "learning_rate": 1e-2, "lr_scheduler_type": "constant", "warmup_steps": 0}
    argv = ["--dataset_dir", str(data), "--model_name_or_path", str(model), "--output_dir", str(out),
            "--item_embeddings", "aux", "--item_aux_dir", str(aux), "--hybrid_curriculum", curriculum,
            "--use_peft", "false", "--activation_checkpointing", "false", *extra]
    for k, v in flags.items():
        argv += [f"--{k}", str(v)]
    return sft.main(argv)


def _initial_projector(llara):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data_prep.prepared import load_prepared
    from napo.hybrid import build_encoder

    data, model_dir, aux, _ = llara
    _, items, meta = load_prepared(data)
    model, tok = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    return build_encoder(model, tok, meta=meta, items=items, aux_dir=str(aux), mode="frozen", seed=0).projector.state_dict()


def test_text_only_steps_leave_the_projector_untouched(llara, tmp_path):
    initial = _initial_projector(llara)
    text_only = _sft(llara, tmp_path / "text", steps=1)  # linear share at step 0 is 0: text-only
    assert text_only.data_collator.counts["text"] >= 1 and text_only.data_collator.counts["hybrid"] == 0
    trained = text_only.model.napo_item_encoder.projector.state_dict()
    assert all(torch.equal(trained[k], initial[k]) for k in initial)
    hybrid = _sft(llara, tmp_path / "hybrid", steps=1, curriculum="none")
    assert hybrid.data_collator.counts["hybrid"] >= 1
    moved = hybrid.model.napo_item_encoder.projector.state_dict()
    assert all(not torch.equal(moved[k], initial[k]) for k in initial)


@pytest.fixture(scope="module")
def trained(llara, tmp_path_factory):
    out = tmp_path_factory.mktemp("llara_sft") / "sft"
    return _sft(llara, out, steps=8), out


def _rows(data, split="test"):
    from napo.eval.runner import load_split

    rows, _, _ = load_split(data, split)
    return rows[0:len(rows)]


def test_rank_scores_use_the_projection_in_both_layouts(trained, llara):
    from napo.eval.rank import LikelihoodScorer
    from napo.hybrid.placeholders import embed, scoring_items

    trainer, _ = trained
    model, tok = trainer.model.eval(), trainer.processing_class
    batch = _rows(llara[0])
    idx = list(range(len(batch["prompt"])))
    packed = LikelihoodScorer(model, tok, layout="packed")(batch, idx)
    naive = LikelihoodScorer(model, tok, layout="naive")(batch, idx)
    torch.testing.assert_close(packed, naive, rtol=1e-4, atol=1e-4)
    # by hand for row 0: embeddings with the projections placed, then the summed log-probs
    scorer = LikelihoodScorer(model, tok, layout="naive")
    from napo.scoring import collate_listwise

    one = {k: v[:1] for k, v in batch.items()}
    collated = collate_listwise(scorer.tokenize(one), scorer.pad_token_id, "naive")
    items = scoring_items(collated, one["history"], one["candidates"], scorer.placeholder_ids)
    assert (items >= 0).sum(1).tolist() == [len(one["history"][0]) + len(one["candidates"][0])] * items.shape[0]
    with torch.no_grad():
        logits = model(inputs_embeds=embed(model, collated["input_ids"], items),
                       attention_mask=collated["attention_mask"]).logits.log_softmax(-1)
    by_hand = torch.zeros(len(one["candidates"][0]))
    for n in range(len(collated["gather_row"])):
        r, pos, tgt, slot = (int(collated[k][n]) for k in ("gather_row", "gather_pos", "gather_target", "gather_slot"))
        by_hand[slot] += logits[r, pos, tgt]
    torch.testing.assert_close(packed[0], by_hand, rtol=1e-4, atol=1e-4)
    # and the projection matters: the same model without it scores differently
    with torch.no_grad():
        plain = model(input_ids=collated["input_ids"], attention_mask=collated["attention_mask"]).logits
    assert not torch.allclose(plain.log_softmax(-1), logits)


def test_save_load_round_trip_gives_identical_scores(trained, llara):
    from napo.eval.config import EvalArguments
    from napo.eval.rank import LikelihoodScorer
    from napo.hybrid.placeholders import uses_placeholders
    from napo.models.loading import load_for_evaluation

    trainer, out = trained
    batch = _rows(llara[0])
    idx = list(range(len(batch["prompt"])))
    before = LikelihoodScorer(trainer.model.eval(), trainer.processing_class)(batch, idx)
    model, tok = load_for_evaluation(EvalArguments(model_name_or_path=str(out), dataset_dir=str(llara[0]),
                                                   output_dir="unused"))
    assert uses_placeholders(model)
    assert torch.equal(LikelihoodScorer(model, tok)(batch, idx), before)


def test_generation_starts_from_the_hybrid_prompt(trained, llara):
    from napo.eval.generate import GreedyGenerator
    from napo.hybrid.placeholders import embed, position_items

    trainer, _ = trained
    model, tok = trainer.model.eval(), trainer.processing_class
    batch = {k: v[:1] for k, v in _rows(llara[0]).items()}
    generator = GreedyGenerator(model, tok, max_new_tokens=4)
    got = generator.generate_ids(batch)[0]
    ids = torch.tensor([generator.prompt_ids(batch)[0]])
    items = position_items(ids, [{"history": batch["history"][0], "candidates": batch["candidates"][0]}],
                           generator.placeholder_ids)
    manual = []
    with torch.no_grad():
        for _ in range(len(got)):  # greedy by hand, the prompt as embeddings, new tokens plain
            logits = model(inputs_embeds=embed(model, ids, items)).logits[0, -1]
            nxt = int(logits.argmax())
            manual.append(nxt)
            if nxt == tok.eos_token_id:
                break
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
            items = torch.cat([items, torch.tensor([[-1]])], 1)
    assert got == manual


def test_preference_training_of_placeholder_models_is_refused(trained, llara, tmp_path, capsys):
    from napo.scripts import preference

    _, out = trained
    with pytest.raises(SystemExit) as stop:
        preference.main(["--dataset_dir", str(llara[0]), "--sft_adapter", str(out), "--output_dir", str(tmp_path / "p"),
                         "--loss_type", "sdpo", "--use_peft", "true", "--use_cpu", "true", "--report_to", "none",
                         "--max_steps", "1"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: preference training of LLaRA placeholder models is not built")


@pytest.mark.parametrize("name", ["llara.yaml", "llara-tiny.yaml"])
def test_shipped_llara_configs_parse(name):
    from trl import ModelConfig

    from napo.config import DatasetArguments, RecSFTConfig
    from napo.guards import GuardArguments
    from napo.hybrid import HybridArguments
    from napo.scripts.parser import ScriptParser

    path = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "configs", "lastfm", name)
    parser = ScriptParser((DatasetArguments, RecSFTConfig, ModelConfig, GuardArguments, HybridArguments))
    data, training, model, _, hybrid = parser.parse(["--config", path, "--bf16", "false", "--use_cpu", "true"])
    assert hybrid.item_embeddings == "aux" and hybrid.item_aux_dir and hybrid.hybrid_curriculum == "linear"
    assert data.dataset_dir.endswith("-ph") and training.output_dir and model.model_name_or_path


def test_tiny_builder_adds_the_placeholders_as_special_tokens(llara):
    from transformers import AutoTokenizer

    from data_prep.prompts import PLACEHOLDERS

    tok = AutoTokenizer.from_pretrained(llara[1])
    ids = tok('"Babe Day (1974)" [HistoryEmb], "Toy Day (1962)" [CansEmb]. Answer:')["input_ids"]
    for kind, token in PLACEHOLDERS.items():
        assert ids.count(tok.convert_tokens_to_ids(token)) == 1, kind
        assert token in tok.all_special_tokens
    assert "[HistoryEmb]" not in tok.decode(ids, skip_special_tokens=True)
    assert not any("Emb" in t for t in tok.get_vocab() if t not in PLACEHOLDERS.values())  # no BPE merges spent
