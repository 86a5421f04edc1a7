"""The ``mirrorhook`` command line: one small function per subcommand; the only place that exits."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import mirrorhook
from mirrorhook import credentials
from mirrorhook import log as logsetup
from mirrorhook.config import CONFIG_ENV, DEFAULT_CONFIG, Config, config_path, load_config
from mirrorhook.errors import ConfigError, MirrorhookError
from mirrorhook.exits import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from mirrorhook.form_switch import move_state
from mirrorhook.tree_commands import notify_trees, sync_trees, verify_trees

logger = logging.getLogger("mirrorhook")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logsetup.setup(verbose=args.verbose)
    try:
        return int(args.func(args))
    except ConfigError as err:
        sys.stderr.write(f"{err}\n")
        return EXIT_CONFIG
    except (MirrorhookError, OSError) as err:
        logger.error("%s", err, exc_info=args.verbose)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        logger.error("interrupted")
        return EXIT_FAILURE
    except Exception as err:  # a bug: still one line, the traceback with -v
        logger.error("unexpected error: %r", err, exc_info=args.verbose)
        return EXIT_FAILURE


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="mirrorhook",
        description=(
            "Push-triggered rsync mirroring: an upstream signs a webhook when it publishes, "
            "mirrors verify it and sync seconds later, with a polling fallback."
        ),
        epilog=f"The config file is -c FILE, else ${CONFIG_ENV}, else {DEFAULT_CONFIG}.",
    )
    parser.add_argument("--version", action=_VersionAction)
    parser.set_defaults(verbose=False)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    # The commands that make keys or run the demo read no config: they take -v alone, so
    # that a -c given to them is refused rather than silently ignored.
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging and tracebacks"
    )
    common = argparse.ArgumentParser(add_help=False, parents=[verbose])
    common.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help=f"configuration file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})",
    )
    _add_serve_parser(subparsers, common)
    _add_notify_parser(subparsers, common)
    _add_sync_parser(subparsers, common)
    _add_verify_parser(subparsers, common)
    _add_status_parser(subparsers, common)
    _add_check_config_parser(subparsers, common)
    credentials.add_parsers(subparsers, verbose)
    _add_demo_parser(subparsers, verbose)
    return parser


_Subparsers = argparse._SubParsersAction  # argparse exposes no public name for it


def _add_serve_parser(subparsers: _Subparsers[Any], common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "serve",
        parents=[common],
        help="run the daemon: the mirror's receiver and/or the upstream's publisher",
        description=(
            "Run every role the config has. With [receiver] (a mirror): listen for signed "
            "webhooks, sync after a random backoff, poll the upstream marker as a fallback "
            "and check it once at start. With [publisher] (an upstream, or a hub with both): "
            "watch the marker, deliver a signed webhook to every mirror until it accepts, "
            "check what each mirror serves, and serve the status page (GET /), the mirror "
            "list (GET /mirrorlist) and mirrors' reports on its listen. SIGHUP reloads the "
            "config; a config that does not load is refused and the running one stays. "
            "Exits 0 after SIGTERM/SIGINT (a running rsync is stopped, the marker left as it "
            "was), 2 on a config error, 1 on a fatal error."
        ),
    )
    parser.set_defaults(func=_serve)


def _add_notify_parser(subparsers: _Subparsers[Any], common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "notify",
        parents=[common],
        help="announce the current marker to every mirror now (the upstream's push hook)",
        description=(
            "Read the [publisher] marker now and deliver it to every mirror concurrently, with "
            "a short retry budget; print one line per mirror (result, HTTP status, time). "
            "Call it at the end of the publish script, after the marker was rewritten. "
            "Exit status: 0 every mirror accepted, 1 some failed (the rest were delivered) or "
            "the marker is missing or refused (a symlink, not a regular file, not one short "
            "line of text: nothing sent), 2 config error."
        ),
    )
    parser.add_argument(
        "repos",
        nargs="*",
        metavar="NAME",
        help="with [publisher.repos.NAME] tables: the repositories to announce (default: all)",
    )
    parser.set_defaults(func=_notify)


def _add_sync_parser(subparsers: _Subparsers[Any], common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "sync",
        parents=[common],
        help="sync once now (for cron, timers and first syncs)",
        description=(
            "Sync the [receiver] tree from its upstream once: the tree without the marker, "
            "then the marker, only if the upstream marker did not move meanwhile. "
            "Cron drop-in for the hourly script: mirrorhook sync --if-changed --randomize 3000. "
            "Exit status: 0 synced or up to date, 1 failed, 2 config error, "
            "75 another sync holds the lock (nothing done)."
        ),
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--if-changed",
        action="store_true",
        help="do nothing when the upstream marker equals the local one",
    )
    mode.add_argument(
        "--force",
        action="store_true",
        help="run the full transfer even when the markers match (the default without --if-changed)",
    )
    parser.add_argument(
        "--allow-deletes",
        action="store_true",
        help="apply a publish that the safety valve held back (it removes more than "
        "max_delete_fraction of the tree's files): once, for this sync; check the upstream first",
    )
    parser.add_argument(
        "--randomize",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="first sleep a random 0..SECONDS (after the marker check, with --if-changed)",
    )
    parser.add_argument(
        "repos",
        nargs="*",
        metavar="NAME",
        help="with [receiver.repos.NAME] tables: the repositories to sync, one after the other "
        "(default: every enabled one); one line per repository is printed",
    )
    parser.set_defaults(func=_sync)


def _add_verify_parser(subparsers: _Subparsers[Any], common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "verify",
        parents=[common],
        help="compare the tree with the publisher's manifest of its marker",
        description=(
            "Compare each [receiver] tree with the manifest of its marker, fetched signed from "
            "the publisher (which needs signing_key_file and public_url): kinds, sizes, file "
            "mtimes, modes, symlinks, hard links and the sha256 of every file; mirrorhook's own "
            "files, owners and folder and symlink mtimes are left out. Prints what differs. "
            "Exit status: 0 identical, 1 different or not comparable, 2 config error."
        ),
    )
    parser.add_argument(
        "--quick", action="store_true", help="compare metadata only, not contents (no hashing)"
    )
    parser.add_argument(
        "repos",
        nargs="*",
        metavar="NAME",
        help="with [receiver.repos.NAME] tables: the repositories to verify (default: every "
        "enabled one)",
    )
    parser.set_defaults(func=_verify)


def _add_status_parser(subparsers: _Subparsers[Any], common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "status",
        parents=[common],
        help="show the last sync (receiver) and the deliveries (publisher)",
        description=(
            "Show this host's state as a running daemon runs it: for a receiver, the local "
            "marker, the last sync and the current state; for a publisher, one row per mirror. "
            "A first line says when the config file is not what runs (refused at a reload, "
            "broken, or not reloaded yet). Exit status: 0, or 1 when the last sync or a "
            "delivery is failing; 2 when the file does not load and no daemon runs it."
        ),
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=_status)


def _add_check_config_parser(subparsers: _Subparsers[Any], common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "check-config",
        parents=[common],
        help="validate the config and show what would run",
        description=(
            "Load and validate the config; print what would run. Exit status: 0 valid, 2 "
            "invalid, with every problem listed as FILE: key.path: problem."
        ),
    )
    parser.set_defaults(func=_check_config)


class _VersionAction(argparse.Action):
    """``--version``, reading the installed version only when asked (it costs start-up time)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **_kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kwargs: Any) -> None:
        sys.stdout.write(f"mirrorhook {mirrorhook.__version__}\n")
        parser.exit()


