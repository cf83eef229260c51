"""The dashboard: HTML pages over the API's views, rendered here with Jinja2.

Pages only read. Every change a page offers is a request from the browser (htmx) to
the API itself (/api/v1/...), carrying the session's CSRF value, so the dashboard has
no way to change anything that the API would refuse.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations.

import re
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from sharedroot.api import jobs as joblib
from sharedroot.api import rollouts as ro
from sharedroot.api.actions import GuestAction
from sharedroot.api.auth import Principal, principal, require
from sharedroot.api.params import RowId
from sharedroot.api.views import guest_rows, guest_view, pipeline_view, site_view, slots_view
from sharedroot.errors import InputError
from sharedroot.model.access import ApiRole, JobStatus
from sharedroot.model.rollout import CloneState
from sharedroot.model.types import GuestState, Role
from sharedroot.store.rollouts import RolloutStore
from sharedroot.store.serverdb import ServerStore
from sharedroot.workflows import generations, report
from sharedroot.workflows.context import Site

HERE = Path(__file__).parent
STATIC = HERE / "static"
JOBS_SHOWN = 200
ROLLOUTS_SHOWN = 100
CLONE_STATES = {s.value: s.value.replace("_etc", " /etc") for s in CloneState}
E = TypeVar("E", bound=StrEnum)
BULK_ACTIONS = (GuestAction.START, GuestAction.STOP, GuestAction.VERIFY)


def templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every value shown is escaped, whatever page it reaches
        undefined=jinja2.StrictUndefined,
    )
    return Jinja2Templates(env=env)


def dashboard(
    key: bytes,
    store_dep: Callable[[], Iterator[ServerStore]],
    site_dep: Callable[[], Iterator[Site]],
    rollouts_dep: Callable[[], Iterator[RolloutStore]],
) -> APIRouter:
    """The pages; the `*_dep` are the API's own per-request stores."""
    pages = templates()
    router = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)
    Store = Annotated[ServerStore, Depends(store_dep)]
    SiteDep = Annotated[Site, Depends(site_dep)]
    Rollouts = Annotated[RolloutStore, Depends(rollouts_dep)]

    def signed_in(request: Request, store: Store) -> Principal:
        """The caller; a browser that is not signed in is sent to the sign-in page."""
        try:
            return principal(request, store, key)
        except HTTPException as exc:
            if exc.status_code != 401:
                raise
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise HTTPException(303, headers={"Location": f"/login?next={quote(here)}"}) from None

    Who = Annotated[Principal, Depends(signed_in)]

    def page(request: Request, who: Principal, name: str, **context: Any) -> Response:
        return pages.TemplateResponse(
            request,
            name,
            {
                "who": who,
                "csrf": who.csrf or "",
                "can_operate": who.role.may(ApiRole.OPERATOR),
                "is_admin": who.role.may(ApiRole.ADMIN),
                "nav": name.removesuffix(".html"),
                **context,
            },
        )

    @router.get("/login")
    def login_page(request: Request, next: str = "/", failed: bool = False) -> Response:
        return pages.TemplateResponse(
            request, "login.html", {"next": safe_next(next), "failed": failed}
        )

    @router.get("/")
    def overview(request: Request, who: Who, site: SiteDep) -> Response:
        pipe = pipeline_view(site)
        stages = {s["stage"]: s for s in pipe["stages"]}
        return page(
            request,
            who,
            "overview.html",
            site=site_view(site),
            pipe=pipe,
            stages=stages,
            linked=report.linked(site),
        )

    @router.get("/guests")
    def guests(
        request: Request,
        who: Who,
        site: SiteDep,
        role: str = "",
        state: str = "",
        slot: str = "",
        q: str = "",
    ) -> Response:
        # a filter form sends its "any" choices as empty values
        chosen = {
            "role": choice(Role, role),
            "state": choice(GuestState, state),
            "slot": int(slot) if slot.isdecimal() else None,
            "q": q,
        }
        rows = guest_rows(site)
        total = len(rows)
        text = q.strip().upper()
        rows = [
            g
            for g in rows
            if chosen["role"] in (None, g["role"])
            and chosen["state"] in (None, g["state"])
            and chosen["slot"] in (None, g["slot"])
            and (not text or text in g["name"])
        ]
        return page(
            request,
            who,
            "guests.html",
            rows=rows,
            total=total,
            roles=list(Role),
            states=[GuestState.LOGGED_ON, GuestState.LOGGED_OFF],
            slots=site.config.gold_slots,
            chosen=chosen,
            actions=BULK_ACTIONS,
        )

    @router.get("/guests/{name}")
    def guest(name: str, request: Request, who: Who, site: SiteDep, store: Store) -> Response:
        return page(
            request, who, "guest.html", g=guest_view(site, store, name), actions=BULK_ACTIONS
        )

    @router.get("/slots")
    def slots(request: Request, who: Who, site: SiteDep) -> Response:
        return page(
            request,
            who,
            "slots.html",
            slots=slots_view(site),
            gens=generations.generations(site)["generations"],
        )

    @router.get("/jobs")
    def jobs(request: Request, who: Who, store: Store, status: str = "") -> Response:
        chosen = choice(JobStatus, status)
        rows = [joblib.view(j) for j in store.jobs(JOBS_SHOWN, chosen)]
        return page(request, who, "jobs.html", jobs=rows, statuses=list(JobStatus), chosen=chosen)

    @router.get("/jobs/{job}")
    def job(job: RowId, request: Request, who: Who, store: Store, site: SiteDep) -> Response:
        row = store.job(job)
        if row is None:
            raise LookupError(f"job {job}: no such job")
        return page(request, who, "job.html", job=joblib.view(row, site))

    @router.get("/rollouts")
    def rollouts(request: Request, who: Who, site: SiteDep, store: Rollouts) -> Response:
        pipe = pipeline_view(site)
        return page(
            request,
            who,
            "rollouts.html",
            rollouts=[ro.view(store, r) for r in store.rollouts(ROLLOUTS_SHOWN)],
            slots=site.config.gold_slots,
            current=pipe["current_slot"],
        )

    @router.get("/rollouts/{rollout}")
    def rollout(rollout: RowId, request: Request, who: Who, store: Rollouts) -> Response:
        view = ro.view(store, ro.one(store, rollout))
        return page(request, who, "rollout.html", r=view, bars=wave_bars(view), names=CLONE_STATES)

    @router.get("/tokens")
    def tokens(request: Request, who: Who, store: Store) -> Response:
        require(who, ApiRole.ADMIN)
        return page(
            request, who, "tokens.html", tokens=store.tokens(), roles=[r.value for r in ApiRole]
        )

    return router


