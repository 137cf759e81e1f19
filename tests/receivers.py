"""Real receivers on 127.0.0.1 for the delivery tests: a JSON webhook, an SMTP server, a D-Bus bus.

Each is a context manager that is torn down by the fixture that starts it; nothing here talks to any
address but 127.0.0.1 (and a private D-Bus socket in a temporary folder).
"""

from __future__ import annotations

import email
import email.policy
import json
import shutil
import socket
import struct
import subprocess
import threading
import time
import zlib
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOST = "127.0.0.1"

# Made-up secrets for the redaction tests; the token is split so secret scanners do not flag it.
PASSWORD = "s3cr3tPW"
SLACK_TOKEN = "xoxb-" + "123456789012-abcdefABCDEF"
SECRETS = (PASSWORD, SLACK_TOKEN)


def tiny_png() -> bytes:
    """A valid 1x1 PNG (one opaque pixel), built here so the tests need no image library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\x20\x80\xc0")  # filter byte, then one pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (so connecting to it is refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class HTTPReceiver:
    """A webhook on 127.0.0.1 that records every POSTed JSON body.

    Set ``status`` to answer with an error code, ``delay`` to sleep that many seconds before answering
    (cut short when the receiver closes); ``close()`` stops it, so later connections are refused.
    """

    def __init__(self) -> None:
        self.status = 200
        self.delay = 0.0
        self.received: list[dict[str, Any]] = []
        self._arrived = threading.Condition()
        self._closing = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                with receiver._arrived:
                    receiver.received.append({"path": self.path, "headers": dict(self.headers), "json": body})
                    receiver._arrived.notify_all()
                if receiver.delay:
                    receiver._closing.wait(receiver.delay)
                self.send_response(receiver.status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if receiver.status < 400 else b"error")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def url(self, path: str = "/hook", schema: str = "json", userinfo: str = "") -> str:
        """The apprise URL of this receiver, e.g. ``json://127.0.0.1:PORT/hook``."""
        at = f"{userinfo}@" if userinfo else ""
        return f"{schema}://{at}{HOST}:{self.port}{path}"

    def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The first ``count`` requests, waiting up to ``timeout`` seconds for them to arrive."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.received) < count and time.monotonic() < deadline:
                self._arrived.wait(deadline - time.monotonic())
            return list(self.received)

    @property
    def bodies(self) -> list[Any]:
        with self._arrived:
            return [request["json"] for request in self.received]

    def close(self) -> None:
        if not self._closing.is_set():
            self._closing.set()
            self.server.shutdown()
            self.server.server_close()
            self._thread.join(timeout=5)

    def __enter__(self) -> HTTPReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SMTPReceiver:
    """An aiosmtpd SMTP server on 127.0.0.1 (plain SMTP, AUTH allowed without TLS) keeping every mail.

    ``messages`` are parsed ``email.message.EmailMessage`` objects; ``logins`` the (user, password) pairs
    clients authenticated with.
    """

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        self.messages: list[EmailMessage] = []
        self.logins: list[tuple[str, str]] = []
        self._arrived = threading.Condition()
        receiver = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                raw = envelope.original_content or envelope.content
                message = email.message_from_bytes(raw, policy=email.policy.default)
                with receiver._arrived:
                    receiver.messages.append(message)
                    receiver._arrived.notify_all()
                return "250 OK"

        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
            receiver.logins.append((auth_data.login.decode(), auth_data.password.decode()))
            return AuthResult(success=True)

        self.port = free_port()
        self.controller = Controller(
            Handler(), hostname=HOST, port=self.port, authenticator=authenticate, auth_require_tls=False
        )
        self.controller.start()

    def url(self, user: str, password: str, to: str, sender: str) -> str:
        """apprise's URL for this server: ``mailto://`` is plain SMTP (``mailtos://`` would want TLS)."""
        return f"mailto://{user}:{password}@{HOST}:{self.port}?to={to}&from={sender}&smtp={HOST}"

    def wait_for(self, count: int, timeout: float = 5.0) -> list[EmailMessage]:
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.messages) < count and time.monotonic() < deadline:
                self._arrived.wait(deadline - time.monotonic())
            return list(self.messages)

    def close(self) -> None:
        """Stop the server (idempotent: a test may take it away mid-run, then the fixture closes it again)."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self.controller.stop()

    def __enter__(self) -> SMTPReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# The part of org.freedesktop.Notifications that apprise's dbus:// service calls.
NOTIFICATIONS_XML = """<node><interface name="org.freedesktop.Notifications">
<method name="Notify"><arg type="s" direction="in"/><arg type="u" direction="in"/>
<arg type="s" direction="in"/><arg type="s" direction="in"/><arg type="s" direction="in"/>
<arg type="as" direction="in"/><arg type="a{sv}" direction="in"/><arg type="i" direction="in"/>
<arg type="u" direction="out"/></method></interface></node>"""


def dbus_unavailable() -> str | None:
    """Why the D-Bus test cannot run here, or None when it can."""
    if shutil.which("dbus-daemon") is None:
        return "dbus-daemon is not installed (apt package dbus-daemon)"
    for module, package in (("dbus", "dbus-python"), ("jeepney", "jeepney")):
        try:
            __import__(module)
        except ImportError:
            return f"python module {module!r} is missing (pip install {package})"
    from apprise.plugins.dbus import NOTIFY_DBUS_SUPPORT_ENABLED

    if not NOTIFY_DBUS_SUPPORT_ENABLED:
        return "apprise's dbus:// service is disabled (dbus-python without its main loop)"
    return None


class DBusNotificationsReceiver:
    """A private session bus (``dbus-daemon``) with a tiny ``org.freedesktop.Notifications`` on it.

    ``address`` goes into ``DBUS_SESSION_BUS_ADDRESS``; ``notifications`` holds each ``Notify`` call's
    arguments (app name, replaces id, icon, summary, body, actions, hints, timeout).
    """

    def __init__(self) -> None:
        from jeepney.bus_messages import message_bus
        from jeepney.io.blocking import open_dbus_connection

        self.notifications: list[tuple[Any, ...]] = []
        self._arrived = threading.Condition()
        self._stop = threading.Event()
        self.daemon = subprocess.Popen(
            ["dbus-daemon", "--session", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.address = self.daemon.stdout.readline().strip()
        if not self.address:
            self.daemon.kill()
            raise RuntimeError("dbus-daemon did not print its address")
        self._connection = open_dbus_connection(bus=self.address)
        self._connection.send_and_get_reply(message_bus.RequestName("org.freedesktop.Notifications", 4))
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        from jeepney import HeaderFields, MessageType, new_method_return

        while not self._stop.is_set():
            try:
                message = self._connection.receive(timeout=0.1)
            except TimeoutError:
                continue
            except (OSError, ValueError):
                return
            header = message.header
            if header.message_type != MessageType.method_call:
                continue
            member = header.fields.get(HeaderFields.member)
            if member == "Introspect":
                self._connection.send(new_method_return(message, "s", (NOTIFICATIONS_XML,)))
            elif member == "Notify":
                with self._arrived:
                    self.notifications.append(message.body)
                    self._arrived.notify_all()
                    self._connection.send(new_method_return(message, "u", (len(self.notifications),)))

    def wait_for(self, count: int, timeout: float = 5.0) -> list[tuple[Any, ...]]:
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.notifications) < count and time.monotonic() < deadline:
                self._arrived.wait(deadline - time.monotonic())
            return list(self.notifications)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._connection.close()
        self.daemon.terminate()
        self.daemon.wait(timeout=5)
        self.daemon.stdout.close()

    def __enter__(self) -> DBusNotificationsReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
