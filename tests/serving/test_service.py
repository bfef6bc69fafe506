"""Model servers as long-running tasks: the embedded llama.cpp server through a real Parsl pool,
the orphan guard, and the vLLM command line (vLLM itself needs a GPU node)."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from physflow.dispatch.parsl_backend import ParslDispatcher
from physflow.errors import ServingError
from physflow.serving import service
from physflow.serving.plans import ServerPlan, embedded_plan, serving_plan, vllm_plan
from physflow.serving.service import ModelService, serve
from physflow.site_configs.loader import load_site
from physflow.site_configs.site import SiteLLM
from physflow.vocabulary.workflow import EMBEDDED_MODEL, LLMSpec


def _get(url: str, key: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as resp:
        return resp.status


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_embedded_model_is_served_as_a_parsl_task_and_stopped_with_the_pools(tmp_path):
    site = load_site("local")
    dispatcher = ParslDispatcher(site, tmp_path / "parsl", 2, mpi=False, service_pool="llm")
    try:
        svc = ModelService(embedded_plan(EMBEDDED_MODEL), tmp_path / "llm", dispatcher.submit_service)
        dispatcher.on_close(svc.stop)
        svc.start()
        endpoint = json.loads((tmp_path / "llm" / "endpoint.json").read_text())
        assert svc.base_url == endpoint["url"] and svc.base_url.startswith("http://127.0.0.1:")
        assert _get(svc.base_url + "/models", svc.api_key) == 200
        with pytest.raises(urllib.error.HTTPError) as refused:  # the per-campaign key guards it
            _get(svc.base_url + "/models")
        assert refused.value.code == 401
        # the key lives in memory and in the server's environment only
        for f in tmp_path.rglob("*"):
            if f.is_file():
                assert svc.api_key.encode() not in f.read_bytes(), f
    finally:
        dispatcher.close()
    assert not _alive(endpoint["pid"])
    with pytest.raises(OSError):
        _get(svc.base_url + "/models", svc.api_key)
    assert "physflow: " in (tmp_path / "llm" / "server.log").read_text()


def test_a_server_whose_orchestrator_died_stops_itself(tmp_path, monkeypatch):
    """No heartbeat for ORPHAN_AFTER_S: the task stops its server (a killed orchestrator must not
    leave a GPU node serving for the rest of the allocation)."""
    monkeypatch.setattr(service, "ORPHAN_AFTER_S", 1.5)
    plan = ServerPlan(model="m", key_env="UNUSED_KEY",
                      argv=[sys.executable, "-m", "http.server", "--bind", "{host}", "{port}"])
    folder = tmp_path / "llm"
    folder.mkdir()
    (folder / "heartbeat").touch()
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(serve(vars(plan), str(folder), "k")))
    worker.start()
    deadline = time.monotonic() + 10
    while not (folder / "endpoint.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    pid = json.loads((folder / "endpoint.json").read_text())["pid"]
    assert _alive(pid)
    worker.join(timeout=30)
    assert result["reason"] == "orphaned" and not _alive(pid)


def test_a_server_that_dies_at_start_is_reported_with_its_log(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    plan = ServerPlan(model="m", key_env="K", startup_timeout=20,
                      argv=[sys.executable, "-c", "import sys; print('no GPU found'); sys.exit(3)"])
    with ThreadPoolExecutor(1) as pool, pytest.raises(ServingError, match="no GPU found"):
        ModelService(plan, tmp_path / "llm", pool.submit).start()


def test_vllm_command_line():
    plan = vllm_plan("meta-llama/Llama-3.3-70B-Instruct", tensor_parallel=4, extra_args=["--max-model-len", "32768"])
    assert plan.command(8123) == [
        "vllm", "serve", "meta-llama/Llama-3.3-70B-Instruct", "--host", "0.0.0.0", "--port", "8123",
        "--served-model-name", "meta-llama/Llama-3.3-70B-Instruct", "--tensor-parallel-size", "4",
        "--enable-auto-tool-choice", "--tool-call-parser", "llama3_json", "--max-model-len", "32768"]  # #11903
    assert plan.key_env == "VLLM_API_KEY"  # the key goes through the environment, never argv
    own_parser = vllm_plan("m", extra_args=["--tool-call-parser", "llama3_json"]).command(1)
    assert own_parser.count("--tool-call-parser") == 1 and "llama3_json" in own_parser


def test_serving_plan_picks_the_pool_and_refuses_one_that_cannot_serve():
    site = load_site("local")
    assert serving_plan(LLMSpec(provider="openai", base_url="http://x/v1"), site) is None
    plan, pool = serving_plan(LLMSpec(), site)  # its own pool: the server never holds a simulation's worker
    assert pool == "llm" and plan.bind == "127.0.0.1" and plan.key_env == "API_KEY"
    assert serving_plan(LLMSpec(), site.model_copy(update={"llm": SiteLLM(serve_on="local")}))[1] == "cpu"
    with pytest.raises(ServingError, match="no htex pool 'mpi'"):
        serving_plan(LLMSpec(provider="vllm", model="m", pool="mpi"), site)
    plan, pool = serving_plan(LLMSpec(provider="vllm", model="m", pool="cpu", tensor_parallel=2), site)
    assert pool == "cpu" and "--tensor-parallel-size" in plan.argv


@pytest.mark.parametrize(("model", "parser"), [
    ("Qwen/Qwen2.5-72B-Instruct", "hermes"), ("Qwen/Qwen3-Coder-30B-A3B-Instruct", "qwen3_xml"),
    ("meta-llama/Llama-3.3-70B-Instruct", "llama3_json"), ("meta-llama/Llama-4-Scout-17B-16E-Instruct",
                                                          "llama4_pythonic"),
    ("mistralai/Mistral-Large-Instruct-2411", "mistral"), ("openai/gpt-oss-120b", "openai"),
    ("deepseek-ai/DeepSeek-V3.1", "deepseek_v31"), ("deepseek-ai/DeepSeek-V3-0324", "deepseek_v3"),
    ("ibm-granite/granite-4.0-h-small", "granite4"), ("/flare/models/my-own-model", None),
])
def test_vllm_tool_parser_follows_the_model_family(model, parser):
    argv = vllm_plan(model).command(1)
    if parser is None:  # an unknown family starts without automatic tool choice, never with a wrong parser
        assert "--tool-call-parser" not in argv and "--enable-auto-tool-choice" not in argv
    else:
        assert argv[argv.index("--tool-call-parser") + 1] == parser


def test_the_workflow_beats_the_site_beats_the_family_and_serve_args_beat_all():
    site = load_site("polaris", values={"account": "p"})
    llama = LLMSpec(provider="vllm", model="meta-llama/Llama-3.3-70B-Instruct", tensor_parallel=4)

    def parser(llm, site=site):
        argv = serving_plan(llm, site)[0].argv
        return argv[argv.index("--tool-call-parser") + 1] if "--tool-call-parser" in argv else None

    assert parser(llama) == "llama3_json"
    own = site.model_copy(update={"llm": site.llm.model_copy(update={"tool_parser": "pythonic"})})
    assert parser(llama, own) == "pythonic"
    assert parser(llama.model_copy(update={"tool_parser": "hermes"}), own) == "hermes"
    assert parser(llama.model_copy(update={"tool_parser": "none"})) is None
    forced = llama.model_copy(update={"serve_args": ["--tool-call-parser", "mistral"]})
    assert serving_plan(forced, site)[0].argv.count("--tool-call-parser") == 1 and parser(forced) == "mistral"


def test_pipeline_parallel_uses_ray_and_must_fit_a_block():
    from physflow.errors import SiteError
    from physflow.site_configs.site import check_pipeline

    argv = vllm_plan("meta-llama/Llama-3.1-405B-Instruct", tensor_parallel=8, pipeline_parallel=2).command(1)
    assert argv[argv.index("--pipeline-parallel-size") + 1] == "2"
    assert argv[argv.index("--distributed-executor-backend") + 1] == "ray"
    aurora = load_site("aurora", values={"account": "a"})
    with pytest.raises(SiteError, match="needs 2 nodes in one block of pool llm of site aurora, which has 1"):
        check_pipeline(aurora, "llm", 2)
    aurora.pools["llm"].nodes_per_block = 2
    check_pipeline(aurora, "llm", 2)
    with pytest.raises(SiteError, match="use a PBS or Slurm site"):
        check_pipeline(load_site("local"), "llm", 2)
