"""Every command, subcommand, argument and option of `xpod` says what it is in --help."""

from __future__ import annotations

import argparse

from xpod.runtime.cli.main import build_parser


def _walk(parser: argparse.ArgumentParser, path: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{path} {name}", helped.get(name)
                yield from _walk(sub, f"{path} {name}")
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield f"{path} {'/'.join(action.option_strings) or action.dest}", action.help


def test_every_command_and_option_has_help():
    entries = list(_walk(build_parser(), "xpod"))
    assert len(entries) > 100  # the walk reached the subcommands' options
    missing = [where for where, text in entries if not text or text == argparse.SUPPRESS]
    assert not missing, "no help text: " + ", ".join(missing)
