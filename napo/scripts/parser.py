"""The one argument style of every script: dataclasses, a YAML ``--config``, command-line overrides.

``ScriptParser`` is transformers' ``HfArgumentParser`` (the parser under TRL's ``TrlParser``)
made strict, so that a run never silently drops a setting:

- ``--config FILE`` and ``--config=FILE`` both read a YAML mapping whose keys are dataclass
  fields; its values become defaults and the command line overrides them. A top-level ``env:``
  mapping sets environment variables (as TrlParser does).
- A key that no dataclass defines stops the run with one line that says where it is and what was
  probably meant: ``error: FILE:LINE:COL: unknown key 'lerning_rate'; did you mean 'learning_rate'?``
  Unknown command-line flags, YAML syntax errors and invalid values (a dataclass's
  ``__post_init__`` raising ``ValueError``) end the same way, with exit status 2.
- ``--help`` works whatever the help strings contain (``%`` is escaped for argparse).

It imports transformers' parser only, not TRL: the recommender script stays free of TRL.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Sequence
from typing import Any

from transformers import HfArgumentParser

# Top-level YAML keys the parser itself consumes (not dataclass fields).
RESERVED_KEYS = ("env",)


def config_path(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """(the --config path or None, argv without the --config option). '' = --config without a path."""
    rest, path, args = [], None, list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config":
            path = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else ""
            i += 1 if path == "" else 2
            continue
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
            i += 1
            continue
        rest.append(arg)
        i += 1
    return path, rest


class ScriptParser(HfArgumentParser):
    """``HfArgumentParser`` over ``dataclass_types`` with a strict YAML ``--config`` (see module doc)."""

    def __init__(self, dataclass_types, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # `--lr` must not silently mean `--lr_scheduler_type`
        super().__init__(dataclass_types, **kwargs)
        self.add_argument("--config", metavar="FILE", help="YAML file of settings (command-line flags override it)")
        for action in self._actions:
            if action.help and "%" in action.help and "%%" not in action.help:
                action.help = action.help.replace("%", "%%")  # argparse formats help with %

    def error(self, message: str):  # argparse's own complaints: one line, exit 2, no usage dump
        self.exit(2, f"error: {' '.join(str(message).split())}; see --help\n")

    # -- checks, each returning one error line or None

    def known_keys(self) -> set[str]:
        return {action.dest for action in self._actions} - {"help", "config"} | set(RESERVED_KEYS)

    def check_command_line(self, argv: Sequence[str]) -> str | None:
        options = {opt for action in self._actions for opt in action.option_strings}
        for arg in argv:
            if arg.startswith("--"):
                flag = arg.split("=", 1)[0]
                if flag not in options:
                    close = difflib.get_close_matches(flag, sorted(options), n=1)
                    hint = f"did you mean '{close[0]}'?" if close else "see --help"
                    return f"unknown command-line option '{flag}'; {hint}"
        return None

    def read_config(self, path: str) -> tuple[dict | None, str | None]:
        """(the YAML mapping, None) or (None, one error line with file:line:column)."""
        import yaml

        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as err:
            return None, f"cannot read config file {path}: {err.strerror}; check the --config path"
        try:
            root = yaml.compose(text)
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
            return None, f"{where}: invalid YAML ({err.problem}); fix the syntax"
        if root is None:
            return {}, None
        if not isinstance(root, yaml.MappingNode):
            return None, f"{path}:1:1: the config must be a mapping of `key: value` lines"
        known = self.known_keys()
        for key_node, _ in root.value:
            key = key_node.value
            if key not in known:
                mark = key_node.start_mark
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f"did you mean '{close[0]}'?" if close else "remove it or see the script's --help"
                return None, f"{path}:{mark.line + 1}:{mark.column + 1}: unknown key '{key}'; {hint}"
        values = yaml.safe_load(text) or {}
        env = values.pop("env", {})
        if not isinstance(env, dict):
            return None, f"{path}: `env` must be a mapping of environment variables"
        for name, value in env.items():
            os.environ[str(name)] = str(value)
        return values, None

    # -- the entry point

    def parse(self, argv: Sequence[str] | None = None) -> tuple[Any, ...]:
        """One instance per dataclass, from ``argv`` (default ``sys.argv[1:]``), strictly.

        Problems end the program: exit status 2 and one ``error:`` line on stderr.
        """
        argv = list(sys.argv[1:] if argv is None else argv)
        if "-h" in argv or "--help" in argv:
            self.print_help()
            self.exit(0)
        path, rest = config_path(argv)
        if path == "":
            self.exit(2, "error: --config needs a file path\n")
        problem = self.check_command_line(rest)
        values: dict = {}
        if problem is None and path is not None:
            values, problem = self.read_config(path)
        if problem is not None:
            self.exit(2, f"error: {problem}\n")
        for action in self._actions:
            if action.dest in values:
                action.default = values[action.dest]
                action.required = False
        try:
            # The last entry holds what no dataclass owns (the --config option itself).
            return tuple(self.parse_args_into_dataclasses(args=rest))[: len(self.dataclass_types)]
        except ValueError as err:  # a dataclass's own check (__post_init__) or a bad value
            message = " ".join(str(err).split())
            where = f" (config {path})" if path else ""
            self.exit(2, f"error: invalid settings{where}: {message}\n")


def peek(argv: Sequence[str], key: str) -> str | None:
    """The value `--key V` / `--key=V` or, failing that, the --config file's `key:` has in argv
    (None when neither sets it, or the file cannot be read: the real parse then says why).
    For scripts whose settings class depends on one key (napo-recsys: the model family)."""
    value = None
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == f"--{key}" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(f"--{key}="):
            value = arg.split("=", 1)[1]
    if value is not None:
        return value
    path, _ = config_path(args)
    if not path:
        return None
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError):
        return None
    found = values.get(key) if isinstance(values, dict) else None
    return None if found is None else str(found)


def fail(message: str) -> None:
    """End a script with one ``error:`` line and exit status 2."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(2)
