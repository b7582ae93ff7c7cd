import urllib.request

from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.common.metrics import add_metrics_route, set_build_info, start_metrics_server
from tests.harness import free_port


def test_metrics_server_exposes_build_info_over_http(monkeypatch):
    monkeypatch.setenv("FLYWHEEL_BUILD", "abc1234")
    set_build_info("reward", model_version="reward/v2")
    port = free_port()
    start_metrics_server(port, addr="127.0.0.1")
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    line = next(x for x in body.splitlines() if x.startswith("flywheel_build_info{"))
    assert 'service="reward"' in line and 'model_version="reward/v2"' in line
    assert 'build="abc1234"' in line and 'version="0.1.0"' in line
    assert line.endswith(" 1.0")


def test_metrics_route_on_fastapi():
    set_build_info("gateway")
    app = FastAPI()
    add_metrics_route(app)
    response = TestClient(app).get("/metrics", follow_redirects=False)
    assert response.status_code == 200
    assert "flywheel_build_info{" in response.text and 'service="gateway"' in response.text
