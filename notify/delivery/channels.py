"""Where notifications go: apprise URLs or an apprise config file, routed by event type.

A channel is an apprise URL and nothing else (``json://``, ``mailtos://``, ``slack://``, ``discord://``,
``dbus://`` ...; see https://github.com/caronc/apprise/wiki). ``load_channels`` takes either

* URLs separated by whitespace, or by commas before the next URL:
  ``"slack://TokenA/TokenB/TokenC, mailtos://user:pass@example.com?to=me@example.com"``;
* the path of an apprise config file, in apprise's TEXT format (``[tags=]URL`` per line) or its YAML
  format, whose ``tag:`` entries route event types to channels::

      urls:
        - slack://TokenA/TokenB/TokenC:
            tag: progress, warning, error
        - mailtos://user:pass@example.com?to=me@example.com:
            tag: completion, error
        - json://127.0.0.1:8000/hook

  Here milestones, warnings and errors go to Slack, the completion and errors go by email, and the
  untagged webhook receives everything;
* nothing: then the ``PEFT_STUDIO_NOTIFY`` environment variable, with the same syntax; empty everywhere
  means no channels, which is valid and sends nothing.

Routing (``Channels.targets``): a service without tags receives every event; a tagged service receives
the events whose type (``start``, ``progress``, ``warning``, ``error``, ``completion``) is among its tags,
and every event when it is tagged ``all`` (or apprise's ``always``). Other tags are allowed and ignored.

How one event becomes one service's message (length, colour, urgency, sound) is ``messages.py``.

Whatever is shown or recorded names a channel by its redacted URL (apprise's privacy mode); errors never
echo a password or token.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote

import apprise
from apprise import AppriseAsset, PersistentStoreMode

from notify.delivery.redact import (
    SCHEMA_RE,
    redact_text,
    redact_url,
    redact_urls,
    remember_secrets,
    secret_parts,
    url_parts,
)
from notify.events import EventType

ENV_VAR = "PEFT_STUDIO_NOTIFY"
HELP_HINT = "see 'peft-studio notify test --help'"

# Tags that route every event to a service (``always`` is apprise's own word for it).
EVERY_EVENT_TAGS = frozenset({"all", "always"})

logger = logging.getLogger(__name__)

_URL_SPLIT_RE = re.compile(r",(?=\s*[a-z0-9][a-z0-9+.-]*://)|\s+", re.IGNORECASE)
_DISABLED = "disabled on this system"  # how apprise says a plugin lacks its system library


class ChannelError(ValueError):
    """A channel URL or config file that cannot be used; the message is one line with the fix."""


class Channels:
    """The services notifications go to, wrapping one ``apprise.Apprise``.

    ``skipped`` lists one line for each configured service that this machine cannot use (a desktop
    service without its system library, for example): it is logged, not fatal.
    """

    def __init__(self, services: apprise.Apprise | None = None, skipped: tuple[str, ...] = ()) -> None:
        self.apprise = services if services is not None else apprise.Apprise(asset=make_asset())
        self.skipped = tuple(skipped)
        self._services = list(self.apprise.find())
        self._secrets = {id(service): secret_parts(service) for service in self._services}
        remember_secrets(*self._secrets.values())
        # Built once: apprise builds a URL anew on every call (about 0.1 ms of urlencoding), and a send
        # needs both on a thread of the training process (bench/RESULTS.md B4).
        self._urls = {id(service): (service.url(privacy=True), service.url(privacy=False))
                      for service in self._services}
        self._index = {id(service): index for index, service in enumerate(self._services)}

    @property
    def services(self) -> list[Any]:
        """Every loaded apprise service, in the order configured."""
        return list(self._services)

    def targets(self, event_type: EventType | str) -> list[Any]:
        """The services that receive an event of this type (see the module docstring for the rules)."""
        kind = EventType(event_type).value
        return [service for service in self._services if receives(_tag_names(service), kind)]

    def redacted_urls(self) -> list[str]:
        """Every service's URL in apprise's privacy mode (``url(privacy=True)``): safe to show and record."""
        return [self.redacted_url(service) for service in self._services]

    def redacted_url(self, service: Any) -> str:
        """How a service is named in records, logs and errors."""
        urls = self._urls.get(id(service))
        return urls[0] if urls else service.url(privacy=True)

    def private_url(self, service: Any) -> str:
        """The service's URL with its secrets, to load it again elsewhere (the send helper); never shown."""
        urls = self._urls.get(id(service))
        return urls[1] if urls else service.url(privacy=False)

    def index(self, service: Any) -> int:
        """The service's place in ``services``: how the send helper and this process name it to each other."""
        return self._index[id(service)]

    def portable(self) -> list[tuple[str, list[str]]]:
        """``(private URL, tags)`` of every service, in order: what ``from_portable`` loads again in the send
        helper, with the same routing. Holds secrets: for a pipe to a child process, never to show."""
        return [(self.private_url(service), sorted(_tag_names(service))) for service in self._services]

    @classmethod
    def from_portable(cls, specs: list[tuple[str, list[str]]]) -> Channels:
        """The channels that ``portable`` described; raises ``ChannelError`` when one cannot be loaded here."""
        services = apprise.Apprise(asset=make_asset())
        for number, (url, tags) in enumerate(specs, 1):
            service = apprise.Apprise.instantiate(url, asset=services.asset, tag=tags)
            if service is None:
                raise ChannelError(f"channel {number} cannot be loaded from its URL in this process")
            services.add(service)
        return cls(services)

    def redact(self, service: Any, text: str) -> str:
        """``text`` (an error from the service) with the service's passwords and tokens masked."""
        return redact_text(text, self._secrets.get(id(service)) or secret_parts(service))

    def __len__(self) -> int:
        return len(self._services)

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._services))

    def __repr__(self) -> str:
        return f"Channels({self.redacted_urls()!r})"


