"""What model server to run, and where: the plans that ``serving.service`` starts.

A plan is the server's command line and environment, made on the orchestrator and shipped to
the pool that runs it: llama.cpp's OpenAI-compatible server for the embedded model (a GGUF file
shipped in Python packages, serving.embedded), ``vllm serve`` on a site's GPU nodes. Nothing here starts a process.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from physflow.errors import ServingError
from physflow.serving.embedded import model_path


@dataclass
class ServerPlan:
    """What to run: ``argv`` with ``{host}`` and ``{port}`` filled in where it runs.

    ``key_env`` names the variable the server reads its API key from; ``bind`` is the address it
    listens on (127.0.0.1 when the clients are on the same machine, else every interface, which
    the API key then guards); ``cores``, if any, the cores the server (every thread of it) is
    pinned to (a local site's ``llm.cores``).
    """

    model: str
    argv: list[str]
    key_env: str
    bind: str = "127.0.0.1"
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout: float = 180.0
    cores: list[int] = field(default_factory=list)

    def command(self, port: int) -> list[str]:
        return [a.format(host=self.bind, port=port) for a in self.argv]


def llama_cpp_plan(model: str, gguf: Path, threads: int | None = None, n_ctx: int = 8192,
                   cores: Sequence[int] = ()) -> ServerPlan:
    """The embedded model: llama-cpp-python's OpenAI-compatible server on this machine.

    Pinned to ``cores``, it runs one thread per core (more would share a core and stall each
    other at every layer's barrier); else ``threads``, by default one per core up to 4.
    """
    threads = threads or len(cores) or max(1, min(4, os.cpu_count() or 1))
    return ServerPlan(model=model, key_env="API_KEY", startup_timeout=120.0, cores=list(cores), argv=[
        sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", model,
        "--host", "{host}", "--port", "{port}", "--n_ctx", str(n_ctx), "--n_threads", str(threads),
        "--verbose", "False"])


#: vLLM's ``--tool-call-parser`` by model family, first match of a fragment of the lower-cased
#: model name (vLLM docs, "Tool calling"; vllm issue #11903: a parser that does not match the
#: model's chat format returns no tool calls). Order matters: specific names before families.
TOOL_PARSERS: tuple[tuple[str, str], ...] = (
    ("qwen3-coder", "qwen3_xml"), ("qwen", "hermes"), ("qwq", "hermes"), ("hermes", "hermes"),
    ("llama-4", "llama4_pythonic"), ("llama4", "llama4_pythonic"), ("llama-3", "llama3_json"),
    ("llama3", "llama3_json"), ("mistral", "mistral"), ("mixtral", "mistral"), ("ministral", "mistral"),
    ("gpt-oss", "openai"), ("deepseek-v3.1", "deepseek_v31"), ("deepseek-v3", "deepseek_v3"),
    ("deepseek-r1", "deepseek_v3"), ("granite-20b-functioncalling", "granite-20b-fc"), ("granite-4", "granite4"),
    ("granite", "granite"), ("internlm", "internlm"), ("jamba", "jamba"), ("xlam", "xlam"),
    ("kimi-k2", "kimi_k2"), ("glm-4.7", "glm47"), ("glm-4.5", "glm45"), ("glm-4.6", "glm45"),
    ("hunyuan-a13b", "hunyuan_a13b"),
)


def tool_parser_for(model: str) -> str | None:
    """vLLM's tool-call parser for ``model`` (a Hugging Face name or path), or None for a family
    physflow does not know (then the server starts without automatic tool choice: physflow's own
    turns never need it, ``agents.models.VllmGuidedClient``)."""
    name = model.lower()
    return next((parser for fragment, parser in TOOL_PARSERS if fragment in name), None)


def vllm_plan(model: str, tensor_parallel: int = 1, extra_args: Sequence[str] = (),
              executable: str = "vllm", tool_parser: str | None = None, pipeline_parallel: int = 1) -> ServerPlan:
    """``vllm serve`` on a GPU node: tensor parallel over the worker's GPUs (and pipeline
    parallel over ``pipeline_parallel`` nodes, through Ray), bound to every interface because the
    orchestrator usually runs on another node. Loading a 70B model takes minutes.

    Automatic tool choice is on with the parser ``tool_parser`` names, else the one of the
    model's family (``tool_parser_for``); ``none``, or a family physflow does not know, leaves it
    off; ``--tool-call-parser`` in ``extra_args`` wins over both. Structured replies need none of
    it: physflow asks them through guided decoding.
    """
    argv = [executable, "serve", model, "--host", "{host}", "--port", "{port}", "--served-model-name", model,
            "--tensor-parallel-size", str(tensor_parallel)]
    if pipeline_parallel > 1:
        argv += ["--pipeline-parallel-size", str(pipeline_parallel), "--distributed-executor-backend", "ray"]
    parser = tool_parser or tool_parser_for(model)
    if "--tool-call-parser" not in extra_args and parser and parser != "none":
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", parser]
    return ServerPlan(model=model, key_env="VLLM_API_KEY", bind="0.0.0.0", startup_timeout=1800.0,
                      argv=argv + list(extra_args))


def embedded_plan(model: str, cores: Sequence[int] = ()) -> ServerPlan:
    """The plan that serves embedded model ``model`` (see serving.service), pinned to ``cores``
    if any."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise ServingError("the embedded model needs llama-cpp-python[server]: pip install 'physflow[embedded]'")
    return llama_cpp_plan(model, model_path(model), cores=cores)


def serving_plan(llm: Any, site: Any, cores: Sequence[int] = ()) -> tuple[ServerPlan, str] | None:
    """What physflow must serve for workflow ``llm`` on ``site``, and on which pool; None when
    the model is someone else's endpoint (openai, or vllm with a base_url) or scripted.

    The pool is ``llm.pool``, else the site's ``llm.serve_on``; ``local`` means the site's serial
    (htex) pool on this machine. It must be an htex pool: a model server is a Python task that
    lives as long as the campaign, not an MPI job. ``cores``: the cores the server is pinned to
    (a local site's ``llm.cores``, resolved by ``site_configs.site.model_cores``; the simulation
    pools get the others: dispatch's ``make_room_for_model``).
    """
    if llm.provider not in ("embedded", "vllm") or llm.base_url:
        return None
    name = llm.pool or site.llm.serve_on
    if name == "local":
        name = site.cpu_pool()
    pool = site.pools.get(name)
    if pool is None or pool.kind != "htex":
        raise ServingError(f"site {site.name} has no htex pool {name!r} to serve the model on "
                           f"(pools: {', '.join(site.pools)}; set llm.pool or the site's llm.serve_on)")
    if llm.provider == "embedded":
        return embedded_plan(llm.model, cores), name
    plan = vllm_plan(llm.model, llm.tensor_parallel, llm.serve_args,
                     tool_parser=llm.tool_parser or site.llm.tool_parser, pipeline_parallel=llm.pipeline_parallel)
    plan.cores = list(cores)
    return plan, name
