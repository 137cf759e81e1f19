"""Sending from a helper process (``Notifier(..., send_from_helper=True)``, what the training job uses): the
same outcomes as sending in-process, none of the work in the training process, and a fallback when the
helper cannot start or dies."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from receivers import HTTPReceiver

import notify.delivery.attempt as attempt_module
from notify import EventType, NotificationEvent, completion_event, error_event, start_event
from notify.delivery import Channels, Notifier, load_channels

PASSWORD = "hunter2-secret"
ROOT = Path(__file__).resolve().parents[1]


def progress_event(milestone: int) -> NotificationEvent:
    return NotificationEvent(title=f"Training {milestone}% Complete", message=f"Step {milestone}/100",
                             event_type=EventType.PROGRESS, milestone=milestone)


def _helper_that_delivered_once(notifier: Notifier):
    """Sends one event and waits for its outcome to come back: the helper is up and answering. Its process."""
    notifier.send(start_event("m", "d", 100))
    deadline = time.monotonic() + 30
    while not notifier.records[0]["deliveries"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert notifier.records[0]["deliveries"], "the send helper never answered"
    return notifier._helper._process


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
        helper = _helper_that_delivered_once(notifier)
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


def test_no_thread_of_this_process_delivers_and_routing_reaches_the_helper(tmp_path):
    with HTTPReceiver() as milestones, HTTPReceiver() as everything:
        config = tmp_path / "channels.yml"
        config.write_text(f"urls:\n  - {milestones.url('/m')}:\n      tag: progress\n  - {everything.url('/all')}\n")
        notifier = Notifier(load_channels(str(config), env={}), send_from_helper=True)
        notifier.send(start_event("m", "d", 100))
        notifier.send(progress_event(25))
        notifier.close()
        assert [b["title"] for b in milestones.bodies] == ["Training 25% Complete"]
        assert [b["title"] for b in everything.bodies] == ["Training Started", "Training 25% Complete"]
    assert not notifier._lanes  # no channel lane ran here: the helper delivered
    assert not [t for t in threading.enumerate() if t.name.startswith("notify-channel")]
    assert [len(r["deliveries"]) for r in notifier.records] == [1, 2]
    assert all(d["ok"] for r in notifier.records for d in r["deliveries"])


def test_a_queue_full_in_the_helper_is_recorded_as_dropped():
    with HTTPReceiver() as webhook:
        webhook.delay = 1.0
        notifier = Notifier(load_channels(webhook.url(), env={}), send_from_helper=True, max_queue=1)
        for milestone in (25, 50, 75):
            assert notifier.send(progress_event(milestone))  # the helper, not send, finds the queue full
        notifier.close(timeout=10)
    dropped = [r["event"]["milestone"] for r in notifier.records if r["dropped"]]
    assert dropped and 75 not in dropped  # the oldest progress gives way, never the newest
    assert all(r["deliveries"] and not r["deliveries"][0]["ok"] for r in notifier.records if r["dropped"])


def test_a_channel_the_helper_cannot_load_is_sent_from_here(monkeypatch):
    with HTTPReceiver() as webhook:
        monkeypatch.setattr(Channels, "portable", lambda self: [("nosuchservice://x", [])])
        notifier = Notifier(load_channels(webhook.url(), env={}), send_from_helper=True)
        notifier.send(start_event("m", "d", 100))
        notifier.close()
        assert len(webhook.wait_for(1)) == 1
    assert notifier.records[0]["deliveries"][0]["ok"]
    assert notifier._lanes  # sent by this process


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_helper_killed_while_it_sends_leaves_nothing_undelivered():
    with HTTPReceiver() as webhook:
        webhook.delay = 2.0
        notifier = Notifier(load_channels(webhook.url(), env={}), send_from_helper=True, send_timeout=5.0)
        notifier.send(start_event("m", "d", 100))
        webhook.wait_for(1, timeout=30)  # the helper is sending it now
        os.kill(notifier._helper._process.pid, signal.SIGKILL)
        notifier.close(timeout=10)
        titles = [b["title"] for b in webhook.bodies]
    assert titles == ["Training Started", "Training Started"]  # sent again from here: twice, never not at all
    assert notifier.records[0]["deliveries"][0]["ok"]


def test_failed_outcomes_are_logged_here_with_the_secret_masked(caplog):
    caplog.set_level(logging.WARNING, logger="notify")
    with HTTPReceiver() as webhook:
        webhook.status = 500
        notifier = Notifier(load_channels(webhook.url(userinfo=f"trainer:{PASSWORD}"), env={}),
                            send_from_helper=True, retries=0)
        notifier.send(error_event("boom", 3, 100))
        notifier.close()
    assert "not delivered" in caplog.text and "500" in caplog.text
    assert PASSWORD not in caplog.text


def test_callbacks_run_here_while_the_helper_sends():
    seen = []
    with HTTPReceiver() as webhook:
        notifier = Notifier(load_channels(webhook.url(), env={}), send_from_helper=True)
        notifier.add_callback(lambda event: seen.append((event.title, threading.current_thread().name)))
        notifier.send(start_event("m", "d", 100))
        notifier.close()
        assert len(webhook.wait_for(1)) == 1
    assert seen == [("Training Started", "notify-delivery")]


def test_the_helper_still_delivers_when_the_training_process_dies(tmp_path):
    with HTTPReceiver() as webhook:
        webhook.delay = 1.0
        script = (
            "import os, sys; sys.path.insert(0, sys.argv[1])\n"
            "from notify import start_event\n"
            "from notify.delivery import Notifier, load_channels\n"
            "notifier = Notifier(load_channels(sys.argv[2], env={}), send_from_helper=True)\n"
            "notifier.send(start_event('m', 'd', 100))\n"
            "os._exit(0)  # no close, no atexit: as if killed\n"
        )
        subprocess.run([sys.executable, "-c", script, str(ROOT), webhook.url()], check=True, timeout=60)
        assert [r["json"]["title"] for r in webhook.wait_for(1, timeout=30)] == ["Training Started"]


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_a_helper_that_stops_answering_cannot_hold_up_close():
    with HTTPReceiver() as webhook:
        notifier = Notifier(load_channels(webhook.url(), env={}), send_from_helper=True)
        helper = _helper_that_delivered_once(notifier)
        os.kill(helper.pid, signal.SIGSTOP)
        notifier.send(error_event("boom", 3, 100))
        started = time.monotonic()
        notifier.close(timeout=1)
        # its timeout, the answer margin (1 s), half a second to reap it, and slack for a loaded machine
        assert time.monotonic() - started < 1 + 1 + 0.5 + 2.5
    assert helper.wait(timeout=10) != 0  # killed: it may never wake up
    (delivery,) = notifier.records[1]["deliveries"]
    assert not delivery["ok"] and "no answer from the send helper" in delivery["error"]


def test_an_event_whose_finisher_fails_is_sent_as_it_was(caplog):
    caplog.set_level(logging.DEBUG, logger="notify.delivery.worker")
    with HTTPReceiver() as webhook:
        notifier = Notifier(load_channels(webhook.url()), send_from_helper=True)
        assert notifier.send_finished(progress_event(50), "no_such_module:finish", payload={"x": 1})
        notifier.close()
        bodies = webhook.wait_for(1)
    assert [body["json"]["title"] for body in bodies] == ["Training 50% Complete"]
    assert notifier.records[0]["event"] == progress_event(50).to_dict()
    assert notifier.records[0]["deliveries"][0]["ok"]
    assert "no_such_module:finish: ModuleNotFoundError" in caplog.text


def test_send_finished_refuses_what_the_helper_cannot_finish():
    with HTTPReceiver() as webhook:
        assert not Notifier(load_channels(webhook.url())).send_finished(progress_event(25), "m:f", None)  # no helper
        notifier = Notifier(load_channels(webhook.url()), send_from_helper=True)
        assert not notifier.send_finished(progress_event(25), "m:f", payload=lambda: None)  # cannot be pickled
        assert notifier.records == [] and notifier.finishes_in_helper  # nothing recorded, the helper still used
        notifier.add_callback(lambda event: None)  # callbacks must see the event as sent: finished here
        assert not notifier.finishes_in_helper
        assert not notifier.send_finished(progress_event(25), "m:f", None)
        notifier.close()
    assert notifier.records == []


@pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="Linux scheduling policies")
def test_the_helper_never_preempts_training_when_it_wakes():
    with HTTPReceiver() as webhook:
        notifier = Notifier(load_channels(webhook.url()), send_from_helper=True)
        pid = _helper_that_delivered_once(notifier).pid  # past its first lines
        assert os.sched_getscheduler(pid) == os.SCHED_BATCH  # no wake-up preemption of the training thread
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(os.getpriority(os.PRIO_PROCESS, 0) + 10, 19)
        notifier.close()


def test_the_helper_still_finishes_and_delivers_when_the_training_process_dies():
    with HTTPReceiver() as webhook:
        script = (
            "import os, sys; sys.path.insert(0, sys.argv[1])\n"
            "from array import array\n"
            "from notify import ProgressUpdate, milestone_event\n"
            "from notify.delivery import Notifier, load_channels\n"
            "from tracking.monitor import FINISHER, new_points\n"
            "notifier = Notifier(load_channels(sys.argv[2], env={}), send_from_helper=True)\n"
            "loss = (array('q', range(1, 51)), array('d', [2.0 / (1 + i / 10) for i in range(50)]))\n"
            "event = milestone_event(50, ProgressUpdate(current_step=50, total_steps=100, previous_step=49))\n"
            "assert notifier.send_finished(event, FINISHER, (new_points({'loss': loss}, {'loss': 50}, {}), {}, 0))\n"
            "os._exit(0)  # no close, no atexit: as if killed before the helper answered anything\n"
        )
        subprocess.run([sys.executable, "-c", script, str(ROOT), webhook.url()], check=True, timeout=60)
        [request] = webhook.wait_for(1, timeout=30)
    assert request["json"]["title"] == "Training Halfway There!"
    assert "Provisional quality score:" in request["json"]["message"], request["json"]["message"]
