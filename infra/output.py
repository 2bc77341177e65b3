"""How verbs print results: one JSON object on stdout with `--json`, human lines otherwise."""

from __future__ import annotations

import json
import sys
from typing import Any


def emit(result: dict[str, Any], *, as_json: bool, human: str) -> None:
    """Print `result` as one JSON line (machine) or `human` (person) on stdout."""
    if as_json:
        print(json.dumps(result, sort_keys=True, default=str))
    else:
        print(human)
    sys.stdout.flush()
