"""Realtime session setup: instructions per tool and consult policy, the agent context capsule, tools, voice."""
from __future__ import annotations

import os

import pytest

from calls.realtime import instructions as rt
from calls.realtime.tools import CONSULT_TOOL, END_CALL_TOOL
from calls.runtime import get_runtime

from .helpers import LINE, base_config, ring

pytestmark = pytest.mark.django_db(transaction=True)


def setup_for(configure, realtime: dict, **extra):
    configure(base_config(realtime=realtime, **extra))
    call = ring()
    return rt.session_setup(config=get_runtime().config, call_id=str(call.pk))


@pytest.mark.parametrize(("policy", "expected"), [("auto", None), ("substantive", rt.SUBSTANTIVE_POLICY),
                                                   ("always", rt.ALWAYS_POLICY)])
def test_consult_policy_text(configure, policy, expected):
    setup = setup_for(configure, {"consultPolicy": policy})
    assert setup.instructions.startswith(rt.DEFAULT_INSTRUCTIONS)
    assert CONSULT_TOOL in rt.DEFAULT_INSTRUCTIONS and END_CALL_TOOL in rt.DEFAULT_INSTRUCTIONS
    if expected is None:
        assert setup.instructions == rt.DEFAULT_INSTRUCTIONS
    else:
        assert setup.instructions == rt.DEFAULT_INSTRUCTIONS + "\n\n" + expected
    assert [tool.name for tool in setup.tools] == [END_CALL_TOOL, CONSULT_TOOL]


def test_tool_policy_none_drops_the_consult_and_its_policy_text(configure):
    setup = setup_for(configure, {"toolPolicy": "none", "consultPolicy": "always"})
    assert setup.instructions == rt.DEFAULT_INSTRUCTIONS_NO_CONSULT
    assert CONSULT_TOOL not in setup.instructions
    assert [tool.name for tool in setup.tools] == [END_CALL_TOOL]


def test_configured_instructions_replace_the_built_in_prompt(configure):
    setup = setup_for(configure, {"instructions": "  You are the bakery's phone.  ", "consultPolicy": "substantive"})
    assert setup.instructions == "You are the bakery's phone.\n\n" + rt.SUBSTANTIVE_POLICY


def test_language_and_voice_come_from_the_provider_block(configure):
    setup = setup_for(configure, {"provider": "openai", "providers": {"openai": {"voice": "marin", "language": "de"}}})
    assert (setup.voice, setup.language) == ("marin", "de")
    assert setup_for(configure, {}).voice is None


def workspace(tmp_path, files: dict[str, str]):
    folder = tmp_path / "ws"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_agent_context_capsule_has_identity_and_files(configure, tmp_path):
    folder = workspace(tmp_path, {"SOUL.md": "Warm and direct.", "USER.md": "Owner: Sam."})
    setup = setup_for(configure, {"agentContext": {"enabled": True}}, agents={"main": {
        "name": "Ada", "workspace": str(folder), "identity": {"emoji": "🥐", "vibe": "cheerful", "persona": "baker"},
        "responder": {"type": "scripted", "replies": ["ok"]}}})
    capsule = setup.instructions.split("\n\n", 1)[1]
    assert capsule.startswith(f"## {rt.CAPSULE_HEADER}\nAgent id: main\n")
    assert "- name: Ada\n- emoji: 🥐\n- vibe: cheerful\n- persona: baker" in capsule
    assert "### SOUL.md\nWarm and direct." in capsule
    assert "### USER.md\nOwner: Sam." in capsule
    assert "IDENTITY.md" not in capsule  # missing: skipped


