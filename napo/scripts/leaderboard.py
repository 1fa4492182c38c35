"""One leaderboard of finished runs: a table per protocol on the same test rows, with paired intervals.

    napo-leaderboard RUN_DIR... --baseline SASRec --output board.md [--names N...] [--protocols rank full]

RUN_DIR: napo-eval outputs (LLMs, Popularity, aux scores) and napo-recsys runs (SASRec, GRU4Rec,
Caser, DreamRec, PreferDiff, MF, LightGCN), each with metrics.json and per_row.json. Runs sharing a
method name are its seeds (mean +- s.e. over seeds; paired seed by seed against the baseline). A run
that scored other rows, another split or other data is refused with one line. Writes the markdown
(stdout and --output) and a figure beside it (.png). See napo/eval/leaderboard.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_prep.errors import UserError
from napo.eval import leaderboard


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"error: {message}; see napo-leaderboard --help\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="napo-leaderboard", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished runs (metrics.json + per_row.json)")
    p.add_argument("--baseline", required=True, help="method name every other method is paired against")
    p.add_argument("--output", help="markdown file to write (the figure goes beside it, .png)")
    p.add_argument("--names", nargs="+", help="one method name per run (default: metrics.json name, run.json model)")
    p.add_argument("--protocols", nargs="+", default=["rank", "full"], choices=list(leaderboard.PROTOCOLS),
                   help="per_row.json sections to tabulate (default: rank full)")
    p.add_argument("--metrics", nargs="+", help="columns (default per protocol: rank hr@1 hr@5 hr@10 ndcg@10 mrr; "
                   "full hr@10 hr@20 ndcg@10 ndcg@20 mrr)")
    p.add_argument("--paired", nargs="+", help="metrics with a paired column (default: rank hr@1 ndcg@10; full hr@10 ndcg@10)")
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap draws per interval")
    p.add_argument("--title", default=None, help="heading of the markdown")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.names is not None and len(args.names) != len(args.runs):
            raise UserError(f"{len(args.names)} --names for {len(args.runs)} runs; give one name per run")
        runs = [leaderboard.load_run(d, args.names[i] if args.names else None) for i, d in enumerate(args.runs)]
        boards = []
        for protocol in args.protocols:
            board = leaderboard.build(runs, protocol, args.baseline, metrics=args.metrics, paired_metrics=args.paired,
                                      n_resamples=args.resamples)
            if board is not None:
                boards.append(board)
        if not boards:
            raise UserError(f"no run has results for {', '.join(args.protocols)}; check the run directories")
    except UserError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    text = (f"## {args.title}\n\n" if args.title else "") + "\n".join(leaderboard.render(b) for b in boards)
    print(text)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        figure = leaderboard.plot(boards, out.with_suffix(".png"))
        print(f"written: {out}, {figure}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
