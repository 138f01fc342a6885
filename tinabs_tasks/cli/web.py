"""`tinabs web [--listen HOST:PORT]`: serve the web console (tinabs_tasks/web) in the foreground.

It needs the broker (Redis), the config and, for the catalog, the destination (read-only is
enough); pool passwords are not needed: what only a pool can tell is asked of its workers.
The console's own password comes from [web] (password_env, password_file or password_secret)
or TINABS_WEB_PASSWORD; without one it does not start.
"""
from __future__ import annotations

import socket
import sys

from tinabs_tasks.config.model import ConfigError
from tinabs_tasks.config.secrets import SecretError
from tinabs_tasks.config.web import PASSWORD_ENV, is_loopback, split_listen
from tinabs_tasks.cli.common import UserError, job_store, load_config

MIN_PASSWORD = 8


def add_arguments(parser) -> None:
    parser.add_argument("--listen", metavar="HOST:PORT", help="where to listen (default: [web] listen, "
                                                              "127.0.0.1:8080)")


def run(args) -> int:
    cfg = load_config(args)
    web = cfg.web
    try:
        host, port = split_listen(args.listen, "--listen") if args.listen else web.host_port
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    try:
        password = web.password.read()
    except SecretError as exc:
        raise UserError(f"the web console needs a password and found none ({exc}); set {PASSWORD_ENV}, or "
                        "password_env / password_file / password_secret in [web]") from None
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the web console's password is shorter than {MIN_PASSWORD} characters; choose a longer one")
    job_store(cfg)  # an unreachable broker: one clear line now
    sock = _bind(host, port)  # before anything says "serving": a busy port is one clear line, not a failure later
    tls = bool(web.tls_cert)
    if not tls and not is_loopback(host):
        print(f"tinabs web: warning: serving plain HTTP on {host}; put it behind a TLS proxy or set tls_cert "
              "and tls_key in [web] (its Secure session cookies reach browsers only over HTTPS)",
              file=sys.stderr)
    import uvicorn

    from tinabs_tasks.web.routes import build_app
    app = build_app(cfg, password)
    scheme = "https" if tls else "http"
    config = uvicorn.Config(app, host=host, port=port, log_level="info", server_header=False,
                            ssl_certfile=web.tls_cert or None, ssl_keyfile=web.tls_key or None)
    print(f"tinabs web: serving the console on {scheme}://{host}:{port}/ (user {web.username})", flush=True)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound now; UserError (exit 2) when the address cannot be had."""
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                                  flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc} — another program holds that "
                        "port, or the address is not this host's; choose another with --listen or [web] listen") \
            from None
    return sock
