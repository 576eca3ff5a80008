"""The ``inferline`` console script: operator commands, one subcommand each.

``inferline slo``, ``inferline audit verify``, ``inferline capture purge|show``,
``inferline keys rotate``. Each subcommand's module owns its arguments.
"""

from __future__ import annotations

import sys

USAGE = """usage: inferline COMMAND ...
  slo      SLIs and error budgets from a /metrics scrape
  audit    verify an audit trail (hash chain, checkpoint)
  capture  purge expired payload captures; decrypt one for debugging
  keys     create or rotate a keyset file (PII, capture KEK, audit HMAC)"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in {"slo", "audit", "capture", "keys"}:
        print(USAGE, file=sys.stderr)
        return 2
    cmd, rest = args[0], args[1:]
    if cmd == "slo":
        from router.observability.slo import main as slo

        return slo(rest)
    if cmd == "audit":
        from router.audit.cli import main as audit

        return audit(rest)
    if cmd == "capture":
        from router.capture.cli import main as capture

        return capture(rest)
    from router.security.cli import main as keys

    return keys(rest)


if __name__ == "__main__":
    sys.exit(main())
