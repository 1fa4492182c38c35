"""napo.scoring: packed == naive == brute force, LoRA on/off, gradients, joint tokenization."""

from __future__ import annotations

import random

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import napo.scoring
from napo.losses import listwise_preference_loss
from napo.scoring import (
    append_completions,
    collate_listwise,
    collate_naive,
    collate_packed,
    completion_logps,
    packed_attention_mask,
    tokenize_listwise,
)

VOCAB = 97
PAD = 0


def tiny_model(arch: str, attn: str = "sdpa", lora: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  attention_dropout=0.0, attn_implementation=attn)
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    if lora:
        # init_lora_weights=False: B is random too, so the adapter really changes the outputs
        config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
        model = get_peft_model(model, config)
    return model.eval()


def random_examples(num_examples: int, num_completions: int, seed: int = 0, vary_m: bool = False):
    """Unequal prompt lengths, unequal completion lengths, optionally fewer completions for some."""
    rng = random.Random(seed)
    examples = []
    for b in range(num_examples):
        prompt = [rng.randrange(1, VOCAB) for _ in range(rng.randint(3, 17))]
        m = num_completions - (b % 2) * (num_completions // 2) if vary_m else num_completions
        comps = [[rng.randrange(1, VOCAB) for _ in range(rng.randint(1, 5))] for _ in range(m)]
        examples.append({"prompt_ids": prompt, "completion_ids": comps})
    return examples


def brute_force_logps(model, examples, num_slots):
    """One sequence at a time through model(input_ids).logits with a manual log_softmax."""
    out = torch.zeros(len(examples), num_slots)
    with torch.no_grad():
        for b, ex in enumerate(examples):
            for m, comp in enumerate(ex["completion_ids"]):
                ids = torch.tensor([ex["prompt_ids"] + comp])
                logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
                p = len(ex["prompt_ids"])
                out[b, m] = sum(logp[p + j - 1, tok] for j, tok in enumerate(comp)).item()
    return out


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_naive_equals_brute_force(arch):
    model = tiny_model(arch)
    examples = random_examples(3, 4, seed=1, vary_m=True)
    with torch.no_grad():
        logps, num_tokens = completion_logps(model, collate_naive(examples, PAD))
    expected = brute_force_logps(model, examples, 4)
    torch.testing.assert_close(logps, expected, atol=1e-4, rtol=0)
    lengths = [[len(c) for c in ex["completion_ids"]] + [0] * (4 - len(ex["completion_ids"])) for ex in examples]
    assert num_tokens.tolist() == lengths


@pytest.mark.parametrize("arch,attn,lora,num_negatives", [
    ("qwen2", "sdpa", False, 1),
    ("qwen2", "eager", True, 3),
    ("qwen2", "sdpa", True, 19),
    ("llama", "eager", False, 19),
    ("llama", "sdpa", True, 3),
    ("llama", "sdpa", False, 1),
])
def test_packed_equals_naive(arch, attn, lora, num_negatives):
    model = tiny_model(arch, attn, lora)
    examples = random_examples(3, num_negatives + 1, seed=num_negatives)
    with torch.no_grad():
        naive, naive_n = completion_logps(model, collate_listwise(examples, PAD, "naive"))
        packed, packed_n = completion_logps(model, collate_listwise(examples, PAD, "packed"))
    assert naive.shape == (3, num_negatives + 1)
    torch.testing.assert_close(packed, naive, atol=1e-4, rtol=0)
    assert torch.equal(packed_n, naive_n)
    assert naive.lt(0).all()


def test_variable_completion_counts_are_masked():
    model = tiny_model("qwen2")
    examples = random_examples(4, 6, seed=3, vary_m=True)  # examples 1 and 3 have 3 completions
    with torch.no_grad():
        packed, n = completion_logps(model, collate_packed(examples, PAD))
        naive, _ = completion_logps(model, collate_naive(examples, PAD))
        alone, _ = completion_logps(model, collate_packed(examples[1:2], PAD))
    batch = collate_packed(examples, PAD)
    assert batch["completion_mask"].tolist() == [[True] * 6, [True] * 3 + [False] * 3] * 2
    assert packed[1, 3:].tolist() == [0.0, 0.0, 0.0] and n[1, 3:].tolist() == [0, 0, 0]
    torch.testing.assert_close(packed, naive, atol=1e-4, rtol=0)
    # batching with longer rows (more padding) does not change an example's scores
    torch.testing.assert_close(packed[1, :3], alone[0], atol=1e-4, rtol=0)


def test_appended_completions_are_scored_under_the_own_prompt():
    model = tiny_model("qwen2")
    examples = random_examples(2, 2, seed=12)
    # example 0 borrows example 1's negative (rescore); example 1 borrows nothing
    extended = append_completions(examples, [[examples[1]["completion_ids"][1]], []])
    assert len(examples[0]["completion_ids"]) == 2  # inputs untouched
    with torch.no_grad():
        logps, n = completion_logps(model, collate_packed(extended, PAD))
        own, _ = completion_logps(model, collate_packed(examples, PAD))
    expected = brute_force_logps(model, extended, 3)
    torch.testing.assert_close(logps, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(logps[:, :2], own, atol=1e-4, rtol=0)
    assert n[1, 2].item() == 0 and n[0, 2].item() == len(examples[1]["completion_ids"][1])


def test_length_normalize_is_mean_token_logp():
    model = tiny_model("llama")
    examples = random_examples(2, 3, seed=5, vary_m=True)
    batch = collate_packed(examples, PAD)
    with torch.no_grad():
        summed, n = completion_logps(model, batch)
        mean, _ = completion_logps(model, batch, length_normalize=True)
    expected = torch.where(n > 0, summed / n.clamp(min=1), torch.zeros_like(summed))
    torch.testing.assert_close(mean, expected)


def test_packed_mask_by_hand():
    # row: prompt p0 p1 | c0: a0 a1 | c1: b0 | pad
    segments = torch.tensor([[0, 0, 1, 1, 2, -1]])
    allowed = packed_attention_mask(segments)[0, 0] == 0
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],  # b0 sees the prompt and itself, never c0
        [0, 0, 0, 0, 0, 1],  # padding sees only itself: no fully blocked row
    ], dtype=torch.bool)
    assert torch.equal(allowed, expected)
    assert packed_attention_mask(segments)[0, 0, 0, 1].item() == torch.finfo(torch.float32).min
    batch = collate_packed([{"prompt_ids": [5, 6], "completion_ids": [[7, 8], [9]]}], PAD)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 2]]
    # targets 7, 8, 9 predicted from positions 1 (last prompt), 2 (token 7), 1 (last prompt)
    assert batch["gather_pos"].tolist() == [1, 2, 1]
    assert batch["gather_target"].tolist() == [7, 8, 9]
    assert batch["gather_slot"].tolist() == [0, 0, 1]
    # logits are kept at positions 1 and 2 only; the last prompt position serves two tokens
    assert batch["logits_mask"].tolist() == [[False, True, True, False, False]]
    assert batch["gather_index"].tolist() == [0, 1, 0]