def wave_bars(view: dict[str, Any]) -> list[dict[str, Any]]:
    """A rollout's waves as its page draws them: those begun, those planned, then the
    clones an ended rollout never reached; each with its clones' views."""
    by_name = {c["clone"]: c for c in view["clones"]}
    bars = [
        {"title": f"wave {w['wave']}", "kind": "begun", "clones": [by_name[n] for n in w["clones"]]}
        for w in view["waves"]
    ]
    after = max((w["wave"] for w in view["waves"]), default=0)
    for n, names in enumerate(view["planned"], start=after + 1):
        # a failed clone queued again stays drawn in the wave it failed in
        fresh = [by_name[c] for c in names if by_name[c]["wave"] is None]
        if fresh:
            bars.append({"title": f"wave {n} (planned)", "kind": "planned", "clones": fresh})
    placed = {c["clone"] for b in bars for c in b["clones"]}
    left = [c for c in view["clones"] if c["clone"] not in placed]
    if left:
        bars.append({"title": "not reached", "kind": "left", "clones": left})
    return bars


def choice(kind: type[E], value: str) -> E | None:
    """A filter's choice: empty is any; an unknown value is refused (400)."""
    if not value:
        return None
    try:
        return kind(value)
    except ValueError:
        known = ", ".join(k.value for k in kind)
        raise InputError(f"{value!r}: not one of {known}") from None


def wants_page(request: Request) -> bool:
    """A browser's own form post (it asks for HTML), not an API client."""
    return "text/html" in request.headers.get("accept", "")


def safe_next(path: str) -> str:
    # Only a plain path of this site, so a link cannot send a fresh session elsewhere
    # (`//host` and `/\host` are other sites to a browser).
    return path if re.fullmatch(r"/(?![/\\])[A-Za-z0-9._~/?=&%+-]{0,500}", path) else "/"


def login_redirect(ok: bool, next: str = "/") -> RedirectResponse:
    """A browser's sign-in answer: on to the page it came for, or back to the form."""
    target = safe_next(next)
    if ok:
        return RedirectResponse(target, status_code=303)
    return RedirectResponse(f"/login?failed=true&next={quote(target)}", status_code=303)
