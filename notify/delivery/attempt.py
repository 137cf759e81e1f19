"""One attempt to send one message to one service, bounded in time (a hung service never hangs its caller)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import apprise
from apprise import NotifyFormat

MAX_ERROR_CHARS = 500


def attempt(
    service: Any, message: dict[str, Any], attachments: Sequence[str], timeout: float
) -> tuple[bool, str | None, bool]:
    """Sends once on a helper daemon thread; returns ``(ok, error, timed_out)`` within ``timeout``."""
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            outcome["result"] = _notify(service, message, attachments)
        except BaseException as exc:  # noqa: BLE001 - reported as this attempt's error
            outcome["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            done.set()

    threading.Thread(target=run, name="notify-send", daemon=True).start()
    if not done.wait(timeout):
        return False, f"timed out after {timeout:g} s", True
    if "error" in outcome:
        return False, outcome["error"][:MAX_ERROR_CHARS], False
    return outcome["result"] + (False,)


def _notify(service: Any, message: dict[str, Any], attachments: Sequence[str]) -> tuple[bool, str | None]:
    """One apprise call for one service, with apprise's own log of what went wrong."""
    attach = list(attachments) if attachments and service.attachment_support else None
    with apprise.Apprise(service, asset=service.asset).notify(
        body_format=NotifyFormat.TEXT, attach=attach, interpret_escapes=False, **message
    ) as result:
        if result:
            return True, None
        lines = []
        for entry in result.logs():
            text = " ".join(str(entry.message).split())
            if entry.level in ("WARNING", "ERROR", "CRITICAL") and text and text not in lines:
                lines.append(text)
        error = "; ".join(lines) or f"the service reported {result.status.name.lower()}"
        return False, error[:MAX_ERROR_CHARS]
