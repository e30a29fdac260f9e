"""The deployment file: one YAML describing broker, tiers, models, thresholds, sources and the run directory.

Loaded with ``yaml.safe_load`` (no tags, no code), validated by typed models that
reject unknown keys. Errors name the file, the key path, the bad value and what was
expected. Secrets are not read from here: the broker password comes from the
environment variable named in ``broker.password_env`` or a systemd credential.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agents.errors import UserError
from agents.transport.codecs import parse_codec
from agents.transport.mqtt import LinkSettings

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class Strict(BaseModel):
    """Base for every section: unknown keys are errors, values are immutable once loaded."""

    # No infinity or NaN: `.inf` would pass every `gt=0` bound and fail at run time, far from the YAML.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TLSConfig(Strict):
    """Client TLS: CA bundle, optional client certificate and key (paths; the files hold the secrets)."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = Field(False, description="skip host-name verification (test rigs only)")


class BrokerConfig(Strict):
    """Where the MQTT broker is and how to log in."""

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    protocol: Literal["3.1.1", "5"] = "5"
    keepalive_s: int = Field(30, ge=5, le=3600)
    username: str | None = None
    password_env: str = Field("CASCADE_MQTT_PASSWORD", description="environment variable holding the password")
    tls: TLSConfig | None = None
    max_payload_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024, description="largest message accepted, chunked or not"
    )
    chunk_bytes: int = Field(
        256 * 1024, ge=1024, description="messages above this go as chunks (keep it under the broker's max packet)"
    )
    reassembly_timeout_s: float = Field(5.0, gt=0, description="an incomplete set of chunks is dropped after this")

    @model_validator(mode="after")
    def _chunks_fit(self) -> BrokerConfig:
        if self.chunk_bytes > self.max_payload_bytes:
            raise ValueError(
                f"chunk_bytes {self.chunk_bytes} exceeds max_payload_bytes {self.max_payload_bytes}: "
                "a chunk is itself a message"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict) and "password" in data:
            raise ValueError("passwords do not belong in the YAML: set password_env (default CASCADE_MQTT_PASSWORD)")
        return data

    def password(self) -> str | None:
        """The password from the environment or ``$CREDENTIALS_DIRECTORY/mqtt-password`` (systemd)."""
        if value := os.environ.get(self.password_env):
            return value
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if cred_dir and (Path(cred_dir) / "mqtt-password").is_file():
            return (Path(cred_dir) / "mqtt-password").read_text().strip()
        return None


class SourceConfig(Strict):
    """Where frames come from and at what rate."""

    kind: Literal["imagefolder", "torchvision", "video", "camera", "sensor"]
    path: str | None = Field(None, description="ImageFolder tar or folder, or a video file")
    dataset: str | None = Field(None, description="torchvision dataset name (kind torchvision)")
    root: str | None = None
    download: bool = False
    train: bool = False
    camera: int = 0
    sensor: Name | None = Field(None, description="sensor id to subscribe to (kind sensor)")
    rate: Literal["max", "fixed", "poisson"] = "max"
    fps: float | None = Field(None, gt=0)
    loop: bool = False
    shuffle: bool = False
    seed: int = 0
    limit: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _complete(self) -> SourceConfig:
        need = {"imagefolder": "path", "video": "path", "torchvision": "dataset", "sensor": "sensor"}
        key = need.get(self.kind)
        if key and getattr(self, key) is None:
            raise ValueError(f"a {self.kind} source needs '{key}'")
        if self.rate != "max" and self.fps is None:
            raise ValueError(f"rate {self.rate!r} needs 'fps'")
        return self


class CpuConfig(Strict):
    """CPU limits for one agent process (making a host behave like a weaker node; see agents/cpulimit.py)."""

    quota: float | None = Field(None, gt=0, description="cores' worth of CPU time (cgroup CFS quota), e.g. 0.5")
    cores: list[Annotated[int, Field(ge=0)]] | None = Field(None, min_length=1, description="pin to these cores")


