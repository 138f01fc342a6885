"""Job reports: at the end of each job a summary goes by email and to a webhook, as [reports] says.

Given a simulated pool of three VMs, a private Redis, a real worker, a local SMTP server
(aiosmtpd, with a login) and a local HTTP server (a webhook that wants a bearer token):
- with when = "always", a job in which one VM fails for good sends exactly one email and one
  webhook POST, each with every VM's result, size and duration and the failure's reason; the
  summary and its delivery are in `tinabs status JOB --json`; the report task sent again for
  the same job sends nothing more;
- with when = "failure", a job that succeeds sends nothing and one that fails sends;
- with when = "never", nothing is sent, and the summary is still stored;
- an SMTP server that cannot be reached shows as a delivery error in `tinabs status`, after
  the configured retries, while the webhook still gets the report;
- no password (the pool's, the SMTP login's, the webhook token) is in an email, a webhook
  body, Redis or a worker log.
Plus: the config is checked with one-line errors, and a job's end is claimed by one caller
only, however many see it.
"""
from __future__ import annotations

import base64
import email
import email.policy
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from helpers.deployment import Deployment
from tinabs_tasks.config import model as config_mod
from tinabs_tasks.runs import keys
from tinabs_tasks.runs.store import JobStore, RunState
from tinabs_tasks.reports.channels import DeliveryFailed, send
from tinabs_tasks.config.reports import EmailConfig, SecretRef, WebhookConfig

SIM_ARGS = ("--pools", "1", "--vms-per-pool", "3", "--disk-mib", "4", "--seed", "7311")
POOL_PASSWORD = "sim-pool-a-7311"
FAILING_VM = "db-01"
FAULT = {"method": "VDI.snapshot", "error": ["HANDLE_INVALID", "VDI", "OpaqueRef:x"], "arg": f"{FAILING_VM} system",
         "pool": "pool-a", "times": 1}
SMTP_USER, SMTP_PASSWORD = "tinabs-mailer", "smtp-Pw-7hQ2zR"
HOOK_TOKEN = "hook-Token-x91Lm"
SECRETS = (POOL_PASSWORD, SMTP_PASSWORD, HOOK_TOKEN)
REPORT_WAIT_S = 30
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # the test server's login


# -- the local servers ----------------------------------------------------------
class Mailbox:
    """aiosmtpd handler: keeps every message it accepts (raw bytes)."""

    def __init__(self):
        self.messages: list[bytes] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope.original_content or envelope.content)
        return "250 OK"


def _authenticator(server, session, envelope, mechanism, auth_data):
    ok = auth_data.login == SMTP_USER.encode() and auth_data.password == SMTP_PASSWORD.encode()
    return AuthResult(success=ok)


class Webhook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Webhook.received.append({"path": self.path, "headers": dict(self.headers), "body": body})
        self.send_response(200 if self.headers.get("Authorization") == f"Bearer {HOOK_TOKEN}" else 401)
        self.end_headers()

    def log_message(self, *args):
        pass


def _closed_port() -> int:
    """A free port: nothing listens on it once the probe socket is closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reports_block(when: str, smtp_port: int, hook_port: int, password_file) -> str:
    return f"""
[reports]
when = "{when}"
max_retries = 1
backoff_s = 0.5

[reports.email]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
allow_plaintext_auth = true
username = "{SMTP_USER}"
password_file = "{password_file}"
from = "tinabs@example.test"
to = ["ops@example.test", "oncall@example.test"]
timeout_s = 5

[reports.webhook]
url = "http://127.0.0.1:{hook_port}/hooks/tinabs"
timeout_s = 5

