"""Channels: which apprise URLs or config file notifications go to, how events route, how text is fitted.

Everything here is pure or local (apprise parses URLs without any network); sending is in
``test_notify_delivery.py``.
"""

from __future__ import annotations

import re

import apprise
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from receivers import PASSWORD, SECRETS, SLACK_TOKEN

from notify import EventType, NotificationEvent, Urgency, error_event
from notify.delivery.channels import ENV_VAR, ChannelError, Channels, load_channels, receives
from notify.delivery.messages import DESKTOP_URGENCY, NOTIFY_TYPES, desktop_settings, fit_message, message_for

ROUTED_YAML = """\
urls:
  - slack://TokenA/TokenB/TokenC:
      tag: progress, warning, error
  - mailtos://user:pass@example.com?to=me@example.com:
      tag: completion, error
  - json://127.0.0.1:8000/hook
"""


def schemas(services: list) -> list[str]:
    return [service.url(privacy=True).split("://", 1)[0] for service in services]


def assert_one_line_without_secrets(message: str) -> None:
    assert "\n" not in message
    assert message.startswith("notify: ")
    assert "peft-studio notify test --help" in message
    for secret in SECRETS:
        assert secret not in message


# --- where the URLs come from -----------------------------------------------------------------------------


def test_no_spec_and_no_environment_variable_means_no_channels():
    channels = load_channels(None, env={})
    assert len(channels) == 0
    assert channels.redacted_urls() == []
    assert channels.targets(EventType.ERROR) == []


def test_empty_spec_falls_back_to_the_environment_variable():
    channels = load_channels("  ", env={ENV_VAR: "json://127.0.0.1:8000/a"})
    assert schemas(channels.services) == ["json"]


def test_an_explicit_spec_wins_over_the_environment_variable():
    channels = load_channels("xml://127.0.0.1/b", env={ENV_VAR: "json://127.0.0.1:8000/a"})
    assert schemas(channels.services) == ["xml"]


@pytest.mark.parametrize(
    "spec",
    [
        "json://127.0.0.1/a xml://127.0.0.1/b",
        "json://127.0.0.1/a,xml://127.0.0.1/b",
        "json://127.0.0.1/a , xml://127.0.0.1/b",
        "  json://127.0.0.1/a\n\txml://127.0.0.1/b,  ",
    ],
)
def test_urls_are_separated_by_whitespace_or_commas(spec):
    assert schemas(load_channels(spec, env={}).services) == ["json", "xml"]


def test_a_comma_inside_a_url_stays_in_that_url():
    channels = load_channels(
        "mailto://user:pw@example.com?to=a@example.com,b@example.com json://127.0.0.1/a", env={}
    )
    assert schemas(channels.services) == ["mailto", "json"]
    assert [target[1] for target in channels.services[0].targets] == ["a@example.com", "b@example.com"]


def test_a_yaml_config_file_routes_event_types_by_tag(tmp_path):
    path = tmp_path / "channels.yml"
    path.write_text(ROUTED_YAML)
    channels = load_channels(str(path), env={})
    assert schemas(channels.targets(EventType.PROGRESS)) == ["slack", "json"]
    assert schemas(channels.targets(EventType.WARNING)) == ["slack", "json"]
    assert schemas(channels.targets(EventType.COMPLETION)) == ["mailtos", "json"]
    assert schemas(channels.targets(EventType.ERROR)) == ["slack", "mailtos", "json"]
    assert schemas(channels.targets(EventType.START)) == ["json"]


def test_a_text_config_file_with_tags_works_too_and_can_come_from_the_environment(tmp_path):
    path = tmp_path / "channels.txt"
    path.write_text("# peft-studio channels\ncompletion=json://127.0.0.1/done\nxml://127.0.0.1/all\n")
    channels = load_channels(None, env={ENV_VAR: str(path)})
    assert schemas(channels.targets("completion")) == ["json", "xml"]
    assert schemas(channels.targets("progress")) == ["xml"]


def test_the_all_tag_receives_every_event(tmp_path):
    path = tmp_path / "channels.yml"
    path.write_text("urls:\n  - json://127.0.0.1/a:\n      tag: all\n  - xml://127.0.0.1/b:\n      tag: error\n")
    channels = load_channels(str(path), env={})
    for event_type in EventType:
        expected = ["json", "xml"] if event_type is EventType.ERROR else ["json"]
        assert schemas(channels.targets(event_type)) == expected


