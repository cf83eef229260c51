"""`sharedroot serve`: the REST API under /api/v1 (FastAPI), with its OpenAPI schema.

Reads open the store read-only per request, as the CLI's reports do. Every action
becomes a job (202 Accepted, Location: /api/v1/jobs/ID) that runs the CLI's own
command in a process of its own; `?dry_run=true` answers the command's plan at once.
"""

# No `from __future__ import annotations`: FastAPI reads the dependencies declared
# inside create_app from the annotations, which must be objects, not strings.

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from sharedroot.api import jobs as joblib
from sharedroot.api import sse
from sharedroot.api.actions import Command, GuestAction, PipelineOp, command
from sharedroot.api.auth import (
    COOKIE,
    SESSION_SECONDS,
    Principal,
    check_csrf,
    principal,
    require,
    session_cookie,
)
from sharedroot.api.dashboard import STATIC, dashboard, login_redirect, wants_page
from sharedroot.api.params import RowId
from sharedroot.api.rollout_routes import rollout_router, rollout_store
from sharedroot.api.views import guest_view, pipeline_view, site_view, slots_view
from sharedroot.errors import InputError, RefusedError, SharedrootError
from sharedroot.model.access import TOKEN_RULE, ApiRole, JobStatus
from sharedroot.store import retention
from sharedroot.store.rollouts import RolloutStore
from sharedroot.store.serverdb import ServerStore
from sharedroot.workflows import inventory, journal, metrics, report
from sharedroot.workflows.context import Site

API = "/api/v1"
SETTLE_EVERY = 1.0  # seconds between two looks for runners that died
EVENT_POLL = 0.2  # seconds between two looks for a job's new events
PRUNE_EVERY = 3600.0  # seconds between two prunings of what outstayed --keep-days
Options = Annotated[dict[str, Any] | None, Body(description="the command's own options")]