[reports.webhook.headers]
Authorization = {{ env = "HOOK_AUTH" }}
X-Team = "ops"
"""


class Setup:
    """The deployment, the servers, and a way to restart the worker with another [reports]."""

    def __init__(self, dep: Deployment, mailbox: Mailbox, smtp_port: int, hook_port: int, password_file):
        self.dep, self.mailbox = dep, mailbox
        self.smtp_port, self.hook_port, self.password_file = smtp_port, hook_port, password_file
        self.base_config = dep.config.read_text()

    def configure(self, when: str, smtp_port: int | None = None) -> None:
        for worker in self.dep.workers:
            worker.stop()
        self.dep.workers.clear()
        self.dep.config.write_text(self.base_config + _reports_block(
            when, smtp_port or self.smtp_port, self.hook_port, self.password_file))
        self.dep.start_worker("w1", concurrency=3)

    def job(self, failing: bool) -> dict:
        self.dep.sim.clear_faults()
        if failing:
            self.dep.sim.add_fault(FAULT)
        code, job = self.dep.backup("--all", timeout=90)
        assert code == (1 if failing else 0), job
        # `backup --wait --json` shows the report as `status --json` does: decoded (or not there yet)
        assert job["report"] is None or isinstance(job["report"], dict), job["report"]
        return job

    def report(self, job_id: str) -> dict:
        """`tinabs status JOB --json`'s report, once every channel's delivery is final."""
        deadline = time.monotonic() + REPORT_WAIT_S
        while time.monotonic() < deadline:
            report = self.dep.status(job_id).get("report")
            if report and all(d["status"] in ("sent", "failed", "not sent") for d in report["delivery"].values()):
                time.sleep(0.5)  # a second report, if any were sent, would arrive now
                return report
            time.sleep(0.2)
        raise AssertionError(f"no final report for job {job_id}: {self.dep.status(job_id).get('report')}\n"
                             f"{self.dep.workers[0].log_tail()}")

    def mails(self, job_id: str) -> list[email.message.EmailMessage]:
        parsed = [email.message_from_bytes(m, policy=email.policy.default) for m in self.mailbox.messages]
        return [m for m in parsed if f"job {job_id}:" in m["Subject"]]

    def hooks(self, job_id: str) -> list[dict]:
        return [h for h in Webhook.received if json.loads(h["body"])["job"] == job_id]


@pytest.fixture(scope="module")
def setup(redis_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("reports")
    password_file = root / "smtp.password"
    password_file.write_text(SMTP_PASSWORD + "\n")
    password_file.chmod(0o600)
    mailbox = Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=_closed_port(), authenticator=_authenticator,
                      auth_required=True, auth_require_tls=False)
    smtp.start()
    hook = ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    dep = Deployment(root, redis_server, SIM_ARGS)
    dep.env["HOOK_AUTH"] = f"Bearer {HOOK_TOKEN}"
    try:
        yield Setup(dep, mailbox, smtp.port, hook.server_address[1], password_file)
    finally:
        dep.stop()
        hook.shutdown()
        smtp.stop()


# -- end to end ------------------------------------------------------------------
def test_a_failing_job_is_reported_once_by_email_and_webhook(setup):
    # Given when = "always", and a permanent fault on one VM's snapshot
    setup.configure("always")
    # When every VM of the pool is backed up
    job = setup.job(failing=True)
    report = setup.report(job["id"])
    # Then exactly one email and one webhook POST arrived for the job
    (mail,) = setup.mails(job["id"])
    (hook,) = setup.hooks(job["id"])
    # And `tinabs status --json` shows both as delivered, to where they went
    assert report["delivery"]["email"]["status"] == "sent", report["delivery"]
    assert report["delivery"]["webhook"]["status"] == "sent", report["delivery"]
    assert report["delivery"]["email"]["attempts"] == 1 and report["delivery"]["webhook"]["attempts"] == 1
    # And the summary holds every VM's result, size, duration and the failure's reason, as the runs say
    runs = {r["vm_uuid"]: r for r in job["runs"]}
    assert len(runs) == 3 and {v["uuid"] for v in report["vms"]} == set(runs)
    for vm in report["vms"]:
        run = runs[vm["uuid"]]
        assert vm["result"] == run["state"] and vm["vm"] == run["vm_name"] and vm["pool"] == "pool-a"
        assert vm["duration_s"] == pytest.approx(float(run["finished"]) - float(run["queued"]), abs=0.01)
        assert 0 < vm["duration_s"] < 90
        if vm["vm"] == FAILING_VM:
            assert vm["result"] == "failed" and vm["size"] is None and vm["failed_stage"] == "snapshot"
            assert vm["error"] == run["error"] and "HANDLE_INVALID" in vm["error"], vm
        else:
            assert vm["result"] == "succeeded" and vm["error"] is None
            assert vm["size"] == int(run["size"]) == os.path.getsize(run["path"]) > 0
    assert report["result"] == "failed"
    assert report["totals"] == {"vms": 3, "succeeded": 2, "failed": 1, "pools_not_planned": 0,
                                "bytes": sum(v["size"] or 0 for v in report["vms"])}
    # And the webhook got that very summary as JSON, with its secret header and the literal one
    summary = {k: v for k, v in report.items() if k != "delivery"}
    assert json.loads(hook["body"]) == summary
    assert hook["path"] == "/hooks/tinabs" and hook["headers"]["Content-Type"] == "application/json"
    assert hook["headers"]["Authorization"] == f"Bearer {HOOK_TOKEN}" and hook["headers"]["X-Team"] == "ops"
    # And the email says it in its subject, in a plain-text table and in a JSON attachment
    assert mail["Subject"] == f"[tinabs] job {job['id']}: 2 succeeded, 1 failed"
    assert mail["To"] == "ops@example.test, oncall@example.test" and mail["From"] == "tinabs@example.test"
    body = mail.get_body(("plain",)).get_content()
    failed_line = next(line for line in body.splitlines() if line.startswith("pool-a") and " failed " in line)
    assert FAILING_VM in failed_line and "HANDLE_INVALID" in failed_line
    assert sum(line.startswith("pool-a") and " succeeded " in line for line in body.splitlines()) == 2
    (attachment,) = list(mail.iter_attachments())
    assert attachment.get_filename() == f"tinabs-job-{job['id']}.json"
    assert json.loads(attachment.get_content()) == summary
    # When the report task is sent again for the same job (a duplicate)
    _send_report_task(setup.dep, job["id"])
    # Then nothing more is sent
    assert len(setup.mails(job["id"])) == 1 and len(setup.hooks(job["id"])) == 1


def _send_report_task(dep: Deployment, job_id: str) -> None:
    from celery import Celery
    app = Celery("test", broker=dep.redis_url, backend=dep.redis_url)
    result = app.send_task("tinabs.report", args=(job_id,), queue="tinabs")
    outcome = result.get(timeout=30)
    assert outcome == {"job": job_id, "delivery": {"email": "sent", "webhook": "sent"}}, outcome


def test_when_failure_sends_only_for_a_failing_job(setup):
    # Given when = "failure"
    setup.configure("failure")
    # When a job succeeds
    good = setup.job(failing=False)
    report = setup.report(good["id"])
    # Then its summary is stored, and nothing is sent
    assert report["result"] == "succeeded" and report["totals"]["succeeded"] == 3
    assert {d["status"] for d in report["delivery"].values()} == {"not sent"}, report["delivery"]
    assert setup.mails(good["id"]) == [] and setup.hooks(good["id"]) == []
    # When a job fails
    bad = setup.job(failing=True)
    report = setup.report(bad["id"])
    # Then it is sent, once each way
    assert {d["status"] for d in report["delivery"].values()} == {"sent"}, report["delivery"]
    assert len(setup.mails(bad["id"])) == 1 and len(setup.hooks(bad["id"])) == 1


def test_when_never_sends_nothing_but_keeps_the_summary(setup):
    # Given when = "never"
    setup.configure("never")
    # When a job fails
    job = setup.job(failing=True)
    report = setup.report(job["id"])
    # Then nothing is sent, and the summary says what happened
    assert setup.mails(job["id"]) == [] and setup.hooks(job["id"]) == []
    assert report["result"] == "failed" and report["totals"]["failed"] == 1
    assert report["delivery"]["email"] == {"status": "not sent", "to": report["delivery"]["email"]["to"],
                                           "why": '[reports] when = "never"'}


def test_an_unreachable_smtp_server_is_a_delivery_error_in_status(setup):
    # Given an SMTP server that cannot be reached (a closed port), and a webhook that works
    setup.configure("always", smtp_port=_closed_port())
    # When a job succeeds
    job = setup.job(failing=False)
    report = setup.report(job["id"])
    # Then the email is recorded as failed after its retry, and the webhook got the report
    email_delivery = report["delivery"]["email"]
    assert email_delivery["status"] == "failed" and email_delivery["attempts"] == 2, email_delivery
    assert "cannot connect to the SMTP server 127.0.0.1:" in email_delivery["error"], email_delivery
    assert report["delivery"]["webhook"]["status"] == "sent" and len(setup.hooks(job["id"])) == 1
    # And `tinabs status JOB` says so, with the job still a success (exit 0), and the worker lives on
    shown = setup.dep.cli("status", job["id"])
    assert shown.returncode == 0, shown.stderr
    assert "report: email FAILED after 2 attempt(s): cannot connect to the SMTP server" in shown.stdout, shown.stdout
    assert "report: webhook sent to http://127.0.0.1:" in shown.stdout, shown.stdout
    assert setup.dep.workers[0].proc.poll() is None
    assert "report by email failed after 2 attempt(s), giving up" in setup.dep.workers[0].log_path.read_text()


def test_no_secret_in_mails_webhooks_redis_or_worker_logs(setup):
    # Given the jobs above (reports sent, retried and failed; a pool password used by every stage)
    assert setup.mailbox.messages and Webhook.received, "the earlier tests sent nothing: nothing to search"
    # Then no password or token is in any email, any webhook body, Redis, or any worker log
    places = {f"email {i}": m for i, m in enumerate(setup.mailbox.messages)}
    places.update({f"webhook body {i}": h["body"] for i, h in enumerate(Webhook.received)})
    places["redis"] = b"\n".join(_redis_dump(setup.dep.redis_url))
    places.update({p.name: p.read_bytes() for p in setup.dep.root.glob("worker-*.log")})
    for secret in SECRETS:
        for form in (secret.encode(), base64.b64encode(secret.encode())):
            leaks = [where for where, data in places.items() if form in data]
            assert leaks == [], f"{secret!r} found in {leaks}"


def _redis_dump(url: str) -> list[bytes]:
    """Every key and value of the DB, with the base64 bodies of Celery's messages decoded too."""
    r = redis.Redis.from_url(url)
    out = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key).decode()
        values = {"string": lambda: [r.get(key)], "hash": lambda: [b for kv in r.hgetall(key).items() for b in kv],
                  "list": lambda: r.lrange(key, 0, -1), "set": lambda: list(r.smembers(key)),
                  "zset": lambda: r.zrange(key, 0, -1)}.get(kind, lambda: [])()
        out += [key, *(v for v in values if v is not None)]
        out += [base64.b64decode(m) for v in values if v for m in _bodies(v)]
    return out


