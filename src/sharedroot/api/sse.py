"""Server-sent events: the message format, and a stream that polls the store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi.responses import StreamingResponse

KEEPALIVE = 15.0  # seconds of silence before a comment line, so proxies keep the stream

# One look at the store: the messages to send, and whether the stream ends after them.
Poll = Callable[[], Awaitable[tuple[list[str], bool]]]


def message(kind: str, data: Any, seq: int | None = None) -> str:
    head = "" if seq is None else f"id: {seq}\n"
    return f"{head}event: {kind}\ndata: {json.dumps(data)}\n\n"


async def stream(poll: Poll, every: float) -> AsyncIterator[str]:
    """Each poll's messages, every `every` seconds, until a poll says the stream ends."""
    quiet = 0.0
    while True:
        sent, ended = await poll()
        for text in sent:
            yield text
        if ended:
            return
        quiet = 0.0 if sent else quiet + every
        if quiet >= KEEPALIVE:
            quiet = 0.0
            yield ": keepalive\n\n"
        await asyncio.sleep(every)


def response(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
