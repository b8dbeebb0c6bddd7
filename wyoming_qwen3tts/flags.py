"""How a setting is declared and read: its flag, its environment variables, how their text is parsed.

A value comes from the command-line flag if given, else from the first of its environment variables
that is set, else from the default of the options dataclass it fills. Each options dataclass declares
its flags beside it as a `FlagGroup`: the server's own in settings.py, the engine's in
engine/options.py, each backend's in its folder (engine/pytorch/options.py, engine/openvino/options.py).
settings.py gathers the groups into one command line and one Settings. This module imports nothing of
the package, so that every options module can use it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class SettingsError(ValueError):
    """A setting that cannot work; the message names it and the fix."""


# Parsers of a setting's text. A ValueError's message says what would be accepted.


def positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def seconds(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):  # also refuses nan
        raise ValueError("must be a number of seconds, 0 or more")
    return value


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false (1/0, yes/no, on/off)")


def choice(options: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return text.lower()

    return parse


def optional_path(text: str) -> Path | None:
    return Path(text).expanduser() if text else None


# argparse names a flag's type in its error ("argument --threads: invalid _positive_int value: 'x'"):
# the names the server has always shown there.
positive_int.__name__ = "_positive_int"
seconds.__name__ = "_seconds"
boolean.__name__ = "_bool"


class Flag:
    """One setting as a user gives it: --NAME (underscores as dashes) or one of its environment variables.

    parse reads an environment variable's text, and a flag's text where argparse has not already
    typed it (argparse_options with neither type nor action); argparse_options go to add_argument.
    """

    def __init__(
        self,
        name: str,
        envs: tuple[str, ...],
        help_text: str,
        parse: Callable[[str], Any] = str,
        *,
        field: str | None = None,
        **argparse_options: Any,
    ) -> None:
        self.name = name  # the setting's flat name: its flag, and its attribute where Settings keeps one
        self.envs = envs  # first one set wins
        self.help_text = help_text
        self.parse = parse
        self.field = field or name  # the field of the options dataclass it fills
        self.argparse_options = argparse_options

    @property
    def option_string(self) -> str:
        return "--" + self.name.replace("_", "-")

    def add_to(self, parser: argparse._ActionsContainer, default: Any) -> None:
        """Add the flag; its help names the environment variables and the default."""
        envs = ", ".join(self.envs)
        shown = "" if default in (None, "") else f"; default: {default}".replace("%", "%%")  # argparse: %
        parser.add_argument(
            self.option_string,
            dest=self.name,
            default=None,
            help=f"{self.help_text} [env: {envs}{shown}]",
            **self.argparse_options,
        )

    def value(self, args: argparse.Namespace, environ: Mapping[str, str]) -> Any:
        """The flag's value if given, else the first set environment variable's; None: the default."""
        given = getattr(args, self.name, None)
        if given is not None:
            typed = "type" in self.argparse_options or "action" in self.argparse_options
            return given if typed or not isinstance(given, str) else self.parse(given)
        for env in self.envs:
            if env in environ:
                try:
                    return self.parse(environ[env])
                except ValueError as err:
                    raise SettingsError(f"environment variable {env}={environ[env]!r}: {err}") from None
        return None


@dataclass(frozen=True)
class FlagGroup:
    """An options dataclass and the flags that fill it: one section of --help, one field of Settings."""

    name: str  # the field of settings.Settings that holds the resolved options
    title: str  # the --help section
    options: type  # a dataclass whose defaults are the settings' defaults
    flags: tuple[Flag, ...]

    def add_to(self, parser: argparse.ArgumentParser, added: set[str]) -> None:
        """Add this group's flags that are not in `added` yet (a flag may serve several groups)."""
        defaults = self.options()
        section = parser.add_argument_group(self.title)
        for flag in self.flags:
            if flag.name not in added:
                flag.add_to(section, getattr(defaults, flag.field))
                added.add(flag.name)

    def resolve(self, args: argparse.Namespace, environ: Mapping[str, str]) -> Any:
        """The options, each from its flag, else its environment, else the dataclass default."""
        values: dict[str, Any] = {}
        for flag in self.flags:
            value = flag.value(args, environ)
            if value is not None:
                values[flag.field] = value
        return self.options(**values)