def _bodies(value: bytes) -> list[str]:
    try:
        doc = json.loads(value)
    except ValueError:
        return []
    return [doc["body"]] if isinstance(doc, dict) and isinstance(doc.get("body"), str) else []


# -- a job's end is claimed once -------------------------------------------------
#: a DB of the module's Redis that its deployment (DB 0, whose worker still runs) does not use
STORE_DB = 1


def test_a_jobs_end_is_claimed_by_one_caller_only(redis_server):
    # Given a job of two runs whose store calls back at the end
    r = redis.Redis.from_url(redis_server.url_for(STORE_DB), decode_responses=True)
    ended: list[str] = []
    stores = [JobStore(r, 60, on_end=ended.append) for _ in range(8)]
    job = stores[0].create_job({"all": True}, "export", ["p"])
    for run in ("r1", "r2"):
        stores[0].create_run(f"{job}{run}", {"job": job, "pool": "p", "vm_uuid": run, "vm_name": run})
    stores[0].pool_planned(job, [f"{job}r1", f"{job}r2"], [])
    stores[0].finish_run(f"{job}r1", RunState.SUCCEEDED)
    assert ended == []  # one run still going: not the end
    # When the last run ends, and eight callers then look at the job's end at once
    stores[0].finish_run(f"{job}r2", RunState.FAILED, error="x")
    threads = [threading.Thread(target=s._expire_if_ended, args=(job,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then the end was claimed exactly once, on the job's hash, which keeps its TTL
    assert ended == [job]
    assert r.hget(keys.job(job), "report_claimed") and 0 < r.ttl(keys.job(job)) <= 60


def test_a_job_where_nothing_matched_ends_and_is_claimed(redis_server):
    r = redis.Redis.from_url(redis_server.url_for(STORE_DB), decode_responses=True)
    ended: list[str] = []
    store = JobStore(r, 60, on_end=ended.append)
    job = store.create_job({"tag": "Nope"}, "export", ["p", "q"])
    store.pool_planned(job, [], ["pool `p`: no VM matches tag Nope"])
    assert ended == []  # pool q not planned yet
    store.pool_planned(job, [], ["pool `q`: no VM matches tag Nope"])
    assert ended == [job]


# -- config ----------------------------------------------------------------------
BASE = {"broker_url": "redis://x", "destination": "/srv/b",
        "pools": {"a": {"master": "https://a", "username": "root", "password_env": "A", "shared_sr": "s"}}}
EMAIL = {"host": "smtp.example", "from": "t@example", "to": ["ops@example"]}


def _parse(reports: dict):
    return config_mod.parse({**json.loads(json.dumps(BASE)), "reports": reports}, "t.toml")


def test_reports_config_defaults_and_a_full_example():
    assert config_mod.parse(json.loads(json.dumps(BASE))).reports.when == "failure"
    cfg = _parse({"when": "always", "email": {**EMAIL, "username": "u", "password_secret": "smtp"},
                  "webhook": {"url_env": "HOOK_URL", "headers": {"Authorization": {"file": "/etc/t/hook"},
                                                                  "X-Team": "ops"}}}).reports
    assert cfg.when == "always" and cfg.email.port == 587 and cfg.email.security == "starttls"
    assert cfg.email.password.kind == "secret" and cfg.email.password.name == "smtp"
    assert cfg.webhook.url_ref.kind == "env" and dict(cfg.webhook.headers)["X-Team"] == "ops"
    assert set(cfg.channels) == {"email", "webhook"}


@pytest.mark.parametrize("reports,message", [
    ({"when": "sometimes"}, "[reports] when must be one of 'always', 'failure', 'never'"),
    ({"email": {**EMAIL, "password": "pw"}}, "[reports.email] inline passwords are refused"),
    ({"email": {**EMAIL, "username": "u"}}, "give both `username` and one of password_secret"),
    ({"email": {**EMAIL, "username": "u", "password_env": "P", "security": "none"}}, "sends the password in clear"),
    ({"email": {**EMAIL, "username": "u", "password_env": "P", "password_file": "/p"}}, "give only one of"),
    ({"email": {**EMAIL, "to": "nobody"}}, "`to` must be a list of mail addresses"),
    ({"email": {**EMAIL, "to": ["ops@example\nBcc: x@evil"]}}, "`to` must be a list of mail addresses"),
    ({"email": {**EMAIL, "port": 0}}, "port must be an integer from 1 to 65535"),
    ({"webhook": {}}, "give exactly one of url, url_env, url_file or url_secret"),
    ({"webhook": {"url": "ftp://x"}}, "must be http:// or https://"),
    ({"webhook": {"url": "https://u:pw@x/h"}}, "the url holds credentials"),
    ({"webhook": {"url": "https://x", "headers": {"Authorization": "Bearer abc"}}}, "looks secret"),
    ({"webhook": {"url": "https://x", "headers": {"X-Sig": {"env": "A", "file": "/b"}}}}, "exactly one of"),
    ({"webhook": {"url": "https://x", "colour": "red"}}, "unknown key(s) colour"),
    ({"max_retries": -1}, "max_retries must be a non-negative integer"),
])
def test_reports_config_errors_are_one_line(reports, message):
    with pytest.raises(config_mod.ConfigError) as err:
        _parse(reports)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert str(err.value).startswith("t.toml: [reports"), str(err.value)


# -- the channels on their own, against real local servers ------------------------
SUMMARY = {"job": "j1", "result": "failed", "selector": {"all": True}, "mode": "export", "pools": ["p"],
           "created": "2026-01-01T00:00:00Z", "ended": "2026-01-01T00:01:00Z", "duration_s": 60.0,
           "totals": {"vms": 1, "succeeded": 0, "failed": 1, "bytes": 0, "pools_not_planned": 0},
           "vms": [{"pool": "p", "vm": "v", "uuid": "u", "result": "failed", "size": None, "duration_s": 1.0,
                    "error": "snapshot: SR_FULL", "failed_stage": "snapshot", "retries": 0, "backup": None}],
           "notes": []}


@pytest.fixture(scope="module")
def tls_smtp(tmp_path_factory):
    """An SMTP server that requires STARTTLS (a throw-away CA signed its certificate) and a login."""
    import ssl
    from test_tls import make_certs
    certs = make_certs(tmp_path_factory.mktemp("smtp-tls"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs["cert"], certs["key"])
    mailbox = Mailbox()
    server = Controller(mailbox, hostname="127.0.0.1", port=_closed_port(), tls_context=context,
                        require_starttls=True, authenticator=_authenticator, auth_required=True)
    server.start()
    yield server, mailbox, certs
    server.stop()


def _email_cfg(port: int, ca_bundle: str, password_file) -> EmailConfig:
    return EmailConfig(host="127.0.0.1", port=port, security="starttls", sender="t@example.test",
                       to=("ops@example.test",), username=SMTP_USER, password=SecretRef("file", str(password_file)),
                       ca_bundle=ca_bundle, timeout_s=5)


def test_email_over_starttls_checks_the_certificate(tls_smtp, tmp_path):
    server, mailbox, certs = tls_smtp
    password_file = tmp_path / "pw"
    password_file.write_text(SMTP_PASSWORD)
    password_file.chmod(0o600)
    # With the CA that signed the server's certificate: sent, after STARTTLS and the login
    assert send("email", _email_cfg(server.port, certs["ca"], password_file), SUMMARY).startswith("sent to ")
    assert len(mailbox.messages) == 1 and b"snapshot: SR_FULL" in mailbox.messages[0]
    # Without it (system CAs only): refused, nothing sent, and the reason says so
    with pytest.raises(DeliveryFailed, match="CERTIFICATE_VERIFY_FAILED"):
        send("email", _email_cfg(server.port, "", password_file), SUMMARY)
    # A password file others can read: refused before anything is sent
    password_file.chmod(0o644)
    with pytest.raises(DeliveryFailed, match=r"cannot read a secret: password file .* is readable by others"):
        send("email", _email_cfg(server.port, certs["ca"], password_file), SUMMARY)
    assert len(mailbox.messages) == 1


class _Answer(BaseHTTPRequestHandler):
    """Answers every POST with the server's ``status`` (and ``location``), recording what came."""

    def do_POST(self):
        self.server.seen.append(dict(self.headers))
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(self.server.status)
        if getattr(self.server, "location", None):
            self.send_header("Location", self.server.location)
        self.end_headers()

    do_GET = do_POST  # what a client that follows a POST's 302 sends

    def log_message(self, *args):
        pass


@pytest.fixture
def http_servers():
    started = []

    def start(status: int, location: str | None = None) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
        server.status, server.location, server.seen = status, location, []
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()


def _hook(server, **extra) -> WebhookConfig:
    return WebhookConfig(url=f"http://127.0.0.1:{server.server_address[1]}/h",
                         headers=(("Authorization", SecretRef("env", "TEST_HOOK_AUTH")),), timeout_s=5, **extra)


def test_webhook_errors_are_reasons_and_a_redirect_never_carries_the_token(http_servers, monkeypatch):
    monkeypatch.setenv("TEST_HOOK_AUTH", f"Bearer {HOOK_TOKEN}")
    # An HTTP error answer is the delivery's error
    failing = http_servers(500)
    with pytest.raises(DeliveryFailed, match=r"the webhook at http://127\.0\.0\.1:\d+ answered HTTP 500"):
        send("webhook", _hook(failing), SUMMARY)
    # A redirect is refused: the token never reaches the other URL
    elsewhere = http_servers(200)
    redirecting = http_servers(302, location=f"http://127.0.0.1:{elsewhere.server_address[1]}/x")
    with pytest.raises(DeliveryFailed, match="answered HTTP 302 \\(a redirect\\)"):
        send("webhook", _hook(redirecting), SUMMARY)
    assert len(redirecting.seen) == 1 and elsewhere.seen == []
    # A secret header whose variable is unset on the worker: refused before anything is sent
    monkeypatch.delenv("TEST_HOOK_AUTH")
    with pytest.raises(DeliveryFailed, match="cannot read a secret: environment variable TEST_HOOK_AUTH is not set"):
        send("webhook", _hook(elsewhere), SUMMARY)
    assert elsewhere.seen == []