def receives(tags: frozenset[str], event_type: str) -> bool:
    """The routing rule: no tags means every event; else the event type or ``all`` must be a tag."""
    return not tags or event_type in tags or bool(tags & EVERY_EVENT_TAGS)


def make_asset() -> AppriseAsset:
    """apprise settings for peft-studio: our name, memory-only state, and no apprise-side timeout.

    The delivery worker bounds every send itself on a daemon thread; apprise's own ``service_timeout``
    would run sends on its non-daemon thread pool, which can hold up the interpreter's exit.
    """
    asset = AppriseAsset(
        service_timeout=0,
        storage_mode=PersistentStoreMode.MEMORY,
        secure_logging=True,
    )
    asset.app_id = "peft-studio"
    asset.app_desc = "peft-studio training notifications"
    return asset


def load_channels(spec: str | None, env: Mapping[str, str] = os.environ) -> Channels:
    """Channels from apprise URLs or a config file path, falling back to ``$PEFT_STUDIO_NOTIFY``.

    Raises ``ChannelError`` (one line, URL redacted) for an invalid URL, an unreadable or invalid config
    file, or a config file without any service.
    """
    text = (spec or "").strip() or (env.get(ENV_VAR) or "").strip()
    asset = make_asset()
    if not text:
        return Channels(apprise.Apprise(asset=asset))
    entries = [text] if _is_file(text) else [token for token in _URL_SPLIT_RE.split(text) if token]
    services: list[Any] = []
    skipped: list[str] = []
    for position, entry in enumerate(entries, start=1):
        where = f" (entry {position} of {len(entries)})" if len(entries) > 1 else ""
        if SCHEMA_RE.match(entry) and not entry.lower().startswith("file://"):
            service = _load_url(entry, asset, where, skipped)
            if service is not None:
                services.append(service)
        else:
            services += _load_config(entry, asset, skipped)
    result = apprise.Apprise(asset=asset)
    for service in services:
        result.add(service)
    for line in skipped:
        logger.warning("notify: %s", line)
    return Channels(result, tuple(skipped))


# --- loading ------------------------------------------------------------------------------------------


def _load_url(url: str, asset: AppriseAsset, where: str, skipped: list[str]) -> Any:
    shown = redact_url(url)
    schema = shown.split("://", 1)[0]
    plugin = apprise.plugins.N_MGR[schema] if schema in apprise.plugins.N_MGR else None
    if plugin is None:
        raise ChannelError(
            f"notify: {shown!r}{where} is not a valid apprise URL: unknown service {schema!r}; {HELP_HINT}"
        )
    if not plugin.enabled:
        skipped.append(f"{shown}{where} skipped: {_disabled_reason(plugin)}")
        return None
    with _ApprisePasses() as log:
        service = apprise.Apprise.instantiate(url, asset=asset)
    if service is None:
        reason = redact_text(redact_urls(log.reason()), url_parts(url))
        detail = f" ({reason})" if reason else ""
        raise ChannelError(f"notify: {shown!r}{where} is not a valid apprise URL{detail}; {HELP_HINT}")
    log.pass_on()
    return service