def per_token_packed(examples, pad):
    """The packed layout written out token by token (what collate_packed must equal)."""
    num_slots = max(len(ex["completion_ids"]) for ex in examples)
    width = max(len(ex["prompt_ids"]) + sum(len(c) for c in ex["completion_ids"]) for ex in examples)
    ids = torch.full((len(examples), width), pad)
    seg = torch.full((len(examples), width), -1)
    pos = torch.zeros(len(examples), width, dtype=torch.long)
    rows, poss, targets, slots = [], [], [], []
    for b, ex in enumerate(examples):
        p = len(ex["prompt_ids"])
        t = 0
        for tok in ex["prompt_ids"]:
            ids[b, t], seg[b, t], pos[b, t] = tok, 0, t
            t += 1
        for m, comp in enumerate(ex["completion_ids"]):
            for j, tok in enumerate(comp):
                ids[b, t], seg[b, t], pos[b, t] = tok, m + 1, p + j
                rows.append(b)
                poss.append(p - 1 if j == 0 else t - 1)
                targets.append(tok)
                slots.append(b * num_slots + m)
                t += 1
    # the mask entry by entry: causal, prompt or own segment; a padding query sees itself
    mask = torch.zeros(len(examples), width, width, dtype=torch.bool)
    for b in range(len(examples)):
        for i in range(width):
            for j in range(width):
                if seg[b, i] < 0:
                    mask[b, i, j] = i == j
                else:
                    mask[b, i, j] = j <= i and (seg[b, j] == 0 or seg[b, j] == seg[b, i])
    return ids, seg, pos, mask, rows, poss, targets, slots


