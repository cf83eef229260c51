"""The libvirt hosts of a site, asked as one fleet: which guests run where.

The guards ("is it logged on?", "who links this slot?") must hold across hosts, so
every question goes to every host, one call per host (not per guest), and a host that
cannot be reached makes the question fail, naming the host: a guard silently answered
by the hosts that happened to be up would let ro2gold overwrite a gold that a clone on
the missing host still reads.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import libvirt  # type: ignore[import-untyped]  # the binding ships no types

from sharedroot.errors import RefusedError
from sharedroot.model.hosturi import host_uri

# libvirt prints every error it raises to stderr unless told not to; ours say it better.
libvirt.registerErrorHandler(lambda _context, _error: None, None)


class Hosts:
    """Connections to the site's hosts, opened on first use and kept."""

    def __init__(self, uris: Sequence[str]) -> None:
        self.uris = tuple(host_uri(u).uri for u in uris)
        self._conns: dict[str, Any] = {}

    def connection(self, uri: str) -> Any:
        conn = self._conns.get(uri)
        if conn is not None and conn.isAlive():
            return conn
        with _reaching(uri):
            conn = libvirt.open(uri)
        self._conns[uri] = conn
        return conn

    def running(self) -> dict[str, str]:
        """Guest name -> the URI of the host it runs on, from every host."""
        return self._domains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)

    def defined(self) -> dict[str, str]:
        """Guest name -> the URI of the host that has it defined (running or not)."""
        return self._domains(0)

    def _domains(self, flags: int) -> dict[str, str]:
        found: dict[str, str] = {}
        for uri in self.uris:
            with _reaching(uri):
                names = [d.name() for d in self.connection(uri).listAllDomains(flags)]
            for name in names:
                if name in found:  # the same guest on two hosts: no guard can hold
                    raise RefusedError(
                        f"{name} is defined on two hosts, {found[name]} and {uri};"
                        " undefine one of them (virsh -c URI undefine)"
                    )
                found[name] = uri
        return found

    def close(self) -> None:
        for conn in self._conns.values():
            with suppress(libvirt.libvirtError):  # a host gone meanwhile: nothing to close
                conn.close()
        self._conns.clear()


def error_text(exc: Any) -> str:
    """The first line of what a libvirtError says."""
    return str((exc.get_error_message() or str(exc)).splitlines()[0])


@contextmanager
def _reaching(uri: str) -> Iterator[None]:
    try:
        yield
    except libvirt.libvirtError as exc:
        raise RefusedError(
            f"host {uri} cannot be reached ({error_text(exc)}); sharedroot refuses rather than"
            " answer for the hosts it can see"
        ) from None