class DeviceConfig(Strict):
    """One device agent."""

    id: Name
    model: str = "device-small"
    threshold: Probability | list[Probability] = Field(0.8, description="one for every exit, or one per exit")
    offload_to: Name = "edge"
    encoding: Literal["jpeg", "png", "raw"] = "png"
    jpeg_quality: int = Field(90, ge=1, le=100)
    deadline_ms: float = Field(2000, gt=0)
    window: int = Field(16, ge=1, le=4096, description="requests in flight at once")
    threads: int | None = Field(None, ge=1, le=256, description="torch threads (default: torch's choice)")
    split: int | None = Field(
        None, ge=1, description="split point: stages before it run here, the activation goes on; none: the frame"
    )
    codec: str = Field("fp32", description="activation codec with a split: fp32, fp16, int8, int8-channel [+zlib]")
    cpu: CpuConfig = CpuConfig()
    via: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.:-]+:[0-9]{1,5}$",
        description="reach the broker through HOST:PORT instead (a `cascade link` emulating this device's link)",
    )
    source: SourceConfig

    @field_validator("via")
    @classmethod
    def _port_in_range(cls, value: str | None) -> str | None:
        if value is not None and not 1 <= int(value.rsplit(":", 1)[1]) <= 65535:
            raise ValueError(f"{value!r}: the port must be 1-65535")
        return value

    @field_validator("codec")
    @classmethod
    def _known_codec(cls, value: str) -> str:
        parse_codec(value)
        return value


class SplitResumeConfig(Strict):
    """How a tier finishes split requests for one device model."""

    until: int | None = Field(
        None, ge=1, description="stop at this split point, forward the activation to forward_to; none: run to the end"
    )
    forward: Literal["activation", "frame"] = Field(
        "activation",
        description="below the threshold at the final exit, 'frame' forwards the device's original frame to "
        "forward_to's own model (the device then attaches it to its request)",
    )
    threshold: Probability | None = Field(None, description="exit threshold for this model (default: the tier's)")

    @model_validator(mode="after")
    def _consistent(self) -> SplitResumeConfig:
        if self.forward == "frame" and self.until is not None:
            raise ValueError("forward: frame runs the model to its end; it cannot be combined with 'until'")
        return self


class TierConfig(Strict):
    """An edge or cloud tier: every worker started for it shares the load."""

    model: str
    threshold: Probability | list[Probability] | None = Field(
        None, description="early exits and forwarding; none: answer at the final exit"
    )
    forward_to: Name | None = Field(None, description="next tier for answers below the threshold")
    max_batch: int = Field(32, ge=1, le=1024)
    max_wait_ms: float = Field(5.0, ge=0)
    queue_size: int = Field(1024, ge=1)
    shared: bool = Field(True, description="use a $share/<tier>/ subscription so workers share requests")
    threads: int | None = Field(None, ge=1, le=256, description="torch threads (default: torch's choice)")
    cpu: CpuConfig = CpuConfig()
    split_models: dict[str, SplitResumeConfig] = Field(
        default_factory=dict, description="device models whose split requests this tier resumes"
    )


class SensorConfig(Strict):
    """A simulated sensor: ``cascade replay`` publishes its source on its frames topic."""

    id: Name
    source: SourceConfig
    encoding: Literal["jpeg", "png", "raw"] = "png"


