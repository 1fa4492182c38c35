"""Model cards of our own: what a run trained, from what, on what, how well, and how to redo it.

A card is a plain record (a dict, kept as ``OUT/napo_card.json``) rendered to ``OUT/README.md``.
Trainers write it on every save (``napo.hub.RunCardMixin``), the recommender script writes it for
its models, and ``napo-eval`` adds an evaluation row to the card of the model directory it
evaluates and renders it again. Nothing here touches the network.

Record keys: ``method`` (a key of :data:`METHODS` or a recommender name such as ``SASRec``),
``model_name``, ``base_model`` (Hub id or None), ``base_model_path`` (what was loaded),
``init_adapter``, ``adapter`` (LoRA settings or None), ``quantization`` (or None), ``dataset``
(name, protocol, item_format, num_candidates, fingerprint, train_rows, rows), ``objective`` (settings as
trained: ``num_negatives`` is the K the data gave, ``rejected_per_row`` what it had), ``training``
(settings, what set the length, epochs trained, the distributed strategy that ran), ``results``
(final training metrics), ``evaluations`` (list of rows), ``command``, ``versions``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

CARD_RECORD = "napo_card.json"
CARD_FILE = "README.md"

_NAPO_BIB = """\
@article{napo2025,
    title  = {{Negative-Aware Preference Optimization for LLM-based Recommendation}},
    year   = 2025,
    eprint = {arXiv:2508.09653},
}"""
_SDPO_BIB = """\
@inproceedings{chen2024softmax,
    title     = {{On Softmax Direct Preference Optimization for Recommendation}},
    author    = {Chen, Yuxin and Tan, Junfei and Zhang, An and Yang, Zhengyi and Sheng, Leheng and Zhang, Enzhi and Wang, Xiang and Chua, Tat-Seng},
    booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
    year      = 2024,
    eprint    = {arXiv:2406.09215},
}"""
_DPO_BIB = """\
@inproceedings{rafailov2023direct,
    title     = {{Direct Preference Optimization: Your Language Model is Secretly a Reward Model}},
    author    = {Rafailov, Rafael and Sharma, Archit and Mitchell, Eric and Ermon, Stefano and Manning, Christopher D. and Finn, Chelsea},
    booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
    year      = 2023,
    eprint    = {arXiv:2305.18290},
}"""
_LLARA_BIB = """\
@inproceedings{liao2024llara,
    title     = {{LLaRA: Large Language-Recommendation Assistant}},
    author    = {Liao, Jiayi and Li, Sihang and Yang, Zhengyi and Wu, Jiancan and Yuan, Yancheng and Wang, Xiang and He, Xiangnan},
    booktitle = {SIGIR},
    year      = 2024,
    eprint    = {arXiv:2312.02445},
}"""
_SASREC_BIB = """\
@inproceedings{kang2018self,
    title     = {{Self-Attentive Sequential Recommendation}},
    author    = {Kang, Wang-Cheng and McAuley, Julian},
    booktitle = {ICDM},
    year      = 2018,
    eprint    = {arXiv:1808.09781},
}"""
_GRU4REC_BIB = """\
@inproceedings{hidasi2016session,
    title     = {{Session-based Recommendations with Recurrent Neural Networks}},
    author    = {Hidasi, Bal{\\'a}zs and Karatzoglou, Alexandros and Baltrunas, Linas and Tikk, Domonkos},
    booktitle = {ICLR},
    year      = 2016,
    eprint    = {arXiv:1511.06939},
}"""
_CASER_BIB = """\
@inproceedings{tang2018personalized,
    title     = {{Personalized Top-N Sequential Recommendation via Convolutional Sequence Embedding}},
    author    = {Tang, Jiaxi and Wang, Ke},
    booktitle = {WSDM},
    year      = 2018,
    eprint    = {arXiv:1809.07426},
}"""
_TRL_BIB = """\
@software{vonwerra2020trl,
    title  = {{TRL: Transformer Reinforcement Learning}},
    author = {von Werra, Leandro and Belkada, Younes and Tunstall, Lewis and Beeching, Edward and Thrush, Tristan and Lambert, Nathan and Huang, Shengyi and Rasul, Kashif and Gallou{\\'e}dec, Quentin},
    url    = {https://github.com/huggingface/trl},
    year   = 2020,
}"""

# method key -> (display name, tag, one-line description, paper line, bibtex entries)
METHODS: dict[str, tuple[str, str, str, str, tuple[str, ...]]] = {
    "sft": ("SFT", "sft",
            "supervised fine-tuning: the model learns to answer each candidate-list prompt with the "
            "next item (the LLaRA / S-DPO first stage)",
            "LLaRA: Large Language-Recommendation Assistant (SIGIR 2024, arXiv:2312.02445)",
            (_LLARA_BIB,)),
    "dpo": ("DPO", "dpo",
            "Direct Preference Optimization: the target item against one negative, against a frozen "
            "reference",
            "Direct Preference Optimization: Your Language Model is Secretly a Reward Model "
            "(NeurIPS 2023, arXiv:2305.18290)",
            (_DPO_BIB,)),
    "sdpo": ("S-DPO", "s-dpo",
             "Softmax DPO: the target item against K negatives at once (a softmax over the "
             "preference rewards), against a frozen reference",
             "On Softmax Direct Preference Optimization for Recommendation (NeurIPS 2024, "
             "arXiv:2406.09215)",
             (_SDPO_BIB, _DPO_BIB)),
    "napo": ("NAPO", "napo",
             "Negative-Aware Preference Optimization: reference-free, negatives shared in the batch "
             "between similar users, and a dynamic reward margin from an auxiliary recommender",
             "Negative-Aware Preference Optimization for LLM-based Recommendation (arXiv:2508.09653)",
             (_NAPO_BIB, _SDPO_BIB)),
}
RECOMMENDERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "SASRec": ("Self-Attentive Sequential Recommendation (ICDM 2018, arXiv:1808.09781)", (_SASREC_BIB,)),
    "GRU4Rec": ("Session-based Recommendations with Recurrent Neural Networks (ICLR 2016, arXiv:1511.06939)",
                (_GRU4REC_BIB,)),
    "Caser": ("Personalized Top-N Sequential Recommendation via Convolutional Sequence Embedding "
              "(WSDM 2018, arXiv:1809.07426)", (_CASER_BIB,)),
    "Pop": ("most-popular items of the training data (no paper)", ()),
}
EVAL_KEYS = ("hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10", "mrr", "full/hr@10", "full/ndcg@10")


def method_facts(method: str) -> tuple[str, str, str, str, tuple[str, ...]]:
    """(display name, tag, description, paper line, bibtex entries) of a method or recommender."""
    if method in METHODS:
        return METHODS[method]
    paper, bibs = RECOMMENDERS.get(method, ("(no paper recorded)", ()))
    return method, method.lower(), f"the {method} recommender (no LLM), trained by napo-recsys", paper, bibs


def _is_llm(record: dict) -> bool:
    return record.get("method") in METHODS


def tags(record: dict) -> list[str]:
    """recommendation, the method, and the libraries the run used (trl, peft)."""
    out = ["recommendation", method_facts(record["method"])[1]]
    if _is_llm(record):
        out.append("trl")
        if record.get("adapter"):
            out.append("peft")
        if record.get("quantization"):
            out.append("4-bit" if "4-bit" in record["quantization"] else "8-bit")
    return out


def _front_matter(record: dict) -> str:
    meta: dict[str, Any] = {}
    if record.get("base_model"):
        meta["base_model"] = record["base_model"]
    if _is_llm(record):
        meta["library_name"] = "peft" if record.get("adapter") and not record.get("merged") else "transformers"
        meta["pipeline_tag"] = "text-generation"
    dataset = record.get("dataset") or {}
    if dataset.get("hub_id"):
        meta["datasets"] = [dataset["hub_id"]]
    meta["tags"] = tags(record)
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _table(rows: list[tuple[str, Any]], head: str = "setting") -> list[str]:
    return [f"| {head} | value |", "|---|---|", *(f"| {k} | {_cell(v)} |" for k, v in rows)]


def _negatives_line(record: dict) -> list[str]:
    """The K that was trained (the data's, not only the setting's), for the listwise methods."""
    objective = record.get("objective") or {}
    k, per_row = objective.get("num_negatives"), objective.get("rejected_per_row")
    if record.get("method") not in ("dpo", "sdpo", "napo") or k is None:
        return []
    line = f"Negatives per example: K = {k}"
    if per_row is not None:
        line += f", drawn from the {per_row} rejected completion(s) of each row"
    if k == 1 and record["method"] == "sdpo":
        line += " (with one negative, the S-DPO loss is the DPO loss)"
    return ["", line + "."]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return "-" if value is None else str(value).replace("|", "\\|")


def _base_lines(record: dict) -> list[str]:
    base, path = record.get("base_model"), record.get("base_model_path")
    if base:
        line = f"Base model: [{base}](https://huggingface.co/{base})"
    elif path:
        line = f"Base model: a local model directory (not on the Hugging Face Hub): `{path}`"
    else:
        return []
    lines = [line + "."]
    if record.get("init_adapter"):
        lines.append(f"Training continued the adapter `{record['init_adapter']}` (its frozen copy is the reference).")
    return lines


def _evaluation_lines(record: dict) -> list[str]:
    rows = record.get("evaluations") or []
    if not rows:
        return ["No evaluation has been run on this output yet (`napo-eval` adds it here)."]
    keys = [k for k in EVAL_KEYS if any(k in r.get("metrics", {}) for r in rows)]
    lines = ["| evaluation | dataset | split | examples | " + " | ".join(keys) + " |",
             "|---|---|---|---|" + "---|" * len(keys)]
    for r in rows:
        values = [f"{r['metrics'][k]:.4f}" if r["metrics"].get(k) is not None else "-" for k in keys]
        lines.append(f"| {r.get('name', '-')} | {r.get('dataset', '-')} | {r.get('split', '-')} | "
                     f"{r.get('num_examples', '-')} | " + " | ".join(values) + " |")
    return lines


def render(record: dict) -> str:
    """The README.md of a run (YAML front matter + markdown) from its record."""
    name, _, description, paper, bibs = method_facts(record["method"])
    title = record.get("model_name") or "model"
    lines = [_front_matter(record), f"# {title}", "",
             f"A recommender trained with **{name}**: {description}.", *_negatives_line(record), ""]
    lines += ["## Method", "", f"{name}: {paper}.", ""]
    base = _base_lines(record)
    if base:
        lines += ["## Base model", "", *base, ""]
    if _is_llm(record):
        lines += ["## Adapter and quantization", ""]
        adapter = record.get("adapter")
        if record.get("merged"):
            lines += [f"The LoRA adapter `{record['merged']}` was merged into the full-precision base: this is a "
                      "full model (loads without PEFT).", ""]
        if adapter:
            lines += _table([(f"lora_{k}", v) for k, v in adapter.items()])
        else:
            lines.append("No adapter: every weight was trained.")
        lines += ["", f"Quantization: {record.get('quantization') or 'none (full-precision base)'}.", ""]
    dataset = record.get("dataset") or {}
    if dataset:
        lines += ["## Dataset", "", *_table([(k, v) for k, v in dataset.items() if k != "hub_id"]), ""]
    if record.get("objective"):
        lines += ["## Objective", "", *_table(list(record["objective"].items())), ""]
    if record.get("training"):
        lines += ["## Training", "", *_table(list(record["training"].items())), ""]
    if record.get("results"):
        lines += ["## Training results", "", *_table(list(record["results"].items()), "metric"), ""]
    lines += ["## Evaluation", "", *_evaluation_lines(record), ""]
    if record.get("command"):
        lines += ["## Command", "", "```bash", record["command"], "```", ""]
    if record.get("versions"):
        lines += ["## Versions", "", *_table(list(record["versions"].items())), ""]
    citations = list(bibs) + ([_TRL_BIB] if _is_llm(record) else [])
    if citations:
        lines += ["## Citations", "", "```bibtex", "\n\n".join(citations), "```", ""]
    return "\n".join(lines)


def write_card(output_dir: str | Path, record: dict) -> Path:
    """Write OUT/napo_card.json (the record) and OUT/README.md (rendered); returns README's path."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CARD_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    path = out / CARD_FILE
    path.write_text(render(record))
    return path


def read_card(model_dir: str | Path | None) -> dict | None:
    """The card record of a local model directory, or None (no directory, or no card)."""
    if not model_dir:
        return None
    path = Path(model_dir) / CARD_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def add_evaluation(model_dir: str | Path, metrics: dict, *, name: str) -> bool:
    """Add (or replace, by ``name``) one evaluation row in the card of ``model_dir``; re-render.

    ``metrics`` is an evaluation's metrics.json (docs/contracts.md, section 6). Returns False when
    the directory has no card (a Hub id, or a model this toolkit did not train).
    """
    record = read_card(model_dir)
    if record is None:
        return False
    rank = dict(metrics.get("rank") or {})
    rank.update({f"full/{k}": v for k, v in (metrics.get("full") or {}).items()})  # the catalogue protocol
    row = {
        "name": name,
        "dataset": metrics.get("dataset"),
        "split": metrics.get("split"),
        "num_examples": metrics.get("num_examples"),
        "metrics": {k: rank.get(k) for k in EVAL_KEYS if k in rank},
    }
    record["evaluations"] = [r for r in record.get("evaluations", []) if r.get("name") != name] + [row]
    write_card(model_dir, record)
    return True


def launcher_words() -> list[str] | None:
    """``["accelerate", "launch", <its options>]`` when this process was started by
    ``accelerate launch`` (read from the launcher's own command line), else None.

    accelerate sets ``ACCELERATE_DYNAMO_BACKEND`` for the processes it launches; the launcher is
    this process's parent (its single worker, or torchrun's workers started in its process). Where
    its command line cannot be read, the options are reduced to the process count.
    """
    import os
    import sys

    if "ACCELERATE_DYNAMO_BACKEND" not in os.environ:
        return None
    try:
        parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        parent = []
    parent = [w for w in parent if w]
    start = next((i + 1 for i, w in enumerate(parent) if w == "accelerate.commands.launch"
                  or (w == "launch" and i > 0 and Path(parent[i - 1]).name.startswith("accelerate"))), None)
    script = sys.argv[0]
    if start is not None and script in parent[start:]:
        return ["accelerate", "launch", *parent[start:start + parent[start:].index(script)]]
    return ["accelerate", "launch", "--num_processes", os.environ.get("WORLD_SIZE", "1")]


def command_line(argv: list[str] | None = None, program: str | None = None) -> str:
    """The command as the user could type it again.

    ``argv`` None: this process's command line (a console script by its name, ``napo-train``; a
    file as ``python FILE``, or ``accelerate launch [options] FILE`` when accelerate launched it).
    Otherwise ``program`` followed by ``argv`` (a ``main(argv)`` call).
    """
    import shlex
    import sys

    if argv is None:
        first, argv = sys.argv[0], list(sys.argv[1:])
        launcher = launcher_words()
        if launcher is not None:
            program = " ".join(shlex.quote(w) for w in [*launcher, first])
        else:
            program = Path(first).name if Path(first).name.startswith("napo-") else f"python {first}"
    words = [shlex.quote(a) for a in argv]
    return " ".join([program or "", *words]).strip()


def dataset_facts(source: str, meta: dict, rows: dict[str, int] | None = None) -> dict:
    """The card's dataset section from a dataset's meta (``load_prepared`` or ``load_training_data``)."""
    args = meta.get("args") or {}
    facts = {
        "name": meta.get("dataset") or source,
        "source": source,
        "protocol": args.get("candidate_sampler"),
        "item_format": meta.get("item_format"),
        "num_candidates": meta.get("num_candidates"),
        "fingerprint": meta.get("fingerprint"),
    }
    if meta.get("train_prefixes"):  # data_prep --train-prefixes
        facts["train_rows"] = "one per prefix of each training sequence"
    if rows:
        facts["rows"] = ", ".join(f"{k} {v}" for k, v in rows.items())
    if meta.get("source") == "dataset_name" and not Path(source).exists():
        facts["hub_id"] = source
    return {k: v for k, v in facts.items() if v is not None}
