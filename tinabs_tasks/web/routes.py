"""Every page and action of the web console, and the app that serves them.

Pages (GET) render templates; actions (POST) check the CSRF token (auth.action) and redirect;
``/jobs/{id}/state`` and ``/actions/{id}/state`` are the JSON the live views poll.  All of them
need a logged-in session (auth.RequireLogin).  Blocking work (Redis, waiting for workers) runs
in Starlette's thread pool.
"""
from __future__ import annotations

import time
from pathlib import Path

import jinja2
import kombu.exceptions
import redis
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from tinabs_tasks.runs.human import human_bytes
from tinabs_tasks.runs.job_view import how_taken
from tinabs_tasks.web import auth
from tinabs_tasks.web.console import Console, ConsoleError

HERE = Path(__file__).resolve().parent


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")), autoescape=True)
    env.filters["bytes"] = human_bytes
    env.filters["when"] = lambda d: d.strftime("%Y-%m-%d %H:%M UTC") if d else "?"
    env.filters["ago"] = _ago
    env.filters["how"] = lambda backup: how_taken(backup.to_dict())  # a catalog.Backup
    return Jinja2Templates(env=env)


def _ago(d) -> str:
    if not d:
        return "never"
    s = max(0, time.time() - d.timestamp())
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= n:
            return f"{s / n:.0f} {unit} ago"
    return "just now"


TEMPLATES = _templates()


def page(request, name: str, status: int = 200, **context):
    console: Console = request.app.state.console
    return TEMPLATES.TemplateResponse(request, name, {
        "user": auth.user(request), "csrf": auth.csrf_token(request), "flower": console.cfg.web.flower_url,
        **context}, status_code=status)


def _console(request) -> Console:
    return request.app.state.console


def _by(request) -> str:
    return f"{auth.user(request)} (web)"


# -- login ------------------------------------------------------------------------------------
async def login_form(request):
    if auth.user(request):
        return RedirectResponse("/pools", status_code=303)
    return page(request, "login.html", next=auth.safe_next(request.query_params.get("next", "/pools")))


async def login(request):
    form = await request.form()
    sent = str(form.get("csrf") or "")
    expected = request.session.get("csrf") or ""
    next_path = auth.safe_next(str(form.get("next") or "/pools"))
    if not expected or not auth.password_ok(sent, expected):
        return page(request, "login.html", status=403, next=next_path,
                    error="This login form has expired; please try again.")
    web = request.app.state.web
    name, password = str(form.get("username") or ""), str(form.get("password") or "")
    if not (auth.password_ok(name, web["username"]) and auth.password_ok(password, web["password"])):
        await auth.failed_login_pause()
        return page(request, "login.html", status=401, next=next_path, error="Wrong user name or password.")
    auth.log_in(request, name)
    return RedirectResponse(next_path, status_code=303)


@auth.action
async def logout(request, form):
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


async def healthz(request):
    return PlainTextResponse("ok\n")


async def home(request):
    return RedirectResponse("/pools", status_code=303)


# -- pools --------------------------------------------------------------------------------------
async def pools(request):
    console = _console(request)
    query = request.query_params.get("q", "").strip()
    data = await run_in_threadpool(console.pools, "refresh" in request.query_params)
    for pool in data:
        for group in pool.get("by_host", []):
            group["shown"] = [v for v in group["vms"] if _matches(v, query)]
    return page(request, "pools.html", pools=data, q=query, today=console.today_tag())


def _matches(vm: dict, query: str) -> bool:
    """A tag exactly (case-insensitive), or part of the name or uuid."""
    if not query:
        return True
    q = query.lower()
    return q in (t.lower() for t in vm["tags"]) or q in vm["name"].lower() or q in vm["uuid"]


# -- a new backup: choose, preview, start ----------------------------------------------------
def _choice(params) -> dict:
    return {"kind": params.get("kind", "today"), "tag": params.get("tag", ""), "vms": params.getlist("vm"),
            "mode": params.get("mode", ""), "pools": params.getlist("pool")}


async def backup_form(request):
    console = _console(request)
    choice = _choice(request.query_params)
    if choice["vms"] and "kind" not in request.query_params:
        choice["kind"] = "vms"
    return page(request, "backup_new.html", choice=choice, today=console.today_tag(),
                all_pools=sorted(console.cfg.pools), default_mode=console.cfg.default_mode,
                modes=console.modes())


async def backup_preview(request):
    console = _console(request)
    choice = _choice(request.query_params)
    try:
        selector, pool_list = console.selection(choice["kind"], choice["tag"], choice["vms"], choice["pools"] or None)
        mode = console.check_mode(choice["mode"])
    except ConsoleError as exc:
        return page(request, "backup_new.html", status=400, choice=choice, today=console.today_tag(),
                    all_pools=sorted(console.cfg.pools), default_mode=console.cfg.default_mode,
                    modes=console.modes(), error=str(exc))
    plan = await run_in_threadpool(console.preview, selector, mode, pool_list)
    return page(request, "preview.html", plan=plan, choice=choice, mode=mode, pools=pool_list)


@auth.action
async def backup_start(request, form):
    console = _console(request)
    choice = _choice(form)
    try:
        selector, pool_list = console.selection(choice["kind"], choice["tag"], choice["vms"], choice["pools"] or None)
        mode = console.check_mode(choice["mode"])
    except ConsoleError as exc:
        return PlainTextResponse(f"{exc}\n", status_code=400)
    job_id = await run_in_threadpool(console.start, selector, mode, pool_list)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


# -- jobs ---------------------------------------------------------------------------------------
async def jobs(request):
    data = await run_in_threadpool(_console(request).recent_jobs)
    return page(request, "jobs.html", jobs=data)