def create_app(home: Path, keep_days: int = retention.KEEP_DAYS) -> FastAPI:
    """The API and dashboard of the site at `home`; ended jobs and rollouts stay
    `keep_days` days (0: for good)."""
    store = ServerStore(home)
    try:
        key = store.secret()
    finally:
        store.close()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(_settle, resume=True)
        await asyncio.to_thread(_prune)
        task = asyncio.create_task(_settle_forever())
        yield
        task.cancel()

    def _settle(resume: bool = False) -> None:
        store = ServerStore(home)
        try:
            joblib.settle(home, store, resume=resume)
        finally:
            store.close()

    def _prune() -> None:
        if keep_days:
            store = RolloutStore(home)
            try:
                retention.prune(store, retention.cutoff(keep_days))
            finally:
                store.close()

    async def _settle_forever() -> None:
        since_prune = 0.0
        while True:
            await asyncio.sleep(SETTLE_EVERY)
            await asyncio.to_thread(_settle)
            since_prune += SETTLE_EVERY
            if since_prune >= PRUNE_EVERY:
                since_prune = 0.0
                await asyncio.to_thread(_prune)

    app = FastAPI(
        title="sharedroot",
        summary="Fleets of Linux guests on one shared read-only golden root",
        lifespan=lifespan,
    )

    @app.exception_handler(SharedrootError)
    def _error(request: Request, exc: SharedrootError) -> JSONResponse:
        code = 400 if isinstance(exc, InputError) else 409 if isinstance(exc, RefusedError) else 500
        return JSONResponse({"detail": str(exc)}, status_code=code)

    @app.exception_handler(LookupError)
    def _missing(request: Request, exc: LookupError) -> JSONResponse:
        return JSONResponse({"detail": str(exc.args[0]) if exc.args else "not found"}, 404)

    def store_dep() -> Iterator[ServerStore]:
        store = ServerStore(home)
        try:
            yield store
        finally:
            store.close()

    def site_dep() -> Iterator[Site]:
        site = Site.open(home, readonly=True)
        try:
            yield site
        finally:
            site.state.close()

    Store = Annotated[ServerStore, Depends(store_dep)]
    SiteDep = Annotated[Site, Depends(site_dep)]

    def caller(request: Request, store: Store) -> Principal:
        who = principal(request, store, key)
        check_csrf(request, who)
        return who

    def operator(who: Annotated[Principal, Depends(caller)]) -> Principal:
        require(who, ApiRole.OPERATOR)
        return who

    def admin(who: Annotated[Principal, Depends(caller)]) -> Principal:
        require(who, ApiRole.ADMIN)
        return who

    app.include_router(rollout_router(home, caller))
    Viewer = Annotated[Principal, Depends(caller)]
    Operator = Annotated[Principal, Depends(operator)]
    Admin = Annotated[Principal, Depends(admin)]

    # -- read views

    @app.get(f"{API}/site", tags=["views"])
    def get_site(who: Viewer, site: SiteDep) -> dict[str, Any]:
        return site_view(site)

    @app.get(f"{API}/pipeline", tags=["views"])
    def get_pipeline(who: Viewer, site: SiteDep) -> dict[str, Any]:
        return pipeline_view(site)

    @app.get(f"{API}/guests", tags=["views"])
    def get_guests(who: Viewer, site: SiteDep) -> JSONResponse:
        # Encoded as it is: FastAPI's own encoder would walk 1000 guests' dicts again.
        return JSONResponse(report.guests(site))

    @app.get(f"{API}/guests/{{name}}", tags=["views"])
    def get_guest(name: str, who: Viewer, site: SiteDep, store: Store) -> dict[str, Any]:
        return guest_view(site, store, name)

    @app.get(f"{API}/slots", tags=["views"])
    def get_slots(who: Viewer, site: SiteDep) -> list[dict[str, Any]]:
        return slots_view(site)

    @app.get(f"{API}/linked", tags=["views"])
    def get_linked(who: Viewer, site: SiteDep) -> dict[str, Any]:
        return report.linked(site)

    @app.get(f"{API}/journal", tags=["views"])
    def get_journal(
        who: Viewer, site: SiteDep, limit: Annotated[int, Query(ge=1, le=1000)] = 50
    ) -> list[dict[str, Any]]:
        return journal.entries(site, limit)

    # -- actions

    def launch(cmd: Command, dry_run: bool, who: Principal, store: ServerStore) -> Response:
        if dry_run:
            if not cmd.can_dry_run:
                raise InputError(f"{cmd.kind} has no dry run: it changes no disk")
            code, answer = joblib.dry_run(home, cmd)
            status = 200 if code == 0 else 400 if code == 2 else 409
            return JSONResponse(answer, status_code=status)
        job = joblib.submit(home, store, cmd, who.name)
        row = store.job(job)
        assert row is not None
        return JSONResponse(
            joblib.view(row), status_code=202, headers={"Location": f"{API}/jobs/{job}"}
        )

    @app.post(f"{API}/guests/{{name}}/{{action}}", tags=["actions"], status_code=202)
    def guest_action(
        name: str,
        action: GuestAction,
        who: Operator,
        store: Store,
        body: Options = None,
        dry_run: bool = False,
    ) -> Response:
        return launch(command(action.value, name, body or {}), dry_run, who, store)

    @app.post(f"{API}/pipeline/{{op}}", tags=["actions"], status_code=202)
    def pipeline_action(
        op: PipelineOp, who: Operator, store: Store, body: Options = None, dry_run: bool = False
    ) -> Response:
        return launch(command(op.value, None, body or {}), dry_run, who, store)

    # -- jobs

    @app.get(f"{API}/jobs", tags=["jobs"])
    def get_jobs(
        who: Viewer,
        store: Store,
        status: JobStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        return [joblib.view(j) for j in store.jobs(limit, status)]

    def one_job(store: ServerStore, job: int) -> Any:
        row = store.job(job)
        if row is None:
            raise LookupError(f"job {job}: no such job")
        return row

    @app.get(f"{API}/jobs/{{job}}", tags=["jobs"])
    def get_job(job: RowId, who: Viewer, store: Store, site: SiteDep) -> dict[str, Any]:
        return joblib.view(one_job(store, job), site)

    @app.get(f"{API}/jobs/{{job}}/log", tags=["jobs"], response_class=PlainTextResponse)
    def get_job_log(job: RowId, who: Viewer, store: Store) -> str:
        one_job(store, job)
        path = store.log_path(job)
        return path.read_text(errors="replace") if path.exists() else ""

    @app.post(f"{API}/jobs/{{job}}/cancel", tags=["jobs"])
    def cancel_job(job: RowId, who: Operator, store: Store) -> dict[str, Any]:
        return joblib.view(joblib.cancel(store, job))

    @app.get(f"{API}/jobs/{{job}}/events", tags=["jobs"])
    def job_events(job: RowId, request: Request, who: Viewer, store: Store) -> StreamingResponse:
        one_job(store, job)
        last = request.headers.get("last-event-id", "0")
        after = int(last) if last.isdecimal() else 0
        return sse.response(_events(home, job, after))

    # -- tokens

    @app.get(f"{API}/tokens", tags=["tokens"])
    def get_tokens(who: Admin, store: Store) -> list[dict[str, Any]]:
        return [
            {"name": t.name, "role": t.role.value, "created": t.created} for t in store.tokens()
        ]

    @app.post(f"{API}/tokens", tags=["tokens"], status_code=201)
    def add_token(
        who: Admin, store: Store, name: Annotated[str, Body()], role: Annotated[ApiRole, Body()]
    ) -> dict[str, Any]:
        return {"name": name, "role": role.value, "token": store.add_token(name, role)}

    @app.delete(f"{API}/tokens/{{name}}", tags=["tokens"], status_code=204)
    def revoke_token(name: str, who: Admin, store: Store) -> Response:
        store.revoke(name)
        return Response(status_code=204)

    @app.post("/login", tags=["session"])
    def login(
        request: Request,
        store: Store,
        token: Annotated[str, Form()],
        next: Annotated[str, Form()] = "/",
    ) -> Response:
        """Sign a browser in with an API token: a signed session cookie, and its CSRF value
        (a browser's own form is sent on to the page `next` instead)."""
        row = store.token(token.strip()) if re.fullmatch(TOKEN_RULE, token.strip()) else None
        if row is None:
            if wants_page(request):
                return login_redirect(False, next)
            raise HTTPException(401, "unknown or revoked token")
        cookie, csrf = session_cookie(key, row.name)
        answer: Response = JSONResponse({"name": row.name, "role": row.role.value, "csrf": csrf})
        if wants_page(request):
            answer = login_redirect(True, next)
        answer.set_cookie(
            COOKIE,
            cookie,
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return answer

    @app.post("/logout", tags=["session"])
    def logout(who: Viewer) -> Response:
        answer = Response(status_code=204)
        answer.delete_cookie(COOKIE)
        return answer

    @app.get(f"{API}/inventory", tags=["integrations"])
    def get_inventory(who: Viewer, site: SiteDep) -> JSONResponse:
        """Ansible's dynamic inventory: groups by role, slot, state and verify result."""
        return JSONResponse(inventory.site_inventory(site))

    @app.get("/metrics", tags=["integrations"], response_class=PlainTextResponse)
    def get_metrics(who: Viewer, site: SiteDep, store: Store) -> PlainTextResponse:
        """Prometheus' text format (a scraper sends a viewer token as its bearer token)."""
        running = metrics.Gauge(
            "Jobs of sharedroot serve running now", store.count_jobs(JobStatus.RUNNING)
        )
        text = metrics.exposition(metrics.site_families(site, {"sharedroot_jobs_running": running}))
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.get(f"{API}/whoami", tags=["tokens"])
    def whoami(who: Viewer) -> dict[str, Any]:
        return {"name": who.name, "role": who.role.value, "session": who.csrf is not None}

    app.include_router(dashboard(key, store_dep, site_dep, rollout_store(home)))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def _events(home: Path, job: int, after: int) -> AsyncIterator[str]:
    """Server-sent events: each new event of the job, then `done` once it has ended."""
    store = ServerStore(home)

    async def poll() -> tuple[list[str], bool]:
        nonlocal after
        new = await asyncio.to_thread(store.events, job, after)
        sent = [
            sse.message(
                e.kind,
                {"seq": e.seq, "at": e.at, "text": e.text, "done": e.done, "total": e.total},
                e.seq,
            )
            for e in new
        ]
        after = new[-1].seq if new else after
        row = await asyncio.to_thread(store.job, job)
        if row is None or (row.status.ended and not new):
            sent.append(sse.message("done", {"status": row.status.value if row else "gone"}))
            return sent, True
        return sent, False

    try:
        async for text in sse.stream(poll, EVENT_POLL):
            yield text
    finally:
        store.close()
