"""autonumad's entry point. The balancing loop is not built yet: it says so and exits."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("autonumad: the balancing daemon is not implemented yet; "
          "use 'autonumactl topology' to inspect this machine.", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
