"""Targets and devices are YAML files validated with clear, located errors."""

from __future__ import annotations

import textwrap

import pytest

from edgeprune.config.devices import get_device, load_devices
from edgeprune.config.targets import get_target, list_targets
from edgeprune.errors import ConfigError


def test_the_shipped_targets_cover_x86_arm_and_embedded_gpus():
    names = {t.name for t in list_targets()}
    assert {"host", "x86-avx2", "rpi4", "jetson-orin-nano", "mali-g610"} <= names
    rpi4 = get_target("rpi4")
    assert (rpi4.arch, rpi4.triple, rpi4.cpu, rpi4.cores) == ("aarch64", "aarch64-linux-gnu", "cortex-a72", 4)
    assert "+neon" in rpi4.features
    assert get_target("jetson-orin-nano").cuda_arch == "sm_87"
    assert get_target("mali-g610").accelerator == "opencl"


def test_host_target_detects_this_machine():
    host = get_target("host")
    assert host.is_native and host.is_host
    assert host.num_cores() >= 1
    assert host.fp32_lanes() in (4, 8, 16)
    assert host.peak_gflops() > 0


def test_unknown_target_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown target 'rpi5'.*Choose from: .*rpi4"):
        get_target("rpi5")


def test_bad_target_field_names_file_line_and_field(tmp_path, monkeypatch):
    (tmp_path / "board.yaml").write_text(textwrap.dedent("""\
        name: board
        arch: aarch64
        triple: aarch64-linux-gnu
        cpu: cortex-a53
        cores: four
        backends: [tvm]
    """))
    monkeypatch.setenv("EDGEPRUNE_TARGETS_DIR", str(tmp_path))
    with pytest.raises(ConfigError) as exc:
        get_target("board")
    msg = str(exc.value)
    assert "board.yaml:5" in msg and "field 'cores'" in msg


def test_unknown_backend_and_unknown_key_are_rejected(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("name: t\narch: x86_64\ntriple: x\ncpu: auto\nbackends: [tensorrt]\nturbo: true\n")
    with pytest.raises(ConfigError) as exc:
        get_target(str(p))
    msg = str(exc.value)
    assert "tensorrt" in msg and "t.yaml:5" in msg
    assert "field 'turbo'" in msg and "t.yaml:6" in msg


def test_yaml_syntax_error_has_a_line(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: broken\narch: [x86_64\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+: invalid YAML"):
        get_target(str(p))


def test_devices_default_to_local_and_validate_ssh(tmp_path):
    assert [d.name for d in load_devices()] == ["local"]
    p = tmp_path / "devices.yaml"
    p.write_text("devices:\n  - name: pi\n    kind: ssh\n    port: 99999\n")
    with pytest.raises(ConfigError) as exc:
        load_devices(p)
    assert "devices.yaml:4" in str(exc.value) and "port" in str(exc.value)
    p.write_text("devices:\n  - name: pi\n    kind: ssh\n    host: 127.0.0.1\n    user: pi\n")
    assert get_device("pi", p).host == "127.0.0.1"
    with pytest.raises(ConfigError, match="unknown device 'nope'.*Choose from: local, pi"):
        get_device("nope", p)


def test_shipped_targets_come_from_the_package_and_user_ones_win(tmp_path, monkeypatch):
    """Lookup order: $EDGEPRUNE_TARGETS_DIR, ./targets, then the package's own targets."""
    from edgeprune.paths import package_data

    shipped = package_data("targets")
    assert get_target("rpi4").source == str(shipped / "rpi4.yaml")
    mine = tmp_path / "targets"
    mine.mkdir()
    (mine / "rpi4.yaml").write_text((shipped / "rpi4.yaml").read_text().replace("cores: 4", "cores: 2"))
    monkeypatch.chdir(tmp_path)
    assert get_target("rpi4").num_cores() == 2  # ./targets replaces the shipped file
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    (env_dir / "rpi4.yaml").write_text((shipped / "rpi4.yaml").read_text().replace("cores: 4", "cores: 3"))
    monkeypatch.setenv("EDGEPRUNE_TARGETS_DIR", str(env_dir))
    assert get_target("rpi4").num_cores() == 3  # and $EDGEPRUNE_TARGETS_DIR replaces both
    assert {"host", "x86-avx2", "jetson-orin-nano"} <= {t.name for t in list_targets()}


def test_auto_simd_fields_are_only_for_the_host(tmp_path):
    p = tmp_path / "board.yaml"
    p.write_text("name: board\narch: aarch64\ntriple: aarch64-linux-gnu\ncpu: cortex-a53\n"
                 "vector_bits: auto\nbackends: [tvm]\n")
    with pytest.raises(ConfigError, match=r"vector_bits: 'auto' is detected on this machine"):
        get_target(str(p))
    p.write_text("name: board\narch: aarch64\ntriple: aarch64-linux-gnu\ncpu: cortex-a53\nbackends: [tvm]\n")
    board = get_target(str(p))
    assert (board.vector_bits, board.fma_units) == (128, 2)  # a board file that leaves them out
