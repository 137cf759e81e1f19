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

Each message is fitted to its service before sending (``fit_message``): a long body, such as a traceback,
keeps its beginning and its end around a ``… [cut N characters] …`` line, within the service's own limit
(Discord 2,000 characters, Telegram 4,096). A URL asking for ``overflow=split`` is left to apprise.

Urgency and sound (``NOTIFY_TYPES``, ``desktop_settings``): the event type picks apprise's notify type
(the colour or icon of chat and desktop services); the event's urgency sets the ``urgency`` of Linux
desktop notifications (``dbus://``, ``kde://``, ``qt://``, ``glib://``, ``gio://``, ``gnome://``), and only
the completion plays a sound on ``macosx://`` (the URL's ``sound=`` if given, else the default sound).
apprise's ``windows://`` service has neither setting. The event's values win over the URL's.

Whatever is shown or recorded names a channel by its redacted URL (apprise's privacy mode); errors never
echo a password or token.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote

import apprise
from apprise import AppriseAsset, NotifyType, OverflowMode, PersistentStoreMode

from notify.events import EventType, NotificationEvent, Urgency

ENV_VAR = "PEFT_STUDIO_NOTIFY"
HELP_HINT = "see 'peft-studio notify test --help'"

# Tags that route every event to a service (``always`` is apprise's own word for it).
EVERY_EVENT_TAGS = frozenset({"all", "always"})

# The colour/icon apprise gives a message, by what happened.
NOTIFY_TYPES: Mapping[EventType, NotifyType] = MappingProxyType(
    {
        EventType.START: NotifyType.INFO,
        EventType.PROGRESS: NotifyType.INFO,
        EventType.WARNING: NotifyType.WARNING,
        EventType.ERROR: NotifyType.FAILURE,
        EventType.COMPLETION: NotifyType.SUCCESS,
    }
)

# Linux desktop services share the freedesktop urgency scale: 0 low, 1 normal, 2 critical.
DESKTOP_URGENCY: Mapping[Urgency, int] = MappingProxyType(
    {Urgency.LOW: 0, Urgency.NORMAL: 1, Urgency.CRITICAL: 2}
)
URGENCY_SCHEMAS = frozenset({"dbus", "kde", "qt", "glib", "gio", "gnome"})
SOUND_SCHEMAS = frozenset({"macosx"})
DEFAULT_SOUND = "default"  # terminal-notifier's name for the system's default sound

CUT_MARKER = "\n… [cut {n} characters] …\n"
ELLIPSIS = "…"

logger = logging.getLogger(__name__)

_SCHEMA_RE = re.compile(r"^\s*([a-z0-9][a-z0-9+.-]*)://", re.IGNORECASE)
_URL_IN_TEXT_RE = re.compile(r"\b([a-z0-9][a-z0-9+.-]*)://\S*", re.IGNORECASE)
_URL_SPLIT_RE = re.compile(r",(?=\s*[a-z0-9][a-z0-9+.-]*://)|\s+", re.IGNORECASE)
_URL_PARTS_RE = re.compile(r"[/:@?&=#,;+\s]+")
_MIN_SECRET_LEN = 3
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
        self._secrets = {id(service): _secret_parts(service) for service in self._services}
        _remember_secrets(*self._secrets.values())

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
        return service.url(privacy=True)

    def redact(self, service: Any, text: str) -> str:
        """``text`` (an error from the service) with the service's passwords and tokens masked."""
        return redact_text(text, self._secrets.get(id(service)) or _secret_parts(service))

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
        if _SCHEMA_RE.match(entry) and not entry.lower().startswith("file://"):
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


def fit_message(title: str, body: str, body_maxlen: int, title_maxlen: int) -> tuple[str, str]:
    """The title and body cut to a service's limits (apprise's ``body_maxlen`` / ``title_maxlen``).

    A title too long loses its end (``…``); a body too long keeps its beginning and end around a
    ``… [cut N characters] …`` line. A service with ``title_maxlen <= 0`` has no title field: apprise sends
    ``title + "\\r\\n" + body`` as the body, so both share ``body_maxlen``. A limit ``<= 0`` on the body
    means no limit. Text that fits is returned unchanged.
    """
    if body_maxlen <= 0:
        return (_cut_end(title, title_maxlen) if title_maxlen > 0 else title), body
    if title_maxlen > 0:
        return _cut_end(title, title_maxlen), _cut_middle(body, body_maxlen)
    if not title:
        return title, _cut_middle(body, body_maxlen)
    if len(title) + 2 + len(body) <= body_maxlen:
        return title, body
    title = _cut_end(title, max(body_maxlen // 2, body_maxlen - 2 - len(body)))
    room = body_maxlen - (len(title) + 2 if title else 0)
    return title, _cut_middle(body, room)


def desktop_settings(
    schema: str, urgency: Urgency | str, sound: bool, configured_sound: str | None = None
) -> dict[str, Any]:
    """Attributes to set on a desktop service for one event: ``urgency`` (Linux) or ``sound`` (macOS).

    Other services get ``{}``. ``configured_sound`` is the URL's own ``sound=``, used for the completion.
    """
    schema = schema.lower()
    if schema in URGENCY_SCHEMAS:
        return {"urgency": DESKTOP_URGENCY[Urgency(urgency)]}
    if schema in SOUND_SCHEMAS:
        return {"sound": (configured_sound or DEFAULT_SOUND) if sound else None}
    return {}


def message_for(service: Any, event: NotificationEvent) -> tuple[Any, dict[str, Any]]:
    """A copy of ``service`` set up for ``event`` and the keyword arguments of its ``notify`` call.

    The copy carries the event's desktop settings and truncates (never fails) if apprise's own text
    conversion still overflows; the original service is never changed, so concurrent sends don't mix.
    """
    target = copy.copy(service)
    for name, value in desktop_settings(
        _schema(service), event.urgency, event.sound, getattr(service, "sound", None)
    ).items():
        setattr(target, name, value)
    title, body = event.title, event.message
    if service.overflow_mode != OverflowMode.SPLIT:
        target.overflow_mode = OverflowMode.TRUNCATE
        title, body = fit_message(title, body, service.body_maxlen, service.title_maxlen)
        if service.overflow_amalgamate_title and service.title_maxlen > 0 and service.body_maxlen > 0:
            # Discord, ntfy and a few others count the title within the body's limit
            body = _cut_middle(body, max(service.body_maxlen - len(title), 1))
    return target, {"title": title, "body": body, "notify_type": NOTIFY_TYPES[event.event_type]}


def redact_url(url: str) -> str:
    """``schema://...``: how a URL that apprise could not load is shown (its secrets are unknown)."""
    match = _SCHEMA_RE.match(url)
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


def _remember_secrets(*secret_sets: frozenset[str]) -> None:
    global _KNOWN_SECRETS
    with _KNOWN_SECRETS_LOCK:
        _KNOWN_SECRETS = _KNOWN_SECRETS.union(*secret_sets)


def redact_text(text: str, secrets: frozenset[str] = frozenset()) -> str:
    """``text`` with the given secrets masked as ``****`` (longest first, also URL-quoted forms)."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "****")
    return text


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
        reason = redact_text(_redact_urls(log.reason()), _url_parts(url))
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
    skipped += [f"{_redact_urls(line)} (in {path})" for line in disabled]
    if log.errors():
        raise ChannelError(
            f"notify: config file {path!r} is not a valid apprise config ({_redact_urls(log.reason())}); "
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
                logger.warning("notify: apprise: %s", _redact_urls(message))

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
    return not _SCHEMA_RE.match(text) and os.path.isfile(os.path.expanduser(text))


def _schema(service: Any) -> str:
    return str(getattr(service, "schema", None) or service.url(privacy=True).split("://", 1)[0]).lower()


def _tag_names(service: Any) -> frozenset[str]:
    return frozenset(str(tag).lower() for tag in (service.tags or ()))


def _redact_urls(text: str) -> str:
    return _URL_IN_TEXT_RE.sub(lambda match: f"{match.group(1).lower()}://...", text)


def _url_parts(url: str) -> frozenset[str]:
    """Every piece of a URL after its schema, plain and unquoted: the candidates for secrets."""
    rest = url.split("://", 1)[-1]
    parts = set()
    for part in _URL_PARTS_RE.split(rest):
        for form in (part, unquote(part)):
            if len(form) >= _MIN_SECRET_LEN:
                parts.add(form)
    return frozenset(parts)


def _secret_parts(service: Any) -> frozenset[str]:
    """The URL pieces apprise masks in privacy mode (passwords, tokens, keys) for this service."""
    try:
        private, public = service.url(privacy=False), service.url(privacy=True)
    except Exception:  # a plugin that cannot build its URL has nothing for us to mask
        return frozenset()
    secrets = _url_parts(private) - _url_parts(public)
    password = getattr(service, "password", None)
    if isinstance(password, str) and password:
        secrets |= {password}
    return frozenset(secrets)


def _cut_end(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    if limit <= len(ELLIPSIS):
        return text[: max(limit, 0)]
    return text[: limit - len(ELLIPSIS)] + ELLIPSIS


def _cut_middle(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters, its beginning and end kept around a marker line."""
    if len(text) <= limit:
        return text
    bare = len(CUT_MARKER.format(n=""))
    for digits in range(1, 20):  # the marker's length depends on the number it shows
        kept = limit - bare - digits
        if kept < 2:
            return _cut_end(text, limit)
        cut = len(text) - kept
        if len(str(cut)) == digits:
            break
    head = (kept + 1) // 2
    return text[:head] + CUT_MARKER.format(n=cut) + text[len(text) - (kept - head) :]
