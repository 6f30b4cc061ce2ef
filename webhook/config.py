"""Settings: the rewrite contract's names and values, and how the server runs.

Every field can be set by an environment variable `ISTIO_SPIFFE_WEBHOOK_<FIELD>` (upper
case) or, through `load_settings`, by a YAML file named by `ISTIO_SPIFFE_WEBHOOK_CONFIG` (or
`--config`). Precedence: explicit overrides, then environment variables, then the file, then
the defaults, which are the contract in DEVELOPERS.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

ENV_PREFIX = "ISTIO_SPIFFE_WEBHOOK_"
CONFIG_FILE_ENV = ENV_PREFIX + "CONFIG"

# The YAML file of the `load_settings` call being made. pydantic-settings builds its sources
# in a classmethod with no per-call argument (pydantic/pydantic-settings#259), so the path
# reaches it through this variable: set and reset by load_settings, local to the thread and
# task that make the call, unlike os.environ, which every thread shares.
_config_file: ContextVar[Path | None] = ContextVar("config_file", default=None)


class ConfigError(Exception):
    """A config value or the config file is wrong; the message says which and why."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, validate_default=True
    )

    # --- The rewrite contract -------------------------------------------------------
    proxy_container: str = Field("istio-proxy", min_length=1, description="Istio's proxy")
    certs_volume: str = Field(
        "workload-certs", min_length=1, description="volume removed with all its mounts"
    )
    socket_volume: str = Field(
        "workload-socket", min_length=1, description="volume made a CSI volume"
    )
    socket_mount_path: str = Field(
        "/var/run/secrets/workload-spiffe-uds",
        pattern=r"^/",
        description="where istio-proxy mounts the socket volume (read-only)",
    )
    csi_driver: str = Field("csi.spiffe.io", min_length=1, description="SPIFFE CSI driver")
    cert_provider_env: str = Field("PILOT_CERT_PROVIDER", min_length=1)
    cert_provider: str = Field("workloadapi", description="value of cert_provider_env")
    ca_addr_env: str = Field("CA_ADDR", min_length=1)
    ca_addr: str = Field(
        "", description="value of ca_addr_env; empty means unix://<socket_mount_path>/socket"
    )
    identity_label: str = Field("spiffe.io/spire-managed-identity", min_length=1)
    identity_label_value: str = "true"
    inject_label: str = Field(
        "istio-spiffe-webhook/inject",
        min_length=1,
        description="namespace opt-in and pod opt-out label key",
    )
    inject_enabled_value: str = "enabled"
    inject_disabled_value: str = "disabled"

    # --- The server --------------------------------------------------------------------
    host: str = "0.0.0.0"
    port: int = Field(8443, ge=1, le=65535)
    tls_cert_file: Path = Path("certs/tls.crt")
    tls_key_file: Path = Path("certs/tls.key")
    cert_reload_seconds: float = Field(
        10.0, gt=0, description="how often the certificate files are checked for changes"
    )
    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(9090, ge=0, le=65535, description="0 turns metrics off")
    max_body_bytes: int = Field(3 * 1024 * 1024, ge=1024)
    max_header_bytes: int = Field(16 * 1024, ge=1024)
    request_timeout_seconds: float = Field(
        10.0, gt=0, description="a request must arrive whole within this time"
    )
    keep_alive_seconds: float = Field(30.0, gt=0)
    shutdown_grace_seconds: float = Field(
        20.0, gt=0, description="in-flight requests may finish within this after SIGTERM"
    )
    shutdown_delay_seconds: float = Field(
        1.0,
        ge=0,
        description="after SIGTERM, /readyz answers 503 while requests are still served for"
        " this long; then the server stops accepting and drains (part of the grace period)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # --- Where it is installed (certs, doctor, audit) --------------------------------
    service_name: str = "istio-spiffe-webhook"
    namespace: str = "istio-spiffe-webhook"
    webhook_configuration: str = "istio-spiffe-webhook"

    @field_validator("ca_addr")
    @classmethod
    def _derive_ca_addr(cls, value: str, info: ValidationInfo) -> str:
        mount_path = info.data.get("socket_mount_path")  # absent when it was invalid
        if value or mount_path is None:
            return value
        return socket_address(mount_path)

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_contract(self) -> Settings:
        if self.certs_volume == self.socket_volume:
            raise ValueError("certs_volume and socket_volume must differ")
        if self.cert_provider_env == self.ca_addr_env:
            raise ValueError("cert_provider_env and ca_addr_env must differ")
        if self.inject_enabled_value == self.inject_disabled_value:
            raise ValueError("inject_enabled_value and inject_disabled_value must differ")
        if self.shutdown_delay_seconds >= self.shutdown_grace_seconds:
            raise ValueError("shutdown_delay_seconds must be less than shutdown_grace_seconds")
        return self

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; with `update`, validated like any new Settings so derived values follow.

        pydantic's own model_copy(update=...) skips validation: it would accept a bad value
        and keep a ca_addr derived from the old socket_mount_path. A ca_addr that is the
        socket under socket_mount_path (derived or given, the value is the same) stays so.
        """
        if not update:
            return super().model_copy(deep=deep)
        values = dict(self)
        if values["ca_addr"] == socket_address(self.socket_mount_path):
            values["ca_addr"] = ""
        values.update(update)
        # Every field is given, so the environment (read again) cannot change any of them.
        return type(self)(**values)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = _config_file.get()
        if config_file is None:
            return init_settings, env_settings
        return (
            init_settings,
            env_settings,
            YamlConfigSettingsSource(settings_cls, yaml_file=config_file),
        )


def socket_address(mount_path: str) -> str:
    """The Workload API socket's address under the socket volume's mount path."""
    return f"unix://{mount_path.rstrip('/')}/socket"


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from overrides, the environment, the YAML file (argument, else the
    ISTIO_SPIFFE_WEBHOOK_CONFIG variable) and the defaults, in that order of precedence.

    Raises ConfigError with one readable line per problem, never a traceback.
    """
    path = config_file or os.environ.get(CONFIG_FILE_ENV)
    if path:
        _check_config_file(Path(path))
    token = _config_file.set(Path(path) if path else None)
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None
    finally:
        _config_file.reset(token)


def _check_config_file(path: Path) -> None:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"config file {path}: {error.strerror or error}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        where = " ".join(str(error).split())  # one line: the CLI prints it as is
        raise ConfigError(f"config file {path}: not valid YAML ({where})") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config file {path}: must be a mapping of setting names to values")


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "settings"
        if item["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown setting")
        else:
            lines.append(f"{where}: {item['msg']}")
    return "invalid configuration: " + "; ".join(lines)