class InfluxConfig(Strict):
    """InfluxDB for telemetry: api v1 (``/write``: InfluxDB 1.x; 2.x through a DBRP mapping; 3.x) or v2 (2.x native)."""

    url: str = Field(description="base URL, e.g. http://influx.lab:8086")
    api: Literal["v1", "v2"] = "v1"
    database: Name | None = Field(None, description="database (api v1)")
    bucket: str | None = Field(None, min_length=1, description="bucket (api v2)")
    org: str | None = Field(None, min_length=1, description="organisation (api v2)")
    retention_policy: str | None = None
    username_env: str = Field("CASCADE_INFLUX_USERNAME", description="environment variable with the user name")
    password_env: str = Field("CASCADE_INFLUX_PASSWORD", description="environment variable with the password")
    token_env: str = Field("CASCADE_INFLUX_TOKEN", description="environment variable with an API token (2.x/3.x)")
    batch_lines: int = Field(5000, ge=1, le=100_000)
    flush_s: float = Field(1.0, gt=0, le=60)
    timeout_s: float = Field(5.0, gt=0, le=120)
    spool_max_bytes: int = Field(256 * 1024 * 1024, ge=4096, description="disk kept for points while it is away")

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        # Caught here, not at the first write: a URL urllib cannot use would count every point as refused.
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r}: expected http:// or https:// and a host, e.g. http://influx.lab:8086")
        return url

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict) and ({"password", "token"} & set(data)):
            raise ValueError("secrets do not belong in the YAML: set password_env / token_env")
        return data

    @model_validator(mode="after")
    def _api_fields(self) -> InfluxConfig:
        if self.api == "v1" and self.database is None:
            raise ValueError("api v1 needs 'database' (for InfluxDB 2.x through v1, the database of a DBRP mapping)")
        if self.api == "v2" and (self.bucket is None or self.org is None):
            raise ValueError("api v2 needs 'bucket' and 'org' (and a token in the environment: token_env)")
        return self

    def secret(self, env: str) -> str | None:
        """A credential from the environment or ``$CREDENTIALS_DIRECTORY/<lowercased name>`` (systemd)."""
        if value := os.environ.get(env):
            return value
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        path = Path(cred_dir) / env.lower() if cred_dir else None
        return path.read_text().strip() if path is not None and path.is_file() else None


class ClockSyncConfig(Strict):
    """Clock offset estimation between agents over MQTT (NTP four-timestamp exchange)."""

    enabled: bool = True
    interval_s: float = Field(30.0, ge=1, le=3600, description="seconds between rounds")
    samples: int = Field(8, ge=1, le=64, description="exchanges per round; the minimum round trip is kept")


class BandwidthConfig(Strict):
    """Uplink bandwidth estimation: a train of probes timed at the receiver (see agents/telemetry/bandwidth.py)."""

    enabled: bool = True
    interval_s: float = Field(30.0, ge=1, le=3600, description="seconds between trains")
    messages: int = Field(4, ge=2, le=64, description="probes per train")
    bytes: int = Field(16384, ge=1024, le=1 << 20, description="bytes per probe")


class TelemetryConfig(Strict):
    """Where records go besides the run directory, and how often agents sample their health and clocks."""

    influx: InfluxConfig | None = None
    health_s: float = Field(5.0, ge=0.5, le=300, description="seconds between health points")
    clock: ClockSyncConfig = ClockSyncConfig()
    bandwidth: BandwidthConfig = BandwidthConfig()


