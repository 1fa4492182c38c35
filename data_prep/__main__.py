"""`python -m data_prep --dataset NAME --output-dir DIR [options]`."""

from __future__ import annotations

import argparse
import sys

from data_prep.errors import DataPrepError


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other data_prep error."""

    def error(self, message: str):
        self.exit(2, f"data_prep: error: {message}; see python -m data_prep --help\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m data_prep",
        description="Turn interaction logs into candidate-list prompt datasets (train/valid/test).",
    )
    p.add_argument("--dataset", required=True,
                   help="ml-100k | ml-1m | lastfm | lastfm-llara | seq-txt | interactions")
    p.add_argument("--output-dir", required=True, help="where the DatasetDict is written")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output-dir")
    p.add_argument("--input-dir", help="folder of a presplit source (lastfm-llara, seq-txt)")
    p.add_argument("--interactions", help="interactions file (csv/tsv/parquet/jsonl) for --dataset interactions")
    p.add_argument("--items", help="items file (item_id, title) for --dataset interactions")
    p.add_argument("--min-rating", type=float, default=None, help="keep interactions with rating >= this")
    p.add_argument("--domain", default=None, help="movie | music | book | game | generic (template choice)")
    p.add_argument("--template", default=None, help="your own template file (see data_prep/templates)")
    p.add_argument("--min-history", type=int, default=3, help="fewest previous items in an example")
    p.add_argument("--max-history", type=int, default=10, help="most previous items in an example")
    p.add_argument("--split", default="user",
                   help="user: users 8:1:1; loo: leave-one-out; time: global time cut-offs")
    p.add_argument("--num-candidates", type=int, default=20, help="target + negatives per example")
    p.add_argument("--candidate-sampler", default="llara", help="llara | uniform | popularity")
    p.add_argument("--popularity-alpha", type=float, default=1.0, help="popularity sampler: p ~ count^alpha")
    p.add_argument("--item-format", default="title", help="title | token (<item_ID> tokens)")
    p.add_argument("--item-placeholders", action="store_true",
                   help="title prompts with LLaRA's placeholders: [HistoryEmb] after each history title, "
                        "[CansEmb] after each candidate (hybrid models put the item's projected aux vector there)")
    p.add_argument("--prompt-style", default="candidates",
                   help="candidates: the prompt lists the candidates (the papers'); history: the history "
                        "only (data_prep/templates/history/), for full-catalogue ranking; the candidate "
                        "lists are drawn identically either way")
    p.add_argument("--train-prefixes", action="store_true",
                   help="seq-txt only: one training row per position of each training line (history "
                        "i1..i(k-1) -> target ik for every k with >= --min-history items, the history cut "
                        "to --max-history), each with its own candidates; as SASRec's all_positions sees "
                        "them. Valid/test rows are unchanged. The other sources are windowed already")
    p.add_argument("--storage", default="ids",
                   help="ids (store ids; prompt/chosen/rejected rendered on load, a tenth of the disk) | text")
    p.add_argument("--protocol", default="sequential",
                   help="sequential: candidate-list prompts (default); cf: user-item sets split per "
                        "user 80/10/10 for MF / LightGCN (see data_prep/cf.py)")
    p.add_argument("--seed", type=int, default=42, help="user split, template choice, uniform/popularity samplers")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as stop:  # --help, or a usage error already printed as one line
        return int(stop.code or 0)
    try:
        if args.protocol == "cf":
            from data_prep.cf import build_cf, summary_table

            meta = build_cf(args)
            print(summary_table(meta))
            print(f"wrote {args.output_dir} (fingerprint {meta['fingerprint'][:12]})")
            return 0
        if args.protocol != "sequential":
            raise DataPrepError(f"unknown --protocol '{args.protocol}'; choose sequential or cf")
        from data_prep.build import build, print_summary

        meta = build(args)
    except DataPrepError as err:
        print(f"data_prep: error: {err}", file=sys.stderr)
        return err.exit_code
    print_summary(meta, args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
