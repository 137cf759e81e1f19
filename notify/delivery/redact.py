"""Secrets never leave the process: channel URLs, errors and log lines with passwords and tokens masked.

apprise's privacy mode (``url(privacy=True)``) says which parts of a URL are secret; every channel loaded
in this process adds its secrets to the set that ``RedactSecrets`` masks in log records.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any
from urllib.parse import unquote

SCHEMA_RE = re.compile(r"^\s*([a-z0-9][a-z0-9+.-]*)://", re.IGNORECASE)
_URL_IN_TEXT_RE = re.compile(r"\b([a-z0-9][a-z0-9+.-]*)://\S*", re.IGNORECASE)
_URL_PARTS_RE = re.compile(r"[/:@?&=#,;+\s]+")
_MIN_SECRET_LEN = 3


def redact_url(url: str) -> str:
    """``schema://...``: how a URL that apprise could not load is shown (its secrets are unknown)."""
    match = SCHEMA_RE.match(url)
    return f"{match.group(1).lower()}://..." if match else "..."


class RedactSecrets(logging.Filter):
    """A logging filter that masks the secrets of every channel loaded in this process.

    Install it on the handlers that print or store logs (the CLI does): apprise logs each request's full URL
    at DEBUG level and urllib3 logs its path, which is where Mattermost, Discord or Slack webhooks keep
    their tokens; error messages of requests quote the same URLs."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = known_secrets()
        if not secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # logging would print msg and args raw with its error report: drop the record
            return False
        masked = redact_text(message, secrets)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info, secrets)
        return True


_KNOWN_SECRETS: frozenset[str] = frozenset()
_KNOWN_SECRETS_LOCK = threading.Lock()


def known_secrets() -> frozenset[str]:
    """The passwords and tokens of every channel loaded in this process (what ``RedactSecrets`` masks)."""
    return _KNOWN_SECRETS


def remember_secrets(*secret_sets: frozenset[str]) -> None:
    global _KNOWN_SECRETS
    with _KNOWN_SECRETS_LOCK:
        _KNOWN_SECRETS = _KNOWN_SECRETS.union(*secret_sets)


def redact_text(text: str, secrets: frozenset[str] = frozenset()) -> str:
    """``text`` with the given secrets masked as ``****`` (longest first, also URL-quoted forms)."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "****")
    return text


def redact_urls(text: str) -> str:
    return _URL_IN_TEXT_RE.sub(lambda match: f"{match.group(1).lower()}://...", text)


def url_parts(url: str) -> frozenset[str]:
    """Every piece of a URL after its schema, plain and unquoted: the candidates for secrets."""
    rest = url.split("://", 1)[-1]
    parts = set()
    for part in _URL_PARTS_RE.split(rest):
        for form in (part, unquote(part)):
            if len(form) >= _MIN_SECRET_LEN:
                parts.add(form)
    return frozenset(parts)


def secret_parts(service: Any) -> frozenset[str]:
    """The URL pieces apprise masks in privacy mode (passwords, tokens, keys) for this service."""
    try:
        private, public = service.url(privacy=False), service.url(privacy=True)
    except Exception:  # a plugin that cannot build its URL has nothing for us to mask
        return frozenset()
    secrets = url_parts(private) - url_parts(public)
    password = getattr(service, "password", None)
    if isinstance(password, str) and password:
        secrets |= {password}
    return frozenset(secrets)


