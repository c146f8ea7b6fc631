"""Settings of the provincial feed (the ``feed:`` section; docs/feed.md).

Example::

    feed:
      enabled: true
      destinations:
        - name: guizhou
          url: https://platform.example.gov.cn/api/dc/v1/reports
          api_key_file: /run/secrets/feed-api-key      # or api_key (prefer files or DCPUE_* env)
          secret_file: /run/secrets/feed-hmac-secret
          algorithm: hmac-sm3                          # hmac-sha256 (default) or hmac-sm3
          tls: {ca_file: /etc/dcpue/platform-ca.pem, cert_file: /etc/dcpue/client.pem, key_file: /etc/dcpue/client.key}
        - name: backup
          url: https://backup.example.gov.cn/reports
          secret_file: /run/secrets/backup-secret
      file_drop: {directory: /var/lib/dcpue/feed-drop, formats: [json, csv]}
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from dcpue.analytics.feed.reports import DEFAULT_ON_TIME_S
from dcpue.analytics.feed.schema import REPORT_TYPES
from dcpue.secrets import read_secret_file

Algorithm = Literal["hmac-sha256", "hmac-sm3"]
MIN_KEEP_DAYS = 183  # GB/T 38692 access rules: keep at least six months of reports locally


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TlsSettings(_Model):
    """HTTPS trust and mutual TLS: ``ca_file`` verifies the platform, ``cert_file``/``key_file`` identify us."""

    ca_file: Path | None = None  # None: the system trust store
    cert_file: Path | None = None
    key_file: Path | None = None
    verify: bool = True  # false only for a test platform; never in production

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("mutual TLS needs both cert_file and key_file (or neither)")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name} {path}: no such file")
        return self


def _read_secret(value: SecretStr | None, path: Path | None, what: str) -> str | None:
    if path is not None:
        return read_secret_file(path, what)
    return value.get_secret_value() if value is not None else None


class FeedDestination(_Model):
    """One platform endpoint. Reports go to every destination, each with its own ordered queue."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    url: str
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    secret: SecretStr | None = None  # HMAC key
    secret_file: Path | None = None
    algorithm: Algorithm = "hmac-sha256"
    tls: TlsSettings = TlsSettings()
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(10.0, gt=0)
    max_per_minute: int = Field(600, ge=1)  # request rate limit towards this destination
    burst: int = Field(20, ge=1)
    backoff_max_s: float = Field(900.0, gt=0)  # exponential backoff up to this between attempts
    alert_after_s: float = Field(6 * 3600.0, gt=0)  # a report still undelivered this long raises FeedUndelivered
    # the dispatcher's give-up rules: a platform report is resent until acknowledged, never given up
    max_attempts: None = None
    max_age_s: float = math.inf

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    @model_validator(mode="after")
    def _secrets(self) -> FeedDestination:
        for what in ("api_key", "secret"):
            if getattr(self, what) is not None and getattr(self, f"{what}_file") is not None:
                raise ValueError(f"give {what} or {what}_file, not both")
            _read_secret(getattr(self, what), getattr(self, f"{what}_file"), what)  # fails early if unreadable
        if self.url.startswith("http://") and not self.url.startswith(("http://127.", "http://localhost")):
            raise ValueError(f"{self.url}: reports leave the site only over HTTPS (http:// is for a local receiver)")
        return self

    @property
    def rate_per_minute(self) -> int:
        return self.max_per_minute

    def api_key_value(self) -> str | None:
        """The API key, read from its file now (files may be rotated while dcpue runs)."""
        return _read_secret(self.api_key, self.api_key_file, "api_key")

    def secret_value(self) -> str | None:
        """The HMAC key, read from its file now."""
        return _read_secret(self.secret, self.secret_file, "secret")


class FileDropSettings(_Model):
    """Daily files for platforms that ingest files: ``<directory>/<site code>/<YYYY-MM-DD>.<format>``."""

    directory: Path
    formats: tuple[Literal["json", "csv"], ...] = ("json", "csv")


class QualitySettings(_Model):
    """The self-check applied to every report (its result travels in the report)."""

    min_coverage: float = Field(0.9, gt=0, le=1)
    consistency_tolerance: float = Field(0.05, ge=0)
    on_time_s: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_ON_TIME_S))

    @field_validator("on_time_s")
    @classmethod
    def _types(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(REPORT_TYPES))
        if unknown:
            raise ValueError(f"unknown report type(s) {', '.join(unknown)} (valid: {', '.join(REPORT_TYPES)})")
        return {**DEFAULT_ON_TIME_S, **value}


class FeedSettings(_Model):
    """The provincial feed: what is reported, where it goes and how long it is kept."""

    enabled: bool = False
    format: str = "dcpue-v1"  # the platform adapter (dcpue.feed.formats); a province's own spec plugs in here
    reports: tuple[Literal["realtime", "hourly", "daily", "monthly"], ...] = REPORT_TYPES
    destinations: tuple[FeedDestination, ...] = ()
    file_drop: FileDropSettings | None = None
    outbox_path: Path = Path("dcpue-data/feed-outbox.sqlite")
    keep_days: int = Field(190, ge=MIN_KEEP_DAYS)  # delivered reports stay in the outbox this long
    interval_s: float = Field(60.0, gt=0)  # how often the sender looks for newly final windows
    start: str | None = None  # ISO date: report nothing before it (default: the first stored window)
    sites: tuple[str, ...] = ()  # empty: every registry site that has a platform site code
    include_meters: bool = False  # add the meter registry (serials, calibration dates) to period reports
    quality: QualitySettings = QualitySettings()

    @model_validator(mode="after")
    def _unique(self) -> FeedSettings:
        names = [d.name for d in self.destinations]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"destination names must be unique; repeated: {repeated}")
        if "file" in names:
            raise ValueError("'file' is reserved for the file drop; name the destination otherwise")
        if self.enabled and not self.destinations and self.file_drop is None:
            raise ValueError("the feed is enabled but has no destinations and no file_drop")
        return self
