"""Publish a prepared dataset directory as a Hub dataset repo, with a dataset card.

    python -m data_prep.push runs/data/ml-100k --repo-id me/ml-100k-llara [--private] [--stage-dir DIR]

The repo holds one parquet file per split (``data/{split}.parquet``: every column of
docs/contracts.md, row order kept), ``items.jsonl``, ``meta.json`` and a ``README.md`` whose YAML
header maps the splits to their files, so ``datasets.load_dataset("me/ml-100k-llara")`` (and
``dataset_name: me/ml-100k-llara`` in a training config) reads it back. The card states the
protocol, the counts and the fingerprint of ``meta.json``. A push is one ``create_repo`` and one
``upload_folder``. ``--stage-dir`` writes the folder without pushing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from data_prep.errors import UserError
from data_prep.prepared import load_prepared


def dataset_card(meta: dict, splits: dict[str, int], num_items: int) -> str:
    """README.md of the Hub dataset repo: YAML header (configs, tags) + protocol, counts, fingerprint."""
    args = meta.get("args") or {}
    header = {
        "configs": [{"config_name": "default",
                     "data_files": [{"split": s, "path": f"data/{s}.parquet"} for s in splits]}],
        "tags": ["recommendation", "napo"],
        "task_categories": ["text-generation"],
    }
    rows = [
        ("dataset", meta.get("dataset")),
        ("domain", meta.get("domain")),
        ("protocol (candidate sampler)", args.get("candidate_sampler", "-")),
        ("candidates per example", meta.get("num_candidates")),
        ("item format", meta.get("item_format")),
        ("items", num_items),
        *((f"{s} examples", n) for s, n in splits.items()),
        ("format version", meta.get("format_version")),
        ("fingerprint (sha256 of meta.json)", meta.get("fingerprint")),
    ]
    lines = ["---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "",
             f"# {meta.get('dataset')}: candidate-list recommendation prompts", "",
             "Each row: a user's history, the next item (`target`), a candidate list with the target among "
             "them (`candidates`), the rendered `prompt`, the target's title (`chosen`) and the other "
             "candidates' titles (`rejected`, a list). Made by `python -m data_prep` of the NAPO toolkit; "
             "`items.jsonl` maps item ids to titles, `meta.json` records how it was made.", "",
             "| property | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), "",
             "```python", "from datasets import load_dataset", "",
             'dataset = load_dataset("REPO_ID")  # or dataset_name: REPO_ID in a napo config', "```", ""]
    return "\n".join(lines)


def stage(prepared_dir: str | Path, out_dir: str | Path, repo_id: str | None = None) -> Path:
    """Write the Hub folder of ``prepared_dir`` into ``out_dir`` (parquet splits, side files, card)."""
    dataset, items, meta = load_prepared(prepared_dir)
    out = Path(out_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    for name, split in dataset.items():
        split.to_parquet(str(out / "data" / f"{name}.parquet"))
    for side in ("items.jsonl", "meta.json"):
        shutil.copyfile(Path(prepared_dir) / side, out / side)
    card = dataset_card(meta, {name: len(split) for name, split in dataset.items()}, len(items))
    (out / "README.md").write_text(card.replace("REPO_ID", repo_id or "REPO_ID"))
    return out


def push_prepared(prepared_dir: str | Path, repo_id: str, *, private: bool | None = None,
                  token: str | None = None) -> str:
    """Stage and upload ``prepared_dir`` to the dataset repo ``repo_id``; returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = stage(prepared_dir, tmp, repo_id)
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=str(folder),
                          commit_message="Upload a prepared dataset (data_prep)")
    return f"https://huggingface.co/datasets/{repo_id}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.push", description=__doc__.split("\n\n")[0])
    p.add_argument("prepared_dir", help="a directory written by python -m data_prep")
    p.add_argument("--repo-id", help="Hub dataset repo (namespace/name); required unless --stage-dir")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--stage-dir", help="only write the folder that would be pushed, here")
    args = p.parse_args(argv)
    try:
        if args.stage_dir:
            print(f"staged {stage(args.prepared_dir, args.stage_dir, args.repo_id)}")
        elif not args.repo_id:
            raise UserError("give --repo-id (to push) or --stage-dir (to write the folder only)")
        else:
            print(f"pushed {push_prepared(args.prepared_dir, args.repo_id, private=args.private or None)}")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
