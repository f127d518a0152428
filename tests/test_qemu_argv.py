"""The QEMU driver's pure parts: the argv builder, share-name encoding (what
clod-init decodes), passt's and virtiofsd's command lines, the KVM verdict."""

import json
import subprocess
from pathlib import Path

import pytest
from clod.qemu import argv, kvm, net, virtiofs

ROOT = Path(__file__).resolve().parents[1]
CLOD_INIT = ROOT / "guest-setup" / "debian" / "rootfs" / "usr" / "local" / "sbin" / "clod-init"

NAMES = ["plain", "my project", "Ünïcødé名前", "a,b=c", "100%", "tab\tand space", "-leading-dash"]


def spec(tmp_path, **changes):
    values = dict(
        name="clodpod-debian",
        kernel=tmp_path / "vmlinuz",
        initrd=tmp_path / "initrd.img",
        disk=tmp_path / "disk.qcow2",
        seed=tmp_path / "seed.img",
        cpus=2,
        memory_mib=2048,
        accel="tcg",
        net_fd=7,
        ssh_port=2222,
        ctl_socket=tmp_path / "ctl.sock",
        qmp_socket=tmp_path / "qmp.sock",
        serial_log=tmp_path / "serial.log",
        shares=(argv.Share("clod0", "my project", tmp_path / "fs0.sock"),),
    )
    values.update(changes)
    return argv.VmSpec(**values)


def option_values(cmd, option):
    return [cmd[i + 1] for i, word in enumerate(cmd) if word == option]


@pytest.mark.parametrize("name", NAMES)
def test_share_names_round_trip(name):
    encoded = argv.encode_share_name(name)
    assert not set(encoded) & set(" ,=\t\n")
    assert encoded.isascii()
    assert argv.decode_share_name(encoded) == name


def test_shares_parameter_round_trip(tmp_path):
    shares = tuple(argv.Share(f"clod{i}", name, tmp_path / f"fs{i}.sock") for i, name in enumerate(NAMES))
    parameter = argv.shares_parameter(shares)
    assert " " not in parameter
    assert argv.parse_shares_parameter(parameter) == [(s.tag, s.name) for s in shares]


@pytest.mark.parametrize("name", NAMES)
def test_clod_init_decodes_what_the_host_encodes(name):
    # The guest side of the round trip: clod-init's percent_decode, run by dash.
    script = CLOD_INIT.read_text()
    start = script.index("percent_decode() {")
    function = script[start : script.index("\n}\n", start) + 3]
    result = subprocess.run(["sh", "-c", function + 'percent_decode "$1"', "sh", argv.encode_share_name(name)], capture_output=True, check=True)
    assert result.stdout.decode() == name


def test_argv_has_the_devices_clod_init_expects(tmp_path):
    cmd = argv.qemu_argv(spec(tmp_path))
    assert cmd[0] == "qemu-system-x86_64"
    assert "q35,accel=tcg,memory-backend=mem" in option_values(cmd, "-machine")
    assert option_values(cmd, "-cpu") == ["max"]
    assert "memory-backend-memfd,id=mem,size=2048M,share=on" in option_values(cmd, "-object")
    devices = option_values(cmd, "-device")
    assert "virtio-blk-pci,drive=root" in devices
    assert "virtio-blk-pci,drive=seed" in devices
    assert "virtserialport,bus=vser0.0,chardev=ctl,name=org.clod.ctl" in devices
    assert any(d.startswith("vhost-user-fs-pci,chardev=fs0,tag=clod0") for d in devices)
    assert "stream,id=net0,server=off,addr.type=fd,addr.str=7" in option_values(cmd, "-netdev")
    assert "-no-reboot" in cmd
    # QEMU's own user network only restricted: its gateway is the host's 127.0.0.1.
    assert all("restrict=on" in v for v in option_values(cmd, "-netdev") if v.startswith("user"))


def test_kvm_argv_uses_the_host_cpu(tmp_path):
    cmd = argv.qemu_argv(spec(tmp_path, accel="kvm"))
    assert option_values(cmd, "-cpu") == ["host"]