def test_agent_context_can_leave_out_identity_and_files(configure, tmp_path):
    folder = workspace(tmp_path, {"SOUL.md": "Warm."})
    setup = setup_for(configure, {"agentContext": {"enabled": True, "includeIdentity": False,
                                                   "includeWorkspaceFiles": False}},
                      agents={"main": {"name": "Ada", "workspace": str(folder)}})
    assert "Ada" not in setup.instructions and "SOUL" not in setup.instructions
    assert setup_for(configure, {}, agents={"main": {"name": "Ada", "workspace": str(folder)}}).instructions == rt.DEFAULT_INSTRUCTIONS


def test_agent_context_is_cut_to_max_chars(configure, tmp_path):
    folder = workspace(tmp_path, {"SOUL.md": "soul " * 400, "USER.md": "user " * 400})
    setup = setup_for(configure, {"agentContext": {"enabled": True, "maxChars": 700}},
                      agents={"main": {"workspace": str(folder)}})
    capsule = setup.instructions.split("\n\n", 1)[1]
    assert len(capsule) <= 700
    assert capsule.endswith("\n[truncated]")
    assert "### SOUL.md" in capsule


def test_one_long_file_leaves_room_for_the_next(configure, tmp_path):
    folder = workspace(tmp_path, {"SOUL.md": "x" * 5000, "USER.md": "The user is Sam."})
    setup = setup_for(configure, {"agentContext": {"enabled": True, "maxChars": 4000}},
                      agents={"main": {"workspace": str(folder)}})
    assert "[truncated]\n\n### USER.md\nThe user is Sam." in setup.instructions


def test_workspace_files_cannot_leave_the_workspace(configure, tmp_path, caplog):
    folder = workspace(tmp_path, {"SOUL.md": "Inside."})
    (tmp_path / "secret.md").write_text("TOP SECRET", encoding="utf-8")
    os.symlink(tmp_path / "secret.md", folder / "LINK.md")
    files = ["../secret.md", str(tmp_path / "secret.md"), "LINK.md", "SOUL.md", "NOPE.md"]
    with caplog.at_level("WARNING"):
        setup = setup_for(configure, {"agentContext": {"enabled": True, "files": files}},
                          agents={"main": {"workspace": str(folder)}})
    assert "TOP SECRET" not in setup.instructions
    assert "### SOUL.md\nInside." in setup.instructions
    assert "### NOPE.md" not in setup.instructions
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "'../secret.md' is not a path inside the workspace" in messages
    assert "'LINK.md' leads outside the workspace" in messages


def test_the_route_agent_is_the_capsule_agent(configure):
    setup = setup_for(configure, {"agentContext": {"enabled": True}},
                      agents={"main": {"name": "Main"}, "bakery": {"name": "Bea"}}, agentId="main",
                      numbers={LINE: {"agentId": "bakery"}})
    assert "Agent id: bakery" in setup.instructions
    assert "- name: Bea" in setup.instructions


def test_spoken_instruction_texts():
    assert "Include this greeting, in these words: Hello there." in rt.greeting_instructions(" Hello there. ")
    assert rt.speak_instructions("We open at nine.").startswith("Say exactly this to the caller")
    assert rt.speak_instructions("We open at nine.").endswith(": We open at nine.")
    assert "checking" in rt.checking_instructions()


def test_the_transfer_tool_is_offered_only_where_a_route_or_agent_transfers(configure):
    setup = setup_for(configure, {})
    assert rt.TRANSFER_TOOL not in [tool.name for tool in setup.tools] and rt.TRANSFER_POLICY not in setup.instructions

    setup = setup_for(configure, {}, numbers={LINE: {"transferTo": "+15550002222"}})
    assert [tool.name for tool in setup.tools] == [END_CALL_TOOL, rt.TRANSFER_TOOL, CONSULT_TOOL]
    assert setup.instructions == rt.DEFAULT_INSTRUCTIONS + "\n\n" + rt.TRANSFER_POLICY

    setup = setup_for(configure, {}, agents={"main": {"transferTo": "sip:desk@pbx.example.com"}})
    assert rt.TRANSFER_TOOL in [tool.name for tool in setup.tools]
