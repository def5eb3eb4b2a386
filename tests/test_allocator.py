"""Freed memory kept in the process: fewer page faults, recorded by the speed benchmark."""

import json
import platform
import subprocess
import sys

import pytest

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocates and touches six 8 MB buffers, frees them, 30 times over, and prints the minor
# page faults that took (like a network's feature maps per image). glibc by default trims
# the freed heap top beyond twice its (dynamic) mmap threshold, so each round faults the
# pages in again; with "retain" first, the freed blocks are reused.
_FAULTS = """
import resource, sys
import numpy as np
if sys.argv[1] == "retain":
    from featloc.allocator import retain_freed_memory
    assert retain_freed_memory() is not None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def round():
    buffers = [np.ones(1 << 21, np.float32) for _ in range(6)]
    return sum(float(b[-1]) for b in buffers)
for _ in range(3):
    round()
start = faults()
for _ in range(30):
    round()
print(faults() - start)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not GLIBC, reason="mallopt thresholds are a glibc feature")
def test_retained_memory_is_not_faulted_in_again():
    # 48 MB per round is 12,288 pages; glibc keeps some of them (91,740 faults in all here)
    default, retained = _faults("default"), _faults("retain")
    assert default > 30 * 1000
    assert retained < default / 20


@pytest.mark.skipif(not GLIBC, reason="mallopt thresholds are a glibc feature")
def test_thresholds_are_reported_and_validated():
    from featloc.allocator import current_setting, retain_freed_memory

    setting = retain_freed_memory()
    assert setting["mmap_threshold"] >= 32 << 20
    assert setting["trim_threshold"] == 2 * setting["mmap_threshold"]
    assert current_setting() == setting
    with pytest.raises(ValueError, match="threshold_bytes"):
        retain_freed_memory(0)


def test_environment_switch(monkeypatch):
    from featloc.allocator import retain_from_environment

    monkeypatch.setenv("FEATLOC_MALLOC", "default")
    assert retain_from_environment() is None
    monkeypatch.setenv("FEATLOC_MALLOC", "fast")
    with pytest.raises(ValueError, match="FEATLOC_MALLOC.*'fast'"):
        retain_from_environment()


def test_a_bad_setting_is_a_clear_command_line_error(monkeypatch, caplog):
    from featloc.cli import main

    monkeypatch.setenv("FEATLOC_MALLOC", "fast")
    assert main(["benchmark", "speed", "--features", "orb", "--repeats", "1"]) == 2
    assert "FEATLOC_MALLOC" in caplog.text


@pytest.mark.skipif(not GLIBC, reason="mallopt thresholds are a glibc feature")
def test_speed_benchmark_records_the_allocator(tmp_path):
    from featloc.cli import main

    assert main(["--quiet", "benchmark", "speed", "--features", "orb", "--size", "128x96",
                 "--repeats", "1", "--output", str(tmp_path)]) == 0
    machine = json.loads((tmp_path / "speed.json").read_text())["machine"]
    assert machine["malloc"]["mmap_threshold"] >= 32 << 20
    assert "freed memory retained" in (tmp_path / "speed.md").read_text()