def _load_config(path: str, asset: AppriseAsset, skipped: list[str]) -> list[Any]:
    if path.lower().startswith("file://"):
        path = unquote(path[len("file://") :])
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise ChannelError(
            f"notify: {path!r} is neither an apprise URL nor an existing config file; {HELP_HINT}"
        )
    try:
        with open(path, encoding="utf-8") as handle:
            handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ChannelError(f"notify: cannot read config file {path!r}: {reason}; {HELP_HINT}") from None
    config = apprise.AppriseConfig(paths=os.path.abspath(path), asset=asset, recursion=1)
    with _ApprisePasses() as log:
        loaded = list(apprise.Apprise(config, asset=asset).find())
    disabled = [line for line in log.messages() if _DISABLED in line]
    disabled += [
        f"{service.url(privacy=True).split('?', 1)[0]} skipped: {_disabled_reason(service)}"
        for service in loaded
        if not service.enabled
    ]
    loaded = [service for service in loaded if service.enabled]
    skipped += [f"{redact_urls(line)} (in {path})" for line in disabled]
    if log.errors():
        raise ChannelError(
            f"notify: config file {path!r} is not a valid apprise config ({redact_urls(log.reason())}); "
            f"{HELP_HINT}"
        )
    if not loaded and not disabled:
        raise ChannelError(
            f"notify: config file {path!r} defines no service; list apprise URLs in it (TEXT or YAML "
            f"format), {HELP_HINT}"
        )
    log.pass_on()
    return loaded


class _ApprisePasses(logging.Handler):
    """Collects what apprise logs on this thread while a URL or config file is loaded."""

    def __init__(self) -> None:
        super().__init__()
        self._thread = threading.get_ident()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self._thread:  # another thread's apprise (a delivery): logged as usual
            if self._propagate and logging.getLogger("apprise").parent:
                logging.getLogger("apprise").parent.handle(record)
        elif record.levelno >= logging.WARNING:  # this load's: kept, to be reported redacted
            self.records.append(record)

    def __enter__(self) -> _ApprisePasses:
        # apprise's own lines would reach the user's log raw (URLs and all): what matters comes back redacted
        apprise_logger = logging.getLogger("apprise")
        self._propagate, apprise_logger.propagate = apprise_logger.propagate, False
        apprise_logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        apprise_logger = logging.getLogger("apprise")
        apprise_logger.removeHandler(self)
        apprise_logger.propagate = self._propagate

    def pass_on(self) -> None:
        """After a load that worked: apprise's warnings go to our log, their URLs redacted."""
        for message in self.messages():
            if _DISABLED not in message:
                logger.warning("notify: apprise: %s", redact_urls(message))

    def messages(self) -> list[str]:
        return [record.getMessage() for record in self.records]

    def errors(self) -> list[str]:
        """Errors other than a service being unusable on this machine (that one is only skipped)."""
        return [
            record.getMessage()
            for record in self.records
            if record.levelno >= logging.ERROR and _DISABLED not in record.getMessage()
        ]

    def reason(self) -> str:
        """The first error, after the warnings just before it that explain it."""
        lines: list[str] = []
        for record in self.records:
            message = record.getMessage().strip().rstrip(".")
            if _DISABLED in message or message in lines:
                continue
            lines.append(message)
            if record.levelno >= logging.ERROR:
                break
        return "; ".join(lines[-3:])


def _disabled_reason(plugin: Any) -> str:
    name = getattr(plugin, "service_name", None) or "this service"
    details = " ".join(str((getattr(plugin, "requirements", None) or {}).get("details") or "").split())
    return f"{name} cannot be used on this machine" + (f" ({details.rstrip('.')})" if details else "")


def _is_file(text: str) -> bool:
    return not SCHEMA_RE.match(text) and os.path.isfile(os.path.expanduser(text))


def _tag_names(service: Any) -> frozenset[str]:
    return frozenset(str(tag).lower() for tag in (service.tags or ()))