@pytest.mark.parametrize(
    ("tags", "event_type", "receives_it"),
    [
        (set(), "progress", True),
        (set(), "error", True),
        ({"progress"}, "progress", True),
        ({"progress"}, "completion", False),
        ({"completion", "error"}, "error", True),
        ({"all"}, "start", True),
        ({"always"}, "warning", True),
        ({"team-a"}, "completion", False),
    ],
)
def test_routing_rule(tags, event_type, receives_it):
    assert receives(frozenset(tags), event_type) is receives_it


# --- what is wrong, in one line --------------------------------------------------------------------------


def test_an_unknown_service_is_a_one_line_error_naming_the_redacted_url():
    with pytest.raises(ChannelError) as caught:
        load_channels(f"slak://user:{PASSWORD}@hooks.example.com/{SLACK_TOKEN}", env={})
    message = str(caught.value)
    assert "'slak://...' is not a valid apprise URL" in message
    assert_one_line_without_secrets(message)
    assert isinstance(caught.value, ValueError)


def test_a_known_service_with_bad_arguments_is_a_one_line_error_without_its_secrets():
    with pytest.raises(ChannelError) as caught:
        load_channels(f"json://127.0.0.1/ok discord://{SLACK_TOKEN}", env={})
    message = str(caught.value)
    assert "'discord://...' (entry 2 of 2) is not a valid apprise URL" in message
    assert_one_line_without_secrets(message)


def test_a_path_that_does_not_exist_is_a_one_line_error(tmp_path):
    with pytest.raises(ChannelError, match="is neither an apprise URL nor an existing config file") as caught:
        load_channels(str(tmp_path / "missing.yml"), env={})
    assert_one_line_without_secrets(str(caught.value))


def test_an_unreadable_config_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "binary.yml"
    path.write_bytes(b"\xff\xfe\x00urls")
    with pytest.raises(ChannelError, match="cannot read config file") as caught:
        load_channels(str(path), env={})
    assert_one_line_without_secrets(str(caught.value))


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("channels.yml", "urls: [unclosed\n", "is not a valid apprise config"),
        (
            "channels.yml",
            f"urls:\n  - json://127.0.0.1/ok\n  - slak://user:{PASSWORD}@host\n",
            "Unparseable URL slak://...",
        ),
        ("channels.yml", "# nothing here yet\n", "is not a valid apprise config"),
        ("channels.yml", "version: 1\n", "defines no service"),
        ("channels.txt", "# nothing here yet\n", "defines no service"),
        ("channels.txt", f"json://127.0.0.1/ok\ndiscord://{SLACK_TOKEN}\n", "is not a valid apprise config"),
    ],
)
def test_an_invalid_config_file_is_a_one_line_error_without_secrets(tmp_path, name, content, problem):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ChannelError, match=re.escape(problem)) as caught:
        load_channels(str(path), env={})
    assert_one_line_without_secrets(str(caught.value))


def test_redacted_urls_hide_passwords_and_tokens():
    channels = load_channels(
        f"mailto://user:{PASSWORD}@example.com?to=a@example.com slack://{SLACK_TOKEN}/#general "
        f"json://user:{PASSWORD}@127.0.0.1/hook",
        env={},
    )
    urls = channels.redacted_urls()
    assert len(urls) == 3
    for url in urls + [repr(channels)]:
        for secret in SECRETS:
            assert secret not in url
    # built once per channel (a send needs both); each is what apprise builds for the service
    for service in channels:
        assert channels.redacted_url(service) == service.url(privacy=True)
        assert channels.private_url(service) == service.url(privacy=False)
    assert any(PASSWORD in channels.private_url(service) for service in channels)


def test_channels_load_again_from_their_portable_form_with_the_same_routing(tmp_path):
    """What the send helper gets over its pipe: the same services, in the same order, routed the same way."""
    config = tmp_path / "channels.yml"
    config.write_text(f"urls:\n  - json://user:{PASSWORD}@127.0.0.1/a:\n      tag: progress, error\n"
                      f"  - slack://{SLACK_TOKEN}/#general:\n      tag: all\n  - json://127.0.0.1/c\n")
    channels = load_channels(str(config), env={})
    again = Channels.from_portable(channels.portable())
    assert again.redacted_urls() == channels.redacted_urls()
    for kind in EventType:
        assert [again.index(s) for s in again.targets(kind)] == [channels.index(s) for s in channels.targets(kind)]
    assert [channels.index(service) for service in channels] == [0, 1, 2]


