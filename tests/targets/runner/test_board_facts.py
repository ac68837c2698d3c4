"""The device fingerprint carries the board's own facts (on the emulated Pi: tests/targets/test_armboard.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from targets.runner import bench


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="needs Linux /proc/cpuinfo")
def test_board_facts_come_from_cpuinfo_not_from_platform():
    text = Path("/proc/cpuinfo").read_text()
    facts = bench.board_facts()
    assert facts["cpu_count"] == sum(1 for ln in text.splitlines() if ln.split(":")[0].strip() == "processor")
    names = {ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.split(":")[0].strip() == "model name"}
    if names:  # x86: the model name; Arm: the core named from its part number
        assert facts["cpu"] == ", ".join(sorted(names))
    assert bench.environment()["board"] == facts


def test_arm_core_names_cover_the_shipped_boards():
    # rpi4: Cortex-A72, rpi5: Cortex-A76, jetson-nano: Cortex-A57, jetson-orin-nano: Cortex-A78AE
    assert {bench.ARM_CORES[p] for p in ("0xd08", "0xd0b", "0xd07", "0xd42")} == {
        "Cortex-A72", "Cortex-A76", "Cortex-A57", "Cortex-A78AE"}
