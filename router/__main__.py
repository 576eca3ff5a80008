"""``python -m router``: run the inference router (settings from INFERLINE_* env)."""

from __future__ import annotations

import asyncio
import sys

import uvloop

from router.app import serve
from router.settings import Settings


def main() -> int:
    settings = Settings()
    uvloop.install()
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
