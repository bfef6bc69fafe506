"""The docs cannot drift from the code: every YAML block in README.md and docs/*.md loads through
the validator it claims to be for, and every workflow key of the schema is documented."""

from __future__ import annotations

import re
import shutil
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from physflow.site_configs.loader import load_site
from physflow.site_configs.placeholders import PLACEHOLDER
from physflow.vocabulary.workflow import WorkflowSpec
from physflow.workflows.validate import check_workflow
from tests.conftest import EXAMPLES

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FRAGMENT = "# fragment"


def yaml_blocks() -> list[tuple[str, int, str]]:
    """(file, line, text) of every ```yaml block."""
    out = []
    for path in DOCS:
        text = path.read_text()
        for m in re.finditer(r"^```ya?ml\n(.*?)^```", text, re.M | re.S):
            out.append((path.relative_to(ROOT).as_posix(), text[:m.start()].count("\n") + 1, m.group(1)))
    return out


def schema_keys(model: type[BaseModel] = WorkflowSpec, prefix: str = "") -> list[str]:
    """Every key path of the workflow schema: ``llm.provider``, ``agents.<name>.tools``, ..."""
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        annotation = field.annotation
        is_map = typing.get_origin(annotation) is dict
        for arg in (annotation, *typing.get_args(annotation)):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                keys += schema_keys(arg, f"{prefix}{name}{'.<name>.' if is_map else '.'}")
                break
    return keys


def test_docs_exist_and_have_yaml():
    names = {p.name for p in DOCS}
    assert {"README.md", "workflows.md", "adapters.md", "agents.md"} <= names
    assert len(yaml_blocks()) >= 8


def test_every_workflow_key_is_documented():
    text = (ROOT / "docs" / "workflows.md").read_text()
    keys = schema_keys()
    assert "simulation.parameters.<name>.min" in keys and "agents.<name>.max_tokens" in keys
    missing = [k for k in keys if f"`{k}`" not in text]
    assert not missing, f"docs/workflows.md lacks {missing}"


@pytest.mark.parametrize("where,line,block", yaml_blocks(), ids=lambda v: str(v) if not isinstance(v, str)
                         or "\n" not in v else "")
def test_yaml_block_validates(where, line, block, tmp_path, monkeypatch):
    data = yaml.safe_load(block)  # every block must at least be YAML
    if block.startswith(FRAGMENT):
        return
    assert isinstance(data, dict), f"{where}:{line}: not a mapping; mark it '{FRAGMENT}' if it is a fragment"
    # Blocks may refer to the examples' data and to a stand-in program beside them.
    shutil.copytree(EXAMPLES / "data", tmp_path / "data")
    (tmp_path / "sim.py").write_text("")
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "block.yaml"
    path.write_text(block)
    if "physflow" in data:
        check_workflow(path, None)
    elif "scheduler" in data or "pools" in data:
        load_site(str(path), tmp_path, {m.group(1): "x" for m in PLACEHOLDER.finditer(block)})
    else:
        pytest.fail(f"{where}:{line}: neither a workflow nor a site; mark it '{FRAGMENT}' if it is a fragment")
