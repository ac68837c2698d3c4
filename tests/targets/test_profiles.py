"""Every shipped device profile loads; a broken one reports every problem at once; overrides win in order."""

from __future__ import annotations

import pytest

from targets import BACKENDS
from targets.errors import ConfigError
from targets.profiles import PROFILE_DIR, list_profiles, load_profile

SHIPPED = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def test_shipped_profiles_include_every_documented_board():
    assert {"local", "jetson-orin-nano", "jetson-nano", "rpi4", "rpi5"} <= set(SHIPPED)
    readme = (PROFILE_DIR / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_profile_loads_with_known_backends(name):
    prof = load_profile(name)
    assert prof.name == name and prof.backends and set(prof.backends) <= set(BACKENDS)
    assert name in list_profiles()
    assert prof.bench.min_iterations >= 100 and prof.bench.warmup > 0


@pytest.mark.parametrize("name", ["jetson-orin-nano", "jetson-nano"])
def test_jetson_profile_prefers_tensorrt_and_reads_power_mode_and_clocks(name):
    prof = load_profile(name)
    assert prof.runtime.onnx_providers[0] == "TensorrtExecutionProvider"
    assert prof.runtime.onnx_providers[-1] == "CPUExecutionProvider"
    assert {"onnx-fp16", "onnx-int8"} <= set(prof.backends)
    assert prof.telemetry.power_mode == "nvpmodel -q" and prof.telemetry.clocks == "jetson_clocks --show"
    assert prof.connection.transport == "ssh" and prof.arch == "aarch64"


@pytest.mark.parametrize("name", ["rpi4", "rpi5"])
def test_pi_profile_prefers_tflite_int8_and_reads_throttling(name):
    prof = load_profile(name)
    assert prof.backends[:2] == ["tflite-int8", "onnx-int8"]
    assert prof.telemetry.throttled == "vcgencmd get_throttled" and prof.telemetry.thermal


def test_bad_profile_reports_every_problem_at_once(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nbackends: [onnx-int9]\nruntime: {threads: 0}\nbench: {warmup: -1}\nspeed: fast\n"
                   "connection: {transport: telnet}\n")
    with pytest.raises(ConfigError) as info:
        load_profile(str(bad))
    problems = info.value.problems
    assert info.value.exit_code == 2 and len(problems) == 5, problems
    joined = "\n".join(problems)
    for key in ("backends", "runtime.threads", "bench.warmup", "speed", "connection.transport"):
        assert f"{bad}: {key}" in joined


def test_ssh_profile_requires_host_when_none_given(tmp_path):
    f = tmp_path / "nohost.yaml"
    f.write_text("name: nohost\nconnection: {transport: ssh}\nbackends: [onnx-fp32]\n")
    with pytest.raises(ConfigError, match="connection.host is required"):
        load_profile(str(f))


def test_overrides_beat_environment_beat_file(monkeypatch):
    monkeypatch.setenv("EDGEPIPE_RPI5_HOST", "10.0.0.7")
    monkeypatch.setenv("EDGEPIPE_RPI5_PORT", "2222")
    prof = load_profile("rpi5", {"host": "10.0.0.8", "user": None})
    assert (prof.connection.host, prof.connection.port, prof.connection.user) == ("10.0.0.8", 2222, "pi")


def test_relative_workdir_rejected_with_fix(tmp_path):
    f = tmp_path / "rel.yaml"
    f.write_text("name: rel\nworkdir: ~/edgepipe\nbackends: [onnx-fp32]\n")
    with pytest.raises(ConfigError) as info:
        load_profile(str(f))
    assert "workdir" in str(info.value) and "absolute" in str(info.value)


@pytest.mark.parametrize("workdir", ["/tmp/edge\npipe", "/tmp/a\x1b[2Jb", "/", "/tmp/../etc"])
def test_profile_refuses_a_workdir_with_control_characters_or_no_folder_of_its_own(tmp_path, workdir):
    import json

    prof = tmp_path / "p.yaml"
    prof.write_text(f"name: p\npython: current\nworkdir: {json.dumps(workdir)}\nbackends: [onnx-fp32]\n")
    with pytest.raises(ConfigError, match="workdir"):
        load_profile(str(prof))