def _add_demo_parser(subparsers: _Subparsers[Any], verbose: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "demo",
        parents=[verbose],
        help="run a whole mirror network on loopback and show it sync",
        description=(
            "In a temporary folder: an upstream tree served by a real rsync daemon on "
            "127.0.0.1, a publisher and two receivers (real mirrorhook serve processes with "
            "real configs). Publishes three times and prints, per mirror, when the webhook "
            "arrived and the sync started and finished (ms after the marker's rename), then "
            "compares every tree with the upstream's. Cleans up every process and file. "
            "Exit status: 0 when every mirror converged. Needs rsync; reads no config."
        ),
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the demo folder (configs, trees, logs)"
    )
    parser.set_defaults(func=_demo)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds: {text!r}")
    return value


def _load(args: argparse.Namespace, *, to_run: bool = False) -> Config:
    config = load_config(config_path(args.config))
    if to_run:  # a command that uses the state: what the single form left moves along
        move_state(config)
    return config


def _serve(args: argparse.Namespace) -> int:
    # aiohttp takes a quarter of a second to import: only the daemon pays for it.
    from mirrorhook.service import serve  # noqa: PLC0415 - deferred on purpose

    config = _load(args, to_run=True)
    asyncio.run(serve(config))
    return EXIT_OK


def _sync(args: argparse.Namespace) -> int:
    config = _load(args, to_run=True)
    return sync_trees(
        config,
        args.repos,
        if_changed=args.if_changed,
        randomize=args.randomize,
        allow_deletes=args.allow_deletes,
    )


def _verify(args: argparse.Namespace) -> int:
    return verify_trees(_load(args), args.repos, quick=args.quick)


def _notify(args: argparse.Namespace) -> int:
    return notify_trees(_load(args, to_run=True), args.repos)


def _status(args: argparse.Namespace) -> int:
    # The status code reads the publisher's records too: off the cron sync's path.
    from mirrorhook.running_config import status_now  # noqa: PLC0415
    from mirrorhook.status import format_status, is_failing  # noqa: PLC0415

    status = status_now(config_path(args.config))  # what a running daemon runs, if one does
    if args.json:
        sys.stdout.write(json.dumps(status, indent=2) + "\n")
    else:
        colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        sys.stdout.write(format_status(status, colour=colour) + "\n")
    return EXIT_FAILURE if is_failing(status) else EXIT_OK


def _check_config(args: argparse.Namespace) -> int:
    from mirrorhook.describe import describe  # noqa: PLC0415 - this command only

    sys.stdout.write(describe(_load(args)) + "\n")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from mirrorhook import demo  # noqa: PLC0415 - only this command needs it

    def out(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    return demo.run(keep=args.keep, out=out)  # a DemoError is reported like any other
