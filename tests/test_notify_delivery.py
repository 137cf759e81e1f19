"""Delivery: the Notifier sends through real receivers on 127.0.0.1 and never blocks or breaks training.

A webhook (``json://``) and an SMTP server (``mailto://``) run here; Slack's servers cannot, so its request
is caught at the HTTP layer; a private D-Bus session bus stands in for a Linux desktop when available.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import requests
from receivers import (
    PASSWORD,
    SECRETS,
    SLACK_TOKEN,
    DBusNotificationsReceiver,
    HTTPReceiver,
    SMTPReceiver,
    dbus_unavailable,
    free_port,
    tiny_png,
)

import notify
import notify.delivery.worker as delivery
from notify import (
    EventType,
    NotificationEvent,
    completion_event,
    error_event,
    load_channels,
    start_event,
    warning_event,
)
from notify.delivery import Notifier

ROOT = Path(__file__).resolve().parents[1]


def progress_event(milestone: int = 25) -> NotificationEvent:
    return NotificationEvent(
        title=f"Training {milestone}% Complete",
        message=f"Step {milestone * 10}/1000",
        event_type=EventType.PROGRESS,
        milestone=milestone,
    )


ALL_EVENTS = [
    start_event("tiny-gpt2", "demo.csv", 1000),
    progress_event(25),
    warning_event("loss spike", "Loss jumped from 0.9 to 4.2", 300, 1000),
    error_event("RuntimeError", "CUDA out of memory", 310, 1000, traceback_tail="Traceback...\nRuntimeError"),
    completion_event(82.5, "good", ["Lower the learning rate"], 1000, 1000),
]


@pytest.fixture
def webhook():
    with HTTPReceiver() as receiver:
        yield receiver


@pytest.fixture
def smtp():
    with SMTPReceiver() as receiver:
        yield receiver


@pytest.fixture
def make_notifier():
    """Notifiers that are closed after the test even when it fails (fast: nothing waits long)."""
    made = []

    def make(spec: str, **options) -> Notifier:
        options.setdefault("send_timeout", 5.0)
        options.setdefault("backoff", 0.01)
        notifier = Notifier(load_channels(spec, env={}), **options)
        made.append(notifier)
        return notifier

    yield make
    for notifier in made:
        notifier.close(timeout=0.5)


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "loss_curve.png"
    path.write_bytes(tiny_png())
    return path


# --- it arrives ---------------------------------------------------------------------------------------------


def test_a_webhook_receives_every_event_once_with_its_title_body_and_type(webhook, make_notifier):
    notifier = make_notifier(webhook.url())
    for event in ALL_EVENTS:
        assert notifier.send(event) is True
    notifier.close()
    bodies = webhook.bodies
    assert [(b["title"], b["message"], b["type"]) for b in bodies] == [
        (event.title, event.message, kind)
        for event, kind in zip(ALL_EVENTS, ["info", "info", "warning", "failure", "success"])
    ]
    records = notifier.records
    assert [r["event"] for r in records] == [event.to_dict() for event in ALL_EVENTS]
    for record in records:
        (outcome,) = record["deliveries"]
        assert outcome["ok"] is True and outcome["attempts"] == 1 and outcome["error"] is None
        assert outcome["channel"].startswith(f"json://127.0.0.1:{webhook.port}/hook")
        assert record["dropped"] is False
        assert record["time"].endswith("+00:00")


def test_a_yaml_config_routes_progress_and_completion_to_their_tagged_receivers(tmp_path, make_notifier):
    with HTTPReceiver() as milestones, HTTPReceiver() as done, HTTPReceiver() as everything:
        config = tmp_path / "channels.yml"
        config.write_text(
            textwrap.dedent(
                f"""\
                urls:
                  - {milestones.url('/milestones')}:
                      tag: progress, warning
                  - {done.url('/done')}:
                      tag: completion, error
                  - {everything.url('/all')}
                """
            )
        )
        notifier = make_notifier(str(config))
        notifier.send(progress_event(25))
        notifier.send(progress_event(50))
        notifier.send(completion_event(90.0, "great"))
        notifier.close()
        assert [b["title"] for b in milestones.bodies] == ["Training 25% Complete", "Training 50% Complete"]
        assert [b["title"] for b in done.bodies] == ["Training Complete! 🎉"]
        assert [b["title"] for b in everything.bodies] == [
            "Training 25% Complete",
            "Training 50% Complete",
            "Training Complete! 🎉",
        ]
        assert [len(r["deliveries"]) for r in notifier.records] == [2, 2, 2]


def test_email_brings_the_completion_with_its_png_attachment(smtp, make_notifier, png):
    notifier = make_notifier(smtp.url("trainer", PASSWORD, "a@example.com", "b@example.com"))
    event = completion_event(82.5, "good", ["Lower the learning rate"], 1000, 1000)
    notifier.send(event, attachments=[png])
    notifier.close()
    (mail,) = smtp.wait_for(1)
    assert mail["Subject"] == event.title
    assert mail["To"] == "a@example.com"
    assert "Quality score: 82.5/100 (good)" in mail.get_body(("plain", "html")).get_content()
    (attachment,) = list(mail.iter_attachments())
    assert attachment.get_content_type() == "image/png"
    assert attachment.get_filename() == "loss_curve.png"
    assert attachment.get_content() == png.read_bytes()
    assert smtp.logins == [("trainer", PASSWORD)]
    assert notifier.records[0]["attachments"] == [str(png)]
    assert notifier.records[0]["deliveries"][0]["ok"] is True


def test_a_channel_that_cannot_take_files_still_gets_the_text(webhook, make_notifier, png):
    notifier = make_notifier(webhook.url(path="/AbCdEfGhIjKlMnO", schema="gotify"))  # Gotify takes no files
    assert notifier.channels.services[0].attachment_support is False
    event = completion_event(70.0, "fair")
    notifier.send(event, attachments=[png])
    notifier.close()
    (request,) = webhook.received
    assert request["path"] == "/message"
    assert (request["json"]["title"], request["json"]["message"]) == (event.title, event.message)
    assert notifier.records[0]["deliveries"][0]["ok"] is True


def test_a_missing_attachment_is_logged_and_the_text_still_goes(webhook, make_notifier, tmp_path, caplog):
    notifier = make_notifier(webhook.url())
    notifier.send(completion_event(70.0, "fair"), attachments=[tmp_path / "gone.png"])
    notifier.close()
    assert notifier.records[0]["deliveries"][0]["ok"] is True
    assert [b["title"] for b in webhook.bodies] == ["Training Complete! 🎉"]
    assert any("gone.png" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_slack_gets_the_title_and_text_in_the_payload_apprise_builds(monkeypatch, make_notifier):
    sent = []

    class SlackAnswer:
        status_code = 200
        content = b'{"ok": true, "channel": "C0123", "ts": "1.0"}'
        headers: dict = {}

    def fake_request(self, method, url, **kwargs):
        sent.append({"method": method, "url": url, **kwargs})
        return SlackAnswer()

    monkeypatch.setattr(requests.Session, "request", fake_request)
    notifier = make_notifier(f"slack://{SLACK_TOKEN}/#training")
    event = warning_event("loss spike", "Loss jumped from 0.9 to 4.2", 300, 1000)
    notifier.send(event)
    notifier.close()
    (request,) = sent
    assert request["url"] == "https://slack.com/api/chat.postMessage"
    payload = json.loads(request["data"])
    assert payload["channel"] == "#training"
    (attachment,) = payload["attachments"]
    assert attachment["title"] == event.title
    assert attachment["text"] == event.message
    assert notifier.records[0]["deliveries"][0]["ok"] is True
    assert SLACK_TOKEN not in json.dumps(notifier.records)


# --- it never blocks, never raises ------------------------------------------------------------------------


def test_a_hung_channel_neither_blocks_send_nor_holds_close_past_its_timeout(webhook, make_notifier):
    webhook.delay = 10.0
    notifier = make_notifier(webhook.url(), send_timeout=1.0, retries=2, flush_timeout=3.0)
    started = time.monotonic()
    notifier.send(completion_event(80.0, "good"))
    assert time.monotonic() - started < 0.5
    started = time.monotonic()
    notifier.close()
    assert time.monotonic() - started < 3.0 + 0.5
    (outcome,) = notifier.records[0]["deliveries"]
    assert outcome["ok"] is False
    assert outcome["attempts"] == 1  # a timed-out send may have arrived: it is not repeated
    assert outcome["error"] == "timed out after 1 s"
    assert 1.0 <= outcome["seconds"] < 3.0


def test_close_gives_up_after_flush_timeout_and_records_what_was_left(webhook, make_notifier):
    webhook.delay = 10.0
    notifier = make_notifier(webhook.url(), send_timeout=5.0, flush_timeout=0.3)
    notifier.send(progress_event(25))
    notifier.send(completion_event(80.0, "good"))
    webhook.wait_for(1)
    started = time.monotonic()
    notifier.close()
    assert time.monotonic() - started < 0.3 + 0.5
    first, second = notifier.records
    assert first["deliveries"][0]["error"].startswith("unknown: still sending when close() gave up")
    assert second["dropped"] is True
    assert second["deliveries"][0] == {
        "channel": second["deliveries"][0]["channel"],
        "ok": False,
        "attempts": 0,
        "error": "not sent: close() gave up after 0.3 s",
        "seconds": 0.0,
        "dropped": True,
    }


def test_a_failing_channel_is_retried_then_recorded_as_failed(webhook, make_notifier, caplog):
    webhook.status = 500
    notifier = make_notifier(webhook.url(), retries=2, backoff=0.01)
    notifier.send(error_event("ValueError", "bad batch"))
    notifier.close()
    assert len(webhook.received) == 3
    (outcome,) = notifier.records[0]["deliveries"]
    assert outcome["ok"] is False and outcome["attempts"] == 3
    assert "500" in outcome["error"]
    warnings = [r for r in caplog.records if r.name == "notify.delivery.worker" and r.levelno == logging.WARNING]
    assert any("not delivered to json://127.0.0.1" in r.getMessage() for r in warnings)


def test_a_refused_connection_is_recorded_and_does_not_reach_the_caller(make_notifier):
    notifier = make_notifier(f"json://127.0.0.1:{free_port()}/hook", retries=1, backoff=0.01)
    for event in ALL_EVENTS:
        notifier.send(event)
    notifier.close()
    for record in notifier.records:
        (outcome,) = record["deliveries"]
        assert outcome["ok"] is False and outcome["attempts"] == 2 and outcome["error"]


def test_one_failing_channel_does_not_stop_the_others(webhook, make_notifier):
    notifier = make_notifier(f"json://127.0.0.1:{free_port()}/down {webhook.url()}", retries=0)
    notifier.send(completion_event(80.0, "good"))
    notifier.close()
    down, up = notifier.records[0]["deliveries"]
    assert (down["ok"], up["ok"]) == (False, True)
    assert len(webhook.received) == 1


def test_a_full_queue_drops_the_oldest_progress_first_and_records_it(webhook, make_notifier):
    busy, release = threading.Event(), threading.Event()
    notifier = make_notifier(webhook.url(), max_queue=2)
    notifier.add_callback(lambda event: (busy.set(), release.wait(5)))  # holds the worker on the first event
    notifier.send(start_event("m", "d", 100))
    assert busy.wait(5)
    notifier.send(progress_event(25))
    notifier.send(error_event("RuntimeError", "boom"))
    assert notifier.send(completion_event(90.0, "great")) is True  # the progress event gives way
    assert notifier.send(progress_event(50)) is False  # nothing less important is left to drop
    release.set()
    notifier.close()
    titles = [b["title"] for b in webhook.bodies]
    # the channel's own queue (also 2 long) may let the start give way in turn, never the two that matter
    assert titles[-2:] == ["Training Failed", "Training Complete! 🎉"]
    waiting = "dropped: more than 2 notifications were waiting"
    dropped = [r["event"]["title"] for r in notifier.records if r["deliveries"][0]["error"] == waiting]
    assert dropped == ["Training 25% Complete", "Training 50% Complete"]


def test_broken_channels_never_delay_a_healthy_one(webhook, make_notifier):
    """A hung, a failing and two refused channels: the healthy one still gets every event at once.

    Sent one channel after another, the broken ones would cost each event at least the hung channel's
    5 s timeout: 25 s for the five events, past the 10 s the healthy channel is given here.
    """
    failing, hung = HTTPReceiver(), HTTPReceiver()
    failing.status, hung.delay = 500, 30.0
    refused = [f"json://127.0.0.1:{free_port()}/down{i}" for i in range(2)]
    spec = " ".join([hung.url(), failing.url(), *refused, webhook.url()])
    notifier = make_notifier(spec, send_timeout=5.0, retries=2, backoff=0.5)
    try:
        for event in ALL_EVENTS:
            notifier.send(event)
        webhook.wait_for(len(ALL_EVENTS), timeout=10.0)
        assert [b["title"] for b in webhook.bodies] == [event.title for event in ALL_EVENTS]
        notifier.close(timeout=0.5)
        healthy = [r["deliveries"][-1] for r in notifier.records]
        assert all(d["ok"] and d["attempts"] == 1 for d in healthy), healthy
    finally:
        failing.close()
        hung.close()


def test_at_close_a_slow_channel_sends_the_completion_before_older_progress(webhook, make_notifier):
    webhook.delay = 30.0  # every request hangs until the 1 s send timeout
    notifier = make_notifier(webhook.url(), send_timeout=1.0, retries=0, flush_timeout=3.0)
    events = (start_event("m", "d", 100), progress_event(25), progress_event(50), progress_event(75),
              completion_event(90.0, "great"))
    for event in events:
        notifier.send(event)
    webhook.wait_for(1)  # the start is on its way
    notifier.close()
    webhook.wait_for(2)
    titles = [b["title"] for b in webhook.bodies]
    assert titles[:2] == ["Training Started", "Training Complete! 🎉"]
    by_title = {r["event"]["title"]: r["deliveries"][0] for r in notifier.records}
    # start, completion, 25% and 50% may each take their 1 s before the 3 s are up; 75% never gets its turn
    assert by_title["Training 75% Complete"]["error"] == "not sent: close() gave up after 3 s"


def test_close_is_safe_twice_and_later_sends_are_recorded_not_raised(webhook, make_notifier):
    notifier = make_notifier(webhook.url())
    notifier.close()
    notifier.close()
    assert notifier.send(progress_event()) is False
    (record,) = notifier.records
    assert record["dropped"] is True
    assert record["deliveries"][0]["error"] == "not sent: the notifier was closed"


def test_no_channels_sends_nothing_but_still_records_and_calls_back():
    seen = []
    notifier = Notifier(load_channels(None, env={}))
    notifier.add_callback(seen.append)
    notifier.send(progress_event())
    notifier.close()
    assert seen == [progress_event()]
    assert notifier.records[0]["deliveries"] == []


def test_notifier_options_are_validated():
    channels = load_channels(None, env={})
    for options in ({"send_timeout": 0}, {"retries": -1}, {"backoff": -0.1}, {"flush_timeout": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(options))):
            Notifier(channels, **options)
    with pytest.raises(ValueError, match="NotificationEvent"):
        Notifier(channels).send("Training done")


# --- callbacks --------------------------------------------------------------------------------------------


def test_callbacks_receive_every_event_on_the_worker_thread_and_their_errors_are_only_logged(
    webhook, make_notifier, caplog
):
    seen = []
    notifier = make_notifier(webhook.url())

    @notifier.register_notification_callback
    def broken(event):
        raise RuntimeError("callback bug")

    notifier.add_callback(lambda event: seen.append((event, threading.current_thread().name)))
    for event in ALL_EVENTS:
        notifier.send(event)
    notifier.close()
    assert seen == [(event, "notify-delivery") for event in ALL_EVENTS]
    assert len(webhook.received) == len(ALL_EVENTS)
    logged = [r for r in caplog.records if "callback" in r.getMessage() and r.levelno == logging.WARNING]
    assert len(logged) == len(ALL_EVENTS)
    assert Notifier.register_notification_callback is Notifier.add_callback


# --- records and secrets ----------------------------------------------------------------------------------


def test_write_jsonl_writes_one_record_per_line(webhook, make_notifier, tmp_path):
    notifier = make_notifier(webhook.url())
    for event in ALL_EVENTS:
        notifier.send(event)
    notifier.close()
    path = tmp_path / "events.jsonl"
    notifier.write_jsonl(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == notifier.records
    assert NotificationEvent.from_dict(json.loads(lines[-1])["event"]) == ALL_EVENTS[-1]


def test_no_password_or_token_reaches_records_files_urls_or_logs(monkeypatch, make_notifier, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="notify")
    caplog.set_level(logging.INFO, logger="apprise")  # apprise's own DEBUG output is its business

    real_request = requests.Session.request

    def slack_refuses(self, method, url, **kwargs):
        if url.startswith("https://slack.com/"):
            raise requests.ConnectionError(f"cannot reach {url}")
        return real_request(self, method, url, **kwargs)

    monkeypatch.setattr(requests.Session, "request", slack_refuses)
    with HTTPReceiver() as failing:
        failing.status = 500
        spec = (
            f"{failing.url(userinfo=f'trainer:{PASSWORD}')} "
            f"json://trainer:{PASSWORD}@127.0.0.1:{free_port()}/down "
            f"mailto://trainer:{PASSWORD}@127.0.0.1:{free_port()}?to=a@example.com&from=b@example.com "
            f"slack://{SLACK_TOKEN}/#general"
        )
        notifier = make_notifier(spec, retries=1)
        for service in notifier.channels:
            service.request_rate_per_sec = 0  # apprise spaces email 5.5 s apart; not needed here
        for event in ALL_EVENTS:
            notifier.send(event)
        notifier.close()
        assert failing.received[0]["headers"]["Authorization"].startswith("Basic ")  # it was really used
    path = tmp_path / "events.jsonl"
    notifier.write_jsonl(path)
    results = delivery.test_channels(notifier.channels, timeout=5.0)
    exposed = {
        "records": json.dumps(notifier.records),
        "jsonl": path.read_text(encoding="utf-8"),
        "redacted_urls": " ".join(notifier.channels.redacted_urls()),
        "test_channels": repr(results),
        "logs": "\n".join(r.getMessage() for r in caplog.records) + caplog.text,
    }
    assert all(not ok for _, ok, _ in results)
    assert all(not d["ok"] for r in notifier.records for d in r["deliveries"])
    for where, text in exposed.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked into {where}"


# --- test messages ----------------------------------------------------------------------------------------


def test_test_channels_sends_one_message_to_every_channel_and_reports_each(webhook, tmp_path):
    config = tmp_path / "channels.yml"
    down = f"json://127.0.0.1:{free_port()}/down"
    config.write_text(f"urls:\n  - {webhook.url()}:\n      tag: completion\n  - {down}\n")
    results = notify.test_channels(load_channels(str(config), env={}), timeout=5.0)
    (up_url, up_ok, up_error), (down_url, down_ok, down_error) = results
    assert (up_ok, up_error) == (True, None)
    assert up_url.startswith(f"json://127.0.0.1:{webhook.port}/hook")
    assert down_ok is False and down_error
    (body,) = webhook.bodies
    assert body["title"] == "peft-studio test message"


# --- the interpreter's exit -------------------------------------------------------------------------------


def test_events_still_queued_at_interpreter_exit_are_delivered(webhook):
    script = textwrap.dedent(
        f"""
        from notify import Notifier, load_channels, completion_event
        notifier = Notifier(load_channels({webhook.url()!r}, env={{}}), flush_timeout=5)
        notifier.send(completion_event(75.0, "good"))
        # no close(): the atexit backstop flushes the queue
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30, env=env, cwd=ROOT)
    assert [b["title"] for b in webhook.bodies] == ["Training Complete! 🎉"]


