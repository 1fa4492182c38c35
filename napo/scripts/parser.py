"""The one argument style of every script: dataclasses, a YAML ``--config``, command-line overrides.

``ScriptParser`` is TRL's ``TrlParser`` (itself transformers' ``HfArgumentParser``) made strict, so
that a run never silently drops or misreads a setting. TrlParser does the work: it reads the YAML,
sets the variables of its ``env:`` mapping, makes the YAML values the defaults, and the command
line overrides them. Before handing over, this class checks the file against the options, so that
every problem is one line, at parse time, with the place it comes from.

``StrictParser`` is the same parser on ``HfArgumentParser`` alone, reading the YAML the same way
(``env:``, YAML values as defaults): the id-recommender script (napo-recsys) uses it, so that it
imports no TRL. ``ScriptParser`` is imported from this module lazily, with TRL.

- ``--config FILE`` and ``--config=FILE`` both work.
- A key that no dataclass defines: ``error: FILE:LINE:COL: unknown key 'lerning_rate'; did you mean
  'learning_rate'?``; a value of the wrong type (``beta: abc``) or outside an option's ``choices``
  (``share_mode: rescor``): ``error: FILE:LINE:COL: ...`` with what is allowed. (argparse checks
  ``choices`` and types for the command line, never for defaults, which is what YAML values are.)
- Unknown command-line flags, YAML syntax errors and invalid settings (a dataclass's
  ``__post_init__`` raising ``ValueError``) end the same way, with exit status 2.
- ``--help`` lists the toolkit's own options first (napo / data_prep dataclasses), then TRL's and
  transformers' ``TrainingArguments`` under a heading that says so; ``%`` in help strings is escaped.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from transformers.hf_argparser import (
    HfArgumentParser,  # (not the package root: no PEFT / bitsandbytes import)
)

# Top-level YAML keys the parser itself consumes (not dataclass fields).
RESERVED_KEYS = ("env",)
_OURS = ("napo", "data_prep")  # modules whose dataclass fields are the toolkit's own options


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


def _declaring_class(dataclass_type: type, name: str) -> type:
    """The class of ``dataclass_type``'s MRO whose body declares the field ``name``."""
    for cls in dataclass_type.__mro__:
        if name in cls.__dict__.get("__annotations__", {}):
            return cls
    return dataclass_type


