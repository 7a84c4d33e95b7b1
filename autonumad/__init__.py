"""autonumad: a userspace NUMA balancing daemon (CPU follows memory, memory follows CPU)."""

__version__ = "0.1.0"
