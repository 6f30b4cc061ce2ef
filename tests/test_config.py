"""Settings: the contract's defaults, environment variables, the YAML file, and errors."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings, YamlConfigSettingsSource

from webhook import config
from webhook.config import CONFIG_FILE_ENV, ENV_PREFIX, ConfigError, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ISTIO_SPIFFE_WEBHOOK_* variable of the machine running the tests leaks in."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(config_file: Path | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file)
    return str(caught.value)


def test_defaults_are_the_contract() -> None:
    settings = load_settings()
    contract = {
        "proxy_container": "istio-proxy",
        "certs_volume": "workload-certs",
        "socket_volume": "workload-socket",
        "socket_mount_path": "/var/run/secrets/workload-spiffe-uds",
        "csi_driver": "csi.spiffe.io",
        "cert_provider_env": "PILOT_CERT_PROVIDER",
        "cert_provider": "workloadapi",
        "ca_addr_env": "CA_ADDR",
        "ca_addr": "unix:///var/run/secrets/workload-spiffe-uds/socket",
        "identity_label": "spiffe.io/spire-managed-identity",
        "identity_label_value": "true",
        "inject_label": "istio-spiffe-webhook/inject",
        "inject_enabled_value": "enabled",
        "inject_disabled_value": "disabled",
        "port": 8443,
        "metrics_port": 9090,
        "max_body_bytes": 3 * 1024 * 1024,
        "tls_cert_file": Path("certs/tls.crt"),
        "tls_key_file": Path("certs/tls.key"),
        "log_level": "info",
    }
    assert {name: getattr(settings, name) for name in contract} == contract
    assert settings == Settings()


def test_environment_variables_with_the_prefix_override_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ISTIO_SPIFFE_WEBHOOK_CSI_DRIVER", "csi.example.org")
    monkeypatch.setenv("ISTIO_SPIFFE_WEBHOOK_PORT", "9443")
    monkeypatch.setenv("ISTIO_SPIFFE_WEBHOOK_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("ISTIO_SPIFFE_WEBHOOK_TLS_CERT_FILE", "/etc/tls/tls.crt")
    settings = load_settings()
    assert (settings.csi_driver, settings.port, settings.log_level) == (
        "csi.example.org",
        9443,
        "debug",
    )
    assert settings.tls_cert_file == Path("/etc/tls/tls.crt")


def test_variables_without_the_prefix_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSI_DRIVER", "csi.example.org")
    monkeypatch.setenv("PORT", "1")
    settings = load_settings()
    assert (settings.csi_driver, settings.port) == ("csi.spiffe.io", 8443)


def test_prefixed_variables_that_are_not_settings_do_not_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # extra="forbid" is for the file: Kubernetes itself sets prefixed variables such as
    # <SERVICE>_SERVICE_HOST, and the config file's own variable shares the prefix.
    monkeypatch.setenv("ISTIO_SPIFFE_WEBHOOK_SERVICE_HOST", "10.96.0.10")
    monkeypatch.setenv("ISTIO_SPIFFE_WEBHOOK_SERVICE_PORT_HTTPS", "443")
    assert load_settings() == Settings()


def test_yaml_file_given_to_load_settings(tmp_path: Path) -> None:
    path = write(tmp_path, "csi_driver: csi.example.org\nport: 9443\nlog_level: WARNING\n")
    settings = load_settings(path)
    assert (settings.csi_driver, settings.port, settings.log_level) == (
        "csi.example.org",
        9443,
        "warning",
    )
    assert CONFIG_FILE_ENV not in os.environ  # the argument does not leak into the process


def test_yaml_file_named_by_the_config_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONFIG_FILE_ENV, str(write(tmp_path, "proxy_container: envoy\n")))
    assert load_settings().proxy_container == "envoy"


def test_config_argument_wins_over_the_config_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = write(tmp_path, "proxy_container: from-env\n", "env.yaml")
    monkeypatch.setenv(CONFIG_FILE_ENV, str(env_file))
    settings = load_settings(write(tmp_path, "proxy_container: from-arg\n", "arg.yaml"))
    assert settings.proxy_container == "from-arg"
    assert os.environ[CONFIG_FILE_ENV] == str(env_file)


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "csi_driver: from-file\nport: 9443\n")
    monkeypatch.setenv("ISTIO_SPIFFE_WEBHOOK_CSI_DRIVER", "from-env")
    settings = load_settings(path)
    assert (settings.csi_driver, settings.port) == ("from-env", 9443)


def test_overrides_win_over_environment_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ISTIO_SPIFFE_WEBHOOK_PORT", "9443")
    settings = load_settings(write(tmp_path, "port: 7443\n"), port=6443)
    assert settings.port == 6443


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "")) == Settings()


def test_unknown_key_in_the_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "port: 9443\ncsi_drvier: csi.example.org\n")
    assert config_error(path) == "invalid configuration: csi_drvier: unknown setting"


def test_wrong_type_in_the_file_names_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, "port: eighty\n")
    assert config_error(path) == (
        "invalid configuration: port: Input should be a valid integer,"
        " unable to parse string as an integer"
    )


def test_out_of_range_value_names_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, "port: 70000\nsocket_mount_path: relative/path\n")
    assert config_error(path) == (
        "invalid configuration: socket_mount_path: String should match pattern '^/';"
        " port: Input should be less than or equal to 65535"
    )


def test_wrong_type_in_the_environment_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISTIO_SPIFFE_WEBHOOK_MAX_BODY_BYTES", "3MiB")
    assert config_error() == (
        "invalid configuration: max_body_bytes: Input should be a valid integer,"
        " unable to parse string as an integer"
    )


def test_invalid_log_level_lists_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISTIO_SPIFFE_WEBHOOK_LOG_LEVEL", "verbose")
    assert config_error() == (
        "invalid configuration: log_level: Input should be 'debug', 'info', 'warning' or 'error'"
    )


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    assert config_error(path) == f"config file {path}: No such file or directory"


def test_missing_file_named_by_the_variable_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "nowhere.yaml"
    monkeypatch.setenv(CONFIG_FILE_ENV, str(path))
    assert config_error() == f"config file {path}: No such file or directory"


def test_directory_is_a_config_error(tmp_path: Path) -> None:
    assert config_error(tmp_path) == f"config file {tmp_path}: Is a directory"


@pytest.mark.parametrize("text", ["- port\n- 9443\n", "just a string\n", "42\n"])
def test_file_that_is_not_a_mapping_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    assert config_error(path) == (
        f"config file {path}: must be a mapping of setting names to values"
    )


def test_invalid_yaml_is_a_one_line_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "port: [9443\n")
    message = config_error(path)
    assert message.startswith(f"config file {path}: not valid YAML (")
    assert "line 2, column 1" in message
    assert "\n" not in message


def test_ca_addr_is_derived_from_the_socket_mount_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISTIO_SPIFFE_WEBHOOK_SOCKET_MOUNT_PATH", "/run/spiffe/")
    assert load_settings().ca_addr == "unix:///run/spiffe/socket"


def test_explicit_ca_addr_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISTIO_SPIFFE_WEBHOOK_SOCKET_MOUNT_PATH", "/run/spiffe")
    monkeypatch.setenv("ISTIO_SPIFFE_WEBHOOK_CA_ADDR", "unix:///run/spiffe/agent.sock")
    assert load_settings().ca_addr == "unix:///run/spiffe/agent.sock"


def test_equal_certs_and_socket_volume_names_are_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "certs_volume: spiffe\nsocket_volume: spiffe\n")
    assert config_error(path) == (
        "invalid configuration: settings: Value error, certs_volume and socket_volume must differ"
    )


def test_equal_env_names_are_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(ca_addr_env="PILOT_CERT_PROVIDER")
    assert str(caught.value) == (
        "invalid configuration: settings: Value error,"
        " cert_provider_env and ca_addr_env must differ"
    )


def test_empty_names_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISTIO_SPIFFE_WEBHOOK_PROXY_CONTAINER", "")
    assert config_error() == (
        "invalid configuration: proxy_container: String should have at least 1 character"
    )


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.port = 1


def test_the_config_file_goes_to_the_yaml_source_not_through_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "proxy_container: envoy\n")
    seen: list[tuple[object, str | None]] = []

    class RecordingYamlSource(YamlConfigSettingsSource):
        def __init__(self, settings_cls: type[BaseSettings], yaml_file: Path) -> None:
            seen.append((yaml_file, os.environ.get(CONFIG_FILE_ENV)))
            super().__init__(settings_cls, yaml_file=yaml_file)

    monkeypatch.setattr(config, "YamlConfigSettingsSource", RecordingYamlSource)
    assert load_settings(path).proxy_container == "envoy"
    assert seen == [(path, None)]


def test_settings_made_directly_read_no_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONFIG_FILE_ENV, str(write(tmp_path, "proxy_container: envoy\n")))
    assert Settings().proxy_container == "istio-proxy"
    assert load_settings().proxy_container == "envoy"


def test_a_copy_with_another_socket_mount_path_derives_ca_addr_again() -> None:
    copy = Settings().model_copy(update={"socket_mount_path": "/run/spiffe"})
    assert (copy.socket_mount_path, copy.ca_addr) == ("/run/spiffe", "unix:///run/spiffe/socket")
    assert copy == Settings(socket_mount_path="/run/spiffe")


def test_a_copy_keeps_an_explicit_ca_addr() -> None:
    settings = Settings(ca_addr="unix:///run/spire/agent.sock")
    copy = settings.model_copy(update={"socket_mount_path": "/run/spiffe"})
    assert copy.ca_addr == "unix:///run/spire/agent.sock"


def test_a_copy_can_set_ca_addr_and_an_empty_one_is_derived() -> None:
    explicit = Settings().model_copy(update={"ca_addr": "unix:///elsewhere"})
    derived = explicit.model_copy(update={"ca_addr": "", "socket_mount_path": "/run/spiffe"})
    assert (explicit.ca_addr, derived.ca_addr) == (
        "unix:///elsewhere",
        "unix:///run/spiffe/socket",
    )


@pytest.mark.parametrize(
    ("update", "error"),
    [
        ({"port": 70000}, "less than or equal to 65535"),
        ({"socket_mount_path": "relative"}, "String should match pattern '^/'"),
        ({"socket_volume": "workload-certs"}, "certs_volume and socket_volume must differ"),
        ({"csi_drvier": "csi.example.org"}, "Extra inputs are not permitted"),
    ],
)
def test_a_copy_is_validated_like_new_settings(update: dict[str, object], error: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(error)):
        Settings().model_copy(update=update)


def test_a_copy_takes_nothing_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    monkeypatch.setenv("ISTIO_SPIFFE_WEBHOOK_PORT", "9443")
    monkeypatch.setenv("ISTIO_SPIFFE_WEBHOOK_CA_ADDR", "unix:///from/env")
    copy = settings.model_copy(update={"csi_driver": "csi.example.org"})
    assert (copy.csi_driver, copy.port, copy.ca_addr) == (
        "csi.example.org",
        8443,
        "unix:///var/run/secrets/workload-spiffe-uds/socket",
    )


def test_a_copy_without_update_is_equal() -> None:
    settings = Settings(socket_mount_path="/run/spiffe", port=9443)
    assert settings.model_copy() == settings
    assert settings.model_copy(deep=True) == settings
