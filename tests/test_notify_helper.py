"""Sending from a helper process (``Notifier(..., send_from_helper=True)``, what the training job uses): the
same outcomes as sending in-process, none of the work in the training process, and a fallback when the
helper cannot start or dies."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
from receivers import HTTPReceiver

import notify.delivery.attempt as attempt_module
from notify import completion_event, error_event, start_event
from notify.delivery import Notifier, load_channels

PASSWORD = "hunter2-secret"


def _not_here(*args, **kwargs):
    raise AssertionError("sent from the training process")


def test_messages_are_sent_by_the_helper_process_not_by_this_one(monkeypatch):
    monkeypatch.setattr(attempt_module, "_notify", _not_here)  # this process' sending fails if it is used
    with HTTPReceiver() as webhook:
        notifier = Notifier(load_channels(webhook.url()), send_from_helper=True)
        helper = notifier._helper._process
        assert helper is not None and helper.pid != os.getpid()
        notifier.send(start_event("m", "d", 100))
        notifier.send(completion_event(92.0, "Excellent", current_step=100, total_steps=100))
        notifier.close()
        titles = [request["json"]["title"] for request in webhook.wait_for(2)]
    assert titles == [r["event"]["title"] for r in notifier.records] and len(titles) == 2, titles
    assert all(d["ok"] and d["attempts"] == 1 for r in notifier.records for d in r["deliveries"])
    assert helper.wait(timeout=10) == 0  # closing the notifier ends its helper


def test_a_failing_channel_is_retried_and_its_secret_never_shown(monkeypatch, caplog):
    with HTTPReceiver() as webhook:
        webhook.status = 500
        notifier = Notifier(load_channels(webhook.url(userinfo=f"trainer:{PASSWORD}")), send_from_helper=True,
                            retries=2, backoff=0.05)
        notifier.send(error_event("boom", 3, 100))
        notifier.close()
        assert len(webhook.wait_for(3)) == 3
    (delivery,) = notifier.records[0]["deliveries"]
    assert not delivery["ok"] and delivery["attempts"] == 3 and "500" in delivery["error"]
    assert PASSWORD not in str(notifier.records) and PASSWORD not in caplog.text


def test_a_hanging_channel_times_out_without_holding_the_others():
    with HTTPReceiver() as slow, HTTPReceiver() as quick:
        slow.delay = 10
        notifier = Notifier(load_channels(f"{slow.url()} {quick.url()}"), send_from_helper=True, send_timeout=1.0)
        notifier.send(start_event("m", "d", 100))
        assert len(quick.wait_for(1, timeout=5)) == 1  # not behind the slow one, in the helper either
        notifier.close(timeout=5)
    slow_delivery, quick_delivery = notifier.records[0]["deliveries"]
    assert quick_delivery["ok"]
    assert not slow_delivery["ok"] and slow_delivery["attempts"] == 1 and "timed out" in slow_delivery["error"]


def test_without_a_helper_the_notifier_sends_itself(monkeypatch):
    monkeypatch.setattr(sys, "executable", "")  # the helper cannot start
    with HTTPReceiver() as webhook:
        notifier = Notifier(load_channels(webhook.url()), send_from_helper=True)
        notifier.send(start_event("m", "d", 100))
        notifier.close()
        assert len(webhook.wait_for(1)) == 1
    assert notifier.records[0]["deliveries"][0]["ok"]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_helper_that_dies_is_replaced_by_sending_here():
    with HTTPReceiver() as webhook:
        notifier = Notifier(load_channels(webhook.url()), send_from_helper=True)
        notifier.send(start_event("m", "d", 100))
        deadline = time.monotonic() + 30
        while not notifier.records[0]["deliveries"] and time.monotonic() < deadline:  # its answer is back
            time.sleep(0.05)
        helper = notifier._helper._process
        os.kill(helper.pid, signal.SIGKILL)
        helper.wait(timeout=10)
        notifier.send(error_event("boom", 3, 100))
        notifier.close()
        assert len(webhook.wait_for(2)) == 2
    assert [r["deliveries"][0]["ok"] for r in notifier.records] == [True, True]


def test_no_helper_is_started_without_channels():
    notifier = Notifier(load_channels("", env={}), send_from_helper=True)
    assert notifier._helper is None
    notifier.close()
