"""Where every benchmark leaves its figures: <out>/<name>.json, <out>/<name>.md, and the table printed."""

from __future__ import annotations

import json
import os
from typing import Any


def publish(out: str, name: str, results: dict[str, Any], table: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out, f"{name}.md"), "w") as f:
        f.write(table)
    print(table)
