"""sharedroot's command line: parse, run one command, print its result or one error line.

Every failure ends here as one line on stderr (and, with --json, one JSON object on
stdout) and an exit code: 0 done, 1 refused or failed, 2 bad input. Never a traceback.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from rich.console import Console

import sharedroot
from sharedroot.cli.argtypes import UsageError
from sharedroot.cli.parser import VersionRequested, build_parser
from sharedroot.cli.render import Result
from sharedroot.errors import SharedrootError
from sharedroot.store.state import STATE_FILE
from sharedroot.workflows.context import resolve_home

__all__ = ["build_parser", "main", "sharedroot_version"]

# What sqlite3 says when the store is there and sound but cannot be used just now; any
# other error means the file is not (or no longer) a database sharedroot can read.
_ACCESS_ERRORS = {
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_READONLY",
    "SQLITE_CANTOPEN",
    "SQLITE_PERM",
    "SQLITE_FULL",
    "SQLITE_IOERR",
}


def sharedroot_version() -> str:
    try:
        return version("sharedroot")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return str(getattr(sharedroot, "__version__", "unknown"))


def wants_json(argv: Sequence[str]) -> bool:
    """--json anywhere before `--` (after it, the words belong to `exec`'s command).

    Looked for before parsing, because the parser may fail before it reaches it.
    """
    for word in argv:
        if word == "--":
            return False
        if len(word) > 2 and word.startswith("--j") and "--json".startswith(word):
            return True  # argparse takes unique abbreviations too
    return False


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _fail(message: str, code: int, as_json: bool, usage: bool = False) -> int:
    if as_json:
        print(json.dumps({"error": message, "exit_code": code}))
    if usage:
        sys.stderr.write(f"sharedroot: error: {_one_line(message)} (see --help)\n")
    else:
        sys.stderr.write(f"sharedroot: {message}\n")
    sys.stderr.flush()
    return code


def _database_message(exc: sqlite3.Error, home: Path) -> str:
    path = home / STATE_FILE
    if getattr(exc, "sqlite_errorname", None) in _ACCESS_ERRORS:
        return f"{path}: {exc}"
    return f"{path}: damaged or not a sharedroot database ({exc})"


def _os_message(exc: OSError) -> str:
    what = exc.strerror or str(exc)
    if exc.filename is None:
        return what
    where = str(exc.filename)
    if exc.filename2 is not None:
        where += f" -> {exc.filename2}"
    return f"{where}: {what}"


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    as_json = wants_json(words)
    try:
        args = build_parser().parse_args(words)
    except VersionRequested:
        if as_json:
            print(json.dumps({"version": sharedroot_version()}))
        else:
            print(f"sharedroot {sharedroot_version()}")
        return 0
    except UsageError as exc:
        return _fail(str(exc), exc.exit_code, as_json, usage=True)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    as_json = bool(args.json)
    try:
        result: Result = args.handler(args)
        if as_json:
            print(json.dumps(result.data, indent=2, default=str))
        else:
            out = Console(
                highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160
            )
            result.render(out)
    except SharedrootError as exc:
        return _fail(str(exc), exc.exit_code, as_json)
    except sqlite3.Error as exc:  # the store layer's own checks come first; this is the backstop
        return _fail(_database_message(exc, resolve_home(args.home)), 1, as_json)
    except OSError as exc:
        return _fail(_os_message(exc), 1, as_json)
    except KeyboardInterrupt:
        Console(stderr=True).print("sharedroot: interrupted")
        return 130
    finally:
        for site in getattr(args, "opened_sites", []):
            site.state.close()
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
