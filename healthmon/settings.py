"""The one settings object, read from the environment (prefix HEALTHMON_) and `.env`."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class MqttTarget(BaseModel):
    """A broker address parsed from `mqtt://user:pass@host:port`."""

    host: str
    port: int
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False


class Settings(BaseSettings):
    """Everything configurable. Read once at an entry point and passed down as arguments."""

    model_config = SettingsConfigDict(
        env_prefix="HEALTHMON_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: SecretStr | None = Field(
        default=None, description="libpq URL; unset means `healthmon up` starts an embedded one"
    )
    mqtt_url: SecretStr | None = Field(
        default=None, description="mqtt://user:pass@host:port (mqtts:// for TLS)"
    )
    mqtt_client_id: str = "healthmon-ingest"
    mqtt_share_group: str | None = Field(
        default=None, description="subscribe as $share/{group}/... so several workers split load"
    )
    mqtt_keepalive_s: int = 30
    mqtt_protocol: str = Field(default="5", description="'5', or '3.1.1' for brokers without v5")
    mqtt_session_expiry_s: int = Field(
        default=7 * 24 * 3600, description="how long the broker keeps our session while we're away"
    )
    mqtt_receive_maximum: int = Field(
        default=1000, description="in-flight QoS 1 window we ask the broker for (MQTT 5)"
    )
    broker_admin_url: SecretStr | None = Field(
        default=None,
        description="mqtt://admin:pass@host:port of a Mosquitto dynamic-security admin; "
        "set, device create/delete/disable provisions the broker (docs/deploy.md)",
    )
    broker_ca_file: str | None = Field(
        default=None,
        description="CA bundle to verify the broker on mqtts:// (the intake's HEALTHMON_MQTT_URL"
        " and broker_admin_url); default: the system's CAs",
    )

    # Writer
    batch_max_rows: int = 5000
    flush_interval_s: float = 0.25
    queue_max_messages: int = 20000
    write_method: str = Field(
        default="copy", description="copy (COPY FROM STDIN) or insert (engines without COPY)"
    )

    # Reliability (docs/reliability.md): the disk spool used while the database is down.
    spool_dir: Path | None = Field(
        default=None, description="spool directory, one per ingest worker; unset: no spool"
    )
    spool_max_bytes: int = Field(
        default=1 << 30, description="spool cap; when full, intake stops acknowledging"
    )
    spool_segment_bytes: int = 8 << 20
    db_retry_base_s: float = Field(default=0.2, description="database retry backoff: first delay")
    db_retry_cap_s: float = Field(default=30.0, description="database retry backoff: cap")
    db_connect_timeout_s: float = 10.0
    mqtt_reconnect_min_s: float = Field(default=1.0, description="broker reconnect backoff: first")
    mqtt_reconnect_max_s: float = Field(default=30.0, description="broker reconnect backoff: cap")

    # Validation
    max_payload_bytes: int = 256 * 1024
    max_batch_samples: int = 1000
    max_future_skew_s: float = 300.0
    rejected_payload_max_bytes: int = 4096
    auto_register_domains: list[str] = Field(default_factory=list)
    device_rate_limit_per_s: float = Field(
        default=50.0, description="messages per second per device before `rate_limited`"
    )
    device_rate_burst: int = 200

    # Storage
    retention_days: int = 365 * 3 + 1  # 医疗废物管理条例 第十二条: records kept at least 3 years
    compress_after_days: int = 7
    partition_days: int = 7  # plain-PostgreSQL partition width
    partitions_ahead: int = 4

    evaluate_alerts: bool = Field(
        default=True, description="evaluate alert rules in the intake (off only to measure)"
    )
    run_notifier: bool = Field(
        default=True, description="deliver notifications from this process (one per fleet)"
    )

    # API
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    session_secret: SecretStr = SecretStr("change-me")

    @field_validator("auto_register_domains", mode="before")
    @classmethod
    def _split_csv(cls, v: object) -> object:
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("write_method")
    @classmethod
    def _check_write_method(cls, v: str) -> str:
        if v not in ("copy", "insert"):
            raise ValueError("write_method must be 'copy' or 'insert'")
        return v

    def mqtt_target(self) -> MqttTarget:
        """Parse `mqtt_url`; raises ValueError with a clear message when it is malformed."""
        if self.mqtt_url is None:
            raise ValueError("HEALTHMON_MQTT_URL is not set")
        return parse_mqtt_url(self.mqtt_url.get_secret_value())

    def dsn(self) -> str:
        if self.database_url is None:
            raise ValueError("HEALTHMON_DATABASE_URL is not set")
        return self.database_url.get_secret_value()


def parse_mqtt_url(url: str) -> MqttTarget:
    """`mqtt://user:pass@host:port` -> MqttTarget. `mqtts://` means TLS (default port 8883)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"MQTT URL must start with mqtt:// or mqtts://, got {url.split(':')[0]!r}")
    tls = parts.scheme in ("mqtts", "ssl")
    if not parts.hostname:
        raise ValueError("MQTT URL has no host")
    return MqttTarget(
        host=parts.hostname,
        port=parts.port or (8883 if tls else 1883),
        username=unquote(parts.username) if parts.username else None,
        password=SecretStr(unquote(parts.password)) if parts.password else None,
        tls=tls,
    )
