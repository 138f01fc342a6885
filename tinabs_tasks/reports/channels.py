"""Sending a job's report: by email (smtplib) and to a webhook (an HTTP POST of the JSON summary).

Each channel reads its secrets when it sends, never earlier, and raises ``DeliveryFailed``
with a reason fit for `tinabs status` and the logs: any secret it used is scrubbed from it.
"""
from __future__ import annotations

import json
import smtplib
import socket
import ssl
import urllib.error
import urllib.request
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from tinabs_tasks.reports import summary as reports
from tinabs_tasks.config.reports import EmailConfig, SecretRef, WebhookConfig, check_url
from tinabs_tasks.config.secrets import SecretError


class DeliveryFailed(Exception):
    """A report that did not get through; the message says why (and holds no secret)."""


def send(channel: str, cfg: EmailConfig | WebhookConfig, summary: dict) -> str:
    """Send ``summary`` on one channel; returns what was done, for the delivery record."""
    secrets: list[str] = []
    try:
        if channel == "email":
            return _send_email(cfg, summary, secrets)
        return _send_webhook(cfg, summary, secrets)
    except DeliveryFailed as exc:
        raise DeliveryFailed(_scrub(str(exc), secrets)) from None
    except SecretError as exc:
        raise DeliveryFailed(f"cannot read a secret: {exc}") from None
    except Exception as exc:  # whatever a server or the network did: recorded, never lost
        raise DeliveryFailed(_scrub(_reason(exc), secrets)) from None


def _read(ref: SecretRef, secrets: list[str]) -> str:
    value = ref.read()
    secrets.append(value)
    return value


def email_message(cfg: EmailConfig, summary: dict) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = reports.subject(summary)
    msg["From"] = cfg.sender
    msg["To"] = ", ".join(cfg.to)
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(idstring=f"tinabs-{summary['job']}")
    msg.set_content(reports.text(summary))
    msg.add_attachment(json.dumps(summary, indent=2).encode(), maintype="application", subtype="json",
                       filename=f"tinabs-job-{summary['job']}.json")
    return msg


def _send_email(cfg: EmailConfig, summary: dict, secrets: list[str]) -> str:
    password = _read(cfg.password, secrets) if cfg.password else ""
    context = ssl.create_default_context(cafile=cfg.ca_bundle or None)
    where = f"{cfg.host}:{cfg.port}"
    try:
        if cfg.security == "ssl":
            smtp = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout_s, context=context)
        else:
            smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_s)
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryFailed(f"cannot connect to the SMTP server {where}: {_reason(exc)}") from None
    with smtp:
        if cfg.security == "starttls":
            smtp.starttls(context=context)
        if cfg.username:
            try:
                smtp.login(cfg.username, password)
            except smtplib.SMTPAuthenticationError as exc:
                raise DeliveryFailed(f"{where} refused the login for `{cfg.username}` ({_reason(exc)}) — check "
                                     "the [reports.email] password source") from None
        refused = smtp.send_message(email_message(cfg, summary))
    if refused:  # the others have it: sending again would mail them twice
        return f"sent to {', '.join(a for a in cfg.to if a not in refused)}; refused: {', '.join(refused)}"
    return f"sent to {cfg.target}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the secret headers to another URL, or turn the POST into a GET."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise DeliveryFailed(f"the webhook answered HTTP {code} (a redirect); give its final URL in "
                             "[reports.webhook]")


def _send_webhook(cfg: WebhookConfig, summary: dict, secrets: list[str]) -> str:
    url = cfg.url or _read(cfg.url_ref, secrets)
    if not cfg.url:
        try:
            check_url(url, f"the URL in {cfg.url_ref.kind} {cfg.url_ref.name}:")
        except Exception as exc:
            raise DeliveryFailed(str(exc)) from None
    headers = {"Content-Type": "application/json", "User-Agent": "tinabs-report"}
    for name, value in cfg.headers:
        headers[name] = _read(value, secrets) if isinstance(value, SecretRef) else value
    request = urllib.request.Request(url, data=json.dumps(summary).encode(), headers=headers, method="POST")
    context = ssl.create_default_context(cafile=cfg.ca_bundle or None)
    opener = urllib.request.build_opener(_NoRedirect, urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(request, timeout=cfg.timeout_s) as response:
            response.read(4096)
            return f"sent to {cfg.target} (HTTP {response.status})"
    except urllib.error.HTTPError as exc:
        raise DeliveryFailed(f"the webhook at {cfg.target} answered HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise DeliveryFailed(f"cannot reach the webhook at {cfg.target}: {_reason(exc.reason)}") from None


def _reason(exc) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
        return f"{exc.smtp_code} {text}"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    return str(exc) or type(exc).__name__


def _scrub(text: str, secrets: list[str]) -> str:
    for value in secrets:
        if value:
            text = text.replace(value, "***")
    return text
