"""Completion log-probs: the one place that turns (model, prompt, completions) into scores.

Every example has one prompt and M completions (index 0 = chosen, 1..K = rejected or, for
ranking, the candidates in order). Training (all loss types, reference log-probs under
``model.disable_adapter()``) and the ``rank`` evaluator both call this module:

    examples = tokenize_listwise(tokenizer, prompts, completions)   # token ids, once
    batch = collate_listwise(examples, pad_token_id, "packed")      # or "naive"
    logps, num_tokens = completion_logps(model, batch)              # [B, M], [B, M]

Two layouts give the same numbers (tested to 1e-4 in fp32):

- ``naive``: one row per (prompt, completion) pair, right-padded, 2D padding mask. Simple, works
  with every attention implementation, costs M times the prompt.
- ``packed``: one row per prompt, ``[prompt, c_0, ..., c_{M-1}]``, with a 4D additive float mask
  under which every completion sees the whole prompt and itself causally, never another
  completion; position ids restart at len(prompt) for every completion; token 0 of each
  completion is predicted from the last prompt position. The prompt is encoded once, so K
  negatives cost about (K+1)L extra tokens instead of (K+1)(P+L).

A third layout, ``answer``, is for item-token data (every completion is one item token, then
EOS): one left-padded row per prompt and no completion tokens at all; completion m is scored by
log p(c_m[0] | prompt), the next-token log-softmax at the answer position (the last prompt token)
read at the completion's token. The closing EOS is not scored, so these numbers are the packed
ones minus log p(EOS | prompt, item). Any number of completions, any item of the vocabulary,
costs one forward of the prompt: NAPO's borrowed negatives and the whole catalogue are free
(:func:`answer_logps` gives the full [B, V] row).

transformers (5.x) passes a 4D mask through unchanged (``masking_utils._preprocess_mask_arguments``)
and ``eager`` / ``sdpa`` add no causal part of their own, so the mask must be additive float
(0 = allowed, finfo(dtype).min = blocked): a bool mask would be *added* as 0/1 under ``eager``.
``flex_attention`` reads a float tensor as a score_mod (correct, no block sparsity); FlashAttention
ignores custom masks, so packed scoring refuses it.

Only the positions that predict completion tokens go through the lm_head: the batch carries
them as a [rows, seq] bool mask that is passed as the model's own ``logits_to_keep`` (transformers'
``slice_logits_to_keep``), so the lm_head still runs inside the model's forward, where DDP, FSDP,
DeepSpeed ZeRO-3 and PEFT expect it, and full-vocabulary logits never exist for prompt positions.
Architectures whose forward does not use ``slice_logits_to_keep`` get full logits (correct, more
memory). log_softmax is taken in float32 on the gathered positions.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Sequence

import torch

LAYOUTS = ("packed", "naive", "answer")
_PACKED_ATTENTION = ("eager", "sdpa", "flex_attention")


# --------------------------------------------------------------------------- tokenization


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if list(a[:n]) == list(b[:n]):  # the usual case, compared in C
        return n
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


_ADDED_TOKENS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _added_tokens(tokenizer, backend) -> tuple[dict, set[str]]:
    """({content: (id, AddedToken)}, every proper suffix of a content) of the tokenizer's added
    tokens, kept per tokenizer while its vocabulary size stays the same (thousands of item tokens
    make this a few milliseconds, paid once instead of at every training step)."""
    size = len(tokenizer)
    cached = _ADDED_TOKENS.get(tokenizer)
    if cached is None or cached[0] != size:
        added = {tok.content: (idx, tok) for idx, tok in backend.get_added_tokens_decoder().items()}
        cached = (size, added, {content[i:] for content in added for i in range(1, len(content))})
        _ADDED_TOKENS[tokenizer] = cached
    return cached[1], cached[2]


def _appended_token_ids(tokenizer, completions: set[str]) -> tuple[dict[str, int], int]:
    """The completions whose joint tokenization with ANY prompt is the prompt's own plus one id.

    A fast (``tokenizers``) tokenizer first cuts the text at its added tokens, then normalizes,
    pre-tokenizes and encodes each piece on its own, and its post-processor adds specials around
    the one sequence. So when a completion is exactly an added token that is matched verbatim
    (``normalized`` false or special; no ``lstrip``, which would take the prompt's trailing
    space; no ``single_word``, which looks at the character before it) and no added token can
    straddle the prompt/completion boundary (no proper suffix of one is a prefix of the
    completion), ``tokenize(p + c)`` is ``tokenize(p)`` with c's id inserted before the
    post-processor's closing specials. Item tokens (``<item_17>``) are such completions: a row's
    20 joint tokenizations then cost one (the demo's preference data, the ranking evaluation).

    Returns ({completion text: token id}, number of closing specials); ({}, 0) when the tokenizer
    is not a fast one. ``tokenize_listwise`` also checks the first use against a real joint
    tokenization and falls back to tokenizing everything if they ever differ.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not getattr(tokenizer, "is_fast", False) or not completions:
        return {}, 0
    added, suffixes = _added_tokens(tokenizer, backend)
    appendable = {}
    for text in completions:
        idx, tok = added.get(text, (None, None))
        if tok is None or tok.lstrip or tok.single_word or (tok.normalized and not tok.special):
            continue
        if any(text[:k] in suffixes for k in range(1, len(text) + 1)):
            continue
        appendable[text] = idx
    if not appendable:
        return {}, 0
    # how many specials the post-processor puts after the sequence: probe with a non-special one
    probe = next((t for t in appendable if not added[t][1].special), None)
    if probe is None:
        return {}, 0
    alone = tokenizer([probe], add_special_tokens=True)["input_ids"][0]
    if alone.count(appendable[probe]) != 1:
        return {}, 0
    idx = appendable[probe]
    return appendable, len(alone) - 1 - alone.index(idx)


def _joint_token_ids(tokenizer, prompts: Sequence[str], completions: Sequence[Sequence[str]],
                     shortcut: bool = True) -> list[tuple[list[int], list[list[int]]]]:
    """Per example: (tokenize(prompt), [tokenize(prompt + c) for c in completions]), all with the
    tokenizer's special tokens, in one tokenizer call; with ``shortcut`` the completions of
    :func:`_appended_token_ids` are spliced into the prompt's ids instead of tokenized again
    (identical ids: tests/test_scoring.py compares both on the tiny data)."""
    appendable, closing = _appended_token_ids(tokenizer, {c for cs in completions for c in cs}) if shortcut \
        else ({}, 0)
    texts = []
    for p, cs in zip(prompts, completions, strict=True):
        texts.append(p)
        texts.extend(p + c for c in cs if c not in appendable)
    flat = tokenizer(texts, add_special_tokens=True)["input_ids"]  # one call (fast tokenizers batch it)
    out, cursor, checked = [], 0, not appendable
    for p, cs in zip(prompts, completions, strict=True):
        alone = flat[cursor]
        cursor += 1
        cut = len(alone) - closing
        joint = []
        for c in cs:
            if c in appendable:
                joint.append(alone[:cut] + [appendable[c]] + alone[cut:])
                if not checked:  # the first splice is checked against the real thing
                    checked = True
                    if tokenizer([p + c], add_special_tokens=True)["input_ids"][0] != joint[-1]:
                        return _joint_token_ids(tokenizer, prompts, completions, shortcut=False)
            else:
                joint.append(flat[cursor])
                cursor += 1
        out.append((alone, joint))
    return out


def tokenize_listwise(
    tokenizer,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    completions: Sequence[Sequence[str]] | Sequence[Sequence[Sequence[int]]],
    *,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
    add_eos: bool = True,
) -> list[dict]:
    """Token ids of each prompt and its M completions.

    Text inputs: prompt + completion is tokenized *jointly* (special tokens such as BOS added
    by the tokenizer exactly as for generation) and split at the prompt. The shared prompt is
    the longest common prefix of ``tokenize(prompt)`` and every ``tokenize(prompt + c_m)``: when
    a BPE merge crosses the boundary (e.g. a prompt ending in a space), the merged token belongs
    to the completion, which is what the model would generate after the agreed prefix. With
    ``add_eos`` the tokenizer's EOS is appended to each completion (unless already there).

    Token inputs (``prompts`` as lists of ints, ``completions`` as lists of lists of ints) are
    taken verbatim (``add_eos`` is ignored; ``tokenizer`` may be None); truncation still applies.

    Truncation: prompts from the LEFT (the end holds the candidate list and "Answer:"), keeping
    a leading BOS; completions from the RIGHT.

    Returns one dict per example: ``prompt_ids: list[int]`` (length >= 1) and
    ``completion_ids: list[list[int]]`` (M lists, each non-empty).
    """
    if len(prompts) != len(completions):
        raise ValueError(
            f"tokenize_listwise: {len(prompts)} prompts but {len(completions)} completion lists; "
            "pass one list of completions per prompt"
        )
    text_mode = len(prompts) > 0 and isinstance(prompts[0], str)
    bos_id = getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else None
    eos_id = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    if text_mode and add_eos and eos_id is None:
        raise ValueError("tokenize_listwise: add_eos=True but the tokenizer has no eos_token; "
                         "set tokenizer.eos_token or pass add_eos=False")
    for i, comps in enumerate(completions):
        if len(comps) == 0:
            raise ValueError(f"tokenize_listwise: example {i} has no completions; give at least one")
    if text_mode:
        joint_ids = _joint_token_ids(tokenizer, prompts, completions)
    examples = []
    for i, (prompt, comps) in enumerate(zip(prompts, completions, strict=True)):
        if text_mode:
            alone, joint = joint_ids[i]
            n = len(alone)
            for j in joint:
                n = min(n, _common_prefix_length(alone, j))
            prompt_ids = list(alone[:n])
            completion_ids = [list(j[n:]) for j in joint]
            if add_eos:
                completion_ids = [c if c and c[-1] == eos_id else c + [eos_id] for c in completion_ids]
        else:
            prompt_ids = list(prompt)
            completion_ids = [list(c) for c in comps]
        if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
            keep_bos = bos_id is not None and prompt_ids[0] == bos_id and max_prompt_length > 1
            head = prompt_ids[:1] if keep_bos else []
            prompt_ids = head + prompt_ids[len(prompt_ids) - (max_prompt_length - len(head)):]
        if max_completion_length is not None:
            completion_ids = [c[:max_completion_length] for c in completion_ids]
        if not prompt_ids:
            raise ValueError(
                f"tokenize_listwise: example {i} has an empty prompt (no BOS either), so its first "
                "completion token has nothing to be predicted from; give a non-empty prompt"
            )
        for m, c in enumerate(completion_ids):
            if not c:
                raise ValueError(f"tokenize_listwise: example {i}, completion {m} is empty; "
                                 "drop it or use add_eos=True")
        examples.append({"prompt_ids": prompt_ids, "completion_ids": completion_ids})
    return examples


def append_completions(examples: Sequence[dict], extra: Sequence[Sequence[Sequence[int]]]) -> list[dict]:
    """New examples with ``extra[b]`` (token-id lists) appended to example b's completions.

    For NAPO's ``rescore`` sharing: negatives borrowed from other users become extra completions
    of this user's row and are scored under this user's own prompt. Inputs are not modified.
    """
    if len(extra) != len(examples):
        raise ValueError(f"append_completions: {len(examples)} examples but {len(extra)} extra lists")
    return [{"prompt_ids": list(ex["prompt_ids"]),
             "completion_ids": [list(c) for c in ex["completion_ids"]] + [list(c) for c in more]}
            for ex, more in zip(examples, extra, strict=True)]


# --------------------------------------------------------------------------- collation


def _check_examples(examples: Sequence[dict], pad_token_id) -> int:
    if not examples:
        raise ValueError("collate: empty batch")
    if pad_token_id is None:
        raise ValueError("collate: pad_token_id is None; set tokenizer.pad_token (e.g. to eos_token)")
    return max(len(ex["completion_ids"]) for ex in examples)


def _gather_tensors(rows, poss, targets, slots, width: int, num_rows: int, counts, num_slots: int) -> dict:
    completion_mask = torch.zeros(len(counts), num_slots, dtype=torch.bool)
    for b, m_b in enumerate(counts):
        completion_mask[b, :m_b] = True
    rows = torch.tensor(rows, dtype=torch.long)
    poss = torch.tensor(poss, dtype=torch.long)
    # The positions whose logits are needed, as the model's own `logits_to_keep` bool mask: the
    # lm_head then runs inside the forward (so FSDP / ZeRO-3 / DDP wrappers see it) and only there.
    # A position may predict several tokens (packed: the last prompt token predicts every c_m[0]).
    flat = rows * width + poss
    kept = torch.unique(flat)                                      # sorted, row-major
    logits_mask = torch.zeros(num_rows * width, dtype=torch.bool)
    logits_mask[kept] = True
    return {
        "gather_row": rows,                                       # [N] row of the predicting position
        "gather_pos": poss,                                       # [N] its index in that row
        "gather_index": torch.searchsorted(kept, flat),           # [N] its index among the kept logits
        "gather_target": torch.tensor(targets, dtype=torch.long),  # [N] the token it must predict
        "gather_slot": torch.tensor(slots, dtype=torch.long),     # [N] flat completion index b * M + m
        "logits_mask": logits_mask.view(num_rows, width),         # [R, T] positions to project
        "completion_mask": completion_mask,                       # [B, M] True = a real completion
    }


def collate_naive(examples: Sequence[dict], pad_token_id: int) -> dict:
    """One right-padded row per real (prompt, completion) pair.

    Returns ``layout="naive"``, ``input_ids`` [R, T], ``attention_mask`` [R, T] (1 = token),
    the gather indices (N completion tokens in all) and ``completion_mask`` [B, M]. Missing
    completions (examples with fewer than M) get no row at all.
    """
    num_slots = _check_examples(examples, pad_token_id)
    seqs, rows, poss, targets, slots = [], [], [], [], []
    for b, ex in enumerate(examples):
        prompt = ex["prompt_ids"]
        for m, comp in enumerate(ex["completion_ids"]):
            r = len(seqs)
            seqs.append(list(prompt) + list(comp))
            for j, tok in enumerate(comp):
                rows.append(r)
                poss.append(len(prompt) + j - 1)  # the token before predicts this one
                targets.append(tok)
                slots.append(b * num_slots + m)
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for r, s in enumerate(seqs):
        input_ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        attention_mask[r, : len(s)] = 1
    batch = {"layout": "naive", "input_ids": input_ids, "attention_mask": attention_mask}
    counts = [len(ex["completion_ids"]) for ex in examples]
    batch.update(_gather_tensors(rows, poss, targets, slots, width, len(seqs), counts, num_slots))
    return batch


def packed_attention_mask(segment_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive 4D mask [B, 1, T, T] from segment ids [B, T] (0 = prompt, m + 1 = completion m,
    -1 = padding): a query sees earlier-or-equal keys of the prompt and of its own segment.
    A padding query sees only itself, so no row is fully blocked (that would give NaN)."""
    width = segment_ids.shape[1]
    pos = torch.arange(width, device=segment_ids.device)
    q, k = segment_ids[:, :, None], segment_ids[:, None, :]
    # one [B, T, T] bool pass, then one fill: the mask is built for every step, at every width
    allowed = ((k == 0) | (k == q)) & (pos[:, None] >= pos[None, :])
    allowed &= (q >= 0) | (pos[:, None] == pos[None, :])
    mask = torch.full(allowed.shape, torch.finfo(dtype).min, dtype=dtype, device=segment_ids.device)
    return mask.masked_fill_(allowed, 0.0)[:, None]


def collate_packed(examples: Sequence[dict], pad_token_id: int, dtype: torch.dtype = torch.float32) -> dict:
    """One row per prompt: ``[prompt, c_0, ..., c_{M_b-1}]``, right-padded.

    Returns ``layout="packed"``, ``input_ids`` [B, T], ``position_ids`` [B, T] (restarting at
    len(prompt) for every completion; 0 on padding), ``segment_ids`` [B, T], ``attention_mask``
    [B, 1, T, T] additive float in ``dtype`` (see :func:`packed_attention_mask`; it is re-cast to
    the model's compute dtype at scoring time), the gather indices and ``completion_mask`` [B, M].
    """
    num_slots = _check_examples(examples, pad_token_id)
    seqs, segs, pos_ids, rows, poss, targets, slots = [], [], [], [], [], [], []
    for b, ex in enumerate(examples):  # list operations per completion, not per token
        prompt = list(ex["prompt_ids"])
        n_prompt = len(prompt)
        seq, seg, pos = list(prompt), [0] * n_prompt, list(range(n_prompt))
        for m, comp in enumerate(ex["completion_ids"]):
            start, n = len(seq), len(comp)
            rows += [b] * n
            # token 0 is predicted from the last prompt position, not the previous completion
            poss += [n_prompt - 1, *range(start, start + n - 1)] if n else []
            targets += comp
            slots += [b * num_slots + m] * n
            seq += comp
            seg += [m + 1] * n
            pos += range(n_prompt, n_prompt + n)
        seqs.append(seq)
        segs.append(seg)
        pos_ids.append(pos)
    width = max(len(s) for s in seqs)
    input_ids = torch.tensor([s + [pad_token_id] * (width - len(s)) for s in seqs], dtype=torch.long)
    segment_ids = torch.tensor([s + [-1] * (width - len(s)) for s in segs], dtype=torch.long)
    position_ids = torch.tensor([s + [0] * (width - len(s)) for s in pos_ids], dtype=torch.long)
    batch = {
        "layout": "packed",
        "input_ids": input_ids,
        "position_ids": position_ids,
        "segment_ids": segment_ids,
        "attention_mask": packed_attention_mask(segment_ids, dtype),
    }
    counts = [len(ex["completion_ids"]) for ex in examples]
    batch.update(_gather_tensors(rows, poss, targets, slots, width, len(seqs), counts, num_slots))
    return batch


def left_padded_prompts(prompts: Sequence[Sequence[int]], pad_token_id: int) -> dict:
    """input_ids, attention_mask and position_ids [n, T] of prompts aligned to the right, so
    that every row's last token (its answer position) is column T - 1; positions count real
    tokens only (0 on padding), as for the unpadded prompt."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        attention_mask[i, width - len(p):] = 1
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}


def collate_answer(examples: Sequence[dict], pad_token_id: int) -> dict:
    """One left-padded row per prompt, no completion tokens (item-token data; module docstring).

    Every completion must be one token, or one token followed by one closing token that is the
    same for every completion of the batch (EOS), which is not scored. Returns
    ``layout="answer"``, ``input_ids`` / ``attention_mask`` / ``position_ids`` [B, T] (see
    :func:`left_padded_prompts`), ``answer_token`` [B, M] (the scored token of each completion,
    ``pad_token_id`` on missing slots) and ``completion_mask`` [B, M].
    """
    num_slots = _check_examples(examples, pad_token_id)
    closing = {tuple(c[1:]) for ex in examples for c in ex["completion_ids"]}
    if any(len(c) > 1 for c in closing) or len(closing) > 1:
        longest = max((c for ex in examples for c in ex["completion_ids"]), key=len)
        raise ValueError(
            f"scoring 'answer' scores a completion by its first token, so every completion must be one "
            f"item token (plus the same closing EOS); got a completion of {len(longest)} tokens: use "
            "item-token data (data_prep --item-format token, a tokenizer with item tokens) or scoring packed"
        )
    batch = {"layout": "answer", **left_padded_prompts([ex["prompt_ids"] for ex in examples], pad_token_id)}
    tokens = torch.full((len(examples), num_slots), pad_token_id, dtype=torch.long)
    completion_mask = torch.zeros(len(examples), num_slots, dtype=torch.bool)
    for b, ex in enumerate(examples):
        first = [c[0] for c in ex["completion_ids"]]
        tokens[b, : len(first)] = torch.tensor(first, dtype=torch.long)
        completion_mask[b, : len(first)] = True
    batch.update(answer_token=tokens, completion_mask=completion_mask)
    return batch


def collate_listwise(examples: Sequence[dict], pad_token_id: int, layout: str = "packed",
                     dtype: torch.dtype = torch.float32) -> dict:
    """The collate function selected by the config flag ``scoring: packed | naive | answer``."""
    if layout == "packed":
        return collate_packed(examples, pad_token_id, dtype=dtype)
    if layout == "naive":
        return collate_naive(examples, pad_token_id)
    if layout == "answer":
        return collate_answer(examples, pad_token_id)
    raise ValueError(f"scoring layout {layout!r} is not one of {LAYOUTS}; set scoring: packed, naive or answer")


# --------------------------------------------------------------------------- scoring


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under DDP / FSDP / torch.compile / PEFT wrappers, for lookups
    only (config, embeddings): the forward always goes through the outer wrapper."""
    inner = model
    for _ in range(8):
        if type(inner).__name__ in ("DistributedDataParallel", "FullyShardedDataParallel", "DeepSpeedEngine"):
            inner = inner.module
        elif hasattr(inner, "_orig_mod"):  # torch.compile
            inner = inner._orig_mod
        elif hasattr(inner, "get_base_model"):  # peft.PeftModel -> the LoRA-injected base model
            inner = inner.get_base_model()
        else:
            break
    return inner


def _compute_dtype(inner: torch.nn.Module, device: torch.device) -> torch.dtype:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return inner.get_input_embeddings().weight.dtype


@functools.cache
def _keeps_selected_logits(model_cls: type) -> bool:
    """Whether ``model_cls.forward`` slices ``logits_to_keep`` with transformers'
    ``slice_logits_to_keep``, which accepts a [batch, seq] bool mask (Llama, Qwen2, ...)."""
    try:
        return "slice_logits_to_keep" in inspect.getsource(model_cls.forward)
    except (OSError, TypeError):
        return False


def answer_logps(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Next-token log-probs at each row's answer position: [B, V] float32.

    batch: ``input_ids``, ``attention_mask``, ``position_ids`` [B, T] of left-padded prompts
    (:func:`left_padded_prompts`; the answer position is the last column). Only that position
    goes through the lm_head (``logits_to_keep=1``, accepted by every transformers causal LM);
    the log-softmax over the whole vocabulary is taken in float32.
    """
    inner = _unwrap(model)
    device = inner.get_input_embeddings().weight.device
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "position_ids")}
    logits = model(**inputs, logits_to_keep=1, use_cache=False).logits[:, -1]  # [B, V]
    return torch.log_softmax(logits.float(), dim=-1)


