"""PII canaries through the real stack: 0 raw matches in every place data lands.

Starts Triton + the router (real processes, PII tokenization, audit trail,
encrypted capture of every answered request, spans exported to JSONL, debug
logging), sends a load of fraud requests whose PII fields carry distinctive
canaries (``canary-<uuid>@example.com``, ``+1555xxxxxxx`` phones, 16-digit card
numbers), including requests that fail (unknown tenant, PII in request_id, a
bad feature) and idempotent retries, then stops the stack (flushing every
writer) and searches for any planted value in: router and Triton logs, the
span file, a /metrics scrape, the capture files (raw and decrypted) and the
audit trail. Positive controls show the search works and the PII reached the
sinks as tokens: the client's own request log matches every canary, and the
decrypted captures hold the expected token of planted values.

    python -m bench.pii_canary --build build --requests 2000 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import re
import sys
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml
from prometheus_client.parser import text_string_to_metric_families

from inferline.v1 import inference_pb2 as pb
from inferline.v1 import inference_pb2_grpc
from router.audit.chain import verify
from router.audit.store import checkpoint_path, segments
from router.capture.envelope import open_fields
from router.capture.store import CaptureStore
from router.security.keyset import KeysetFile, load_keyset, rotate_keyset
from router.security.kms import LocalKeysetKms
from router.security.pii import Tokenizer
from scripts.stack import ROOT, Stack

TENANT_HEADER = "x-inferline-tenant"
PII_TENANTS = {
    # tenant -> (PII fields, capture class)
    "payments": (["email", "phone", "card_number"], "debug"),
    "demo": (["email"], "drift"),
}
_PATTERNS = (
    re.compile(rb"canary-[0-9a-f]{32}"),  # the email's local part is enough to count
    re.compile(rb"\+1555[0-9]{7}"),
    re.compile(rb"(?<![0-9])4[0-9]{15}(?![0-9])"),
)


@dataclass
class Planted:
    values: set[bytes] = field(default_factory=set)
    emails: dict[str, str] = field(default_factory=dict)  # email -> tenant

    def email(self, tenant: str) -> str:
        value = f"canary-{uuid.uuid4().hex}@example.com"
        self.values.add(value.split("@")[0].encode())
        self.emails[value] = tenant
        return value

    def phone(self) -> str:
        value = f"+1555{random.randrange(10**7):07d}"
        self.values.add(value.encode())
        return value

    def card(self) -> int:
        value = random.randrange(4 * 10**15, 5 * 10**15)
        self.values.add(str(value).encode())
        return value

    def matches(self, data: bytes) -> int:
        return sum(1 for p in _PATTERNS for m in p.finditer(data) if m.group(0) in self.values)


def _value(x: float | int | str) -> pb.Value:
    if isinstance(x, str):
        return pb.Value(string_value=x)
    if isinstance(x, int):
        return pb.Value(int64_value=x)
    return pb.Value(double_value=x)


def make_request(i: int, planted: Planted) -> tuple[str, pb.PredictRequest, str | None]:
    """(tenant, request, idempotency retry marker) for the i-th request of the mix."""
    kind = i % 20
    tenant = "payments" if i % 2 == 0 else "demo"
    if kind == 0:
        tenant = "stranger"  # unknown tenant: UNAUTHENTICATED, scrubbed anyway
    features: dict[str, pb.Value] = {
        "amount": _value(round(random.uniform(1, 600), 2)),
        "hour_of_day": _value(float(i % 24)),
        "is_international": _value(float(i % 3 == 0)),
    }
    entities = {"account_id": _value(i % 4000 + 1), "email": _value(planted.email(tenant))}
    if tenant != "demo":  # payments (and the stranger) declare these PII too
        features["phone"] = _value(planted.phone())
        features["card_number"] = _value(planted.card())
    if kind == 2:
        features["amount"] = _value("twelve")  # INVALID_ARGUMENT on a bad feature
    req = pb.PredictRequest(alias="fraud:prod", request_id=f"req-{i}")
    req.candidates.add(candidate_id=f"c-{i}", entities=entities, features=features)
    if kind == 1:
        req.request_id = planted.email(tenant)  # refused, never echoed
    retry = None
    if kind == 3:
        req.idempotency_key = f"idem-{i}"
        retry = req.idempotency_key
    return tenant, req, retry


async def _load(
    address: str, n: int, concurrency: int, planted: Planted, sent_log: Path
) -> Counter[str]:
    codes: Counter[str] = Counter()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    with sent_log.open("w") as log:
        async with grpc.aio.insecure_channel(address) as ch:
            stub = inference_pb2_grpc.InferenceServiceStub(ch)

            async def call(tenant: str, req: pb.PredictRequest) -> None:
                try:
                    await stub.Predict(req, metadata=((TENANT_HEADER, tenant),), timeout=10)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as e:
                    codes[e.code().name] += 1

            async def worker() -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    tenant, req, retry = make_request(i, planted)
                    log.write(json.dumps({"tenant": tenant, "request": str(req)}) + "\n")
                    await call(tenant, req)
                    if retry is not None:
                        await call(tenant, req)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
    return codes


@dataclass
class CanaryReport:
    requests: int
    codes: dict[str, int]
    planted_values: int
    raw_matches: dict[str, int]
    control_matches: int
    scanned_bytes: dict[str, int]
    captures: int
    captured_tokens_checked: int
    audit_records: int
    audit_predictions: int
    audit_verified: bool
    seconds: float
    compliance_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return all(v == 0 for v in self.raw_matches.values())


def write_routing_table(path: Path) -> None:
    table = yaml.safe_load((ROOT / "scripts" / "demo_routing.yaml").read_text())
    for tenant, (fields, cls) in PII_TENANTS.items():
        table["tenants"][tenant]["data"] = {
            "pii_fields": fields,
            "capture_class": cls,
            "capture_ratio": 1.0,
        }
    path.write_text(yaml.safe_dump(table))


@dataclass
class Setup:
    """Key files, routing table and router environment of a compliance-enabled stack."""

    work: Path
    keys: dict[str, Path]
    table: Path
    audit: Path
    captures: Path
    spans: Path
    env: dict[str, str]


def prepare(work: Path, *, queue_size: int = 10_000) -> Setup:
    work.mkdir(parents=True, exist_ok=True)
    keys = {name: work / f"{name}-keys.json" for name in ("pii", "kek", "audit")}
    for path in keys.values():
        rotate_keyset(path)
    table = work / "routing.yaml"
    write_routing_table(table)
    audit, captures, spans = work / "audit.jsonl", work / "captures", work / "spans.jsonl"
    env = {
        "INFERLINE_FEATURES__TIMEOUT_MS": "1000",
        "INFERLINE_RELIABILITY__PROBE_INTERVAL_S": "0",
        "INFERLINE_LOG__LEVEL": "debug",
        "INFERLINE_TRACING__EXPORTER": "jsonl",
        "INFERLINE_TRACING__SAMPLE_RATIO": "1.0",
        "INFERLINE_TRACING__JSONL_PATH": str(spans),
        "INFERLINE_PII__KEY_FILE": str(keys["pii"]),
        "INFERLINE_AUDIT__PATH": str(audit),
        "INFERLINE_AUDIT__KEY_FILE": str(keys["audit"]),
        "INFERLINE_CAPTURE__DIR": str(captures),
        "INFERLINE_CAPTURE__KMS_KEYSET_FILE": str(keys["kek"]),
        "INFERLINE_CAPTURE__QUEUE_SIZE": str(queue_size),
        "INFERLINE_AUDIT__QUEUE_SIZE": str(queue_size),
    }
    return Setup(work, keys, table, audit, captures, spans, env)


def run_canary(build: Path, work: Path, *, requests: int, concurrency: int) -> CanaryReport:
    setup = prepare(work, queue_size=requests * 2)
    keys, table, env = setup.keys, setup.table, setup.env
    audit, captures, spans = setup.audit, setup.captures, setup.spans
    planted = Planted()
    t0 = time.monotonic()
    logs = work / "logs"
    with Stack(build, logs, routing_table=table, router_env=env) as stack:
        assert stack.router is not None
        codes = asyncio.run(
            _load(stack.router.address, requests, concurrency, planted, work / "sent.jsonl")
        )
        with urllib.request.urlopen(stack.router.metrics_url, timeout=10) as resp:
            metrics = resp.read()
    seconds = time.monotonic() - t0

    kms = LocalKeysetKms(KeysetFile(keys["kek"]))
    store = CaptureStore(captures, 3600.0)
    decrypted = [open_fields(kms, rec) for rec in store.records()]
    trail = b"".join(p.read_bytes() for p in segments(audit))
    sinks: dict[str, bytes] = {
        "router log": b"".join(p.read_bytes() for p in logs.glob("router*.log")),
        "triton log": b"".join(p.read_bytes() for p in logs.glob("tritonserver*.log")),
        "spans (jsonl)": spans.read_bytes() if spans.exists() else b"",
        "metrics scrape": metrics,
        "captures (raw files)": b"".join(p.read_bytes() for *_, p in store.segments()),
        "captures (decrypted)": json.dumps(decrypted).encode(),
        "audit trail": trail + checkpoint_path(audit).read_bytes(),
    }
    raw = {name: planted.matches(data) for name, data in sinks.items()}

    # Positive controls: the scanner finds every planted value in what the
    # client sent, and the captures hold the expected tokens of planted emails.
    control = planted.matches((work / "sent.jsonl").read_bytes())
    tok = Tokenizer(KeysetFile(keys["pii"]))
    captured = {c["entities"].get("email") for rec in decrypted for c in rec["candidates"]}
    checked = sum(1 for e, t in planted.emails.items() if tok.token(t, e) in captured)

    audit_lines = trail.splitlines()
    verdict = verify(
        audit_lines,
        keys=load_keyset(keys["audit"]),
        checkpoint=json.loads(checkpoint_path(audit).read_text()),
    )
    predictions = sum(1 for line in audit_lines if b'"action":"predict"' in line)
    return CanaryReport(
        requests=sum(codes.values()),
        codes=dict(codes),
        planted_values=len(planted.values),
        raw_matches=raw,
        control_matches=control,
        scanned_bytes={k: len(v) for k, v in sinks.items()},
        captures=len(decrypted),
        captured_tokens_checked=checked,
        audit_records=len(audit_lines),
        audit_predictions=predictions,
        audit_verified=verdict.ok,
        compliance_metrics=compliance_series(metrics.decode()),
        seconds=round(seconds, 1),
    )


def compliance_series(text: str) -> dict[str, float]:
    """The router's own audit/capture/purge series from a scrape, summed over labels."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if name.startswith(("inferline_audit_", "inferline_capture_")) and not (
                name.endswith("_created")
            ):
                label = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{name}{{{label}}}" if label else name] = sample.value
    return out


