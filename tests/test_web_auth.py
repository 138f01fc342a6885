"""The web console's gate: every page and action refuses a request without a login, every
action one without the session's CSRF token, and nothing secret is ever in a page.

A real `tinabs web` process on a private Redis, the simulator and a worker; requests are
plain HTTP (tests/helpers/web_client.py) so what is checked is the server, not a browser.
The routes come from the console's own table (tinabs_tasks.web.routes.ROUTES): a page added
later is covered without touching this file.
"""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from helpers.deployment import Deployment
from helpers.web_client import WebClient
from helpers.web_proc import PASSWORD, running_console
from tinabs_tasks.web.routes import ROUTES

SIM_ARGS = ("--pools", "2", "--vms-per-pool", "3", "--disk-mib", "2")
#: answer without a session, by design: the login form itself, and a health check saying "ok"
PUBLIC = {("/login", "GET"), ("/login", "POST"), ("/healthz", "GET")}


@pytest.fixture(scope="module")
def dep(redis_server, tmp_path_factory):
    d = Deployment(tmp_path_factory.mktemp("webauth"), redis_server, SIM_ARGS)
    with running_console(d, name="wa1") as d:
        yield d


def _concrete(path: str) -> str:
    return path.replace("{job}", "0123456789ab").replace("{task}", "2b6c5b8e-0000-4000-8000-000000000000")


def _every(method: str) -> list[str]:
    return sorted({_concrete(p) for p, _e, methods in ROUTES if method in methods and (p, method) not in PUBLIC})


def test_the_route_table_covers_pages_and_actions():
    # (a sanity check of what the tests below walk: pages and actions, not an empty list)
    assert len(_every("GET")) >= 9 and len(_every("POST")) >= 5


@pytest.mark.parametrize("path", _every("GET"))
def test_a_page_without_a_login_redirects_to_the_login_form(dep, path):
    reply = WebClient(dep.web.base).get(path)
    assert reply.status == 303 and reply.location.startswith("/login?next="), (reply.status, reply.headers)
    assert "pool-a" not in reply.body and "db-01" not in reply.body


@pytest.mark.parametrize("path", _every("GET"))
def test_json_state_without_a_login_is_401(dep, path):
    reply = WebClient(dep.web.base).get(path, headers={"Accept": "application/json"})
    assert reply.status == 401, (path, reply.status)


@pytest.mark.parametrize("path", _every("POST"))
def test_an_action_without_a_login_is_refused(dep, path):
    client = WebClient(dep.web.base)
    token = client.csrf("/login")  # even with a valid pre-login token: no user, no action
    reply = client.post(path, {"csrf": token, "kind": "today", "path": "x", "pool": "pool-a"})
    assert reply.status == 401, (path, reply.status, reply.body[:200])


@pytest.mark.parametrize("path", _every("POST"))
def test_an_action_without_the_csrf_token_is_refused(dep, path):
    client = WebClient(dep.web.base)
    assert client.login("admin", PASSWORD).status == 303
    for form in ({"kind": "today"}, {"kind": "today", "csrf": "not-the-token"}):
        reply = client.post(path, form)
        assert reply.status == 403 and "CSRF" in reply.body, (path, form, reply.status)
    assert not dep.redis.keys("tinabs:job:*")  # and nothing was started


def test_wrong_password_or_user_gets_no_session(dep):
    for user, password in (("admin", "wrong password!"), ("root", PASSWORD), ("admin", "")):
        client = WebClient(dep.web.base)
        reply = client.login(user, password)
        assert reply.status in (401, 400) or (reply.status == 200 and "Wrong" in reply.body), reply.status
        assert client.get("/pools").status == 303


def test_login_sets_a_hardened_cookie_and_logout_ends_the_session(dep):
    client = WebClient(dep.web.base)
    reply = client.login("admin", PASSWORD)
    assert reply.status == 303 and reply.location == "/pools"
    cookie = reply.headers["set-cookie"].lower()
    assert "httponly" in cookie and "secure" in cookie and "samesite=strict" in cookie, cookie
    page = client.get("/pools")
    assert page.status == 200 and "pool-a" in page.body
    for header in ("content-security-policy", "x-frame-options", "x-content-type-options"):
        assert header in page.headers
    token = re.search(r'name="csrf" value="([^"]+)"', page.body).group(1)
    assert client.post("/logout", {"csrf": token}).status == 303
    assert client.get("/pools").status == 303


def test_after_login_only_local_paths_are_followed(dep):
    client = WebClient(dep.web.base)
    token = client.csrf("/login")
    for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        reply = client.post("/login", {"csrf": token, "next": evil, "username": "admin", "password": PASSWORD})
        assert reply.status == 303 and reply.location == "/", (evil, reply.location)
        client = WebClient(dep.web.base)
        token = client.csrf("/login")


