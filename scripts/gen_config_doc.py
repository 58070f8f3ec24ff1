"""Regenerate the field reference at the end of docs/configuration.md from the pydantic model."""

from __future__ import annotations

import sys
from pathlib import Path

from openbess.config import config_reference

MARK = "<!-- generated reference below: scripts/gen_config_doc.py -->"


def main() -> int:
    path = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    head = path.read_text().split(MARK)[0]
    path.write_text(head + MARK + "\n" + config_reference())
    return 0


if __name__ == "__main__":
    sys.exit(main())
