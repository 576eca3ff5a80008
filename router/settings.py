"""The router's one settings object.

Built once at start-up by the composition root (``router.app``) from
``INFERLINE_*`` environment variables (nested sections use ``__``, e.g.
``INFERLINE_TRITON__URL``) and passed down. Nothing else in the router reads
``os.environ``. Frozen, so no module can change a setting behind another's back.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class _Section(BaseModel):
    # A NaN or infinite duration, ratio or limit is a typo, never a setting:
    # e.g. an infinite feature timeout would remove the read's hard deadline.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    """Address the gRPC server binds to."""
    port: int = Field(default=50051, ge=0, le=65535)
    """gRPC port (0 picks a free one; the bound port is logged)."""
    bridge_port: int | None = Field(default=None, ge=0, le=65535)
    """Port of the HTTP/1.1 fast lane for Predict (None: off; 0: a free one).
    The edge sends Predict here (gRPC framing over HTTP/1.1, the status in
    trailers) instead of to the gRPC port: ~0.3 ms less router CPU per request.
    Same host and TLS as the gRPC port."""
    workers: int = Field(default=1, ge=1, le=64)
    """Router processes sharing the port (SO_REUSEPORT): one Python process uses
    one core, so set this to the cores the pod has. Needs a fixed port."""
    grace_period_s: float = Field(default=5.0, ge=0)
    """On SIGTERM, how long in-flight RPCs may finish before they are cancelled."""
    drain_s: float = Field(default=0.0, ge=0)
    """On SIGTERM, how long to keep accepting new RPCs after health turns NOT_SERVING,
    so load balancers that health-check (Envoy, kubelet readiness) stop sending first:
    set it above their check interval (the Helm chart: 1.5 s, three of Envoy's)."""
    max_receive_message_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    """Largest accepted request; larger ones get RESOURCE_EXHAUSTED from gRPC."""
    reflection: bool = True
    """Serve gRPC server reflection (grpcurl, debugging)."""


class TritonSettings(_Section):
    url: str = "127.0.0.1:8001"
    """Triton gRPC endpoint, host:port (health, metadata, KServe pass-through;
    inference too when http_url is unset)."""
    http_url: str | None = None
    """Triton HTTP endpoint, host:port. When set, inference uses HTTP/1.1 with
    binary tensors: ~0.2 ms less router CPU per request than gRPC here."""
    startup_timeout_s: float = Field(default=60.0, gt=0)
    """How long start-up waits for Triton to report ready before failing."""
    http_connection_max_age_s: float = Field(default=30.0, ge=0)
    """A kept-alive HTTP connection to Triton is replaced once this old, so
    Triton pods added behind one Service address (a scale-out) get their share
    of a router's traffic; kept forever, each connection stays on the pod it
    first reached. 0 keeps connections for good."""


class FeatureSettings(_Section):
    repo_path: Path = Path("build/feast")
    """Feast repository (directory holding feature_store.yaml and its registry)."""
    timeout_ms: float = Field(default=8.0, gt=0)
    """Hard budget for the batched online read (DESIGN.md latency budget). On
    expiry the request is scored with defaults and marked degraded."""
    inline_sync_reads: bool = True
    """Run a synchronous online store's read (SQLite, a local file) on the event
    loop instead of a worker thread: the thread hop costs ~0.1 ms of CPU, more
    than the read itself. The read then cannot be cut short by timeout_ms, except
    a wait for a writer's lock, which gives up after timeout_ms (keep the store in
    WAL mode, as build_demo writes it, and readers never wait); use a network
    store (Redis, async) where that matters."""
    direct_sqlite_reads: bool = True
    """With the SQLite online store and inline reads, query its table directly
    (same table, keys and timestamps as Feast's ``online_read``, only the
    requested features; parity-tested) instead of through Feast's read path."""
    direct_redis_reads: bool = True
    """With the Redis online store (plain host:port connection string), read
    Feast's hashes directly: one pipelined HMGET per entity over a small RESP
    client (same keys, fields and timestamps as Feast's ``online_read``;
    parity-tested) instead of Feast's per-call redis-py pipeline."""
    max_clock_skew_s: float = Field(default=5.0, ge=0)
    """Event timestamps this far in the future are tolerated (writer clock skew)."""


class ModelSettings(_Section):
    repository: Path = Path("build/model_repository")
    """Triton model repository; each version directory holds metadata.json."""


class RoutingSettings(_Section):
    table_path: Path = Path("scripts/demo_routing.yaml")
    """YAML routing table: models, aliases, tenants (validated, swapped whole)."""
    reload_interval_s: float = Field(default=2.0, ge=0)
    """How often the table file is checked for changes; 0 disables reloading."""


class TlsSettings(_Section):
    cert_file: Path | None = None
    """PEM server certificate. With key_file set, the router serves TLS only."""
    key_file: Path | None = None
    """PEM private key for cert_file."""
    client_ca_file: Path | None = None
    """PEM CA bundle; when set, clients must present a certificate it signed (mTLS)."""
    reload_interval_s: float = Field(default=1.0, ge=0)
    """How often (at most, checked on new handshakes) the three files are re-read:
    a rotated certificate, key or CA bundle is served without a restart. 0 = never."""


class AuthSettings(_Section):
    mode: Literal["header", "edge"] = "header"
    """How the caller's tenant is established. "edge": from the identity Envoy
    forwards (XFCC URI SAN or verified JWT payload), believed only when the mTLS
    peer is a trusted edge. "header": from ``tenant_header`` as sent (local
    development and tests only: anyone can claim any tenant)."""
    tenant_header: str = "x-inferline-tenant"
    """Metadata key read in "header" mode."""
    priority_header: str = "x-inferline-priority"
    """Metadata key carrying the request's priority class (critical|standard|batch)."""
    trusted_peers: tuple[str, ...] = ("spiffe://inferline/edge/envoy",)
    """URI SANs of peers allowed to forward identity (the edge's own identity)."""
    xfcc_header: str = "x-forwarded-client-cert"
    """Header Envoy sets (SANITIZE_SET) with the client certificate's URI SAN."""
    jwt_payload_header: str = "x-inferline-jwt-payload"
    """Header Envoy's jwt_authn forwards the verified payload in (base64url JSON)."""
    tenant_uri_prefix: str = "spiffe://inferline/tenant/"
    """SPIFFE id prefix of tenant workloads: ``<prefix><tenant>/svc/<service>``."""


class LimitSettings(_Section):
    max_candidates: int = Field(default=64, ge=1, le=4096)
    """Most candidates accepted in one Predict call."""
    max_in_flight: int = Field(default=512, ge=1)
    """Requests admitted at once per router process; beyond each priority
    class's share of it requests are shed with RESOURCE_EXHAUSTED."""
    default_deadline_ms: float = Field(default=1000.0, gt=0)
    """Deadline applied when the caller sets none."""
    min_inference_budget_ms: float = Field(default=2.0, ge=0)
    """Time reserved for inference when the feature read is budgeted: the read
    gets at most (remaining deadline - this)."""


class ReliabilitySettings(_Section):
    breaker_failure_threshold: int = Field(default=5, ge=1)
    """Consecutive failures that open a breaker (feature store, model version)."""
    breaker_open_s: float = Field(default=1.0, gt=0)
    """How long an open breaker rejects calls before one half-open trial."""
    retry_budget_ratio: float = Field(default=0.09, ge=0, le=1)
    """Extra upstream attempts (fallback versions) allowed per primary attempt.
    0.09 keeps attempts per request under 1.1 even with the bucket's start-up token."""
    fallback_reserve_ms: float = Field(default=1.0, ge=0)
    """Deadline slice kept back from each upstream call so lower rungs can answer."""
    inference_timeout_ms: float = Field(default=50.0, gt=0)
    """Hard limit of one upstream inference call, whatever the caller's deadline
    (the p99 SLO): a hung model server costs at most this before the ladder answers."""
    slow_call_ms: float = Field(default=20.0, gt=0)
    """A timed-out upstream call counts against the breaker only if it was given
    at least this long (short caller deadlines say nothing about the backend)."""
    probe_interval_s: float = Field(default=1.0, ge=0)
    """Canary-inference probe period per routed version (0 disables probing)."""
    probe_timeout_ms: float = Field(default=250.0, gt=0)
    """Timeout of one canary inference, and of the feature store breaker's
    half-open trial read (which runs past the request carrying it)."""

    @model_validator(mode="after")
    def _slow_call_within_timeout(self) -> Self:
        # Each call gets at most inference_timeout_ms; a timeout counts against
        # the breaker only with slow_call_ms given: above the cap, never.
        if self.slow_call_ms > self.inference_timeout_ms:
            raise ValueError("slow_call_ms must not exceed inference_timeout_ms")
        return self

    score_cache_entries: int = Field(default=100_000, ge=0)
    """Bound of the recent-score cache (fallback rung 3)."""
    feature_cache_entries: int = Field(default=100_000, ge=0)
    """Bound of the router's feature-row cache (per-model TTL in the routing table)."""


class IdempotencySettings(_Section):
    ttl_s: float = Field(default=600.0, gt=0)
    """How long a response is replayed for a retry carrying the same key."""
    max_entries: int = Field(default=100_000, ge=1)
    """Bound of the in-process store."""
    redis_url: str | None = None
    """host:port of a Redis shared by all routers; in-process store when unset."""


class MetricsSettings(_Section):
    enabled: bool = True
    """Serve Prometheus metrics over HTTP."""
    host: str = "127.0.0.1"
    """Address of the metrics endpoint (0.0.0.0 in a pod, for the scraper)."""
    port: int = Field(default=9464, ge=0, le=65535)
    """Port of ``GET /metrics`` (0 picks a free one; the bound port is logged).
    With several workers each needs its own port: worker i uses port + i."""


class TracingSettings(_Section):
    exporter: Literal["none", "otlp", "jsonl"] = "none"
    """Where finished spans go: an OTLP collector, a JSON-lines file, or nowhere
    (trace ids are still propagated and echoed)."""
    sample_ratio: float = Field(default=0.01, ge=0, le=1)
    """Fraction of new traces recorded (callers' sampled flags are honoured)."""
    otlp_endpoint: str = "127.0.0.1:4317"
    """OTLP/gRPC collector endpoint."""
    jsonl_path: Path | None = None
    """File for the jsonl exporter."""


class QualitySettings(_Section):
    drift_window: int = Field(default=2000, ge=10)
    """Rows per model version in the sliding drift window."""
    drift_min_samples: int = Field(default=200, ge=1)
    """PSI is exported only once the window holds this many rows."""
    drift_sample_every: int = Field(default=4, ge=1)
    """Add one request in this many to the drift window: PSI over a uniform sample
    is as valid, and each observation costs ~35 us of router CPU. The window then
    spans drift_window x this many requests."""

    @model_validator(mode="after")
    def _min_samples_fit_the_window(self) -> Self:
        if self.drift_min_samples > self.drift_window:  # PSI would never be exported
            raise ValueError("drift_min_samples must not exceed drift_window")
        return self


class RegionSettings(_Section):
    name: str = Field(default="local", pattern=r"^[a-z][a-z0-9\-]{0,62}$")
    """This deployment's region. Tenants whose residency policy (routing table
    ``regions``) does not list it are refused with FAILED_PRECONDITION."""
    data_root: Path = Path("build/data")
    """Root of persisted request data; sinks write under ``<data_root>/<name>/``
    (``router.pipeline.residency.Residency.destination``)."""


class DrSettings(_Section):
    backup_dir: Path = Path("build/backups")
    """Where ``inferline dr backup`` writes (ship it to another region's storage)."""
    config_files: tuple[Path, ...] = ()
    """Configuration backed up besides the routing table (e.g. envoy/tenants.yaml)."""
    databases: tuple[Path, ...] = ()
    """SQLite files (the model registry) copied with SQLite's online backup API."""
    directories: tuple[Path, ...] = ()
    """Data directories copied file by file (the audit trail)."""
    signing_key_file: Path | None = None
    """Key (a mounted secret) for the manifest's HMAC; unset = checksums only."""
    keep: int = Field(default=48, ge=1)
    """Backups kept in backup_dir; older ones are pruned after each backup."""


_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([smhd])$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as "7d", "12h", "30m" or "45s"."""
    m = _DURATION.fullmatch(text.strip())
    if not m:
        raise ValueError(f"invalid duration {text!r}: use <number><s|m|h|d>, e.g. '7d'")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


class PiiSettings(_Section):
    key_file: Path | None = None
    """Keyset JSON (a mounted secret) whose primary key derives each tenant's
    tokenization key (HKDF). Required when a tenant in the routing table lists
    ``data.pii_fields``; without it PII tokenization is off."""
    opaque_ids: bool = True
    """With PII on, request_id and idempotency_key must be opaque ids (letters,
    digits, ``._:-``), so an email or name cannot ride into logs and traces
    through them; idempotency keys are stored as per-tenant HMACs."""
    key_reload_interval_s: float = Field(default=10.0, ge=0)
    """How often every key file (PII, capture KEK, audit HMAC) is checked for a
    rotation; 0 disables reloading."""


class AuditSettings(_Section):
    path: Path | None = None
    """Append-only JSON-lines audit trail; None disables the audit trail."""
    key_file: Path | None = None
    """Keyset whose primary key HMACs the chain (a rewriter without it cannot
    recompute hashes). Plain SHA-256 when unset."""
    checkpoint_path: Path | None = None
    """Where the head (seq, hash) is anchored after every write; default
    ``<path>.checkpoint``. Put it on another volume to detect truncation."""
    fsync: bool = True
    """fsync every append (each admin record; each batch of prediction records)."""
    segment_bytes: int | None = Field(default=256 * 1024 * 1024, gt=0)
    """Rotate the active file to ``<path>.<first seq>`` at this size (the chain
    continues across segments); None keeps one file."""
    predictions: bool = True
    """Record every prediction (identity, tenant, version, score deciles, no PII)."""
    queue_size: int = Field(default=10_000, ge=1)
    """Prediction records waiting for the background writer; beyond it they are
    dropped and counted (inferline_audit_dropped). Admin records never queue."""
    batch_max: int = Field(default=512, ge=1)
    """Most prediction records sealed and written per append."""
    flush_interval_ms: float = Field(default=50.0, ge=0)
    """Group commit: the writer waits this long after the first queued prediction
    record so one append and fsync cover the batch (records reach disk within
    about this plus the write). Admin records never wait."""


class CaptureSettings(_Section):
    dir: Path | None = None
    """Root of the encrypted payload capture; None disables capture."""
    kms_keyset_file: Path | None = None
    """Keyset of the local KMS whose primary key wraps each record's data key."""
    retention: dict[str, str] = {"debug": "7d", "drift": "30d"}
    """Named retention windows; a tenant's ``data.capture_class`` picks one."""
    segment_s: float = Field(default=3600.0, gt=0)
    """Span of one capture file; the purge deletes whole expired files, so a
    record lives at most its retention plus this."""
    queue_size: int = Field(default=2_000, ge=1)
    """Sampled captures waiting for the writer; beyond it they are dropped."""
    purge_interval_s: float = Field(default=3600.0, ge=0)
    """How often the router runs the retention purge itself (0: only the
    ``inferline capture purge`` job)."""

    @field_validator("retention")
    @classmethod
    def _durations(cls, v: dict[str, str]) -> dict[str, str]:
        for name, text in v.items():
            if not re.fullmatch(r"[a-z][a-z0-9_\-]{0,31}", name):
                raise ValueError(f"invalid retention class name {name!r}")
            parse_duration(text)
        return v

    def retention_s(self) -> dict[str, float]:
        return {name: parse_duration(text) for name, text in self.retention.items()}


class RegistrySettings(_Section):
    enabled: bool = False
    """Run the release registry: its aliases, experiments and shadows override
    the routing table's, and the AdminService is served (admin scope only)."""
    db_path: Path = Path("build/registry.db")
    """SQLite database of versions and release state (shared by the router
    processes of one host; the schema suits a shared database)."""
    manage_triton: bool = True
    """Load versions through Triton's repository API (Triton runs with
    --model-control-mode=explicit); at start every registered version is loaded."""
    warmup_rows: int = Field(default=8, ge=1)
    """Rows of warmup inference a version must score before it is registered."""
    poll_interval_s: float = Field(default=0.5, gt=0)
    """How often the registry revision is checked for other processes' changes."""
    canary_controller: bool = True
    """Run the canary controller here (one process per registry should)."""
    canary_interval_s: float = Field(default=1.0, gt=0)
    """How often running canaries are judged."""
    canary_policy: dict[str, float | list[float]] = Field(default_factory=dict)
    """Overrides of router.registry.canary.CanaryPolicy (min_samples, p99_ratio,
    p99_slo_ms, max_error_rate_delta, max_score_psi, hold_s, ramp, ...), as JSON."""
    arm_window: int = Field(default=2000, ge=10)
    """Requests per experiment arm in the canary's decision window."""
    outcome_join_entries: int = Field(default=100_000, ge=1)
    """Recent request ids remembered to join business outcomes to their arm."""
    shadow_max_in_flight: int = Field(default=4, ge=1)
    """Concurrent shadow mirrors; beyond it mirrors are dropped, never queued."""
    shadow_timeout_ms: float = Field(default=50.0, gt=0)
    """Timeout of one shadow inference."""


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    """Minimum log level."""
    json_output: bool = True
    """JSON lines (production) or human-readable console output (local runs)."""
    flush_interval_ms: float = Field(default=100.0, ge=0)
    """Log lines are buffered and written at least this often (errors at once):
    a write() per line costs ~70 us of CPU per request. 0 = write every line."""


class Settings(BaseSettings):
    """All router settings, one section per dependency."""

    model_config = SettingsConfigDict(
        env_prefix="INFERLINE_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    server: ServerSettings = ServerSettings()
    """Inbound gRPC server."""
    triton: TritonSettings = TritonSettings()
    """Triton Inference Server connection."""
    features: FeatureSettings = FeatureSettings()
    """Feast online feature store."""
    models: ModelSettings = ModelSettings()
    """Model repository (version metadata)."""
    routing: RoutingSettings = RoutingSettings()
    """Routing table (tenants, models, aliases)."""
    tls: TlsSettings = TlsSettings()
    """Inbound TLS / mTLS."""
    auth: AuthSettings = AuthSettings()
    """Caller identity."""
    limits: LimitSettings = LimitSettings()
    """Request limits and deadlines."""
    reliability: ReliabilitySettings = ReliabilitySettings()
    """Breakers, retry budget, probes, caches."""
    idempotency: IdempotencySettings = IdempotencySettings()
    """Idempotent retries."""
    quality: QualitySettings = QualitySettings()
    """Drift detection."""
    metrics: MetricsSettings = MetricsSettings()
    """Prometheus endpoint."""
    tracing: TracingSettings = TracingSettings()
    """OpenTelemetry traces."""
    log: LogSettings = LogSettings()
    """Logging."""
    region: RegionSettings = RegionSettings()
    """Region and data residency."""
    dr: DrSettings = DrSettings()
    """Backup and restore (``inferline dr``)."""
    pii: PiiSettings = PiiSettings()
    """PII tokenization at entry."""
    audit: AuditSettings = AuditSettings()
    """Hash-chained audit trail."""
    capture: CaptureSettings = CaptureSettings()
    """Encrypted payload capture and its retention."""
    registry: RegistrySettings = RegistrySettings()
    """Model registry and release controls (canary, A/B, shadow)."""
