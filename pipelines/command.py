"""What every ``fsar`` command shares: ``--config FILE.yaml`` plus trailing ``key=value`` overrides, and errors
that exit 2 with a message saying what to fix.

Each job module declares its command (``Command``: name, arguments, what to run) and runs it alone from
``python -m pipelines.<job>``; ``pipelines.cli`` gathers them all under ``fsar``. This module imports no job,
so no job imports the command line back.

Priority of settings, lowest first: the config class's defaults, the file, the flags, the overrides
(values parsed as YAML: ``shot=5``, ``methods=[otam]``, ``knobs.otam.gamma=0.05``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fsar.storage import as_location


@dataclass(frozen=True)
class Command:
    """One ``fsar`` subcommand."""

    name: str  # the subcommand: fsar <name>
    help: str  # one line for `fsar --help`
    arguments: Callable[[argparse.ArgumentParser], None]  # adds its flags (not --config and overrides)
    run: Callable[[argparse.Namespace], int]  # runs it; returns the exit status
    takes_config: bool = True  # --config FILE.yaml and key=value overrides (benchmarks take flags alone)

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        self.arguments(parser)
        if self.takes_config:
            common(parser)
        parser.set_defaults(run=self.run)


def common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=as_location, help="YAML file with this command's settings")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings overriding file and flags")


def flags(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The given flags that were set, by name."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def data_flags(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """``--store``/``--manifest`` (and other data flags) as the config's ``data:`` section, when given."""
    section = flags(args, *names)
    return {"data": section} if section else {}


def build_parser(commands: Sequence[Command], *, prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Few-shot action recognition on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in commands:
        command.add_to(sub.add_parser(command.name, help=command.help))
    return parser


def dispatch(commands: Sequence[Command], argv: list[str] | None = None, *, prog: str = "fsar") -> int:
    """Parse ``argv`` (a subcommand and its arguments) and run it; expected errors exit 2 with the message."""
    args = build_parser(commands, prog=prog).parse_args(sys.argv[1:] if argv is None else argv)
    return run_parsed(args, f"{prog} {args.command}")


def run_parsed(args: argparse.Namespace, label: str) -> int:
    """Run a parsed command; an expected error (bad input the user can fix) exits 2 with ``label: error: ...``."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from fsar.backbones import BackboneUnavailableError
    from fsar.config import ConfigError
    from fsar.data.episodes import EpisodeError
    from fsar.data.feature_store import FeatureStoreError
    from fsar.data.manifest import ManifestError

    expected = (ConfigError, BackboneUnavailableError, EpisodeError, FeatureStoreError, ManifestError)
    try:
        return int(args.run(args))
    except expected as exc:
        print(f"{label}: error: {exc}", file=sys.stderr)
        return 2


def run_alone(command: Command, argv: list[str] | None = None, *, module: str | None = None) -> int:
    """``python -m pipelines.<job> [args]``: the job's command without the subcommand word. A job of the
    ``fsar`` command speaks as ``fsar <name>``; a module that is no subcommand (a benchmark, a comparison)
    names itself: ``module``, e.g. ``pipelines.bench.scale``."""
    argv = sys.argv[1:] if argv is None else argv
    if module is None:
        return dispatch([command], [command.name, *argv], prog="fsar")
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=command.help)
    command.add_to(parser)
    return run_parsed(parser.parse_args(argv), command.name)
