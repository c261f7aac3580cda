"""SECRET_KEY: the distributed mode refuses to start without one shared by every process; embedded makes its own."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.paths import ROOT

SETUP = "import django; django.setup(); from django.conf import settings; print(settings.SECRET_KEY)"


def run_settings(tmp_path, **env: str) -> subprocess.CompletedProcess:
    environ = {key: value for key, value in os.environ.items() if key not in ("SECRET_KEY", "REDIS_URL", "DATABASE_URL")}
    environ.update(DJANGO_SETTINGS_MODULE="voicecall_project.settings", VOICECALL_DATA_DIR=str(tmp_path), **env)
    return subprocess.run([sys.executable, "-c", SETUP], cwd=ROOT, env=environ, capture_output=True, text=True,
                          timeout=60)


def test_the_distributed_mode_refuses_to_start_without_a_secret_key(tmp_path):
    for unset in ({}, {"SECRET_KEY": ""}, {"SECRET_KEY": "   "}):
        done = run_settings(tmp_path, REDIS_URL="redis://127.0.0.1:1/0", **unset)
        assert done.returncode != 0
        assert "ImproperlyConfigured: SECRET_KEY must be set in the distributed mode (REDIS_URL is set)" in done.stderr
        assert "every gateway, worker and beat process must share the same value" in done.stderr
    assert not (tmp_path / "secret_key").exists()  # no key of its own made on the side


def test_the_distributed_mode_starts_with_an_explicit_secret_key(tmp_path):
    done = run_settings(tmp_path, REDIS_URL="redis://127.0.0.1:1/0", SECRET_KEY="shared-by-every-node-" + "s" * 30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "shared-by-every-node-" + "s" * 30


def test_the_embedded_mode_keeps_a_generated_key_in_the_data_directory(tmp_path):
    first, second = run_settings(tmp_path), run_settings(tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == second.stdout.strip() == (tmp_path / "secret_key").read_text().strip()


@pytest.mark.django_db
def test_a_stream_token_made_with_another_secret_key_is_refused_naming_the_likely_cause(settings, caplog):
    """A webhook answered by a node with another SECRET_KEY: the stream that lands here is refused, and the log says why."""
    from calls.documents import stream_token
    from calls.services import StreamRefused, stream_open
    from tests.calls.test_sweeps import make_call

    call = make_call(provider_call_id="mock-crossed", state="answered", answered_ago=1)
    settings.SECRET_KEY = "the-key-of-the-node-that-answered-" + "a" * 20
    token = stream_token(str(call.pk))
    settings.SECRET_KEY = "the-key-of-this-node-" + "b" * 30
    with pytest.raises(StreamRefused, match="Unknown call"):
        stream_open(provider_call_id="mock-crossed", stream_id="MZcrossed", token=token)
    assert (f"media stream for call {call.pk} refused: bad stream token; the likely cause is a gateway process "
            "with a different SECRET_KEY") in caplog.text
    with pytest.raises(StreamRefused, match="Unknown call"):
        stream_open(provider_call_id="mock-crossed", stream_id="MZcrossed", token=None)
    assert f"media stream for call {call.pk} refused: its start carries no stream token" in caplog.text
