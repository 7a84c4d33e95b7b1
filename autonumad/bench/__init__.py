"""Benchmarks of the daemon against other balancers, run in the NUMA VM (scripts/bench-balance).

Not a box of the daemon's flow: `balance` holds the scenarios and the pure
arithmetic of the results, `balance_guest` the runner that executes a scenario
inside the VM.
"""