def _value_problem(action: argparse.Action, value: Any) -> str | None:
    """Why a YAML value cannot be this option's (type or choices), or None.

    Mirrors what argparse does with the same text on the command line. The converters are TRL's
    own parser's (``int``, ``float``, ``string_to_bool``, each possibly wrapped to accept ``none``),
    so they are told apart by name."""
    kind = getattr(action.type, "__name__", "")
    many = action.nargs in ("+", "*")
    if isinstance(value, list) and not many and (kind in ("int", "float", "string_to_bool") or action.choices):
        return f"expects one value, got a list {value!r}"
    for item in value if isinstance(value, list) and many else [value]:
        if item is None:
            continue  # null: the dataclass says whether None is allowed
        converted = item
        if kind in ("int", "float") and (isinstance(item, bool) or not isinstance(item, (int, float, str))):
            return f"{item!r} is not a valid {kind}"
        if kind == "string_to_bool" and not isinstance(item, (bool, str)):
            return f"{item!r} is not a valid boolean (true/false)"
        if isinstance(item, str) and callable(action.type):
            try:
                converted = action.type(item)
            except (TypeError, ValueError, argparse.ArgumentTypeError):
                return f"{item!r} is not a valid " + ("boolean (true/false)" if kind == "string_to_bool" else kind or "value")
        if action.choices is not None and converted not in action.choices and item not in action.choices:
            allowed = ", ".join(str(c) for c in action.choices)
            close = difflib.get_close_matches(str(item), [str(c) for c in action.choices], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            return f"{item!r} is not one of: {allowed}{hint}"
    return None


def _is_training_arguments(cls: type) -> bool:
    """Whether ``cls`` derives from transformers' TrainingArguments, told without importing it (that
    import loads PEFT and bitsandbytes, which napo-recsys does not need)."""
    return any(c.__name__ == "TrainingArguments" and c.__module__.startswith("transformers") for c in cls.__mro__)


class StrictParser(HfArgumentParser):
    """``HfArgumentParser`` over ``dataclass_types`` with a strict YAML ``--config`` (see module doc)."""

    def __init__(self, dataclass_types, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # `--lr` must not silently mean `--lr_scheduler_type`
        kwargs.setdefault("usage", "%(prog)s [--config FILE] [--OPTION VALUE ...]")
        super().__init__(dataclass_types, **kwargs)
        self.add_argument("--config", metavar="FILE", help="YAML file of settings (command-line flags override it)")
        for action in self._actions:
            if action.help and "%" in action.help and "%%" not in action.help:
                action.help = action.help.replace("%", "%%")  # argparse formats help with %
        self._order_help()

    def _order_help(self) -> None:
        """Help sections: the toolkit's dataclasses first (a training config's own fields first of
        all), then TRL's options, then transformers' TrainingArguments, under headings that say so."""
        owner: dict[str, type] = {}
        for dtype in self.dataclass_types:
            for name in dtype.__dataclass_fields__:
                owner.setdefault(name, _declaring_class(dtype, name))
        ours: list[type] = []
        for cls in owner.values():
            if cls.__module__.split(".")[0] in _OURS and cls not in ours:
                ours.append(cls)
        ours.sort(key=lambda c: not _is_training_arguments(c))  # the training config's own fields first
        groups: dict[Any, argparse._ArgumentGroup] = {}
        for cls in ours:
            summary = (cls.__doc__ or "").strip().splitlines()[0].rstrip(".") if cls.__doc__ else ""
            groups[cls] = argparse._ArgumentGroup(self, f"{cls.__name__} options ({cls.__module__})", summary or None)
        groups["trl"] = argparse._ArgumentGroup(
            self, "TRL and transformers options (trl.ModelConfig / the TRL config, transformers.TrainingArguments)",
            "Everything below is TRL's and transformers' own (output_dir, batch sizes, schedule, saving, logging, "
            "Hub): see the documentation of transformers.TrainingArguments and of the TRL config class",
        )
        default = self._optionals
        for action in list(default._group_actions):
            cls = owner.get(action.dest)
            if cls is None:
                continue  # -h, --config
            group = groups[cls] if cls in groups else groups["trl"]
            default._group_actions.remove(action)
            group._group_actions.append(action)
        for cls, group in groups.items():
            if cls != "trl":  # in the order the class declares its fields (inherited overrides too)
                order = list(cls.__dict__.get("__annotations__", {}))
                group._group_actions.sort(key=lambda a: order.index(a.dest) if a.dest in order else len(order))
        self._action_groups = [self._positionals, default, *(g for g in groups.values() if g._group_actions)]

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

    def check_config(self, path: str) -> str | None:
        """None when TrlParser may read ``path``, else one error line with file:line:column."""
        import yaml

        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as err:
            return f"cannot read config file {path}: {err.strerror}; check the --config path"
        try:
            root = yaml.compose(text)
            values = yaml.safe_load(text) or {}
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
            return f"{where}: invalid YAML ({err.problem}); fix the syntax"
        if root is None:
            return None
        if not isinstance(root, yaml.MappingNode):
            return f"{path}:1:1: the config must be a mapping of `key: value` lines"
        known = self.known_keys()
        # (a boolean field's `--no_X` complement shares X's dest; the real option is the one kept)
        actions = {a.dest: a for a in self._actions if a.option_strings and not isinstance(a, argparse._StoreFalseAction)}
        for key_node, value_node in root.value:
            key = key_node.value
            if key not in known:
                mark = key_node.start_mark
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f"did you mean '{close[0]}'?" if close else "remove it or see the script's --help"
                return f"{path}:{mark.line + 1}:{mark.column + 1}: unknown key '{key}'; {hint}"
            mark = value_node.start_mark
            if key == "env":
                if not isinstance(values.get("env"), dict):
                    return f"{path}:{mark.line + 1}:{mark.column + 1}: `env` must be a mapping of environment variables"
                continue
            problem = _value_problem(actions[key], values.get(key)) if key in actions else None
            if problem is not None:
                return f"{path}:{mark.line + 1}:{mark.column + 1}: {key}: {problem}"
        return None

    # -- the entry point

    def parse(self, argv: Sequence[str] | None = None,
              explain: Callable[[ValueError], str | None] | None = None) -> tuple[Any, ...]:
        """One instance per dataclass, from ``argv`` (default ``sys.argv[1:]``), strictly.

        ``explain``: given the ``ValueError`` a dataclass raised, a better line (one that knows more
        than the dataclass, e.g. the data) or None to keep the dataclass's own.
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
        if problem is None and path is not None:
            problem = self.check_config(path)
        if problem is not None:
            self.exit(2, f"error: {problem}\n")
        try:
            # TrlParser reads the (checked) YAML; the last entry holds what no dataclass owns (--config).
            parsed = self._read(["--config", path, *rest] if path else rest)
            return tuple(parsed)[: len(self.dataclass_types)]
        except ValueError as err:  # a dataclass's own check (__post_init__) or a bad value
            message = (explain(err) if explain is not None else None) or " ".join(str(err).split())
            where = f" (config {path})" if path else ""
            self.exit(2, f"error: invalid settings{where}: {message}\n")


    def _read(self, args: list[str]) -> tuple[Any, ...]:
        """The dataclasses from checked ``args`` (``--config PATH`` first when given): the YAML's
        ``env`` set in os.environ, its other values made the defaults, the command line on top."""
        import os

        import yaml

        if args[:1] == ["--config"]:
            with open(args[1], encoding="utf-8") as handle:
                values = yaml.safe_load(handle) or {}
            for key, value in (values.pop("env", None) or {}).items():
                os.environ[key] = str(value)
            for action in self._actions:
                if action.dest in values:
                    action.default, action.required = values[action.dest], False
            args = args[2:]
        return tuple(self.parse_args_into_dataclasses(args=args))


def __getattr__(name: str):
    """``ScriptParser``, built on TRL's TrlParser when first asked for (TRL is imported then)."""
    if name != "ScriptParser":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from trl import TrlParser

    class ScriptParser(StrictParser, TrlParser):
        """``TrlParser`` over ``dataclass_types`` with a strict YAML ``--config`` (see module doc)."""

        def _read(self, args: list[str]) -> tuple[Any, ...]:
            return tuple(self.parse_args_and_config(args))

    ScriptParser.__module__ = __name__
    globals()["ScriptParser"] = ScriptParser
    return ScriptParser


def peek(argv: Sequence[str], key: str) -> str | None:
    """The value `--key V` / `--key=V` or, failing that, the --config file's `key:` has in argv
    (None when neither sets it, or the file cannot be read: the real parse then says why).
    For scripts whose settings depend on one key before parsing (napo-recsys: the model family)."""
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