def markdown(r: CanaryReport, command: str) -> str:
    head = (
        f"Command: `{command}`  \nMachine: 2 vCPU shared dev VM, Python "
        f"{platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        f"{r.requests} Predict calls ({', '.join(f'{k} {v}' for k, v in sorted(r.codes.items()))})"
        f" in {r.seconds} s, {r.planted_values} distinct canary values planted.\n\n"
        "| where | bytes scanned | raw canary matches |\n| --- | --- | --- |\n"
    )
    rows = [f"| {k} | {r.scanned_bytes[k]} | **{v}** |" for k, v in r.raw_matches.items()]
    tail = (
        f"\nControls: the client's own request log matches {r.control_matches} canaries "
        f"(the search works); {r.captured_tokens_checked} planted emails were found in the "
        f"decrypted captures as their expected tokens ({r.captures} capture records). "
        f"Audit trail: {r.audit_records} records ({r.audit_predictions} predictions), "
        f"chain and checkpoint {'verified' if r.audit_verified else 'FAILED verification'}.\n"
        "\nRouter metrics at the end of the load: "
        + ", ".join(f"`{k}` {v:g}" for k, v in sorted(r.compliance_metrics.items()))
        + ".\n"
    )
    return head + "\n".join(rows) + "\n" + tail


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--build", type=Path, default=ROOT / "build")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--work", type=Path, help="default: <build>/logs/pii-canary-<time>")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    work = args.work or args.build / "logs" / time.strftime("pii-canary-%Y%m%d-%H%M%S")
    report = run_canary(
        args.build.resolve(), work.resolve(), requests=args.requests, concurrency=args.concurrency
    )
    command = "python -m bench.pii_canary " + " ".join(argv if argv is not None else sys.argv[1:])
    print(markdown(report, command))
    if args.json:
        args.json.write_text(json.dumps(report.__dict__, indent=2))
    return 0 if report.clean and report.audit_verified else 1


if __name__ == "__main__":
    sys.exit(main())
