"""Certificate rotation under load, through the real chain: 0 failed requests.

Starts Triton + router (mTLS) + Envoy + control plane (scripts.edge_stack.FullStack)
with every server certificate read from Kubernetes-style secret directories
(kubelet's atomic ``..data`` swap), then sends steady Predict traffic on fresh
connections (each worker reconnects every few requests, so handshakes happen all
through the rotation) through Envoy, and directly to the router as Envoy does
(edge client certificate + XFCC), while a prober opens a bare TLS handshake to
each server every 50 ms and records the serial it is shown.

Mid-load it rotates:
1. leaves: new key pairs from the same CA for Envoy's server and client
   certificates and the router's server certificate;
2. with ``--rollover``, a CA rollover: a new CA is added to every trust bundle,
   then all leaves are reissued by the new CA (the old CA stays trusted because
   tenant client certificates are still signed by it).

Reports requests, failures by status, and per phase the time from the files
changing on disk to the first handshake that presented the new certificate.

    python -m bench.cert_rotation --build build --seconds 30 --rollover --md docs/reliability.md
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import ssl
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from cryptography import x509

from inferline.v1 import inference_pb2_grpc
from inferline_edge.certs import EDGE_DNS, ROUTER_DNS, CertPair, DevPKI, issue_role, make_ca
from inferline_edge.secrets import export_dir, write_secret_dir
from scripts.demo import fraud_request
from scripts.edge_stack import FullStack
from scripts.stack import ROOT

TENANT = ("demo", "cli")
XFCC = (("x-forwarded-client-cert", "URI=spiffe://inferline/tenant/demo/svc/cli"),)


@dataclass
class Phase:
    name: str
    rotated_at_s: float  # since load start
    edge_serial: str
    router_serial: str
    edge_new_after_s: float | None = None  # files written -> first handshake with the new cert
    router_new_after_s: float | None = None
    envoy_secrets_before: dict[str, str] = field(default_factory=dict)
    envoy_secrets_after: dict[str, str] = field(default_factory=dict)
    """Secret versions Envoy reports active (config_dump): the upstream client cert
    and the trust bundle have no handshake to probe from outside, so this shows
    Envoy took them."""


@dataclass
class RotationReport:
    seconds: float
    requests: int = 0
    ok: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    connections: int = 0
    handshake_probes: int = 0
    probe_failures: int = 0
    phases: list[Phase] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


class Secrets:
    """The stack's secret directories and the PKI that feeds them."""

    def __init__(self, pki: DevPKI, root: Path) -> None:
        self.pki, self.root = pki, root
        self.ca_pems = [pki.ca.cert.read_bytes()]
        self.issuer: CertPair = pki.ca
        self.edge_dir, self.router_dir = root / "edge", root / "router"
        export_dir(pki, self.edge_dir)
        self.write_router()

    @property
    def bundle(self) -> bytes:
        return b"".join(self.ca_pems)

    def write_router(self) -> None:
        r = self.pki.router
        write_secret_dir(
            self.router_dir,
            {"tls.crt": r.cert.read_bytes(), "tls.key": r.key.read_bytes(), "ca.crt": self.bundle},
        )

    def write_edge(self) -> None:
        p = self.pki
        write_secret_dir(
            self.edge_dir / "server",
            {"tls.crt": p.edge_server.cert.read_bytes(), "tls.key": p.edge_server.key.read_bytes()},
        )
        write_secret_dir(
            self.edge_dir / "client",
            {"tls.crt": p.edge_client.cert.read_bytes(), "tls.key": p.edge_client.key.read_bytes()},
        )
        write_secret_dir(self.edge_dir / "ca", {"ca.crt": self.bundle})

    def router_env(self) -> dict[str, str]:
        d = self.router_dir
        return {
            "INFERLINE_TLS__CERT_FILE": str(d / "tls.crt"),
            "INFERLINE_TLS__KEY_FILE": str(d / "tls.key"),
            "INFERLINE_TLS__CLIENT_CA_FILE": str(d / "ca.crt"),
            "INFERLINE_TLS__RELOAD_INTERVAL_S": "0.2",
        }

    def reissue_leaves(self) -> tuple[str, str]:
        """New key pairs for every infrastructure leaf; returns (edge, router) serials."""
        for role in ("edge-server", "edge-client", "router"):
            issue_role(self.issuer, self.pki.root / role, role, days=1)
        self.write_edge()
        self.write_router()
        return _serial(self.pki.edge_server.cert), _serial(self.pki.router.cert)

    def add_ca(self) -> None:
        """Rollover step 1: a successor CA, trusted everywhere before it signs anything."""
        self.issuer = make_ca(self.pki.root / "ca-next", "inferline dev CA (next)", days=1)
        self.ca_pems.append(self.issuer.cert.read_bytes())
        self.write_edge()
        self.write_router()


