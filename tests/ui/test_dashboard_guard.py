"""The dashboard answers only for loopback host names, and many pages polling at once share one snapshot."""

from __future__ import annotations

import http.client
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from physflow.ui.dashboard import loopback_host, make_server
from physflow.vocabulary.workflow import load_workflow
from tests.conftest import TINY_WORKFLOW


@pytest.fixture
def server(tmp_path: Path):
    import yaml

    (tmp_path / "wf.yaml").write_text(TINY_WORKFLOW)
    run = tmp_path / "run"
    run.mkdir()
    (run / "workflow.yaml").write_text(yaml.safe_dump(load_workflow(tmp_path / "wf.yaml").resolved()))
    (run / "journal.jsonl").write_text(json.dumps({"event": "campaign_started", "t": 1.0, "name": "guarded"}) + "\n")
    srv = make_server(run, 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def get(port: int, path: str, host: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path, headers={"Host": host})
    resp = conn.getresponse()
    return resp.status, resp.read()


@pytest.mark.parametrize(("header", "ok"), [("127.0.0.1:8765", True), ("localhost", True), ("LOCALHOST:1", True),
                                            ("[::1]:8765", True), ("[::1]", True), ("evil.example", False),
                                            ("evil.example:8765", False), ("127.0.0.1.evil.example", False),
                                            ("", False), (None, False)])
def test_only_loopback_names_are_loopback(header, ok):
    assert loopback_host(header) is ok


def test_another_host_name_is_refused_and_loopback_is_served(server: int):
    assert get(server, "/api/state", "rebound.example.com")[0] == 403
    assert get(server, "/", "attacker.example:80")[0] == 403
    code, body = get(server, "/api/state", f"127.0.0.1:{server}")
    assert code == 200 and json.loads(body)["name"] == "guarded"


def test_two_hundred_pages_polling_at_once_are_all_answered(server: int):
    with ThreadPoolExecutor(200) as pool:
        answers = list(pool.map(lambda _: get(server, "/api/state", "localhost"), range(200)))
    assert [code for code, _ in answers] == [200] * 200
    assert all(json.loads(body)["name"] == "guarded" for _, body in answers)
