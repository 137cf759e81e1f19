"""One event as one service's message: its text fitted to the service's limits, its colour, urgency and sound.

The event type picks apprise's notify type (the colour or icon of chat and desktop services); the event's
urgency sets the ``urgency`` of Linux desktop notifications (``dbus://``, ``kde://``, ``qt://``, ``glib://``,
``gio://``, ``gnome://``), and only the completion plays a sound on ``macosx://`` (the URL's ``sound=`` if
given, else the default sound). A long body keeps its beginning and end around a ``… [cut N characters] …``
line, within the service's own limit (Discord 2,000 characters, Telegram 4,096).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from apprise import NotifyType, OverflowMode

from notify.events import EventType, NotificationEvent, Urgency

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
    # at most half the room, or what the body leaves; never more than the room after the separator
    title = _cut_end(title, min(body_maxlen - 2, max(body_maxlen // 2, body_maxlen - 2 - len(body))))
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



def _schema(service: Any) -> str:
    return str(getattr(service, "schema", None) or service.url(privacy=True).split("://", 1)[0]).lower()


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
