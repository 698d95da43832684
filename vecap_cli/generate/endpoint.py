"""The server URL of --api-base: checked at the edge, never shown with its secrets.

`http://user:pass@host/v1` is a URL users write (a proxy in front of vLLM with
basic auth); its user and password, like a `?key=` in the query, must never
reach an error line, a --stats file or a --rejects line. `redact` (shared with
the inputs) is how the URL is shown; `credentials` splits it into the URL the client sends to and
the user/password it sends as basic auth, so the HTTP library never holds them
in a URL it might print. Standard library only: the CLI checks the flag
without loading the HTTP client.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit, urlunsplit

from vecap_cli.stream.sources import redact

SCHEMES = ("http", "https")


def check(url: str) -> None:
    """ValueError, with a redacted one-line message, unless `url` is an http(s) URL with a host.

    urllib's own messages are not passed on: they may quote a part of the
    password ("Port could not be cast to integer value as 'pa'").
    """
    shown = redact(url)
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise ValueError(f"'{shown}' holds spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- parses the port: raises on 'host:x' or 'host:99999'
    except ValueError:
        raise ValueError(f"'{shown}' is not a valid URL") from None
    if parts.scheme.lower() not in SCHEMES:
        raise ValueError(f"'{shown}' is not an http(s) URL")
    if not parts.hostname:
        raise ValueError(f"'{shown}' names no host")
    if parts.query or parts.fragment:
        # '/chat/completions' is appended to the path; a key belongs in --api-key-env
        raise ValueError(f"'{shown}' has a query or fragment: give the base URL only")


def credentials(url: str) -> tuple[str, str, str]:
    """(the URL without user and password, user, password), both unquoted; '' when absent."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return clean, unquote(parts.username or ""), unquote(parts.password or "")
