"""Malformed command lines and refused operations: one clear line, the right exit code,
never a traceback, and not one byte of the store changed.

Families (one table each below):
  USAGE     unknown command or option, missing or extra argument       exit 2, "(see --help)"
  INPUT     well-formed words the command then rejects (--hostname ...)  exit 2
  NUMBERS   --parallel --limit --timeout --lines --slot: 0, -1, nan, inf, 1e999, 10**20, x, ""
  GUESTS    names that are no z/VM user ID, for every command taking one  exit 2
  NETMASKS  define --netmask that is no contiguous netmask                exit 2
  REFUSED   well-formed, refused by a guard                               exit 1
  BOUNDARY  the largest accepted numbers pass the parser (then a guard refuses, exit 1)
  JSON      --json before or after the command: one JSON object on stdout, any error
  VERSION   --version, plain and as JSON                                  exit 0
  BACKSTOP  a damaged store, an OS error: one line naming the file        exit 1
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest

from conftest import Ran, tree_hashes
from sharedroot.cli.main import main
from sharedroot.workflows import report
from sharedroot.workflows.context import Site

HUGE = "99999999999999999999"

# (argv after --home, words the one error line must contain)
USAGE: list[tuple[list[str], str]] = [
    (["bogus"], "invalid choice: 'bogus'"),
    ([], "required: COMMAND"),
    (["--bogus", "guests"], "unrecognized arguments: --bogus"),
    (["guests", "--bogus"], "unrecognized arguments: --bogus"),
    (["guests", "--jsonx"], "unrecognized arguments: --jsonx"),
    (["linked", "LNX226"], "unrecognized arguments: LNX226"),
    (["doctor", "extra"], "unrecognized arguments: extra"),
    (["guests", "--home"], "--home: expected one argument"),
    (["init", "--layout", "mine"], "--layout: 'mine' is not paper and no such file"),
    (["init", "--size"], "--size: expected one argument"),
    (["install", "--distro", "x"], "--distro: invalid choice: 'x'"),
    (["mnt2tst", "--bogus"], "unrecognized arguments: --bogus"),
    (["mnt2gold", "LNX226"], "unrecognized arguments: LNX226"),
    (["define"], "required: guest"),
    (["define", "LNX226"], "one of the arguments --rw --ro is required"),
    (["define", "LNX226", "--rw", "--ro"], "not allowed with argument"),
    (["define", "LNX226", "--rw", "--hostname"], "--hostname: expected one argument"),
    (["define", "LNX226", "--rw", "--netmask"], "--netmask: expected one argument"),
    (["start"], "required: guest"),
    (["ipl"], "required: guest"),
    (["stop"], "required: guest"),
    (["console"], "required: guest"),
    (["exec"], "required: guest"),
    (["clonero"], "required: guest"),
    (["clonerw"], "required: guest"),
    (["verify"], "required: guest"),
    (["migrate", "LNX227"], "required: --slot"),
    (["migrate", "--slot", "2"], "required: GUEST"),
    (["journal", "--limit"], "--limit: expected one argument"),
    (["console", "S10RWMNT", "--lines"], "--lines/-n: expected one argument"),
    (["cloneprep", "--operations"], "--operations: expected one argument"),
    (["ro2gold", "--slot"], "--slot: expected one argument"),
    (["stop", "S10RWMNT", "--timeout", "-inf"], "--timeout: expected one argument"),
]

INPUT: list[tuple[list[str], str]] = [
    (["define", "LNX226", "--rw", "--hostname", "h"], "go together"),
    (["define", "LNX226", "--rw", "--netmask", "16"], "need --hostname and --ip"),
    (["define", "LNX226", "--rw", "--hostname", "a;reboot", "--ip", "10.0.0.5"], "hostname"),
    (["define", "LNX226", "--rw", "--hostname", "h", "--ip", "10.0.0.256"], "--ip"),
    (["exec", "S10RWMNT"], "give the command"),
    (["exec", "S10RWMNT", "--"], "give the command"),
    (["cloneprep", "--operations", "nosuch", "--yes"], "nosuch"),
    (["init", "--prefix", "TOOLONG"], "prefix"),
    (["init", "--gold-slots", "0"], "gold_slots"),
    (["init", "--backend", "libvirt"], "--host: the libvirt backend needs at least one host URI"),
    (["init", "--zvm-link-range", "F0FF-F000"], "link_range"),
    (["init", "--size", "usr"], "MOUNT=SIZE"),
    (
        ["install", "--from-tree", "/nonexistent", "--yes"],
        "--from-tree '/nonexistent': not a directory",
    ),
    (["install", "--from-tree", "/", "--yes"], "the worker's own root"),
    (["install", "--from-tree", "/proc/self", "--yes"], "not a directory"),
    (["install", "--from-tree", "/dev", "--yes"], "holds no Linux system"),
    (["migrate", "LNX227", "--slot", "3", "--yes"], "gold slots 1 to 2"),
]

BAD_TIMEOUTS = ["0", "-1", "nan", "inf", "1e999", "86401", HUGE, "x", ""]
NUMBERS: list[tuple[list[str], str, str]] = [
    *(
        (["migrate", "LNX227", "--slot", "2", "--parallel", v], "--parallel", v)
        for v in ["0", "-1", "65", "1.5", "nan", HUGE, "x", ""]
    ),
    *(
        (["journal", "--limit", v], "--limit", v)
        for v in ["0", "-1", "1000001", HUGE, "1e3", "nan", "x", ""]
    ),
    *(
        (["console", "S10RWMNT", "--lines", v], "--lines", v)
        for v in ["-1", "1000001", HUGE, "2.5", "x", ""]
    ),
    *((["ro2gold", "--slot", v, "--yes"], "--slot", v) for v in ["0", "-1", HUGE, "x", ""]),
    (["ro2gold2", "--slot", "0"], "--slot", "0"),
    *((["migrate", "LNX227", "--slot", v], "--slot", v) for v in ["0", "-1", HUGE, "x"]),
    *((["start", "S10RWMNT", "--timeout", v], "--timeout", v) for v in BAD_TIMEOUTS),
    *((["stop", "S10RWMNT", "--timeout", v], "--timeout", v) for v in ["0", "nan", "inf"]),
    *(
        (["exec", "S10RWMNT", "--timeout", v, "--", "true"], "--timeout", v)
        for v in ["0", "-1", "1e999"]
    ),
    *((["verify", "S10RWMNT", "--timeout", v], "--timeout", v) for v in ["0", "inf", HUGE]),
    *(
        (["migrate", "LNX227", "--slot", "2", "--timeout", v], "--timeout", v)
        for v in ["0", "nan", "86401"]
    ),
]

BAD_NAMES = ["TOOLONGNAME", "A-B", "", "LNX\n1", " "]
GUEST_COMMANDS: list[list[str]] = [
    ["define", "{}", "--rw"],
    ["start", "{}"],
    ["stop", "{}"],
    ["console", "{}"],
    ["exec", "{}", "--", "true"],
    ["clonero", "{}", "--yes"],
    ["clonerw", "{}", "--yes"],
    ["verify", "{}"],
    ["migrate", "LNX227", "{}", "--slot", "2"],
]

NETMASKS = ["0.0.0.0", "255.0.255.0", "33", "-1", "24\n", "0", "x", ""]

REFUSED: list[tuple[list[str], str]] = [
    (["stop", "S10RWMNT"], "not logged on"),
    (["exec", "S10RWMNT", "--", "true"], "not logged on"),
    (["console", "S10RWMNT"], "never been started"),
    (["clonerw", "LNX226", "--yes"], "LNX226"),
    (["clonero", "LNX227", "--yes"], "LNX227"),
    (["start", "NOSUCH"], "NOSUCH"),
    (["verify", "NOSUCH"], "NOSUCH"),
    (["define", "S10RWMNT", "--rw"], "pipeline's own guests"),
    (["init"], "exists already"),
    (["mnt2gold"], "--yes"),
    (["migrate", "LNX227", "--slot", "2", "--yes"], "gold slot 2"),
    (["ro2gold", "--slot", "1", "--yes"], "S10ROGLD"),
]

# The largest values each rule allows get past the parser to the workflow's guards.
BOUNDARY: list[tuple[list[str], str]] = [
    (
        ["migrate", "LNX227", "--slot", "2", "--parallel", "64", "--timeout", "86400", "--yes"],
        "gold slot 2",
    ),
    (["console", "S10RWMNT", "--lines", "1000000"], "never been started"),
    (["console", "s10rwmnt", "-n", "0"], "never been started"),
    (["stop", "S10RWMNT", "--timeout", "0.5"], "not logged on"),
    (["exec", "s10rwmnt", "--timeout", "86400", "--", "true"], "not logged on"),
]

# Usage errors shown as JSON, --json put before and after the command.
JSON_USAGE: list[tuple[list[str], str]] = [
    (["bogus"], "invalid choice"),
    ([], "COMMAND"),
    (["guests", "--bogus"], "--bogus"),
    (["define"], "guest"),
    (["define", "A-B", "--rw"], "'A-B'"),
    (["migrate", "LNX227", "--slot", "2", "--parallel", "0"], "--parallel"),
    (["journal", "--limit", HUGE], "--limit"),
    (["start", "S10RWMNT", "--timeout", "nan"], "--timeout"),
    (["console", "S10RWMNT", "--lines", "-1"], "--lines"),
    (["ro2gold", "--slot", "x"], "--slot"),
    (
        ["define", "LNX226", "--rw", "--hostname", "h", "--ip", "10.0.0.5", "--netmask", "33"],
        "--netmask",
    ),
]


def run_unchanged(home: Path, cli: Callable[..., Ran], *args: str) -> Ran:
    """Run one command; the store must be byte for byte the same, and no traceback shown."""
    before = tree_hashes(home)
    ran = cli(*args)
    assert "Traceback" not in ran.out and "Traceback" not in ran.err, ran.err
    assert tree_hashes(home) == before, f"{args} changed the store"
    return ran


def one_line(ran: Ran) -> str:
    lines = ran.err.splitlines()
    assert len(lines) == 1, ran.err
    assert lines[0].startswith("sharedroot: "), lines[0]
    return lines[0]


def usage_line(ran: Ran, words: str) -> None:
    assert ran.code == 2, ran.err
    assert ran.out == ""
    line = one_line(ran)
    assert line.startswith("sharedroot: error: ") and line.endswith(" (see --help)"), line
    assert words in line, line


def json_error(ran: Ran, code: int, words: str) -> None:
    assert ran.code == code, ran.err
    doc = json.loads(ran.out)  # exactly one JSON document, nothing around it
    assert set(doc) == {"error", "exit_code"} and doc["exit_code"] == code, doc
    assert words in doc["error"], doc
    assert len(ran.err.splitlines()) <= 1, ran.err


@pytest.mark.parametrize(("args", "words"), USAGE)
def test_usage_error(
    site: Site, home: Path, cli: Callable[..., Ran], args: list[str], words: str
) -> None:
    usage_line(run_unchanged(home, cli, *args), words)


@pytest.mark.parametrize(("args", "words"), USAGE)
def test_usage_error_as_json(
    site: Site, home: Path, cli: Callable[..., Ran], args: list[str], words: str
) -> None:
    json_error(run_unchanged(home, cli, "--json", *args), 2, words)


@pytest.mark.parametrize(("args", "words"), INPUT)
def test_rejected_input(
    site: Site, home: Path, cli: Callable[..., Ran], args: list[str], words: str
) -> None:
    ran = run_unchanged(home, cli, *args)
    assert ran.code == 2, ran.err
    assert words in one_line(ran)


@pytest.mark.parametrize(("args", "option", "value"), NUMBERS)
def test_bad_number(
    site: Site, home: Path, cli: Callable[..., Ran], args: list[str], option: str, value: str
) -> None:
    ran = run_unchanged(home, cli, *args)
    usage_line(ran, f"argument {option}")
    assert repr(value) in ran.err  # the offending value, as typed


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("template", GUEST_COMMANDS, ids=lambda t: t[0])
def test_bad_guest_name(
    site: Site, home: Path, cli: Callable[..., Ran], template: list[str], name: str
) -> None:
    args = [name if word == "{}" else word for word in template]
    ran = run_unchanged(home, cli, *args)
    usage_line(ran, repr(name))
    assert "A-Z 0-9 @ # $" in ran.err


@pytest.mark.parametrize("mask", NETMASKS)
def test_bad_netmask(site: Site, home: Path, cli: Callable[..., Ran], mask: str) -> None:
    args = ["define", "LNX226", "--rw", "--hostname", "h", "--ip", "10.0.0.5", "--netmask", mask]
    ran = run_unchanged(home, cli, *args)
    usage_line(ran, "argument --netmask")
    assert "netmask" in ran.err


@pytest.mark.parametrize(("args", "words"), REFUSED)
def test_refused(
    site: Site, home: Path, cli: Callable[..., Ran], args: list[str], words: str
) -> None:
    ran = run_unchanged(home, cli, *args)
    assert ran.code == 1, ran.err
    assert words in one_line(ran)


@pytest.mark.parametrize(("args", "words"), [REFUSED[0], REFUSED[2], REFUSED[3], REFUSED[-1]])
def test_refused_as_json(
    site: Site, home: Path, cli: Callable[..., Ran], args: list[str], words: str
) -> None:
    json_error(run_unchanged(home, cli, *args, "--json"), 1, words)


@pytest.mark.parametrize(("args", "words"), BOUNDARY)
def test_largest_values_pass_the_parser(
    site: Site, home: Path, cli: Callable[..., Ran], args: list[str], words: str
) -> None:
    ran = run_unchanged(home, cli, *args)
    assert ran.code == 1, ran.err
    assert "(see --help)" not in ran.err
    assert words in one_line(ran)


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize(("args", "words"), JSON_USAGE)
def test_json_wherever_it_stands(
    site: Site, home: Path, cli: Callable[..., Ran], args: list[str], words: str, where: str
) -> None:
    argv = ["--json", *args] if where == "before" else [*args, "--json"]
    json_error(run_unchanged(home, cli, *argv), 2, words)


def test_json_first_of_all_on_a_usage_error(
    capsys: pytest.CaptureFixture[str], site: Site, home: Path
) -> None:
    before = tree_hashes(home)
    assert main(["--json", "--home", str(home), "nosuch"]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out)["exit_code"] == 2 and len(err.splitlines()) == 1
    assert tree_hashes(home) == before


def test_json_after_double_dash_belongs_to_exec(
    site: Site, home: Path, cli: Callable[..., Ran]
) -> None:
    ran = run_unchanged(home, cli, "exec", "S10RWMNT", "--timeout", "0", "--", "x", "--json")
    usage_line(ran, "--timeout")


def test_lowercase_guest_names_are_upper_cased(
    site: Site, home: Path, cli: Callable[..., Ran]
) -> None:
    ran = run_unchanged(home, cli, "define", "lnx226", "--rw", "--dry-run")
    assert ran.code == 0, ran.err
    assert "LNX226" in ran.err and "lnx226" not in ran.err


@pytest.mark.parametrize("json_first", [True, False])
def test_version(site: Site, home: Path, cli: Callable[..., Ran], json_first: bool) -> None:
    plain = run_unchanged(home, cli, "--version")
    assert (plain.code, plain.out, plain.err) == (0, f"sharedroot {version('sharedroot')}\n", "")
    args = ["--json", "--version"] if json_first else ["--version", "--json"]
    ran = run_unchanged(home, cli, *args)
    assert ran.code == 0 and ran.err == ""
    assert json.loads(ran.out) == {"version": version("sharedroot")}


def test_help_names_the_papers_pipeline(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for word in (
        "mnt2rogld",
        "ro2gold",
        "clonero",
        "migrate",
        "CURGOLD",
        "boot.findself",
        "S10DFLT",
        "MNT2TST EXEC",
        "CLONERO EXEC",
        "RR",
    ):
        assert word in text, word


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("mnt2tst", "MNT2TST EXEC"),
        ("clonero", "CLONERO EXEC"),
        ("clonero", "S10DFLT"),
        ("define", "boot.findself"),
        ("ro2gold", "S10GOLD2"),
        ("ro2gold", "CURGOLD"),
        ("linked", "CURGOLD"),
        ("migrate", "S10DFLT2"),
        ("guests", "MR"),
    ],
)
def test_command_help_names_the_papers_terms(
    capsys: pytest.CaptureFixture[str], command: str, words: str
) -> None:
    assert main([command, "--help"]) == 0
    assert words in " ".join(capsys.readouterr().out.split())


# The backstop in main(): errors the store layer did not turn into a clear message.


@pytest.mark.parametrize("as_json", [False, True])
def test_damaged_database_is_one_line(
    site: Site, home: Path, cli: Callable[..., Ran], monkeypatch: pytest.MonkeyPatch, as_json: bool
) -> None:
    def damaged(site: Site) -> object:
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(report, "guests", damaged)
    ran = run_unchanged(home, cli, "guests", *(["--json"] if as_json else []))
    message = f"{home}/state.db: damaged or not a sharedroot database (database disk image is"
    if as_json:
        json_error(ran, 1, message)
    else:
        assert ran.code == 1 and ran.out == ""
        assert one_line(ran).startswith(f"sharedroot: {message}")


def test_database_that_cannot_be_written_is_not_called_damaged(
    site: Site, home: Path, cli: Callable[..., Ran], monkeypatch: pytest.MonkeyPatch
) -> None:
    def write_to_readonly(site: Site) -> object:
        db = sqlite3.connect(f"file:{home}/state.db?mode=ro", uri=True)
        try:
            db.execute("CREATE TABLE x (y)")
        finally:
            db.close()
        raise AssertionError("a read-only connection wrote")

    monkeypatch.setattr(report, "guests", write_to_readonly)
    ran = run_unchanged(home, cli, "guests")
    assert ran.code == 1
    line = one_line(ran)
    assert f"{home}/state.db" in line and "readonly" in line and "damaged" not in line


def test_garbage_state_db_is_one_line(site: Site, home: Path, cli: Callable[..., Ran]) -> None:
    (home / "state.db").write_bytes(b"not a database at all\n" * 100)
    for name in ("state.db-wal", "state.db-shm"):
        (home / name).unlink(missing_ok=True)
    for args in (["guests"], ["linked"], ["journal"], ["console", "S10RWMNT"]):
        ran = run_unchanged(home, cli, *args)
        assert ran.code in (1, 2), ran.err
        assert "state.db" in one_line(ran)


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (
            PermissionError(13, "Permission denied", "/srv/site/run/LNX226.log"),
            "sharedroot: /srv/site/run/LNX226.log: Permission denied",
        ),
        (
            OSError(28, "No space left on device", "/a", None, "/b"),
            "sharedroot: /a -> /b: No space left on device",
        ),
        (OSError(5, "Input/output error"), "sharedroot: Input/output error"),
    ],
)
def test_os_error_is_one_line(
    site: Site,
    home: Path,
    cli: Callable[..., Ran],
    monkeypatch: pytest.MonkeyPatch,
    error: OSError,
    words: str,
) -> None:
    def fails(site: Site) -> object:
        raise error

    monkeypatch.setattr(report, "linked", fails)
    ran = run_unchanged(home, cli, "linked")
    assert ran.code == 1 and ran.out == ""
    assert one_line(ran) == words
    json_error(run_unchanged(home, cli, "linked", "--json"), 1, words.removeprefix("sharedroot: "))


@pytest.mark.parametrize("args", [["guests"], ["linked"], ["journal", "--limit", "1000000"]])
def test_reading_commands_change_nothing(
    site: Site, home: Path, cli: Callable[..., Ran], args: list[str]
) -> None:
    ran = run_unchanged(home, cli, *args, "--json")
    assert ran.code == 0, ran.err
    json.loads(ran.out)