def test_kernel_command_lines(tmp_path):
    fast = argv.kernel_cmdline(spec(tmp_path))
    assert "init=/usr/local/sbin/clod-init" in fast.split()
    assert "clod.shares=clod0=my%20project" in fast.split()
    plain = argv.kernel_cmdline(spec(tmp_path, plain_boot=True))
    assert "init=" not in plain and "clod.shares" not in plain and "quiet" not in plain


def test_show_prints_one_option_per_line(tmp_path):
    text = argv.show(argv.qemu_argv(spec(tmp_path)))
    lines = text.splitlines()
    assert lines[0] == "qemu-system-x86_64 \\"
    assert any(line.strip().startswith("-smp 2") for line in lines)


def test_passt_never_maps_the_gateway_to_the_host():
    cmd = net.passt_argv(5)
    assert "--no-map-gw" in cmd
    assert option_values(cmd, "--tcp-ports") == ["none"]


def test_ssh_comes_in_on_a_restricted_user_network(tmp_path):
    netdevs = option_values(argv.qemu_argv(spec(tmp_path)), "-netdev")
    ssh = [n for n in netdevs if n.startswith("user,")]
    assert ssh == ["user,id=ssh0,restrict=on,ipv6=off,net=10.0.3.0/24,hostfwd=tcp:127.0.0.1:2222-10.0.3.15:22"]


def test_virtiofsd_runs_as_the_guest_user_in_a_user_namespace():
    cmd = virtiofs.virtiofsd_argv("/usr/lib/qemu/virtiofsd", Path("/s.sock"), Path("/src/my project"))
    assert cmd[:6] == ["unshare", "--user", "--map-user=1000", "--map-group=1000", "--keep-caps", "--"]
    assert "source=/src/my project" in option_values(cmd, "-o")


@pytest.mark.parametrize(
    "returncode, output, works",
    [
        (0, "[    0.000000] Linux version 6.1.0\nKernel panic - not syncing: VFS", True),
        (None, "", False),
        (None, "Linux version 6.1.0", False),
        (1, "KVM internal error. Suberror: 1\nemulation failure", False),
        (0, "Linux version 6.1\nKVM internal error", False),
        (1, "qemu-system-x86_64: failed to initialize kvm: Permission denied", False),
    ],
)
def test_kvm_judge(returncode, output, works):
    assert kvm.judge(returncode, output)[0] is works


def test_kvm_verdict_is_probed_once_per_host(tmp_path, monkeypatch):
    monkeypatch.delenv("CLOD_ACCEL", raising=False)
    cache = tmp_path / "kvm.json"
    calls = []

    def probe(kernel):
        calls.append(kernel)
        return False, "no kernel output within 10s"

    assert kvm.kvm_works(Path("k"), path=cache, key="host-a 6.1", probe=probe) is False
    assert kvm.kvm_works(Path("k"), path=cache, key="host-a 6.1", probe=probe) is False
    assert len(calls) == 1
    assert json.loads(cache.read_text())["reason"] == "no kernel output within 10s"
    # Another host (or kernel) probes afresh.
    assert kvm.kvm_works(Path("k"), path=cache, key="host-b 6.1", probe=lambda k: (True, "ok")) is True
    assert kvm.kvm_works(Path("k"), path=cache, key="host-b 6.1", probe=probe) is True
    assert len(calls) == 1


def test_clod_accel_overrides_the_probe(tmp_path, monkeypatch):
    monkeypatch.setenv("CLOD_ACCEL", "tcg")
    assert kvm.kvm_works(Path("k"), path=tmp_path / "kvm.json", key="h", probe=lambda k: pytest.fail("probed")) is False


def test_virtiofsd_source_with_commas_and_backslashes_is_escaped_for_fuse():
    from clod.qemu import virtiofs

    argv = virtiofs.virtiofsd_argv("/usr/lib/qemu/virtiofsd", Path("/s.sock"), Path("/p/a,b\\c"))
    assert "source=/p/a\\,b\\\\c" in argv
