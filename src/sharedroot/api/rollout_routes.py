"""/api/v1/rollouts: read-only clones moved to a gold slot in waves, verify as the gate.

A new rollout answers 202 with Location: /api/v1/rollouts/ID; its own process runs it
(api/rollout_runner.py). Pause, resume, abort and retry set what that process reads.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations.

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from sharedroot.api import rollouts as ro
from sharedroot.api import sse
from sharedroot.api.auth import Principal, require
from sharedroot.api.params import RowId
from sharedroot.model.access import ApiRole
from sharedroot.model.types import guest_name
from sharedroot.store.rollouts import RolloutStore
from sharedroot.workflows.context import Site

API = "/api/v1"
POLL = 0.5  # seconds between two looks at a rollout for its event stream


class RolloutBody(BaseModel):
    """A new rollout: `clones`, or `from_slot` (every read-only clone linking it)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    clones: list[str] | None = Field(None, description="the read-only clones, in order")
    from_slot: int | None = Field(None, description="or every read-only clone on this slot")
    slot: int = Field(description="the gold slot to move them to")
    wave_size: int = Field(1, description="clones per wave once the canary has passed")
    pause_after_each_wave: bool = False
    max_failures: int = Field(0, description="the rollout fails when more clones fail")


def rollout_store(home: Path) -> Callable[[], Iterator[RolloutStore]]:
    """The per-request store of the rollout routes and the dashboard's rollout pages."""

    def store_dep() -> Iterator[RolloutStore]:
        store = RolloutStore(home)
        try:
            ro.settle(store)  # a rollout whose process died is shown as it ended
            yield store
        finally:
            store.close()

    return store_dep


def rollout_router(home: Path, caller: Callable[..., Principal]) -> APIRouter:
    router = APIRouter(prefix=f"{API}/rollouts", tags=["rollouts"])
    store_dep = rollout_store(home)

    def operator(who: Annotated[Principal, Depends(caller)]) -> Principal:
        require(who, ApiRole.OPERATOR)
        return who

    Store = Annotated[RolloutStore, Depends(store_dep)]
    Viewer = Annotated[Principal, Depends(caller)]
    Operator = Annotated[Principal, Depends(operator)]

    @router.post("", status_code=202)
    def start(body: RolloutBody, who: Operator, store: Store) -> JSONResponse:
        site = Site.open(home, readonly=True)
        try:
            new = ro.check(
                site,
                clones=body.clones,
                from_slot=body.from_slot,
                slot=body.slot,
                wave_size=body.wave_size,
                pause_each=body.pause_after_each_wave,
                max_failures=body.max_failures,
            )
        finally:
            site.state.close()
        rid = ro.create(home, store, new, who.name)
        return JSONResponse(
            ro.view(store, ro.one(store, rid)),
            status_code=202,
            headers={"Location": f"{API}/rollouts/{rid}"},
        )

    @router.get("")
    def get_all(
        who: Viewer, store: Store, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> list[dict[str, Any]]:
        return [ro.view(store, r) for r in store.rollouts(limit)]

    @router.get("/{rollout}")
    def get_one(rollout: RowId, who: Viewer, store: Store) -> dict[str, Any]:
        return ro.view(store, ro.one(store, rollout))

    @router.post("/{rollout}/pause")
    def pause(rollout: RowId, who: Operator, store: Store) -> dict[str, Any]:
        return ro.view(store, ro.pause(store, rollout))

    @router.post("/{rollout}/resume")
    def resume(rollout: RowId, who: Operator, store: Store) -> dict[str, Any]:
        return ro.view(store, ro.resume(home, store, rollout))

    @router.post("/{rollout}/abort")
    def abort(rollout: RowId, who: Operator, store: Store) -> dict[str, Any]:
        return ro.view(store, ro.abort(store, rollout))

    @router.post("/{rollout}/retry")
    def retry(rollout: RowId, who: Operator, store: Store) -> dict[str, Any]:
        return ro.view(store, ro.retry(home, store, rollout))

    @router.get("/{rollout}/clones/{clone}/log", response_class=PlainTextResponse)
    def clone_log(rollout: RowId, clone: str, who: Viewer, store: Store) -> str:
        ro.one(store, rollout)
        name = guest_name(clone, "clone")
        if name not in {c.clone for c in store.clones(rollout)}:
            raise LookupError(f"rollout {rollout}: {name} is not one of its clones")
        path = store.clone_log(rollout, name)
        return path.read_text(errors="replace") if path.exists() else ""

    @router.get("/{rollout}/events")
    def events(rollout: RowId, who: Viewer, store: Store) -> StreamingResponse:
        ro.one(store, rollout)
        return sse.response(_events(home, rollout))

    return router


async def _events(home: Path, rollout: int) -> AsyncIterator[str]:
    """Server-sent events: `rollout` with the whole rollout each time it changes, then
    `done` with its state once it has ended."""
    store = RolloutStore(home)
    seen: dict[str, Any] | None = None
    seq = 0

    async def poll() -> tuple[list[str], bool]:
        nonlocal seen, seq
        await asyncio.to_thread(ro.settle, store)
        row = await asyncio.to_thread(store.rollout, rollout)
        if row is None:
            return [sse.message("done", {"state": "gone"})], True
        now = await asyncio.to_thread(ro.view, store, row)
        sent = []
        if now != seen:
            seen, seq = now, seq + 1
            sent.append(sse.message("rollout", now, seq))
        if row.state.ended:
            return [*sent, sse.message("done", {"state": row.state.value})], True
        return sent, False

    try:
        async for text in sse.stream(poll, POLL):
            yield text
    finally:
        store.close()
