"""Arguments shared by the recipes and strict parsing of their ``--config`` YAML files.

``trl.TrlParser`` reads ``--config FILE`` by turning every YAML key into a parser default; keys
that match no field are collected and, with ``fail_with_unknown_args=True``, reported as a
``ValueError`` traceback without the file position (``trl/scripts/*.py`` even pass ``False`` and
drop them silently). A typo such as ``lerning_rate: 1e-5`` must instead stop the run with one
line that says where it is and what was probably meant. :func:`parse_recipe_args` checks the YAML
keys first (with their line and column), then lets TrlParser do the parsing.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# Top-level YAML keys TrlParser itself consumes (not dataclass fields).
_RESERVED_KEYS = ("env",)


@dataclass
class DatasetArguments:
    """Which prepared dataset a recipe trains on (see docs/contracts.md)."""

    dataset_dir: str | None = field(
        default=None, metadata={"help": "Prepared dataset directory (output of `python -m data_prep`)."}
    )
    train_split: str = field(default="train", metadata={"help": "Split used for training."})
    eval_split: str = field(default="valid", metadata={"help": "Split used for evaluation during training."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training rows (None: all)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N evaluation rows (None: all)."}
    )


def _config_path(argv: Sequence[str]) -> str | None:
    args = list(argv)
    if "--config" in args:
        i = args.index("--config")
        return args[i + 1] if i + 1 < len(args) else None
    return None


def _known_keys(parser: Any) -> set[str]:
    return {action.dest for action in parser._actions} | set(_RESERVED_KEYS)


def check_config_keys(parser: Any, config_path: str) -> str | None:
    """One error line for the first problem in a recipe YAML file, or None when it is fine.

    Problems: unreadable file, YAML syntax error, a top level that is not a mapping, a key that
    no dataclass of ``parser`` defines (with the closest known key as a suggestion).
    """
    import yaml

    try:
        with open(config_path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as err:
        return f"cannot read config file {config_path}: {err.strerror}"
    try:
        root = yaml.compose(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"{config_path}:{mark.line + 1}:{mark.column + 1}" if mark else config_path
        return f"{where}: invalid YAML ({err.problem}); fix the syntax"
    if root is None:
        return None
    if not isinstance(root, yaml.MappingNode):
        return f"{config_path}:1:1: the config must be a mapping of `key: value` lines"
    known = _known_keys(parser)
    for key_node, _ in root.value:
        key = key_node.value
        if key not in known:
            mark = key_node.start_mark
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"did you mean '{close[0]}'?" if close else "remove it or check the recipe's --help"
            return f"{config_path}:{mark.line + 1}:{mark.column + 1}: unknown key '{key}'; {hint}"
    return None


def check_command_line(parser: Any, argv: Sequence[str]) -> str | None:
    """One error line for the first unknown ``--flag`` on the command line, or None."""
    options = {opt for action in parser._actions for opt in action.option_strings} | {"--config"}
    for arg in argv:
        if arg.startswith("--"):
            flag = arg.split("=", 1)[0]
            if flag not in options:
                close = difflib.get_close_matches(flag, sorted(options), n=1)
                hint = f"did you mean '{close[0]}'?" if close else "see --help"
                return f"unknown command-line option '{flag}'; {hint}"
    return None


def parse_recipe_args(parser: Any, argv: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parse ``argv`` (default ``sys.argv[1:]``) with a ``TrlParser``, strictly.

    Unknown YAML keys, unknown command-line flags and invalid values end the program with exit
    status 2 and one ``error:`` line on stderr (file:line:column for YAML keys).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = _config_path(argv)
    if "--config" in argv and config_path is None:
        parser.exit(2, "error: --config needs a file path\n")
    problem = check_command_line(parser, argv)
    if problem is None and config_path is not None:
        problem = check_config_keys(parser, config_path)
    if problem is not None:
        parser.exit(2, f"error: {problem}\n")
    try:
        return parser.parse_args_and_config(argv, fail_with_unknown_args=True)
    except ValueError as err:
        message = " ".join(str(err).split())
        where = f" (config {config_path})" if config_path else ""
        parser.exit(2, f"error: invalid arguments{where}: {message}\n")
