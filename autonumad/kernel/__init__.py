"""The I/O layer: the one door to /proc, /sys and NUMA syscalls.

Nothing outside this package opens a /proc or /sys file or makes a syscall; every
reader here takes a root path so tests can point it at a fixture tree.
"""
