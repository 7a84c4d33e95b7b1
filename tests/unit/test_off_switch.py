from autonumad.kernel.files import KernelFiles
from autonumad.off_switch import noautonuma_on_cmdline, off_reason


def test_noautonuma_is_read_from_the_kernel_command_line(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cmdline").write_text("BOOT_IMAGE=/vmlinuz root=/dev/sda1 noautonuma quiet\n")
    assert noautonuma_on_cmdline(KernelFiles(str(tmp_path)))
    (tmp_path / "proc/cmdline").write_text("root=/dev/sda1 noautonumaX\n")
    assert not noautonuma_on_cmdline(KernelFiles(str(tmp_path)))


def test_off_reasons_in_order():
    base = dict(noautonuma=False, nodes_with_memory=2, config_enabled=True, runtime_enabled=True)
    assert off_reason(**base) is None
    assert "noautonuma" in off_reason(**{**base, "noautonuma": True, "nodes_with_memory": 1})
    assert "single NUMA node" in off_reason(**{**base, "nodes_with_memory": 1})
    assert "enabled = false" in off_reason(**{**base, "config_enabled": False})
    assert "autonumactl disable" in off_reason(**{**base, "runtime_enabled": False})
