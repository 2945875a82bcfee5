"""The command line documents itself: every option has a help line, defaults are shown, and the top-level
description names every subcommand (issue 18)."""

from __future__ import annotations

import argparse

from micrec_core.cli import build_parser


def _parsers(parser: argparse.ArgumentParser, name: str = "micrec") -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                found += _parsers(sub, f"{name} {sub_name}")
    return found


def test_every_option_has_help_and_shows_its_default() -> None:
    missing, no_default = [], []
    for name, parser in _parsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) or not action.option_strings:
                continue
            flag = f"{name} {action.option_strings[-1]}"
            if not action.help:
                missing.append(flag)
            has_default = action.default is not None and action.default is not False and action.default != []
            if has_default and action.default != argparse.SUPPRESS and \
                    "default" not in formatter._get_help_string(action).lower():
                no_default.append(flag)
    assert not missing, f"options without a help line: {missing}"
    assert not no_default, f"options whose help hides their default: {no_default}"


def test_description_names_every_subcommand() -> None:
    parser = build_parser()
    names = [name.removeprefix("micrec ") for name, sub in _parsers(parser) if sub is not parser
             and not any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)]
    assert len(names) == 8
    assert all(f"`{name}`" in parser.description for name in names), (names, parser.description)