def test_delivery_modules_import_apprise_but_no_training_or_scoring_package():
    for path in (ROOT / "notify" / "delivery").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        for package in ("mlflow", "torch", "scoring", "tracking"):
            assert f"import {package}" not in source and f"from {package}" not in source


def test_import_notify_does_not_load_apprise_until_delivery_is_used():
    script = "import sys, notify; assert 'apprise' not in sys.modules; notify.Notifier; assert 'apprise' in sys.modules"
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30, cwd=ROOT)


# --- a Linux desktop --------------------------------------------------------------------------------------


@pytest.fixture
def desktop(monkeypatch):
    reason = dbus_unavailable()
    if reason:
        pytest.skip(f"D-Bus desktop test not run: {reason}")
    with DBusNotificationsReceiver() as receiver:
        monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", receiver.address)
        yield receiver


def test_a_desktop_notification_carries_the_events_urgency(desktop, make_notifier):
    notifier = make_notifier("dbus://")
    notifier.send(progress_event(25))
    notifier.send(completion_event(88.0, "great"))
    notifier.send(error_event("RuntimeError", "boom"))
    notifier.close()
    received = desktop.wait_for(3)
    assert [(summary, hints["urgency"][1]) for _, _, _, summary, _, _, hints, _ in received] == [
        ("Training 25% Complete", 0),
        ("Training Complete! 🎉", 1),
        ("Training Failed", 2),
    ]
    assert all(d["ok"] for r in notifier.records for d in r["deliveries"])