def test_collate_packed_equals_per_token_layout():
    examples = random_examples(5, 4, seed=11, vary_m=True)
    examples[2]["completion_ids"].append([])  # an empty completion gets no gather entry
    ids, seg, pos, mask, rows, poss, targets, slots = per_token_packed(examples, PAD)
    batch = collate_packed(examples, PAD)
    assert torch.equal(batch["input_ids"], ids)
    assert torch.equal(batch["segment_ids"], seg)
    assert torch.equal(batch["position_ids"], pos)
    assert torch.equal(batch["attention_mask"][:, 0] == 0, mask)
    blocked = batch["attention_mask"][:, 0][~mask]
    assert torch.all(blocked == torch.finfo(torch.float32).min)
    assert batch["gather_row"].tolist() == rows
    assert batch["gather_pos"].tolist() == poss
    assert batch["gather_target"].tolist() == targets
    assert batch["gather_slot"].tolist() == slots
    half = packed_attention_mask(seg, torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.equal(half[:, 0] == 0, mask)


def lora_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_loss_and_lora_gradients_equal_between_layouts(arch):
    model = tiny_model(arch, "sdpa", lora=True, seed=2)
    examples = random_examples(3, 4, seed=7)
    results = {}
    for layout in ("naive", "packed"):
        model.zero_grad()
        batch = collate_listwise(examples, PAD, layout)
        logps, _ = completion_logps(model, batch)
        with torch.no_grad(), model.disable_adapter():
            ref, _ = completion_logps(model, batch)
        loss = listwise_preference_loss(logps[:, 0], logps[:, 1:], ref[:, 0], ref[:, 1:], beta=0.5).mean()
        loss.backward()
        results[layout] = (loss.detach(), lora_grads(model), ref)
    (loss_n, grads_n, ref_n), (loss_p, grads_p, ref_p) = results["naive"], results["packed"]
    torch.testing.assert_close(loss_p, loss_n, atol=1e-5, rtol=0)
    torch.testing.assert_close(ref_p, ref_n, atol=1e-4, rtol=0)
    assert grads_n and set(grads_n) == set(grads_p)
    for name in grads_n:
        assert grads_n[name].abs().sum() > 0, name
        torch.testing.assert_close(grads_p[name], grads_n[name], atol=1e-6, rtol=1e-3)


def test_disable_adapter_gives_base_model_logps():
    base = tiny_model("qwen2", seed=4)
    model = tiny_model("qwen2", lora=True, seed=4)  # same base weights, random LoRA on top
    examples = random_examples(2, 3, seed=8)
    batch = collate_packed(examples, PAD)
    with torch.no_grad():
        expected, _ = completion_logps(base, batch)
        adapted, _ = completion_logps(model, batch)
        with model.disable_adapter():
            disabled, _ = completion_logps(model, batch)
    torch.testing.assert_close(disabled, expected, atol=1e-5, rtol=0)
    assert (adapted - expected).abs().max() > 1e-3


def test_full_logits_fallback_gives_the_same_logps(monkeypatch):
    model = tiny_model("llama", lora=True)
    examples = random_examples(3, 5, seed=9, vary_m=True)
    assert napo.scoring._keeps_selected_logits(LlamaForCausalLM)
    assert napo.scoring._keeps_selected_logits(Qwen2ForCausalLM)
    with torch.no_grad():
        selected = {lay: completion_logps(model, collate_listwise(examples, PAD, lay))[0] for lay in ("naive", "packed")}
        monkeypatch.setattr(napo.scoring, "_keeps_selected_logits", lambda cls: False)
        full = {lay: completion_logps(model, collate_listwise(examples, PAD, lay))[0] for lay in ("naive", "packed")}
    for lay in ("naive", "packed"):
        torch.testing.assert_close(selected[lay], full[lay], atol=1e-5, rtol=0)


def test_gradient_checkpointing_in_train_mode_matches():
    examples = random_examples(2, 4, seed=10)
    batch = collate_packed(examples, PAD)
    grads = []
    for checkpointing in (False, True):
        model = tiny_model("qwen2", lora=True, seed=6).train()  # dropout is 0: train == eval numerics
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        logps, _ = completion_logps(model, batch)
        logps.sum().backward()
        grads.append(lora_grads(model))
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-4)


