"""What ``[reports]`` says, as the report channels read it: ReportsConfig, EmailConfig, WebhookConfig."""
from __future__ import annotations

import re
import urllib.parse

from tinabs_tasks.config.base import Record
from tinabs_tasks.config.errors import ConfigError
from tinabs_tasks.config.sources import SecretRef

#: Xen Orchestra's reportWhen values; "failure" is its default, and ours: a nightly mail that
#: says "all fine" every day trains people to ignore the one that does not
WHEN = ("always", "failure", "never")
SECURITY = ("starttls", "ssl", "none")
DEFAULT_PORTS = {"starttls": 587, "ssl": 465, "none": 25}
#: a literal header value under one of these names is refused: it is a secret in the config file
SECRET_HEADER = re.compile(r"auth|token|key|secret|password|cookie|signature", re.IGNORECASE)
ADDRESS = re.compile(r"[^\s@]+@[^\s@]+")  # a bare address: no name, no line break into the headers


class EmailConfig(Record):
    host: str
    port: int
    security: str
    sender: str
    to: tuple[str, ...]
    username: str = ""
    password: SecretRef | None = None
    ca_bundle: str = ""
    timeout_s: float = 30.0

    @property
    def target(self) -> str:
        """Where the mail goes, for status and logs."""
        return f"{', '.join(self.to)} via {self.host}:{self.port}"


class WebhookConfig(Record):
    url: str = ""                      # a literal URL ...
    url_ref: SecretRef | None = None   # ... or one that is itself a secret (Slack, Teams, Discord)
    headers: tuple[tuple[str, str | SecretRef], ...] = ()
    ca_bundle: str = ""
    timeout_s: float = 10.0

    @property
    def target(self) -> str:
        """scheme://host[:port] only: a webhook's path and query often carry its token."""
        if not self.url:
            return f"the URL in {self.url_ref.kind} {self.url_ref.name}"
        parts = urllib.parse.urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


class ReportsConfig(Record):
    when: str = "failure"
    email: EmailConfig | None = None
    webhook: WebhookConfig | None = None
    #: a channel that fails is tried again this many times, backoff_s, 2x, 4x ... apart
    max_retries: int = 3
    backoff_s: float = 30.0

    @property
    def channels(self) -> dict[str, EmailConfig | WebhookConfig]:
        return {name: c for name, c in (("email", self.email), ("webhook", self.webhook)) if c is not None}


def url_problem(url: str) -> str:
    """What is wrong with a webhook URL ("" for nothing)."""
    try:
        parts = urllib.parse.urlsplit(url)
        good = parts.scheme in ("http", "https") and parts.hostname
    except ValueError:  # e.g. an unclosed [IPv6 address
        good = False
    if not good:
        return "the webhook URL must be http:// or https:// with a host"
    return ""


def check_url(url: str, where: str) -> None:
    """A webhook URL read from a secret when a report is sent: ConfigError if it is no good."""
    if url_problem(url):
        raise ConfigError(f"{where} {url_problem(url)}")