def test_a_portable_channel_that_cannot_load_is_one_line_without_its_url():
    with pytest.raises(ChannelError) as caught:
        Channels.from_portable([(f"nosuchservice://user:{PASSWORD}@host", [])])
    assert "channel 1" in str(caught.value) and PASSWORD not in str(caught.value)


def test_errors_from_a_service_are_redacted_with_its_own_secrets():
    channels = load_channels(f"json://user:{PASSWORD}@127.0.0.1/hook slack://{SLACK_TOKEN}/#general", env={})
    json_service, slack_service = channels.services
    assert channels.redact(json_service, f"login {PASSWORD} refused") == "login **** refused"
    assert SLACK_TOKEN not in channels.redact(slack_service, f"token {SLACK_TOKEN} was revoked")


# --- urgency and sound -------------------------------------------------------------------------------------


def test_event_types_map_to_apprise_notify_types():
    assert dict(NOTIFY_TYPES) == {
        EventType.START: apprise.NotifyType.INFO,
        EventType.PROGRESS: apprise.NotifyType.INFO,
        EventType.WARNING: apprise.NotifyType.WARNING,
        EventType.ERROR: apprise.NotifyType.FAILURE,
        EventType.COMPLETION: apprise.NotifyType.SUCCESS,
    }


def test_urgencies_use_the_freedesktop_scale():
    assert dict(DESKTOP_URGENCY) == {Urgency.LOW: 0, Urgency.NORMAL: 1, Urgency.CRITICAL: 2}


@pytest.mark.parametrize(
    ("schema", "urgency", "sound", "configured_sound", "settings"),
    [
        ("dbus", Urgency.LOW, False, None, {"urgency": 0}),
        ("kde", Urgency.NORMAL, True, None, {"urgency": 1}),
        ("qt", Urgency.CRITICAL, False, None, {"urgency": 2}),
        ("glib", "critical", False, None, {"urgency": 2}),
        ("gio", Urgency.LOW, False, None, {"urgency": 0}),
        ("gnome", Urgency.NORMAL, False, None, {"urgency": 1}),
        ("macosx", Urgency.NORMAL, True, None, {"sound": "default"}),
        ("macosx", Urgency.NORMAL, True, "Glass", {"sound": "Glass"}),
        ("macosx", Urgency.CRITICAL, False, "Glass", {"sound": None}),
        ("windows", Urgency.CRITICAL, True, None, {}),
        ("json", Urgency.CRITICAL, True, None, {}),
        ("slack", Urgency.LOW, False, None, {}),
    ],
)
def test_desktop_settings_follow_the_events_urgency_and_sound(schema, urgency, sound, configured_sound, settings):
    assert desktop_settings(schema, urgency, sound, configured_sound) == settings


def test_only_the_completion_makes_a_sound_on_macos():
    for event_type in EventType:
        event = NotificationEvent(title="t", message="m", event_type=event_type)
        expected = "default" if event_type is EventType.COMPLETION else None
        assert desktop_settings("macosx", event.urgency, event.sound) == {"sound": expected}


def test_message_for_sets_up_a_copy_and_leaves_the_service_alone():
    service = apprise.Apprise.instantiate("json://127.0.0.1/hook")
    event = error_event("RuntimeError", "boom", 5, 10)
    target, message = message_for(service, event)
    assert target is not service
    assert message == {"title": "Training Failed", "body": event.message, "notify_type": apprise.NotifyType.FAILURE}
    assert target.overflow_mode == apprise.OverflowMode.TRUNCATE
    assert service.overflow_mode == apprise.OverflowMode.UPSTREAM


# --- every message fits its channel -----------------------------------------------------------------------

LONG_TRACEBACK = "\n".join(f'  File "train.py", line {n}, in step_{n}\n    loss.backward()' for n in range(400))


