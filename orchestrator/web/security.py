"""Who may see the page and who may stop the run (pure checks; server.py applies them).

The server listens on loopback, but any web page the user opens can make the browser send
requests there. So:
- every request needs the run's secret token (in the URL, the HttpOnly cookie the URL's token
  is swapped for, or a header), else 403: another page cannot guess it;
- the Host header must name loopback (`127.0.0.1`, `localhost`, `[::1]`, any port), else 403:
  a DNS-rebinding page reaches 127.0.0.1 under its own name, and its Host says so;
- Stop changes the run and Stacks signals every rank, so they need more than a cookie the
  browser adds by itself: the token in the `X-Distctl-Token` header (a cross-site page cannot
  set it without a preflight this server never grants) and an `Origin` equal to the page's own.
"""

from __future__ import annotations

import hmac
import secrets

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
TOKEN_HEADER = "X-Distctl-Token"


def new_token() -> str:
    return secrets.token_urlsafe(24)


def cookie_name(port: int) -> str:
    """Cookies are per host, not per port: each server's own name keeps two views apart."""
    return f"distctl_token_{port}"


def host_allowed(host: str | None) -> bool:
    """A Host header naming loopback, with or without a port."""
    if not host:
        return False
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host.partition("]")
        name += "]"
    else:
        name, colon, port = host.partition(":")
        rest = colon + port
    return name in LOOPBACK_NAMES and (rest == "" or (rest[:1] == ":" and rest[1:].isdigit()))


def token_matches(given: str | None, token: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())  # type: ignore[union-attr]


def request_allowed(host: str | None, token: str, *given: str | None) -> bool:
    """Loopback Host and one of the `given` places (query, cookie, header) holds the token."""
    return host_allowed(host) and any(token_matches(g, token) for g in given)


def stop_allowed(host: str | None, origin: str | None, header_token: str | None, token: str) -> bool:
    """Stop: loopback Host, the token in the header, and an Origin that is this very page's."""
    return (host_allowed(host) and token_matches(header_token, token)
            and origin is not None and origin.lower() == f"http://{(host or '').strip().lower()}")
