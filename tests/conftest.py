"""Suite-wide set-up: keep pytest's warning filters in force during collection.

Feast's modules call ``warnings.simplefilter("once", DeprecationWarning)`` when
first imported. Imported while pytest collects, that filter lands ahead of the
``filterwarnings`` in pyproject.toml for the rest of the collection, so the
deprecation warnings pyproject silences (envoy-data-plane's generated pydantic
classes) came back as 31 warnings in every full run. Importing Feast here, while
pytest loads this file inside its own ``catch_warnings``, confines Feast's filter
to that phase: later imports find the modules loaded and change nothing.
"""

import feast  # noqa: F401
