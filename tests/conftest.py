"""Shared test set-up: `vm` tests run only inside the NUMA VM (scripts/numa-vm sets AUTONUMAD_IN_VM=1)."""

import os

import pytest

IN_VM = os.environ.get("AUTONUMAD_IN_VM") == "1"
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def pytest_collection_modifyitems(config, items):
    skip_vm = pytest.mark.skip(reason="needs the NUMA VM: run through scripts/run-tests or scripts/numa-vm")
    for item in items:
        if "vm" in item.keywords and not IN_VM:
            item.add_marker(skip_vm)