def _serial(cert: Path) -> str:
    return f"{x509.load_pem_x509_certificate(cert.read_bytes()).serial_number:x}"


def handshake_serial(port: int, bundle: bytes, client: CertPair, server_name: str) -> str:
    """Serial of the certificate a fresh TLS handshake is shown (verified, mTLS)."""
    ctx = ssl.create_default_context(cadata=bundle.decode())
    ctx.load_cert_chain(str(client.cert), str(client.key))
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=2.0) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return f"{x509.load_der_x509_certificate(der).serial_number:x}"


async def _worker(
    address: str,
    secrets: Secrets,
    client: CertPair,
    server_name: str,
    metadata: tuple[tuple[str, str], ...],
    interval_s: float,
    stop: asyncio.Event,
    report: RotationReport,
    codes: Counter[str],
    per_connection: int = 5,
) -> None:
    request = fraud_request([1, 2])
    next_at = time.monotonic()
    while not stop.is_set():
        creds = grpc.ssl_channel_credentials(
            secrets.bundle, client.key.read_bytes(), client.cert.read_bytes()
        )
        options = [("grpc.ssl_target_name_override", server_name)]
        async with grpc.aio.secure_channel(address, creds, options) as ch:
            report.connections += 1
            stub = inference_pb2_grpc.InferenceServiceStub(ch)
            for _ in range(per_connection):
                if stop.is_set():
                    break
                next_at += interval_s
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                report.requests += 1
                try:
                    await stub.Predict(request, metadata=metadata, timeout=5.0)
                    report.ok += 1
                except grpc.aio.AioRpcError as e:
                    codes[e.code().name] += 1


Seen = dict[str, list[tuple[float, str]]]  # target -> (monotonic time, serial) per handshake


async def _prober(
    full: FullStack, secrets: Secrets, stop: asyncio.Event, report: RotationReport, seen: Seen
) -> None:
    assert full.edge is not None and full.edge.public is not None and full.router is not None
    targets = {
        "edge": (full.edge.public.mtls, secrets.pki.client(*TENANT), EDGE_DNS),
        "router": (full.router.ports[0], secrets.pki.edge_client, ROUTER_DNS),
    }
    while not stop.is_set():
        for name, (port, client, sni) in targets.items():
            try:
                serial = await asyncio.to_thread(
                    handshake_serial, port, secrets.bundle, client, sni
                )
            except (OSError, ssl.SSLError):
                report.probe_failures += 1
                continue
            report.handshake_probes += 1
            seen.setdefault(name, []).append((time.monotonic(), serial))
        await asyncio.sleep(0.05)


