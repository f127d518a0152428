"""Guest sizing (issue 2 item 5; case B17): pure functions first, then the script
against a fake macOS `sysctl` on PATH."""

import json
import os
from pathlib import Path

import pytest
from clod import resources
from clod.resources import MIB, HostFacts, SizeError, default_memory_mib, guest_size, parse_memory
from conftest import FAKES

GIB = 1 << 30
MAC_HOST = HostFacts(cpus=10, memory_bytes=16 * GIB)


# ---------------------------------------------------------------- pure functions


@pytest.mark.parametrize("gib, mib", [(16, 10240), (24, 15360), (8, 5120), (1, 640)])
def test_default_memory_is_five_eighths(gib, mib):
    assert default_memory_mib(gib * GIB) == mib


def test_default_memory_floors_odd_byte_counts():
    assert default_memory_mib(17179869184 + 12345) == 10240
    assert default_memory_mib(MIB * 8 // 5 + 1) == 1  # the fewest bytes whose 5/8 reach 1 MiB
    assert default_memory_mib(MIB * 8 // 5) == 0


def test_defaults_for_the_b17_host():
    assert guest_size(MAC_HOST, "macos") == resources.GuestSize(cpus=10, memory_mib=10240)


@pytest.mark.parametrize(
    "text, mib",
    [("8G", 8192), ("8192M", 8192), ("8192", 8192), ("1.5G", 1536), ("8g", 8192), ("8 GiB", 8192), ("8GB", 8192), (" 4096 ", 4096),
     ("1T", 1 << 20), ("2097152K", 2048)],
)
def test_parse_memory_units(text, mib):
    assert parse_memory(text) == mib


@pytest.mark.parametrize("text", ["-1", "8X", "G", "", "1e3", "8 G B", "0x10", "8G8"])
def test_parse_memory_rejects_non_sizes(text):
    with pytest.raises(SizeError, match="not a size"):
        parse_memory(text)


@pytest.mark.parametrize("value, mib", [("8G", 8192), ("8192M", 8192), ("8192", 8192), ("2048", 2048), ("16G", 16384)])
def test_memory_override_accepted(value, mib):
    assert guest_size(MAC_HOST, "macos", memory=value).memory_mib == mib


def test_bare_small_number_is_mib_and_rejected_with_hint():
    with pytest.raises(SizeError) as err:
        guest_size(MAC_HOST, "macos", memory="8")
    message = str(err.value)
    assert "8 MiB" in message and "2048 MiB" in message and "8G" in message


def test_more_than_host_is_rejected_with_numbers():
    with pytest.raises(SizeError) as err:
        guest_size(MAC_HOST, "macos", memory="200G")
    assert "204800 MiB" in str(err.value) and "16384 MiB" in str(err.value)


@pytest.mark.parametrize("value", ["0", "0G", "0.0001G"])
def test_zero_memory_rejected(value):
    with pytest.raises(SizeError, match="at least"):
        guest_size(MAC_HOST, "linux", memory=value)


def test_negative_memory_rejected():
    with pytest.raises(SizeError, match="-1"):
        guest_size(MAC_HOST, "linux", memory="-1")


def test_one_and_a_half_gig_depends_on_the_guest():
    assert guest_size(MAC_HOST, "linux", memory="1.5G").memory_mib == 1536
    with pytest.raises(SizeError) as err:
        guest_size(MAC_HOST, "macos", memory="1.5G")
    assert "1536 MiB" in str(err.value) and "2048 MiB" in str(err.value)


@pytest.mark.parametrize("value", ["0", "64", "11", "-1", "2.5", "two", "1 2"])
def test_cpus_outside_the_host_rejected_with_numbers(value):
    with pytest.raises(SizeError) as err:
        guest_size(MAC_HOST, "macos", cpus=value)
    assert "10" in str(err.value)


@pytest.mark.parametrize("value, cpus", [("1", 1), ("10", 10), (" 4 ", 4), ("", 10)])
def test_cpus_accepted(value, cpus):
    assert guest_size(MAC_HOST, "macos", cpus=value).cpus == cpus


def test_empty_memory_means_default():
    assert guest_size(MAC_HOST, "macos", memory="").memory_mib == 10240


# ---------------------------------------------------------------- Linux host facts and cgroup v2


@pytest.fixture
def fake_linux(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fake /proc (meminfo) and /sys/fs/cgroup; the process sits in cgroup /app.slice/box."""
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "meminfo").write_text("MemTotal:       16777216 kB\nMemFree:         1000 kB\n")
    cgroup = tmp_path / "cgroup"
    own = cgroup / "app.slice" / "box"
    own.mkdir(parents=True)
    self_cgroup = tmp_path / "self-cgroup"
    self_cgroup.write_text("0::/app.slice/box\n")
    monkeypatch.setattr(resources, "SELF_CGROUP", str(self_cgroup))
    return proc, cgroup, own


def test_linux_memory_without_limits(fake_linux):
    proc, cgroup, _ = fake_linux
    assert resources.linux_memory(str(proc), str(cgroup)) == 16 * GIB


def test_linux_memory_max_limits(fake_linux):
    proc, cgroup, own = fake_linux
    (own / "memory.max").write_text(f"{4 * GIB}\n")
    assert resources.linux_memory(str(proc), str(cgroup)) == 4 * GIB
    (own / "memory.max").write_text("max\n")
    assert resources.linux_memory(str(proc), str(cgroup)) == 16 * GIB
    (own / "memory.max").write_text(f"{64 * GIB}\n")  # a limit above the RAM changes nothing
    assert resources.linux_memory(str(proc), str(cgroup)) == 16 * GIB


def test_linux_memory_root_cgroup_fallback(fake_linux):
    proc, cgroup, _ = fake_linux
    (cgroup / "memory.max").write_text(f"{2 * GIB}\n")
    assert resources.linux_memory(str(proc), str(cgroup)) == 2 * GIB


def test_linux_cpu_max(fake_linux):
    _, cgroup, own = fake_linux
    host_cpus = len(os.sched_getaffinity(0))
    assert resources.linux_cpus(str(cgroup)) == host_cpus
    (own / "cpu.max").write_text("max 100000\n")
    assert resources.linux_cpus(str(cgroup)) == host_cpus
    (own / "cpu.max").write_text("100000 100000\n")
    assert resources.linux_cpus(str(cgroup)) == 1
    (own / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs round up, within the affinity
    assert resources.linux_cpus(str(cgroup)) == min(2, host_cpus)
    (own / "cpu.max").write_text("50000 100000\n")  # half a CPU is still one
    assert resources.linux_cpus(str(cgroup)) == 1
    (own / "cpu.max").write_text(f"{1000 * 100000} 100000\n")  # above the affinity: the affinity wins
    assert resources.linux_cpus(str(cgroup)) == host_cpus


def test_cgroup_v1_self_file_falls_back_to_root(fake_linux, tmp_path, monkeypatch):
    _, cgroup, _ = fake_linux
    v1 = tmp_path / "v1"
    v1.write_text("12:memory:/docker/abc\n")
    monkeypatch.setattr(resources, "SELF_CGROUP", str(v1))
    assert resources._own_cgroup_dir(str(cgroup)) == str(cgroup)
    monkeypatch.setattr(resources, "SELF_CGROUP", str(tmp_path / "missing"))
    assert resources._own_cgroup_dir(str(cgroup)) == str(cgroup)


def test_meminfo_without_memtotal(fake_linux):
    proc, cgroup, _ = fake_linux
    (proc / "meminfo").write_text("MemFree: 1 kB\n")
    with pytest.raises(SizeError, match="MemTotal"):
        resources.linux_memory(str(proc), str(cgroup))


# ---------------------------------------------------------------- the script, with a fake sysctl (B17 Done-when)


@pytest.fixture
def darwin_env(isolated_env):
    return {"CLOD_HOST_SYSTEM": "Darwin", "PATH": f"{FAKES / 'bin-darwin'}{os.pathsep}{isolated_env['PATH']}"}


def test_b17_script_defaults(clod, darwin_env):
    assert clod("resource-calc", env=darwin_env, check=True).stdout == "10\n10240\n"
    assert clod("resource-calc", "--memory", env=darwin_env, check=True).stdout == "10240\n"
    assert clod("resource-calc", "--cpus", env=darwin_env, check=True).stdout == "10\n"
    _, out, _ = clod("resource-calc", "--json", env=darwin_env, check=True)
    assert json.loads(out) == {"cpus": 10, "memory_mib": 10240, "host_cpus": 10, "host_memory_mib": 16384}


def test_b17_script_24_gib(clod, darwin_env):
    env = {**darwin_env, "FAKE_SYSCTL_MEMSIZE": str(24 * GIB)}
    assert clod("resource-calc", "--memory", env=env, check=True).stdout == "15360\n"


@pytest.mark.parametrize("memory", ["8", "200G", "0", "-1", "1.5G", "lots"])
def test_b17_script_invalid_memory(clod, darwin_env, memory):
    code, out, err = clod("resource-calc", "--guest=macos", env={**darwin_env, "CLOD_MEMORY": memory})
    assert code == 1 and out == ""
    assert "CLOD_MEMORY" in err and "Traceback" not in err


@pytest.mark.parametrize("cpus", ["0", "64"])
def test_b17_script_invalid_cpus(clod, darwin_env, cpus):
    code, out, err = clod("resource-calc", env={**darwin_env, "CLOD_CPUS": cpus})
    assert code == 1 and out == ""
    assert f"CLOD_CPUS={cpus}" in err and "1..10" in err


def test_script_overrides(clod, darwin_env):
    env = {**darwin_env, "CLOD_MEMORY": "8G", "CLOD_CPUS": "4"}
    assert clod("resource-calc", env=env, check=True).stdout == "4\n8192\n"


def test_script_1_5g_for_a_linux_guest(clod, darwin_env):
    env = {**darwin_env, "CLOD_MEMORY": "1.5G"}
    assert clod("resource-calc", "--memory", "--guest=linux", env=env, check=True).stdout == "1536\n"


def test_script_bad_guest_is_usage_error(clod, darwin_env):
    code, out, err = clod("resource-calc", "--guest=windows", env=darwin_env)
    assert code == 2 and out == "" and "windows" in err


def test_script_broken_sysctl_is_a_clear_error(clod, darwin_env):
    code, out, err = clod("resource-calc", env={**darwin_env, "FAKE_SYSCTL_NCPU": "lots"})
    assert code == 1 and out == "" and "sysctl" in err and "internal error" not in err
    code, out, err = clod("resource-calc", env={**darwin_env, "FAKE_SYSCTL_FAIL": "1"})
    assert code == 1 and out == "" and "sysctl" in err and "internal error" not in err


def test_script_on_this_linux_host(clod):
    _, out, _ = clod("resource-calc", "--json", "--guest=linux", check=True)
    size = json.loads(out)
    assert 1 <= size["cpus"] == size["host_cpus"]
    assert abs(size["memory_mib"] - size["host_memory_mib"] * 5 / 8) <= 1
