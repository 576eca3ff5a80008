"""The ``inferline`` console script: operator commands, one subcommand each.

Each subcommand's module owns its arguments (``inferline <command> --help``);
modules are imported only when their command runs, so one tool's dependencies
never slow another down.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "slo": ("router.observability.slo", "SLIs and error budgets from a /metrics scrape"),
    "models": ("router.models_cli", "register, alias, shadow, canary, promote, rollback, status"),
    "audit": ("router.audit.cli", "verify an audit trail (hash chain, checkpoint)"),
    "capture": ("router.capture.cli", "purge expired payload captures; decrypt one"),
    "keys": ("router.security.cli", "create or rotate a keyset file (PII, KEK, audit HMAC)"),
    "dr": ("router.ops.dr", "backup | restore | verify | list (disaster recovery)"),
}
USAGE = "usage: inferline COMMAND ...\n" + "\n".join(
    f"  {name:<9}{help_}" for name, (_, help_) in COMMANDS.items()
)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[args[0]][0])
    rc: int = module.main(args[1:])
    return rc


if __name__ == "__main__":
    sys.exit(main())
