"""The published OpenAPI schema, property-tested against a real server: no request that
the schema allows (nor one it does not) makes the server fail with a 5xx."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apikit import Server, token
from conftest import Ran
from sharedroot.workflows.context import Site

EXAMPLES = 50  # per operation, both modes together: about half a minute for the schema here


@pytest.fixture
def served(site: Site, cli: Callable[..., Ran]) -> Iterator[tuple[Server, str]]:
    assert cli("define", "LNX227", "--ro", "--hostname", "lnx227", "--ip", "10.0.2.27").code == 0
    server = Server(site.home, env={"SHAREDROOT_LOCK_WAIT": "0"}).start()
    yield server, token(site.home, "fuzz", "operator")
    server.stop()


def test_no_request_makes_the_server_fail(served: tuple[Server, str]) -> None:
    server, secret = served
    schema = schemathesis.openapi.from_url(server.base + "/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    for op in operations:
        auth = {"Authorization": f"Bearer {secret}"}
        modes = [op.as_strategy(headers=auth)]
        modes.append(op.as_strategy(schemathesis.GenerationMode.NEGATIVE, headers=auth))

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=st.one_of(modes))
        def check(case: schemathesis.Case) -> None:
            got = case.call(base_url=server.base, timeout=60)
            if got.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {got.status_code}")

        check()
    assert failures == []
