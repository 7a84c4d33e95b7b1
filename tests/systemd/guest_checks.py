"""Guest side of the systemd VM tests: runs each check once the boot is over, reports them all.

    python guest_checks.py CHECKS-JSON

CHECKS-JSON is a list of {"name", "script", "timeout"}; each script runs with `sh -c` as
root, in order, its stdout and stderr together. One JSON object goes to stdout at the
end: {name: {"status": N, "output": TEXT}}; status 124 means the check timed out.

Each check runs in a session of its own, and a check past its timeout is killed with
everything it started in that session: a child still holding the output pipe (a client
blocked on a socket, say) cannot keep the next checks from running. As each check starts
and ends a line goes to stderr, which numa-vm forwards as it comes: a boot that never
ends still shows which check it was in.
"""

import json
import os
import signal
import subprocess
import sys
import time

TIMED_OUT = 124
DRAIN_S = 10  # after the kill: how long to read what is left of the output


def progress(line: str) -> None:
    print(f"guest_checks: {line}", file=sys.stderr, flush=True)


def run_check(script: str, timeout: float) -> dict:
    proc = subprocess.Popen(["sh", "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return {"status": proc.returncode, "output": out.decode(errors="replace")}
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        out, _ = proc.communicate(timeout=DRAIN_S)
        note = ""
    except subprocess.TimeoutExpired:  # something outside the session holds the pipe: leave it
        proc.kill()
        out, note = b"", f" (output lost: the pipe was still held {DRAIN_S} s after the kill)"
    return {"status": TIMED_OUT, "output": out.decode(errors="replace") + f"\n(timed out after {timeout:.0f} s){note}"}


def main(argv: list[str]) -> int:
    checks = json.loads(argv[1])
    results = {}
    for c in checks:
        progress(f"{c['name']}: started (timeout {c['timeout']:.0f} s)")
        began = time.monotonic()
        results[c["name"]] = run_check(c["script"], c["timeout"])
        progress(f"{c['name']}: status {results[c['name']]['status']} after {time.monotonic() - began:.0f} s")
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
