"""What a new call asks for: answering-machine detection and recordings, from request, route and config."""
from __future__ import annotations

import pytest

from calls.call_options import amd_mode_for, recording_for
from core.config.schema import NumberRoute, VoiceCallConfig
from core.errors import InvalidRequest


def config(**fields) -> VoiceCallConfig:
    return VoiceCallConfig.model_validate({"provider": "mock", **fields})


def test_amd_comes_from_the_request_else_the_config():
    assert amd_mode_for(config()) == "off"
    assert amd_mode_for(config(amd="voicemail")) == "voicemail"
    assert amd_mode_for(config(amd="voicemail"), "detect") == "detect"


@pytest.mark.parametrize("bad", ["on", "", "DETECT", 1, True])
def test_a_bad_amd_is_named(bad):
    with pytest.raises(InvalidRequest, match=r"amd: expected off, detect or voicemail"):
        amd_mode_for(config(), bad)


def test_recording_the_route_wins_over_the_config_and_the_request_over_both():
    recorded = config(recording={"carrier": True, "local": True})
    assert recording_for(config()) == (False, False)
    assert recording_for(recorded) == (True, True)
    route = NumberRoute.model_validate({"recording": {"local": False}})
    assert recording_for(recorded, route) == (True, False)
    assert recording_for(config(), NumberRoute.model_validate({"recording": {"carrier": True}})) == (True, False)
    assert recording_for(config(recording={"local": True}), None, True) == (True, True)
    assert recording_for(recorded, None, False) == (False, False)  # no recording at all


@pytest.mark.parametrize("bad", ["yes", 1, "true"])
def test_a_bad_record_is_named(bad):
    with pytest.raises(InvalidRequest, match=r"record: expected true or false"):
        recording_for(config(), None, bad)


def test_recording_files_stay_inside_their_directory(tmp_path):
    from calls.recording_files import file_path, recordings_directory, relative_name

    recorded = config(recording={"directory": str(tmp_path)})
    assert recordings_directory(recorded) == tmp_path
    name = relative_name("c1", "r1", ".wav")
    assert name == "c1/r1.wav"
    assert file_path(recorded, name) == tmp_path.resolve() / "c1" / "r1.wav"
    for bad in ("", "../escape.wav", "/etc/passwd", "c1/../../x"):
        with pytest.raises(ValueError, match="outside the recordings directory"):
            file_path(recorded, bad)
