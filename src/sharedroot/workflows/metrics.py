"""METRICS: the fleet in Prometheus' text exposition format, from the reports' data.

Gauges only, each with # HELP and # TYPE; label values escaped as the format says
(backslash, double quote, newline). Written here, not by a client library: a textfile
collector (node-exporter) or a server reads it as it is. A caller adds its own gauges
(e.g. a server's running jobs) through `extra`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sharedroot.model.types import GuestState, Role
from sharedroot.workflows import report
from sharedroot.workflows.context import Site
from sharedroot.workflows.facts import seconds
from sharedroot.workflows.inventory import slots_of

METRIC = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

Row = dict[str, Any]


@dataclass(frozen=True)
class Gauge:
    """A single unlabelled gauge a caller adds: its help text and value."""

    help: str
    value: float


@dataclass(frozen=True)
class Sample:
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass(frozen=True)
class Family:
    name: str
    help: str
    samples: tuple[Sample, ...]

    def __post_init__(self) -> None:
        if not METRIC.fullmatch(self.name):
            raise ValueError(f"{self.name!r}: not a Prometheus metric name")
        for s in self.samples:
            for label, _ in s.labels:
                if not LABEL.fullmatch(label) or label.startswith("__"):
                    raise ValueError(f"{self.name}: {label!r} is not a label name")


def _family(name: str, help: str, samples: Sequence[tuple[dict[str, str], float]]) -> Family:
    return Family(name, help, tuple(Sample(tuple(lb.items()), v) for lb, v in samples))


def families(
    guests: Sequence[Row], linked: Row, extra: Mapping[str, Gauge] | None = None
) -> list[Family]:
    """The gauges for the reports' rows (report.guests, report.linked), then `extra`."""
    holders = slots_of(linked)
    slots = [h for h in linked["holders"] if h["slot"] is not None]
    verified = [(g["name"], g["verify"]) for g in guests if g["verify"] is not None]
    passed = [(name, v["last_success"]) for name, v in verified if v["last_success"]]
    out = [
        _family(
            "sharedroot_guest_up",
            "1 if the guest is logged on (running), 0 if logged off.",
            [
                ({"guest": g["name"]}, float(g["state"] == GuestState.LOGGED_ON.value))
                for g in guests
            ],
        ),
        _family(
            "sharedroot_guest_info",
            "The guest's role and the gold slot it links (empty if none); always 1.",
            [
                (
                    {
                        "guest": g["name"],
                        "role": g["role"],
                        "slot": str(holders[g["name"]]["slot"]) if g["name"] in holders else "",
                    },
                    1.0,
                )
                for g in guests
            ],
        ),
        _family(
            "sharedroot_guests",
            "How many guests the site has of each role.",
            [({"role": r.value}, float(sum(g["role"] == r.value for g in guests))) for r in Role],
        ),
        _family(
            "sharedroot_slot_generation",
            "The generation (ro2gold run) a gold slot holds; 0 if it was never filled.",
            [
                ({"slot": str(h["slot"]), "holder": h["holder"]}, float(h["generation"] or 0))
                for h in slots
            ],
        ),
        _family(
            "sharedroot_slot_current",
            "1 for the current gold slot (CURGOLD), which new read-only clones link.",
            [({"slot": str(h["slot"])}, float(h["current"])) for h in slots],
        ),
        _family(
            "sharedroot_slot_clones",
            "How many guests link the gold slot's holder.",
            [({"slot": str(h["slot"])}, float(len(h["clones"]))) for h in slots],
        ),
        _family(
            "sharedroot_verify_ok",
            "1 if the guest's last verify passed every check, 0 if one failed.",
            [({"guest": name}, float(v["ok"])) for name, v in verified],
        ),
        _family(
            "sharedroot_verify_last_success_timestamp_seconds",
            "When the guest's last verify that passed ended (seconds since the epoch).",
            [({"guest": name}, seconds(when)) for name, when in passed],
        ),
    ]
    taken = {f.name for f in out}
    for name, gauge in (extra or {}).items():
        if name in taken:
            raise ValueError(f"{name}: a sharedroot metric already")
        out.append(Family(name, gauge.help, (Sample((), gauge.value),)))
    return out


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(number: float) -> str:
    value = float(number)  # an int is a float to the type checker, not to is_integer()
    if value != value:  # NaN
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def exposition(found: Sequence[Family]) -> str:
    """The text format (version 0.0.4), ending in a newline."""
    lines: list[str] = []
    for f in found:
        lines += [f"# HELP {f.name} {_escape_help(f.help)}", f"# TYPE {f.name} gauge"]
        for s in f.samples:
            labels = ",".join(f'{k}="{escape_label(v)}"' for k, v in s.labels)
            lines.append(
                f"{f.name}{{{labels}}} {_number(s.value)}"
                if labels
                else f"{f.name} {_number(s.value)}"
            )
    return "\n".join(lines) + "\n"


def site_families(site: Site, extra: Mapping[str, Gauge] | None = None) -> list[Family]:
    return families(report.guests(site), report.linked(site), extra)


def metrics_text(site: Site, extra: Mapping[str, Gauge] | None = None) -> str:
    """What a scrape gets: e.g. metrics_text(site, {"sharedroot_jobs_running": Gauge(...)})."""
    return exposition(site_families(site, extra))


def as_data(found: Sequence[Family]) -> list[dict[str, Any]]:
    """The same as JSON for scripts: one object a sample."""
    return [
        {"metric": f.name, "labels": dict(s.labels), "value": s.value}
        for f in found
        for s in f.samples
    ]