def completion_logps(model: torch.nn.Module, batch: dict, *, length_normalize: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of every completion under ``model``.

    Args:
        model: a transformers causal LM (Llama, Qwen2, ...), possibly wrapped by PEFT, DDP, FSDP
            or DeepSpeed, or inside ``with model.disable_adapter():``. The forward always goes
            through the outermost wrapper.
        batch: the output of :func:`collate_listwise` (tensors may already be on the device);
            with ``position_items`` [R, T] (LLaRA's placeholders, ``napo.hybrid.placeholders``) the
            model gets ``inputs_embeds`` with the projected item vectors at those positions.
        length_normalize: average instead of sum over each completion's tokens (no effect with
            the ``answer`` layout, which scores one token per completion).

    Returns:
        logps [B, M] float32: sum (or mean) over the completion's tokens of log p(token | prefix),
            log-softmax taken in float32; 0 for masked (missing) completions, which get no gradient.
        num_tokens [B, M] int64: completion lengths (0 for masked completions).
    """
    inner = _unwrap(model)
    device = inner.get_input_embeddings().weight.device
    layout = batch["layout"]
    if layout == "answer":  # one forward of the prompts; each completion = its first token's log-prob
        mask = batch["completion_mask"].to(device)
        logps = answer_logps(model, batch).gather(1, batch["answer_token"].to(device))  # [B, M]
        return torch.where(mask, logps, 0.0), mask.long()
    inputs = {"input_ids": batch["input_ids"].to(device)}
    if layout == "packed":
        attn = getattr(inner.config, "_attn_implementation", None)
        if attn not in _PACKED_ATTENTION:
            raise ValueError(
                f"packed scoring needs attn_implementation in {_PACKED_ATTENTION} (the model uses "
                f"{attn!r}, which ignores custom masks); load it with attn_implementation='sdpa' "
                "or set scoring: naive"
            )
        mask = batch["attention_mask"].to(device)
        dtype = _compute_dtype(inner, device)
        if mask.dtype != dtype:  # re-cast so blocked stays finfo(dtype).min, not -inf
            mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(
                mask != 0, torch.finfo(dtype).min)
        inputs["attention_mask"] = mask
        inputs["position_ids"] = batch["position_ids"].to(device)
    elif layout == "naive":
        inputs["attention_mask"] = batch["attention_mask"].to(device)
    else:
        raise ValueError(f"batch layout {layout!r} is not one of {LAYOUTS}")
    if "position_items" in batch:  # LLaRA's placeholders: projected aux vectors there (napo.hybrid)
        from napo.hybrid.placeholders import embed

        inputs["inputs_embeds"] = embed(model, inputs.pop("input_ids"), batch["position_items"].to(device))

    selected = _keeps_selected_logits(type(inner))
    if selected:  # logits only where a completion token is predicted: [U, V]
        inputs["logits_to_keep"] = batch["logits_mask"].to(device)
    logits = model(**inputs, use_cache=False).logits
    if selected:
        logits = logits[batch["gather_index"].to(device)]                      # [N, V]
    else:  # other architectures: full logits [R, T, V], then the same positions
        logits = logits[batch["gather_row"].to(device), batch["gather_pos"].to(device)]
    logits = logits.float()
    targets = batch["gather_target"].to(device)
    token_logps = logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)  # [N]

    slots = batch["gather_slot"].to(device)
    num_examples, num_slots = batch["completion_mask"].shape
    logps = torch.zeros(num_examples * num_slots, dtype=torch.float32, device=device)
    logps = logps.index_add(0, slots, token_logps).view(num_examples, num_slots)
    num_tokens = torch.zeros(num_examples * num_slots, dtype=torch.long, device=device)
    num_tokens = num_tokens.index_add(0, slots, torch.ones_like(slots)).view(num_examples, num_slots)
    if length_normalize:
        logps = logps / num_tokens.clamp(min=1)
    return logps, num_tokens


# --------------------------------------------------------------------------- borrowed completions


def _completion_after(joint: Sequence[int], alone: Sequence[int], split: int) -> list[int] | None:
    """joint[split:] when joint and alone agree on their first ``split`` tokens, else None."""
    if len(joint) < split or list(joint[:split]) != list(alone[:split]):
        return None
    return list(joint[split:])


def borrowed_completions(
    tokenizer,
    examples: Sequence[dict],
    borrowed_titles: Sequence[Sequence[str]],
    *,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
    tail_chars: int = 64,
) -> tuple[list[dict], list[list[list[int]]]]:
    """Token ids of items borrowed into a row, exactly as ``tokenize_listwise`` would give them had
    they been among the row's own candidates (NAPO's ``rescore`` sharing).

    A BPE merge may cross the prompt/completion boundary (``":" + "("``), so a title's tokens
    depend on the prompt it follows. Only the end of the prompt matters: each title is tokenized
    after the prompt's last ``tail_chars`` characters, split where the row's own completions start,
    and used when the row's own completions come out identical that way (checked on every row). A
    row that fails the check, or whose borrowed title merges further back than its own split, is
    tokenized again in full with all its titles (``tokenize_listwise``: its prompt/completion split
    may move, for every completion alike).

    Args:
        examples: per row ``{"prompt_ids", "completion_ids", "prompt", "titles"}``: the row's
            tokens as collated, its prompt text and the titles of its completions (same order).
        borrowed_titles: per row, the titles to add, in pool order.
    Item tokens need none of this: when every title is an added token appended verbatim
    (:func:`_appended_token_ids`, no closing specials), a borrowed item's ids are its token + EOS
    whatever the prompt, exactly what the row's own candidates got.

    Returns:
        (examples, possibly re-tokenized rows; per row, the borrowed completions' token ids).
    """
    eos = tokenizer.eos_token_id
    every = {t for ex in examples for t in ex["titles"]} | {t for b in borrowed_titles for t in b}
    appendable, closing = _appended_token_ids(tokenizer, every)
    if closing == 0 and every and len(appendable) == len(every):
        cut = (lambda ids: ids[:max_completion_length]) if max_completion_length is not None else (lambda ids: ids)
        return list(examples), [[cut([appendable[t], eos]) for t in b] for b in borrowed_titles]
    texts: list[str] = []
    for ex, borrowed in zip(examples, borrowed_titles, strict=True):
        tail = ex["prompt"][-tail_chars:]
        texts += [tail, *(tail + t for t in ex["titles"]), *(tail + t for t in borrowed)]
    ids = tokenizer(texts, add_special_tokens=True)["input_ids"] if texts else []

    def finish(tokens: list[int]) -> list[int]:
        tokens = tokens if tokens and tokens[-1] == eos else tokens + [eos]
        return tokens[:max_completion_length] if max_completion_length is not None else tokens

    out_examples, out_borrowed, cursor = [], [], 0
    for ex, borrowed in zip(examples, borrowed_titles, strict=True):
        alone = ids[cursor]
        own = ids[cursor + 1: cursor + 1 + len(ex["titles"])]
        joint = ids[cursor + 1 + len(ex["titles"]): cursor + 1 + len(ex["titles"]) + len(borrowed)]
        cursor += 1 + len(ex["titles"]) + len(borrowed)
        # Where the row's completions start, in the tail's tokens: from the chosen completion.
        first = list(ex["completion_ids"][0])
        body = first[:-1] if first and first[-1] == eos else first
        split = len(own[0]) - len(body) if own else -1
        found = None
        if split >= 0:
            mine = [_completion_after(j, alone, split) for j in own]
            if all(m is not None and finish(m) == list(c) for m, c in zip(mine, ex["completion_ids"], strict=True)):
                theirs = [_completion_after(j, alone, split) for j in joint]
                if all(t is not None for t in theirs):
                    found = [finish(t) for t in theirs]
        if found is not None:
            out_examples.append(ex)
            out_borrowed.append(found)
            continue
        # Rare: re-tokenize the whole row with its borrowed titles (its split may move).
        (row,) = tokenize_listwise(tokenizer, [ex["prompt"]], [[*ex["titles"], *borrowed]],
                                   max_prompt_length=max_prompt_length,
                                   max_completion_length=max_completion_length)
        n_own = len(ex["titles"])
        out_examples.append({**ex, "prompt_ids": row["prompt_ids"], "completion_ids": row["completion_ids"][:n_own]})
        out_borrowed.append(row["completion_ids"][n_own:])
    return out_examples, out_borrowed