def test_bfloat16_model_gets_a_bfloat16_mask():
    model = tiny_model("qwen2").to(torch.bfloat16)
    examples = random_examples(2, 4, seed=11)
    with torch.no_grad():
        packed, _ = completion_logps(model, collate_packed(examples, PAD, dtype=torch.float32))
        naive, _ = completion_logps(model, collate_naive(examples, PAD))
    assert torch.isfinite(packed).all()
    # bf16 activations: agreement to bf16 precision only (sums of up to 5 tokens of ~log(97))
    torch.testing.assert_close(packed, naive, atol=0.05, rtol=0)


def test_bad_layout_and_attention_raise():
    with pytest.raises(ValueError, match="scoring layout"):
        collate_listwise(random_examples(1, 2), PAD, "dense")
    model = tiny_model("qwen2")
    model.config._attn_implementation_internal = "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation"):
        completion_logps(model, collate_packed(random_examples(1, 2), PAD))


# --------------------------------------------------------------------------- tokenization


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A byte-level BPE trained here on a few movie titles, BOS added like Llama's tokenizer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["Answer: Toy Story (1995)", "Candidates: Toy Story (1995), Heat (1995), Casino (1995)",
              "The user watched Toy Story (1995) and Jumanji (1995). Answer: Heat (1995)"] * 50
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def test_joint_tokenization_clean_boundary(bpe_tokenizer):
    tok = bpe_tokenizer
    prompt = "Candidates: Toy Story (1995), Heat (1995)\nAnswer:"
    [ex] = tokenize_listwise(tok, [prompt], [[" Toy Story (1995)", " Heat (1995)"]])
    assert ex["prompt_ids"] == tok(prompt)["input_ids"]
    assert ex["prompt_ids"][0] == tok.bos_token_id
    for comp, text in zip(ex["completion_ids"], [" Toy Story (1995)", " Heat (1995)"], strict=True):
        assert comp[-1] == tok.eos_token_id
        assert ex["prompt_ids"] + comp[:-1] == tok(prompt + text)["input_ids"]
        assert tok.decode(comp[:-1]) == text


def test_joint_tokenization_merge_across_boundary(bpe_tokenizer):
    tok = bpe_tokenizer
    prompt = "Answer: "  # the trailing space merges into " Toy" / " Heat" in the joint text
    alone = tok(prompt)["input_ids"]
    [ex] = tokenize_listwise(tok, [prompt], [["Toy Story (1995)", "Heat (1995)"]], add_eos=False)
    assert ex["prompt_ids"] == tok("Answer:")["input_ids"] == alone[:-1]
    for comp, text in zip(ex["completion_ids"], ["Toy Story (1995)", "Heat (1995)"], strict=True):
        assert ex["prompt_ids"] + comp == tok(prompt + text)["input_ids"]
        assert tok.decode(comp) == " " + text  # the completion starts at the first differing token


