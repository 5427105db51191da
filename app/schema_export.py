"""Write the JSON Schemas of the producer contract to ``schemas/chatwoot/`` (``make schemas``).

The pydantic models in :mod:`app.events` are the source of truth; a test fails when the files are stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

from app.events import envelope_json_schemas


def render() -> dict[str, bytes]:
    """File name → exact file content."""
    return {
        f"{stem}.schema.json": orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        for stem, schema in envelope_json_schemas().items()
    }


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in render().items():
        path = directory / name
        path.write_bytes(content)
        written.append(path)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("schemas/chatwoot")
    for path in write(target):
        sys.stdout.write(f"wrote {path}\n")
