"""``inferline models``: the release CLI over the admin gRPC API.

    inferline models [--router HOST:PORT] [--tenant ops] status [MODEL]
    inferline models register MODEL VERSION
    inferline models alias MODEL ALIAS VERSION [--tenant-pin TENANT]
    inferline models canary MODEL VERSION --weight 0.1
    inferline models experiment MODEL NAME --arm a=1:0.5 --arm b=2:0.5 [--salt S]
    inferline models kill MODEL           (experiment kill switch)
    inferline models shadow MODEL VERSION --fraction 0.05   (0 stops)
    inferline models promote MODEL [--reason TEXT]
    inferline models rollback MODEL [--reason TEXT]
    inferline models outcomes FILE        (JSON lines: {"request_id": ..., "value": ...})

Identity: against a development router (auth mode "header") ``--tenant`` is
sent as the tenant header; through the edge, pass the operator's client
certificate (``--ca --cert --key``). Exit status 0 on success, 1 when the
server refuses (its status and reason are printed), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import grpc

from inferline.v1 import admin_pb2, admin_pb2_grpc


def _arm(text: str) -> admin_pb2.ExperimentArm:
    try:
        name, rest = text.split("=", 1)
        version, weight = rest.split(":", 1)
        return admin_pb2.ExperimentArm(name=name, version=int(version), weight=float(weight))
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"arm must look like name=version:weight, got {text!r}"
        ) from e


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="inferline models",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--router", default="127.0.0.1:50051", help="router gRPC address")
    p.add_argument("--tenant", default="ops", help="tenant header (development routers)")
    p.add_argument("--ca", type=Path, help="CA bundle (TLS)")
    p.add_argument("--cert", type=Path, help="client certificate (mTLS)")
    p.add_argument("--key", type=Path, help="client key (mTLS)")
    p.add_argument("--timeout", type=float, default=300.0)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("status")
    s.add_argument("model", nargs="?", default="")
    s = sub.add_parser("register")
    s.add_argument("model")
    s.add_argument("version", type=int)
    s = sub.add_parser("alias")
    s.add_argument("model")
    s.add_argument("alias")
    s.add_argument("version", type=int)
    s.add_argument("--tenant-pin", default="", help="pin for this tenant only")
    s = sub.add_parser("canary")
    s.add_argument("model")
    s.add_argument("version", type=int)
    s.add_argument("--weight", type=float, required=True)
    s = sub.add_parser("experiment")
    s.add_argument("model")
    s.add_argument("name")
    s.add_argument("--arm", type=_arm, action="append", required=True)
    s.add_argument("--salt", default="")
    s.add_argument("--alias", default="prod")
    s.add_argument("--unit", choices=["entity", "request"], default="entity")
    s.add_argument(
        "--unit-key", default="", help="entity key to assign by (default: the keys shared)"
    )
    for name in ("kill", "promote", "rollback"):
        s = sub.add_parser(name)
        s.add_argument("model")
        s.add_argument("--reason", default="")
    s = sub.add_parser("shadow")
    s.add_argument("model")
    s.add_argument("version", type=int)
    s.add_argument("--fraction", type=float, required=True)
    s = sub.add_parser("outcomes")
    s.add_argument("file", type=Path)
    return p


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if args.ca is None:
        if args.cert is not None or args.key is not None:
            # Never fall back to plaintext with a client certificate in hand.
            raise ValueError("--cert/--key need --ca (the CA that signed the router's edge)")
        return grpc.insecure_channel(args.router)
    creds = grpc.ssl_channel_credentials(
        root_certificates=args.ca.read_bytes(),
        private_key=args.key.read_bytes() if args.key else None,
        certificate_chain=args.cert.read_bytes() if args.cert else None,
    )
    return grpc.secure_channel(args.router, creds)


def _call(stub: Any, args: argparse.Namespace) -> Any:
    c = args.cmd
    if c == "status":
        return stub.GetStatus(admin_pb2.ModelRequest(model=args.model))
    if c == "register":
        return stub.RegisterVersion(
            admin_pb2.RegisterVersionRequest(model=args.model, version=args.version)
        )
    if c == "alias":
        return stub.SetAlias(
            admin_pb2.SetAliasRequest(
                model=args.model, alias=args.alias, version=args.version, tenant=args.tenant_pin
            )
        )
    if c == "canary":
        return stub.StartCanary(
            admin_pb2.StartCanaryRequest(model=args.model, version=args.version, weight=args.weight)
        )
    if c == "experiment":
        return stub.SetExperiment(
            admin_pb2.SetExperimentRequest(
                model=args.model,
                name=args.name,
                alias=args.alias,
                salt=args.salt or f"{args.model}:{args.name}",
                arms=args.arm,
                unit=args.unit,
                unit_key=args.unit_key,
            )
        )
    if c == "shadow":
        return stub.SetShadow(
            admin_pb2.SetShadowRequest(
                model=args.model, version=args.version, fraction=args.fraction
            )
        )
    if c in ("kill", "promote", "rollback"):
        method = {"kill": stub.KillExperiment, "promote": stub.Promote, "rollback": stub.Rollback}[
            c
        ]
        return method(admin_pb2.ModelRequest(model=args.model, reason=args.reason))
    assert c == "outcomes"
    outcomes = []
    for line in args.file.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            outcomes.append(
                admin_pb2.Outcome(request_id=str(row["request_id"]), value=float(row["value"]))
            )
    return stub.IngestOutcomes(admin_pb2.IngestOutcomesRequest(outcomes=outcomes))


def _print(resp: Any) -> None:
    if isinstance(resp, admin_pb2.StatusResponse):
        print(json.dumps(json.loads(resp.status_json), indent=2, sort_keys=True))
        return
    from google.protobuf import json_format

    print(json.dumps(json_format.MessageToDict(resp), sort_keys=True))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    metadata = (("x-inferline-tenant", args.tenant),) if args.tenant else ()
    try:
        with _channel(args) as channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)  # type: ignore[no-untyped-call]
            wrapped = _WithMetadata(stub, metadata, args.timeout)
            try:
                resp = _call(wrapped, args)
            except grpc.RpcError as e:
                print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
                return 1
    except (OSError, ValueError, KeyError, TypeError) as e:
        # Usage errors (a certificate or outcomes file missing or malformed):
        # exit 2, as the docstring says, not a traceback that reads like a refusal.
        print(f"error: {e}", file=sys.stderr)
        return 2
    _print(resp)
    return 0


class _WithMetadata:
    """The stub with identity metadata and a timeout on every call."""

    def __init__(self, stub: Any, metadata: tuple[tuple[str, str], ...], timeout: float) -> None:
        self._stub = stub
        self._metadata = metadata
        self._timeout = timeout

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)

        def call(request: Any) -> Any:
            return method(request, metadata=self._metadata, timeout=self._timeout)

        return call


if __name__ == "__main__":
    sys.exit(main())
