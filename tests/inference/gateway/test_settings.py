"""GatewaySettings: defaults, the FLYWHEEL_GATEWAY_ prefix, paths under the data directory."""

from __future__ import annotations

from pathlib import Path

from services.inference.gateway.settings import GatewaySettings


def test_defaults(monkeypatch, tmp_path):
    for name in ("FLYWHEEL_DATA_DIR", "FLYWHEEL_GATEWAY_HTTP_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    settings = GatewaySettings()
    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 8000)
    assert settings.engine_url == "http://127.0.0.1:8080"
    assert settings.feedback_grpc_target == "127.0.0.1:50051"
    assert settings.reward_grpc_target == "127.0.0.1:50052"
    assert settings.rate_limit_requests_per_minute == 60
    assert settings.rate_limit_burst == 20
    assert settings.max_body_bytes == 1024 * 1024
    assert (settings.max_messages, settings.max_n, settings.recorder_batch) == (100, 8, 64)
    assert (settings.recorder_retry_initial_s, settings.recorder_retry_max_s) == (0.5, 30)
    assert settings.request_timeout_s == 120
    assert settings.resolved_api_keys_file == tmp_path / "data" / "api-keys.json"
    assert settings.resolved_spool_path == tmp_path / "data" / "gateway-spool.sqlite3"


def test_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FLYWHEEL_DATA_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("FLYWHEEL_GATEWAY_HTTP_PORT", "9000")
    monkeypatch.setenv("FLYWHEEL_GATEWAY_ENGINE_URL", "http://engine:80")
    monkeypatch.setenv("FLYWHEEL_GATEWAY_RATE_LIMIT_BURST", "5")
    monkeypatch.setenv("FLYWHEEL_FEEDBACK_HTTP_PORT", "1")  # another service's: ignored
    settings = GatewaySettings()
    assert settings.http_port == 9000
    assert settings.engine_url == "http://engine:80"
    assert settings.rate_limit_burst == 5
    assert settings.resolved_api_keys_file == tmp_path / "state" / "api-keys.json"
    assert settings.resolved_spool_path == tmp_path / "state" / "gateway-spool.sqlite3"


def test_explicit_paths_win(tmp_path):
    settings = GatewaySettings(api_keys_file=tmp_path / "k.json", spool_path="/var/spool/g.db")
    assert settings.resolved_api_keys_file == tmp_path / "k.json"
    assert settings.resolved_spool_path == Path("/var/spool/g.db")


def test_every_field_is_documented():
    own = set(GatewaySettings.model_fields) - {
        "data_dir",
        "model_store",
        "redis_url",
        "log_level",
        "log_format",
        "drain_timeout_s",
    }
    assert own
    assert [n for n in own if not GatewaySettings.model_fields[n].description] == []
