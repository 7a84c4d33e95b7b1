"""Guest side of the systemd VM tests: runs each check once the boot is over, reports them all.

    python guest_checks.py CHECKS-JSON

CHECKS-JSON is a list of {"name", "script", "timeout"}; each script runs with `sh -c` as
root, in order, its stdout and stderr together. One JSON object goes to stdout at the
end: {name: {"status": N, "output": TEXT}}; status 124 means the check timed out.
"""

import json
import subprocess
import sys

TIMED_OUT = 124


def run_check(script: str, timeout: float) -> dict:
    try:
        done = subprocess.run(["sh", "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode(errors="replace")
        return {"status": TIMED_OUT, "output": output + f"\n(timed out after {timeout:.0f} s)"}
    return {"status": done.returncode, "output": done.stdout.decode(errors="replace")}


def main(argv: list[str]) -> int:
    checks = json.loads(argv[1])
    results = {c["name"]: run_check(c["script"], c["timeout"]) for c in checks}
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