def test_truncation_keeps_bos_and_prompt_end(bpe_tokenizer):
    tok = bpe_tokenizer
    prompt = "The user watched Toy Story (1995) and Jumanji (1995). Answer:"
    full = tok(prompt)["input_ids"]
    [ex] = tokenize_listwise(tok, [prompt], [[" Heat (1995)"]], max_prompt_length=5, max_completion_length=2)
    assert ex["prompt_ids"] == [tok.bos_token_id] + full[-4:]
    assert len(full) > 5
    assert ex["completion_ids"] == [tok(prompt + " Heat (1995)")["input_ids"][len(full):][:2]]


def test_token_inputs_are_taken_verbatim():
    [ex] = tokenize_listwise(None, [[4, 5, 6, 7]], [[[8, 9, 10], [11]]], max_prompt_length=3,
                             max_completion_length=2)
    assert ex == {"prompt_ids": [5, 6, 7], "completion_ids": [[8, 9], [11]]}
    with pytest.raises(ValueError, match="empty"):
        tokenize_listwise(None, [[]], [[[1]]])


def test_batched_tokenization_equals_one_at_a_time(bpe_tokenizer):
    prompts = ["Answer:", "The user watched Heat (1995). Answer: ", "Candidates: Casino (1995)\nAnswer:"]
    completions = [[" Heat (1995)"], ["Toy Story (1995)", "Casino (1995)", "Heat (1995)"], [" Casino (1995)", " Heat"]]
    together = tokenize_listwise(bpe_tokenizer, prompts, completions, max_prompt_length=8)
    alone = [tokenize_listwise(bpe_tokenizer, [p], [c], max_prompt_length=8)[0]
             for p, c in zip(prompts, completions, strict=True)]
    assert together == alone
    assert [len(ex["completion_ids"]) for ex in together] == [1, 3, 2]


def _boundary_bpe():
    """A byte-level BPE that learnt ':(' as one token: a title starting with '(' merges with the
    prompt's final ':' (GPT-2 pre-tokenization groups adjacent punctuation)."""
    from napo.models.tiny import train_bpe, wrap_tokenizer

    corpus = ["Answer:(500) Days", "Answer:(Heat)", "Answer: Heat", "Answer:(x)"] * 50
    return wrap_tokenizer(train_bpe(corpus, vocab_size=300))


