"""The ``inferline`` console script: one entry point, a subcommand per operator tool.

inferline slo (--url URL | --file FILE) [--slo 0.999]
inferline dr backup|restore|verify|list ...
"""

from __future__ import annotations

import sys

USAGE = "usage: inferline {slo,dr} ...  (inferline dr --help)"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(USAGE, file=sys.stderr)
        return 2
    cmd, rest = args[0], args[1:]
    if cmd == "slo":
        from router.observability import slo

        return slo.main(rest)
    if cmd == "dr":
        from router.ops import dr

        return dr.main(rest)
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