def test_no_secret_is_ever_in_a_page(dep):
    client = WebClient(dep.web.base)
    client.login("admin", PASSWORD)
    secrets = [PASSWORD] + [p["password"] for p in dep.sim.pools]
    for path in ("/pools", "/backup/new", "/backup/preview?kind=today", "/jobs", "/catalog"):
        reply = client.get(path)
        assert reply.status == 200, (path, reply.status)
        assert not [s for s in secrets if s in reply.body], path
    assert not [s for s in secrets if s in dep.web.log()]


def test_the_console_does_not_start_without_a_good_password(dep):
    for password, says in (("", "needs a password"), ("short", "shorter than 8")):
        env = {**dep.env, "TINABS_WEB_PASSWORD": password}
        proc = subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", "web", "--listen", "127.0.0.1:1"],
                              env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_the_console_on_a_busy_port_says_so_before_serving(dep):
    """`tinabs web` where another program holds the port: one clear line (exit 2), never "serving
    the console on ..." followed by a failure."""
    for listen in (f"127.0.0.1:{dep.web.port}", "192.0.2.1:8080"):  # held by the running console; not this host's
        proc = subprocess.run([sys.executable, "-m", "tinabs_tasks.cli", "web", "--listen", listen],
                              env={**dep.env, "TINABS_WEB_PASSWORD": PASSWORD}, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 2 and "serving" not in proc.stdout, proc.stdout + proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"tinabs: cannot listen on {listen}:"), proc.stderr


def _logged_in(dep) -> WebClient:
    client = WebClient(dep.web.base)
    assert client.login("admin", PASSWORD).status == 303
    return client


def test_a_plan_for_any_tag_lists_exactly_the_vms_carrying_it(dep):
    from helpers.pool_checks import backupable_vms
    client = _logged_in(dep)
    state = dep.sim.state()
    expected = sorted(vm["uuid"][:8] for pool in state["pools"] for vm in backupable_vms(state, pool)
                      if "prod" in vm["tags"])
    reply = client.get("/backup/preview?kind=tag&tag=prod&mode=sr-copy&pool=pool-a&pool=pool-b")
    assert reply.status == 200
    rows = re.findall(r'<tr class="planned"><td>[^<]*<span class="uuid">([0-9a-f]{8})</span>', reply.body)
    assert sorted(rows) == expected and expected
    assert "to the backup SR" in reply.body  # sr-copy: both estimates
    assert not dep.redis.keys("tinabs:job:*")  # a plan starts nothing


@pytest.mark.parametrize("query,says", [
    ("kind=tag&tag=", "give a tag"),
    ("kind=vms", "no VM selected"),
    ("kind=today&pool=nope", "unknown pool `nope`"),
    ("kind=today&mode=fast", "mode must be export or sr-copy"),
])
def test_a_plan_from_bad_input_says_what_is_wrong(dep, query, says):
    reply = _logged_in(dep).get(f"/backup/preview?{query}")
    assert reply.status == 400 and says in reply.body, (reply.status, reply.body[-500:])


def test_pages_load_nothing_from_elsewhere(dep):
    client = _logged_in(dep)
    pages = [(client, p) for p in ("/pools", "/backup/new", "/jobs", "/catalog")] + [(WebClient(dep.web.base), "/login")]
    for c, path in pages:
        body = c.get(path).body
        links = re.findall(r'(?:src|href|action)="([^"]*)"', body)
        assert links and all(link.startswith(("/", "#", "?")) for link in links), (path, links)
    assert "default-src 'self'" in client.get("/pools").headers["content-security-policy"]


def test_verify_and_restore_refuse_bad_input_and_send_nothing(dep):
    code, job = dep.backup("--vm", "db-01", "--pool", "pool-a", "--mode", "sr-copy")
    assert code == 0, job
    (run,) = job["runs"]
    client = _logged_in(dep)
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/catalog").body).group(1)
    good = {"csrf": token, "path": run["manifest"], "pool": "pool-a", "macs": "auto", "name": "", "sr": ""}
    for change, says in (({"pool": "nope"}, "unknown pool `nope`"),
                         ({"pool": "pool-b"}, "restores only into its own pool"),
                         ({"name": "evil\nname"}, "must not contain control characters"),
                         ({"path": "/etc/passwd"}, "outside the destination")):
        reply = client.post("/catalog/restore", {**good, **change})
        assert reply.status == 400 and says in reply.body, (change, reply.status, reply.body[-600:])
    reply = client.post("/catalog/verify", {"csrf": token, "path": "/etc/passwd"})
    assert reply.status == 400 and "outside the destination" in reply.body
    assert not dep.redis.keys("tinabs:web:action:*")  # nothing was sent to a worker