@pytest.mark.parametrize(
    ("url", "limit"),
    [
        ("discord://123456789012345678/WebhookTokenABCDEFGH", 2000),
        ("tgram://123456789:AAbbCCddEEffGGhhIIjjKKllMMnnOOppQQr/12345", 4096),
        ("json://127.0.0.1/hook", 32768),
    ],
)
def test_a_long_traceback_is_cut_to_the_services_own_limit(url, limit):
    service = apprise.Apprise.instantiate(url)
    assert service.body_maxlen == limit
    event = error_event("RuntimeError", "CUDA out of memory", 10, 100, traceback_tail=LONG_TRACEBACK * 20)
    _, message = message_for(service, event)
    title, body = message["title"], message["body"]
    if service.title_maxlen <= 0 or service.overflow_amalgamate_title:
        assert len(title) + 2 + len(body) <= limit
    else:
        assert len(body) <= limit
    assert body.startswith("Training failed with RuntimeError: CUDA out of memory")
    assert body.endswith("loss.backward()")
    assert re.search(r"… \[cut \d+ characters\] …", body) or len(event.message) <= limit


@pytest.mark.parametrize(
    ("title", "body", "body_maxlen", "title_maxlen", "expected"),
    [
        ("Title", "short", 100, 50, ("Title", "short")),
        ("A long title", "body", 100, 6, ("A lon…", "body")),
        ("T", "0123456789" * 10, 60, 10, ("T", "012345678901234567\n… [cut 65 characters] …\n34567890123456789")),
        ("Title", "body", 0, 0, ("Title", "body")),
        ("Title", "x" * 20, 27, 0, ("Title", "x" * 20)),
        ("0", "", 2, 0, ("", "")),  # no room for a title and its separator: the title goes (found by hypothesis)
    ],
)
def test_fit_message_examples(title, body, body_maxlen, title_maxlen, expected):
    assert fit_message(title, body, body_maxlen, title_maxlen) == expected
    fitted_title, fitted_body = expected
    if body_maxlen > 0 and title_maxlen > 0:
        assert len(fitted_body) <= body_maxlen


texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=600)
limits = st.integers(min_value=1, max_value=400)


@settings(max_examples=300, deadline=None)
@given(title=texts, body=texts, body_maxlen=limits, title_maxlen=st.integers(min_value=-1, max_value=120))
def test_a_fitted_message_always_fits_the_service(title, body, body_maxlen, title_maxlen):
    new_title, new_body = fit_message(title, body, body_maxlen, title_maxlen)
    if title_maxlen > 0:
        assert len(new_title) <= title_maxlen
        assert len(new_body) <= body_maxlen
    else:  # the title travels inside the body
        assert len(new_title) + (2 if new_title else 0) + len(new_body) <= body_maxlen


@settings(max_examples=200, deadline=None)
@given(title=texts, body=texts, body_maxlen=limits, title_maxlen=st.integers(min_value=-1, max_value=120))
def test_a_message_that_fits_is_not_changed(title, body, body_maxlen, title_maxlen):
    if title_maxlen > 0:
        fits = len(title) <= title_maxlen and len(body) <= body_maxlen
    else:
        fits = len(title) + (2 if title else 0) + len(body) <= body_maxlen
    if fits:
        assert fit_message(title, body, body_maxlen, title_maxlen) == (title, body)


@settings(max_examples=300, deadline=None)
@given(body=texts, body_maxlen=limits)
def test_a_cut_body_keeps_its_beginning_and_end_and_says_how_much_is_missing(body, body_maxlen):
    _, new_body = fit_message("T", body, body_maxlen, 10)
    match = re.search(r"\n… \[cut (\d+) characters\] …\n", new_body)
    if len(body) <= body_maxlen:
        assert new_body == body
    elif match:
        head, tail = new_body[: match.start()], new_body[match.end() :]
        assert body.startswith(head) and body.endswith(tail)
        assert len(head) + int(match.group(1)) + len(tail) == len(body)
        assert head and tail
    else:  # too small a limit for the marker: the beginning only
        assert body.startswith(new_body.rstrip("…"))


@settings(max_examples=100, deadline=None)
@given(title=texts, body_maxlen=st.integers(min_value=1, max_value=400))
def test_a_cut_title_keeps_its_beginning(title, body_maxlen):
    new_title, _ = fit_message(title, "b", body_maxlen, 20)
    assert title.startswith(new_title.removesuffix("…"))


def test_channels_can_wrap_an_existing_apprise_object():
    wrapped = apprise.Apprise()
    wrapped.add("json://127.0.0.1/a")
    channels = Channels(wrapped)
    assert len(channels) == 1 and channels.apprise is wrapped
