"""The roles and tools the workflow spec names are the ones the team and the toolbox define."""

from __future__ import annotations

from physflow.agents.team import ROLES
from physflow.agents.tools import Toolbox
from physflow.vocabulary.workflow import AGENT_ROLES, TOOL_NAMES


def test_the_team_defines_every_role_of_the_spec_in_its_order():
    assert tuple(ROLES) == AGENT_ROLES


def test_every_tool_the_spec_allows_exists_and_every_default_is_allowed():
    assert [t.name for t in Toolbox(None).tools()] == list(TOOL_NAMES)
    assert {name for role in ROLES.values() for name in role.tools} <= set(TOOL_NAMES)