def test_borrowed_titles_tokenize_as_the_rows_own_across_a_bpe_merge():
    from napo.scoring import borrowed_completions

    tok = _boundary_bpe()
    assert len(tok(":(")["input_ids"]) == 2  # BOS + the merged ':(' token
    titles = ["(500) Days", " Heat", "(Heat)", "Zed"]
    prompts = ["We like films. Answer:", "A longer history, then Answer:", "Answer:"]
    for prompt in prompts:
        for own in ([" Heat", "Zed"], ["(500) Days", " Heat"]):
            (row,) = tokenize_listwise(tok, [prompt], [own])
            ex = {**row, "prompt": prompt, "titles": own}
            borrowed = [t for t in titles if t not in own]
            (new_row,), (got,) = borrowed_completions(tok, [ex], [borrowed], tail_chars=8)
            # the reference: the row tokenized with every title as its own candidate
            (want,) = tokenize_listwise(tok, [prompt], [own + borrowed])
            assert new_row["prompt_ids"] == want["prompt_ids"]
            assert new_row["completion_ids"] == want["completion_ids"][: len(own)]
            assert got == want["completion_ids"][len(own):]
            # a merged title is a different token string than its plain copy appended after the prompt
            if "(500) Days" in borrowed:
                plain = tok("(500) Days", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                assert got[borrowed.index("(500) Days")] != plain


def _brute_force_listwise(tokenizer, prompts, completions, **kwargs):
    """tokenize_listwise with every prompt + completion tokenized for real (no splice)."""
    import napo.scoring as scoring

    real = scoring._joint_token_ids
    try:
        scoring._joint_token_ids = lambda tok, p, c, shortcut=True: real(tok, p, c, shortcut=False)
        return tokenize_listwise(tokenizer, prompts, completions, **kwargs)
    finally:
        scoring._joint_token_ids = real


def test_item_token_splice_gives_the_joint_tokenization_ids(tiny_item_tokens):
    """Item-token completions are spliced into the prompt's ids instead of tokenizing prompt +
    completion again: the ids must be exactly those of the full joint tokenization."""
    from transformers import AutoTokenizer

    from data_prep.prepared import load_prepared
    from napo.scoring import _appended_token_ids, _joint_token_ids

    data_dir, model_dir = tiny_item_tokens
    tok = AutoTokenizer.from_pretrained(model_dir)
    split = load_prepared(data_dir)[0]["train"]
    prompts = list(split["prompt"])
    completions = [[c, *r] for c, r in zip(split["chosen"], split["rejected"], strict=True)]
    items = {c for cs in completions for c in cs}
    appendable, closing = _appended_token_ids(tok, items)
    assert set(appendable) == items and closing == 0  # every item token qualifies; "<s> $A" closes with none
    fast = _joint_token_ids(tok, prompts, completions)
    for (alone, joint), p, cs in zip(fast, prompts, completions, strict=True):
        assert alone == tok(p)["input_ids"]
        assert joint == tok([p + c for c in cs])["input_ids"]
    for kwargs in ({}, {"max_prompt_length": 12, "max_completion_length": 1}):
        assert tokenize_listwise(tok, prompts, completions, **kwargs) == \
            _brute_force_listwise(tok, prompts, completions, **kwargs)
    # a prompt ending in a space: the item token does not take it (no lstrip), still identical
    spaced = [p + " " for p in prompts]
    assert tokenize_listwise(tok, spaced, completions) == _brute_force_listwise(tok, spaced, completions)


def test_splice_refuses_what_the_tokenizer_could_merge(bpe_tokenizer, tiny_item_tokens):
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    from napo.scoring import _appended_token_ids

    # titles are not added tokens: nothing is spliced, the BPE merge across the boundary stays
    assert _appended_token_ids(bpe_tokenizer, {"Heat (1995)", " Toy Story (1995)"}) == ({}, 0)
    tok = AutoTokenizer.from_pretrained(tiny_item_tokens[1])
    tok.add_tokens([AddedToken("<lstrip>", lstrip=True), AddedToken("<plain>", normalized=False)])
    # "<lstrip>" would take the prompt's trailing space
    assert set(_appended_token_ids(tok, {"<lstrip>", "<plain>", "<item_3>"})[0]) == {"<plain>", "<item_3>"}
    tok.add_tokens([AddedToken("x<item", normalized=False)])
    # now "x<item" could straddle a prompt ending in "x" and an item token
    assert set(_appended_token_ids(tok, {"<lstrip>", "<plain>", "<item_3>"})[0]) == {"<plain>"}
    prompts, comps = ["watched x", "watched "], [["<item_3>", "<lstrip>", "<plain>"]] * 2
    assert _brute_force_listwise(tok, prompts, comps) == tokenize_listwise(tok, prompts, comps)
    # with a closing special (a "$A </s>" template) the id goes before it
    from tokenizers import processors

    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.bos_token_id), ("</s>", tok.eos_token_id)])
    tok2 = AutoTokenizer.from_pretrained(tiny_item_tokens[1])
    tok2.backend_tokenizer.post_processor = tok.backend_tokenizer.post_processor
    assert _appended_token_ids(tok2, {"<item_3>"})[1] == 1
    prompts, comps = ["watched <item_1> then", "hi "], [["<item_3>", "<item_4>"], ["<item_5>"]]
    assert tokenize_listwise(tok2, prompts, comps) == _brute_force_listwise(tok2, prompts, comps)


