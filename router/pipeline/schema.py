"""Feature schemas and their hash: the train/serve parity contract.

A model version is trained on features in one order with one dtype each. The
router assembles its input tensor from the same list; the hash of that list is
stored with the version at build time and recomputed by the router, so any
drift between what was trained and what is served is detectable.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any


def feature_schema_hash(features: Iterable[Mapping[str, Any]]) -> str:
    """sha256 hex of the ordered (name, dtype, source, view) tuples.

    Defaults, ranges and other profile data are deliberately excluded: they may be
    refreshed without changing what the model consumes.
    """
    canon = [[f["name"], f["dtype"], f["source"], f.get("view")] for f in features]
    payload = json.dumps(canon, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(payload.encode()).hexdigest()
