"""The ``inferline`` console script: ``inferline slo ...`` and ``inferline models ...``."""

from __future__ import annotations

import sys

USAGE = "usage: inferline {slo,models} ...  (inferline <command> --help for details)"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "slo":
        from router.observability import slo

        return slo.main(args[1:])
    if args and args[0] == "models":
        from router import models_cli

        return models_cli.main(args[1:])
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
