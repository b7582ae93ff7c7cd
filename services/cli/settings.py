"""Settings of the ``flywheel`` command line (only the shared ones for now)."""

from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class CliSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_CLI_", extra="ignore")