async def job(request):
    data = await run_in_threadpool(_console(request).job, request.path_params["job"])
    if data is None:
        return page(request, "error.html", status=404, message=f"No job {request.path_params['job']} "
                    "(job state is kept for [limits] state_ttl_s after a job ends).")
    return page(request, "job.html", job=data)


async def job_state(request):
    data = await run_in_threadpool(_console(request).job, request.path_params["job"])
    if data is None:
        return JSONResponse({"error": "no such job"}, status_code=404)
    return JSONResponse(data)


@auth.action
async def job_abort(request, form):
    job_id = request.path_params["job"]
    try:
        await run_in_threadpool(_console(request).abort, job_id, _by(request))
    except ConsoleError as exc:
        return PlainTextResponse(f"{exc}\n", status_code=404)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


# -- catalog: browse, verify, restore -------------------------------------------------------------
async def catalog_page(request):
    query = request.query_params.get("q", "")
    data = await run_in_threadpool(_console(request).catalog, query)
    return page(request, "catalog.html", groups=data, q=query, dest=_console(request).cfg.destination)


@auth.action
async def catalog_verify(request, form):
    try:
        task_id = await run_in_threadpool(_console(request).send_verify, str(form.get("path", "")), _by(request))
    except ConsoleError as exc:
        return page(request, "error.html", status=400, message=str(exc))
    return RedirectResponse(f"/actions/{task_id}", status_code=303)


async def restore_form(request):
    console = _console(request)
    path = request.query_params.get("path", "")
    try:
        backup = await run_in_threadpool(console.backup, path)
    except ConsoleError as exc:
        return page(request, "error.html", status=400, message=str(exc))
    return page(request, "restore.html", backup=backup, path=path, all_pools=sorted(console.cfg.pools),
                form={"pool": backup["manifest"].get("pool", ""), "name": "", "sr": "", "macs": "auto", "start": False})


@auth.action
async def restore_start(request, form):
    console = _console(request)
    path = str(form.get("path", ""))
    name, sr = str(form.get("name", "")), str(form.get("sr", ""))
    macs = str(form.get("macs", "auto"))
    options = {"sr": sr.strip() or None, "name": name if name.strip() else None,
               "macs": macs if macs in ("auto", "keep", "new") else "auto", "start": form.get("start") == "on"}
    try:
        task_id = await run_in_threadpool(console.send_restore, path, str(form.get("pool", "")), options, _by(request))
    except ConsoleError as exc:
        try:
            backup = await run_in_threadpool(console.backup, path)
        except ConsoleError:
            return page(request, "error.html", status=400, message=str(exc))
        return page(request, "restore.html", status=400, backup=backup, path=path, error=str(exc),
                    all_pools=sorted(console.cfg.pools), form={**options, "pool": form.get("pool", ""),
                                                               "name": name, "sr": sr})
    return RedirectResponse(f"/actions/{task_id}", status_code=303)


async def action_page(request):
    data = await run_in_threadpool(_console(request).action, request.path_params["task"])
    if data is None:
        return page(request, "error.html", status=404, message="No such verify or restore (they are kept for "
                    "[limits] state_ttl_s).")
    return page(request, "action.html", action=data)


async def action_state(request):
    data = await run_in_threadpool(_console(request).action, request.path_params["task"])
    if data is None:
        return JSONResponse({"error": "no such action"}, status_code=404)
    return JSONResponse(data)


#: every route: (path, endpoint, methods).  Tests walk this list: each one must refuse a request
#: without a session, and each POST one a request without the CSRF token.
ROUTES = [
    ("/login", login_form, ["GET"]),
    ("/login", login, ["POST"]),
    ("/logout", logout, ["POST"]),
    ("/healthz", healthz, ["GET"]),
    ("/", home, ["GET"]),
    ("/pools", pools, ["GET"]),
    ("/backup/new", backup_form, ["GET"]),
    ("/backup/preview", backup_preview, ["GET"]),
    ("/backup/start", backup_start, ["POST"]),
    ("/jobs", jobs, ["GET"]),
    ("/jobs/{job}", job, ["GET"]),
    ("/jobs/{job}/state", job_state, ["GET"]),
    ("/jobs/{job}/abort", job_abort, ["POST"]),
    ("/catalog", catalog_page, ["GET"]),
    ("/catalog/verify", catalog_verify, ["POST"]),
    ("/catalog/restore", restore_form, ["GET"]),
    ("/catalog/restore", restore_start, ["POST"]),
    ("/actions/{task}", action_page, ["GET"]),
    ("/actions/{task}/state", action_state, ["GET"]),
]


async def broker_unreachable(request, exc):
    """Redis down or refusing (a restart, a network cut): say so, per request, and keep serving;
    the console works again as soon as Redis is back."""
    message = ("The console cannot reach the broker (Redis) right now: "
               f"{type(exc).__name__}. Jobs already started go on; try again in a moment.")
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse({"error": message}, status_code=503)
    return page(request, "error.html", status=503, message=message)


def build_app(cfg, password: str) -> Starlette:
    """The console for this config; ``password`` is the console's, read once at start."""
    web = cfg.web
    app = Starlette(
        routes=[Route(path, endpoint, methods=methods) for path, endpoint, methods in ROUTES]
        + [Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")],
        middleware=[Middleware(SessionMiddleware, secret_key=auth.session_key(password), session_cookie=auth.COOKIE,
                               max_age=int(web.session_hours * 3600), same_site="strict",
                               https_only=web.secure_cookies),
                    Middleware(auth.RequireLogin)],
        exception_handlers={redis.RedisError: broker_unreachable, kombu.exceptions.OperationalError: broker_unreachable})
    app.state.console = Console(cfg)
    app.state.web = {"username": web.username, "password": password}
    return app