def _item_examples(num_examples: int, seed: int, eos: int):
    """Random prompts whose completions are one token then `eos` (item-token data), some shorter."""
    rng = random.Random(seed)
    examples = []
    for b in range(num_examples):
        prompt = [rng.randrange(4, VOCAB) for _ in range(rng.randint(3, 17))]
        comps = [[rng.randrange(4, VOCAB), eos] for _ in range(5 - 2 * (b % 2))]
        examples.append({"prompt_ids": prompt, "completion_ids": comps})
    return examples


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_answer_layout_scores_the_first_token_at_the_answer_position(arch):
    """answer == log p(c[0] | prompt) by brute force == packed minus the EOS term; missing slots
    are 0 and masked; gradients flow; a longer completion is refused."""
    model = tiny_model(arch)
    eos = 3
    examples = _item_examples(4, seed=2, eos=eos)
    batch = collate_listwise(examples, PAD, "answer")
    logps, num_tokens = completion_logps(model, batch)
    first = [{"prompt_ids": ex["prompt_ids"], "completion_ids": [c[:1] for c in ex["completion_ids"]]}
             for ex in examples]
    brute = brute_force_logps(model, first, 5)
    torch.testing.assert_close(logps, brute, atol=1e-5, rtol=0)
    assert num_tokens.tolist() == [[1] * 5, [1, 1, 1, 0, 0], [1] * 5, [1, 1, 1, 0, 0]]
    packed, _ = completion_logps(model, collate_listwise(examples, PAD, "packed"))
    eos_term = brute_force_logps(model, examples, 5) - brute
    torch.testing.assert_close(logps, packed - eos_term, atol=1e-4, rtol=0)
    model.train()
    logps, _ = completion_logps(model, batch)
    logps.sum().backward()
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="every completion must be one item token"):
        collate_listwise([{"prompt_ids": [5, 6], "completion_ids": [[7, 8, eos]]}], PAD, "answer")


def test_borrowed_item_tokens_are_their_token_and_eos(tiny_item_tokens):
    """The item-token shortcut of borrowed_completions gives what tokenize_listwise gives with
    the borrowed items among the row's own completions."""
    from transformers import AutoTokenizer

    from data_prep.prepared import load_prepared
    from data_prep.prompts import item_token
    from napo.scoring import borrowed_completions

    data_dir, model_dir = tiny_item_tokens
    tok = AutoTokenizer.from_pretrained(model_dir)
    split = load_prepared(data_dir)[0]["train"].select(range(4))
    owns = [[c, *r[:2]] for c, r in zip(split["chosen"], split["rejected"], strict=True)]
    borrowed = [[item_token(i) for i in range(b, 40, 7)] for b in range(4)]
    for limit in (None, 1):
        rows = tokenize_listwise(tok, list(split["prompt"]), owns, max_completion_length=limit)
        examples = [{**r, "prompt": p, "titles": own} for r, p, own in zip(rows, split["prompt"], owns, strict=True)]
        new_rows, got = borrowed_completions(tok, examples, borrowed, max_completion_length=limit)
        want = tokenize_listwise(tok, list(split["prompt"]), [o + b for o, b in zip(owns, borrowed, strict=True)],
                                 max_completion_length=limit)
        for new, g, w, own in zip(new_rows, got, want, owns, strict=True):
            assert new["prompt_ids"] == w["prompt_ids"]
            assert new["completion_ids"] == w["completion_ids"][: len(own)]
            assert g == w["completion_ids"][len(own):]
