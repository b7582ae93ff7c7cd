from pathlib import Path

from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class ExampleSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_EXAMPLE_", extra="ignore")
    port: int = 1234


def test_service_fields_use_the_service_prefix(monkeypatch):
    monkeypatch.setenv("FLYWHEEL_EXAMPLE_PORT", "9999")
    monkeypatch.setenv("FLYWHEEL_PORT", "1")  # another prefix: not ours
    assert ExampleSettings().port == 9999


def test_shared_fields_use_project_wide_names(monkeypatch, tmp_path):
    monkeypatch.setenv("FLYWHEEL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FLYWHEEL_REDIS_URL", "redis://redis:6379/2")
    settings = ExampleSettings()
    assert settings.data_dir == tmp_path
    assert settings.redis_url == "redis://redis:6379/2"
    assert settings.model_store_dir == tmp_path / "models"


def test_model_store_can_live_elsewhere(monkeypatch, tmp_path):
    monkeypatch.setenv("FLYWHEEL_MODEL_STORE", str(tmp_path / "shared-volume"))
    assert ExampleSettings().model_store_dir == tmp_path / "shared-volume"


def test_defaults_and_keyword_construction(monkeypatch):
    for name in ("FLYWHEEL_DATA_DIR", "FLYWHEEL_MODEL_STORE", "FLYWHEEL_LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    assert ExampleSettings().data_dir == Path("data")
    assert ExampleSettings(data_dir=Path("/x")).model_store_dir == Path("/x/models")