class DeploymentConfig(Strict):
    """A whole deployment."""

    deployment: Name
    run_dir: Path = Path("runs")
    broker: BrokerConfig = BrokerConfig()
    devices: list[DeviceConfig] = Field(default_factory=list)
    tiers: dict[Name, TierConfig] = Field(default_factory=dict)
    sensors: list[SensorConfig] = Field(default_factory=list)
    telemetry: TelemetryConfig = TelemetryConfig()

    def tier_chain(self, first: str | None) -> list[str]:
        """The tiers a request sent to ``first`` can reach: ``first``, its ``forward_to``, and onward."""
        chain: list[str] = []
        tier = first
        while tier is not None and tier not in chain and tier in self.tiers:
            chain.append(tier)
            tier = self.tiers[tier].forward_to
        return chain

    @field_validator("devices", "sensors")
    @classmethod
    def _unique_ids(cls, items: list[Any]) -> list[Any]:
        ids = [i.id for i in items]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate ids {dupes}")
        return items

    @model_validator(mode="after")
    def _references(self) -> DeploymentConfig:
        bw = self.telemetry.bandwidth
        if bw.enabled and bw.bytes + 4096 > self.broker.max_payload_bytes:
            raise ValueError(
                f"telemetry.bandwidth.bytes ({bw.bytes}) must leave room for the header under "
                f"broker.max_payload_bytes ({self.broker.max_payload_bytes}): lower it by 4096 or more"
            )
        for d in self.devices:
            if d.offload_to not in self.tiers:
                raise ValueError(f"device {d.id!r} offloads to tier {d.offload_to!r}, which is not under 'tiers'")
            if d.source.kind == "sensor" and d.source.sensor not in {s.id for s in self.sensors}:
                raise ValueError(f"device {d.id!r} reads sensor {d.source.sensor!r}, which is not under 'sensors'")
            if d.split is not None and d.model not in self.tiers[d.offload_to].split_models:
                raise ValueError(
                    f"device {d.id!r} splits {d.model!r} at {d.split}, but tier {d.offload_to!r} does not list "
                    f"it under split_models"
                )
        for name, t in self.tiers.items():
            for model, resume in t.split_models.items():
                onward = resume.until is not None or resume.forward == "frame"
                if onward and t.forward_to is None:
                    raise ValueError(f"tier {name!r} passes {model!r} on (until/forward: frame) but has no forward_to")
                onward_tier = self.tiers.get(t.forward_to or "")
                if resume.until is not None and onward_tier is not None and model not in onward_tier.split_models:
                    raise ValueError(
                        f"tier {name!r} forwards {model!r} activations to {t.forward_to!r}, which does not list "
                        f"it under split_models"
                    )
            if t.forward_to is not None and t.forward_to not in self.tiers:
                raise ValueError(f"tier {name!r} forwards to {t.forward_to!r}, which is not under 'tiers'")
            if t.forward_to is not None and t.threshold is None:
                raise ValueError(f"tier {name!r} forwards to {t.forward_to!r} but has no threshold to decide what")
            if t.forward_to == name:
                raise ValueError(f"tier {name!r} forwards to itself")
        return self

    def device(self, device_id: str) -> DeviceConfig:
        """The device called ``device_id``, or a :class:`UserError` listing those configured."""
        for d in self.devices:
            if d.id == device_id:
                return d
        raise UserError(f"no device {device_id!r} in the config; configured: {[d.id for d in self.devices]}")


def format_errors(path: Path, exc: ValidationError) -> str:
    """One line per validation error: the file, the key path, the bad value and what was expected."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = "" if err["type"] == "missing" else f" (got {_shown(err.get('input'))})"
        lines.append(f"{path}: {where}: {err['msg']}{got}")
    return "\n".join(lines)


#: Keys whose values an error message must not repeat (a secret put in the YAML is itself the error).
_SECRET_KEYS = ("password", "token", "secret")


def _masked(value: Any) -> Any:
    """``value`` with the values of secret-looking keys replaced, at any depth."""
    if isinstance(value, dict):
        return {k: "***" if any(s in str(k).lower() for s in _SECRET_KEYS) else _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


def _shown(value: Any) -> str:
    """A rejected value for an error message, secrets masked: config errors end up in logs and journals."""
    return repr(_masked(value))


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping; unreadable files, bad YAML or another shape are a UserError."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UserError(f"{path}: cannot read {what} ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def load_config(path: str | Path) -> DeploymentConfig:
    """Read and validate a deployment file; any problem becomes a :class:`UserError` naming the key path."""
    p = Path(path)
    raw = read_yaml_mapping(p, "config")
    try:
        return DeploymentConfig.model_validate(raw)
    except ValidationError as exc:
        raise UserError(format_errors(p, exc)) from None


def link_settings(cfg: DeploymentConfig, via: str | None = None) -> LinkSettings:
    """Broker settings for paho, the password taken from the environment or a systemd credential.

    ``via`` (HOST:PORT) replaces the broker's address: a ``cascade link`` in between.
    """
    b = cfg.broker
    host, port = (via.rsplit(":", 1)[0], int(via.rsplit(":", 1)[1])) if via else (b.host, b.port)
    return LinkSettings(
        host=host,
        port=port,
        keepalive=b.keepalive_s,
        protocol=5 if b.protocol == "5" else 4,
        # One YAML serves every node; each node's own account comes from its environment.
        username=os.environ.get("CASCADE_MQTT_USERNAME") or b.username,
        password=b.password(),
        tls_ca=str(b.tls.ca_file) if b.tls else None,
        tls_cert=str(b.tls.cert_file) if b.tls and b.tls.cert_file else None,
        tls_key=str(b.tls.key_file) if b.tls and b.tls.key_file else None,
        tls_insecure=bool(b.tls and b.tls.insecure),
    )