async def _wait_serials(seen: Seen, phase: Phase, t_written: float, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for name, want in (("edge", phase.edge_serial), ("router", phase.router_serial)):
            hit = next((t for t, s in seen.get(name, []) if s == want and t >= t_written), None)
            if hit is not None:
                setattr(phase, f"{name}_new_after_s", round(hit - t_written, 3))
        if phase.edge_new_after_s is not None and phase.router_new_after_s is not None:
            return
        await asyncio.sleep(0.05)


async def rotate_under_load(
    full: FullStack, secrets: Secrets, *, seconds: float, rps: float, rollover: bool
) -> RotationReport:
    """Steady load for ``seconds``; leaves rotated at 1/3, the CA rolled at 2/3."""
    assert full.edge is not None and full.router is not None
    report = RotationReport(seconds)
    codes: Counter[str] = Counter()
    stop = asyncio.Event()
    workers = 4
    interval = workers / rps
    t0 = time.monotonic()
    tasks = [
        asyncio.create_task(
            _worker(
                full.edge.mtls_address if i % 2 == 0 else full.router.address,
                secrets,
                secrets.pki.client(*TENANT) if i % 2 == 0 else secrets.pki.edge_client,
                EDGE_DNS if i % 2 == 0 else ROUTER_DNS,
                () if i % 2 == 0 else XFCC,
                interval,
                stop,
                report,
                codes,
            )
        )
        for i in range(workers)
    ]
    seen: Seen = {}
    probe = asyncio.create_task(_prober(full, secrets, stop, report, seen))
    steps: list[tuple[str, float]] = [("leaves", seconds / 3)]
    if rollover:
        steps.append(("ca-rollover", 2 * seconds / 3))
    await asyncio.sleep(1.0)  # let the prober see the first serials
    for name, at in steps:
        await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
        if name == "ca-rollover":
            secrets.add_ca()
            await asyncio.sleep(2.0)  # the new trust bundle reaches everyone first
        before = await asyncio.to_thread(_envoy_secrets, full)
        written = time.monotonic()
        edge_serial, router_serial = secrets.reissue_leaves()
        phase = Phase(name, round(written - t0, 2), edge_serial, router_serial)
        phase.envoy_secrets_before = before
        report.phases.append(phase)
        await _wait_serials(seen, phase, written, timeout_s=seconds / 3)
        phase.envoy_secrets_after = await asyncio.to_thread(_envoy_secrets, full)
    await asyncio.sleep(max(0.0, t0 + seconds - time.monotonic()))
    stop.set()
    await asyncio.gather(*tasks)
    await probe
    report.failures = dict(codes)
    return report


def _envoy_secrets(full: FullStack) -> dict[str, str]:
    assert full.edge is not None and full.edge.envoy is not None
    prefix = "dynamic_active_secrets/"
    return {
        k[len(prefix) :]: v
        for k, v in full.edge.envoy.config_versions().items()
        if k.startswith(prefix)
    }


def start_stack(build: Path, log_dir: Path) -> tuple[FullStack, Secrets]:
    pki = DevPKI.create(log_dir / "pki", tenants=[TENANT], days=1)
    secrets = Secrets(pki, log_dir / "secrets")
    full = FullStack(
        build,
        log_dir,
        pki,
        edge_secrets_dir=secrets.edge_dir,
        router_env={
            **secrets.router_env(),
            "INFERLINE_FEATURES__TIMEOUT_MS": "1000",
            "INFERLINE_RELIABILITY__PROBE_INTERVAL_S": "0",
        },
    )
    return full, secrets


def write_md_section(path: Path, key: str, text: str) -> None:
    """Replace the text between ``<!-- key:begin -->`` and ``<!-- key:end -->`` (appended
    as a new section when the markers are missing)."""
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    doc = path.read_text() if path.exists() else ""
    if begin not in doc:
        doc = f"{doc.rstrip()}\n\n{begin}\n{end}\n"
    pre, _, rest = doc.partition(begin)
    _, _, post = rest.partition(end)
    path.write_text(f"{pre}{begin}\n{text}\n{end}{post}")


def markdown(r: RotationReport, command: str) -> str:
    lines = [
        f"Command: `{command}` ({time.strftime('%Y-%m-%d')}, 2 shared cores, CPU only).",
        "",
        f"Load: {r.requests} Predict requests over {r.seconds:.0f} s on {r.connections} "
        f"fresh mTLS connections (half through Envoy, half straight to the router as "
        f"Envoy calls it); failed: **{r.failed}** {r.failures or ''}".rstrip()
        + ".",
        f"Handshake probes: {r.handshake_probes} (failed {r.probe_failures}).",
        "",
        "| rotation | at (s) | Envoy: files -> new cert served (s) "
        "| router: files -> new cert served (s) |",
        "|---|---|---|---|",
    ]
    for p in r.phases:
        lines.append(
            f"| {p.name} | {p.rotated_at_s} | {p.edge_new_after_s} | {p.router_new_after_s} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--build", type=Path, default=ROOT / "build")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--rps", type=float, default=80.0)
    p.add_argument("--rollover", action="store_true", help="also roll the CA")
    p.add_argument("--md", type=Path, help="update this file's rotation section")
    args = p.parse_args(argv)
    log_dir = (args.build / "logs" / time.strftime("rotation-%Y%m%d-%H%M%S")).resolve()
    full, secrets = start_stack(args.build.resolve(), log_dir)

    async def run() -> RotationReport:
        await asyncio.to_thread(full.start)  # no fork after this process used gRPC
        try:
            return await rotate_under_load(
                full, secrets, seconds=args.seconds, rps=args.rps, rollover=args.rollover
            )
        finally:
            await asyncio.to_thread(full.stop)

    report = asyncio.run(run())
    command = "python -m bench.cert_rotation " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    text = markdown(report, command)
    print(text)
    print(asdict(report))
    if args.md:
        write_md_section(args.md, "cert-rotation", text)
    return (
        0
        if report.failed == 0
        and all(
            ph.edge_new_after_s is not None and ph.router_new_after_s is not None
            for ph in report.phases
        )
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
