"""``python -m stack``: the launcher of ``make run`` (see ``stack.launcher``)."""

from __future__ import annotations

import sys

from stack.launcher import main

if __name__ == "__main__":
    sys.exit(main())
