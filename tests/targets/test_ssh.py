"""The SSH transport against a real OpenSSH server on loopback (tests/sshd.py): trust, transfers, timeouts, locks."""

from __future__ import annotations

import _thread
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from targets import doctor as doctor_mod
from targets.artifact import Artifact
from targets.device import benchmark
from targets.errors import ConfigError, DeviceError, HostKeyError, RemoteCommandError, TransferError
from targets.lock import device_lock
from targets.profiles import load_profile
from targets.ssh import SSHTransport
from targets.transport import open_transport
from tests.sshd import CuttableProxy, keygen

pytestmark = pytest.mark.ssh


def tiny_onnx(path: Path) -> Path:
    """A real 1x16 -> 4 Gemm + Relu model, built without torch so the fixture costs milliseconds."""
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [16, 4], rng.standard_normal((16, 4)).astype(np.float32).ravel())
    b = helper.make_tensor("b", TensorProto.FLOAT, [4], np.zeros(4, np.float32))
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture
def profile(sshd, tmp_path):
    return load_profile(str(sshd.profile("loop", tmp_path)))


@pytest.fixture
def transport(profile):
    tr = open_transport(profile)
    yield tr
    tr.close()


def workdir_entries(profile) -> list[str]:
    wd = Path(profile.workdir)
    return sorted(p.name for p in wd.iterdir()) if wd.exists() else []


def cmdlines_mentioning(text: str) -> dict[int, str]:
    """Command lines containing ``text`` by pid (the device is this host, so /proc shows its processes)."""
    found = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            raw = cmdline.read_bytes()
        except OSError:  # the process ended while we looked
            continue
        if text.encode() in raw:
            found[int(cmdline.parent.name)] = raw.replace(b"\0", b" ").decode(errors="replace")
    return found


def processes_mentioning(text: str) -> list[int]:
    return sorted(cmdlines_mentioning(text))


def interrupt_when(condition, limit_s: float = 30.0) -> None:
    """Ctrl-C for the main thread as soon as ``condition()`` holds (polled in a helper thread)."""

    def watch() -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if condition():
                _thread.interrupt_main()
                return
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()


@pytest.mark.onnx
def test_benchmark_returns_valid_record_when_onnx_runs_over_ssh(profile, tmp_path):
    model = tiny_onnx(tmp_path / "tiny model's [v1];.onnx")
    x = np.random.default_rng(1).standard_normal((10, 16)).astype(np.float32)
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=x, y=np.zeros(10, np.int64))
    outputs = tmp_path / "outputs.npz"
    record = benchmark(profile, Artifact.from_files(model, backend="onnx", precision="fp32"), inputs, outputs=outputs)
    lat = record["latency_ms"]
    assert record["valid"] is True, record["invalid_reasons"]
    assert lat["n"] >= profile.bench.min_iterations and 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert record["runtime"].startswith("onnxruntime ")
    assert record["environment"]["providers"] == ["CPUExecutionProvider"]
    assert record["environment"]["threads"] == 1 and record["environment"]["kernel"]
    assert set(record["state"]) == {"before", "after"} and record["outputs"]["n"] == 10
    with np.load(outputs) as out:   # the raw outputs came back over SFTP for the host to score
        assert out["out0"].shape[0] == 10
    assert workdir_entries(profile) == []  # job folder removed, lock released


def test_device_python_cannot_import_torch_or_edgepipe(sshd, transport):
    res = transport.run([str(sshd.python), "-c", "import targets"], 30)
    assert res.exit_status != 0 and "not available on this test device" in res.stderr
    assert transport.run([str(sshd.python), "-c", "import torch"], 30).exit_status != 0


def test_connect_refused_with_fingerprint_when_host_unknown(sshd, tmp_path):
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    prof = load_profile(str(sshd.profile("unknown", tmp_path, known_hosts=str(empty))))
    model = tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(HostKeyError) as info:
        benchmark(prof, Artifact.from_files(model, backend="onnx", precision="fp32"))
    assert "SHA256:" in str(info.value) and "--trust" in str(info.value) and info.value.exit_code == 4
    assert workdir_entries(prof) == []  # nothing was created or uploaded


def test_connect_refused_when_host_key_changed(sshd, tmp_path):
    other = tmp_path / "other_key"
    line = " ".join(keygen(other).split()[:2])
    changed = tmp_path / "known_hosts_changed"
    changed.write_text(f"[127.0.0.1]:{sshd.port} {line}\n")
    prof = load_profile(str(sshd.profile("changed", tmp_path, known_hosts=str(changed))))
    with pytest.raises(HostKeyError, match="CHANGED") as info:
        benchmark(prof, Artifact.from_files(tiny_onnx(tmp_path / "m.onnx"), backend="onnx", precision="fp32"))
    assert "ssh-keygen" in (info.value.hint or "")
    assert workdir_entries(prof) == []


def test_connect_fails_with_device_error_when_user_key_wrong(sshd, tmp_path):
    stranger = tmp_path / "stranger"
    keygen(stranger)
    prof = load_profile(str(sshd.profile("wrongkey", tmp_path, key=str(stranger))))
    tr = open_transport(prof)
    with pytest.raises(DeviceError, match="authentication failed") as info:
        tr.run(["true"], 10)
    assert info.value.exit_code == 4 and not isinstance(info.value, HostKeyError)


def test_run_drains_both_streams_when_command_writes_10mb_each(transport):
    from targets.remote import MAX_OUTPUT_BYTES

    script = "import sys; sys.stdout.write('o' * 10_000_000); sys.stderr.write('e' * 10_000_000)"
    res = transport.run(["python3", "-c", script], 60)
    # both drained to the end (no hang), each kept to its capped tail
    assert res.ok and len(res.stdout) == MAX_OUTPUT_BYTES and len(res.stderr) == MAX_OUTPUT_BYTES


def test_run_kills_remote_process_when_command_hangs(transport, tmp_path):
    pidfile = tmp_path / "hung.pid"
    start = time.monotonic()
    with pytest.raises(RemoteCommandError, match="timed out") as info:
        transport.run(["sh", "-c", 'echo $$ > "$1"; exec sleep 300', "sh", str(pidfile)], timeout=2)
    assert time.monotonic() - start < 15 and info.value.exit_code == 4
    pid = int(pidfile.read_text())
    time.sleep(0.5)
    assert not Path(f"/proc/{pid}").exists(), "the hung command still runs on the device"


def test_run_kills_remote_process_when_interrupted(transport, tmp_path):
    pidfile = tmp_path / "interrupted.pid"
    interrupt_when(pidfile.exists)
    with pytest.raises(KeyboardInterrupt):
        transport.run(["sh", "-c", 'echo $$ > "$1"; exec sleep 300', "sh", str(pidfile)], timeout=120)
    pid = int(pidfile.read_text())
    for _ in range(50):
        if not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists(), "Ctrl-C left the command running on the device"


def test_run_reports_failure_without_retry_when_command_exits_nonzero(transport, tmp_path):
    counter = tmp_path / "count"
    res = transport.run(["sh", "-c", 'echo x >> "$1"; exit 3', "sh", str(counter)], 10)
    assert res.exit_status == 3 and counter.read_text() == "x\n"


def test_put_keeps_odd_names_intact_when_quotes_spaces_and_semicolons(transport, profile, tmp_path):
    job = transport.make_job_dir(profile.workdir)
    name = "it's a \"model\"; rm -rf $HOME `id`.onnx"
    src = tmp_path / name
    src.write_bytes(os.urandom(300_000))
    transport.put(src, f"{job}/{name}")
    assert (Path(job) / name).read_bytes() == src.read_bytes()
    assert sorted(p.name for p in Path(job).iterdir()) == [".edgepipe-job", name]  # no .part left behind
    back = tmp_path / "back.bin"
    transport.get(f"{job}/{name}", back)
    assert back.read_bytes() == src.read_bytes()
    transport.remove_tree(job)
    assert not Path(job).exists()


def test_put_raises_transfer_error_when_checksum_never_matches(transport, profile, tmp_path, monkeypatch):
    job = transport.make_job_dir(profile.workdir)
    src = tmp_path / "m.bin"
    src.write_bytes(b"payload")
    monkeypatch.setattr(transport, "remote_sha256", lambda path: "0" * 64)  # the device reports corruption
    with pytest.raises(TransferError, match="corrupted twice"):
        transport.put(src, f"{job}/m.bin")
    assert [p.name for p in Path(job).iterdir()] == [".edgepipe-job"]


def test_put_fails_cleanly_when_server_vanishes_mid_upload(sshd, tmp_path):
    proxy = CuttableProxy(sshd.port, cut_after_bytes=3_000_000)
    kh = sshd.known_hosts_for(proxy.port, tmp_path / "kh_proxy")
    prof = load_profile(str(sshd.profile("flaky", tmp_path, port=proxy.port, known_hosts=str(kh))))
    tr = SSHTransport.from_profile(prof, retries=1, backoff_s=0.1)
    job = tr.make_job_dir(prof.workdir)
    src = tmp_path / "big.onnx"
    src.write_bytes(os.urandom(20_000_000))
    with pytest.raises(DeviceError) as info:
        tr.put(src, f"{job}/big.onnx")
    tr.close()
    assert info.value.exit_code == 4 and isinstance(info.value, TransferError)
    assert not (Path(job) / "big.onnx").exists()


@pytest.mark.onnx
def test_benchmark_removes_job_folder_when_runner_fails(profile, tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not an onnx model")
    with pytest.raises(RemoteCommandError, match="runner failed"):
        benchmark(profile, Artifact.from_files(bad, backend="onnx", precision="fp32"))
    assert workdir_entries(profile) == []


@pytest.mark.onnx
def test_benchmark_cleans_job_folder_and_remote_runner_when_interrupted(sshd, tmp_path):
    path = sshd.profile("ctrlc", tmp_path)
    path.write_text(path.read_text().replace("min_seconds: 0.05", "min_seconds: 60").replace(
        "max_seconds: 10", "max_seconds: 90"))
    prof = load_profile(str(path))
    art = Artifact.from_files(tiny_onnx(tmp_path / "m.onnx"), backend="onnx", precision="fp32")
    interrupt_when(lambda: any("bench.py --artifact" in c for c in cmdlines_mentioning(prof.workdir).values()))
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        benchmark(prof, art)
    assert time.monotonic() - start < 30
    assert workdir_entries(prof) == []  # job folder gone, lock released
    deadline = time.monotonic() + 5  # SIGTERM is asynchronous; the runner would otherwise live for 60 s
    while processes_mentioning(prof.workdir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_mentioning(prof.workdir) == [], "the runner kept running on the device after Ctrl-C"


def test_run_recovers_when_connection_dropped_between_commands(sshd, tmp_path):
    proxy = CuttableProxy(sshd.port)
    kh = sshd.known_hosts_for(proxy.port, tmp_path / "kh_blip")
    prof = load_profile(str(sshd.profile("blip", tmp_path, port=proxy.port, known_hosts=str(kh))))
    tr = SSHTransport.from_profile(prof, retries=2, backoff_s=0.1)
    try:
        assert tr.run(["echo", "one"], 10).stdout == "one\n"
        first = tr._client
        proxy.drop_connections()
        time.sleep(0.2)
        assert tr.run(["echo", "two"], 10).stdout == "two\n"
        assert tr._client is not first  # it reconnected instead of failing the job
    finally:
        tr.close()
        proxy.cut()


def test_lock_serialises_jobs_when_two_threads_target_one_device(profile):
    spans: list[tuple[float, float]] = []

    def job() -> None:
        tr = open_transport(profile)  # one transport per thread, as the fleet runner does
        try:
            with device_lock(tr, profile.workdir, lease_s=60, wait_s=30, poll_s=0.2):
                t0 = time.monotonic()
                tr.run(["sleep", "1"], 10)
                spans.append((t0, time.monotonic()))
        finally:
            tr.close()

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (a0, a1), (b0, b1) = sorted(spans)
    assert len(spans) == 2 and b0 >= a1, f"jobs overlapped: {spans}"


def test_lock_breaks_lease_when_holder_crashed(profile, transport):
    Path(profile.workdir).mkdir(parents=True, exist_ok=True)
    os.symlink("crashed@elsewhere:1:dead 1", Path(profile.workdir) / ".lock")  # expired in 1970
    with device_lock(transport, profile.workdir, lease_s=60, wait_s=0, poll_s=0.1) as owner:
        assert os.readlink(Path(profile.workdir) / ".lock").startswith(owner)
    assert not (Path(profile.workdir) / ".lock").exists()


def test_ssh_config_alias_and_two_hop_proxyjump_honoured(sshd, tmp_path, monkeypatch):
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host bastion\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
                   f"  IdentityFile {sshd.user_key}\n"
                   f"Host board\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
                   f"  IdentityFile {sshd.user_key}\n  ProxyJump bastion,{sshd.user}@127.0.0.1:{sshd.port}\n"
                   f"Host 127.0.0.1\n  IdentityFile {sshd.user_key}\n")
    monkeypatch.setenv("EDGEPIPE_SSH_CONFIG", str(cfg))
    prof = load_profile(str(sshd.profile("alias", tmp_path, host="board", port=None, user=None, key=None)))
    tr = open_transport(prof)
    try:
        assert tr.run(["echo", "via", "bastion"], 10).stdout == "via bastion\n"
        assert len(tr._hops) == 2  # really went through both jump hosts
    finally:
        tr.close()


@pytest.mark.onnx
def test_doctor_trusts_unknown_key_only_after_confirmation(sshd, tmp_path):
    kh = tmp_path / "kh_doctor"
    prof = load_profile(str(sshd.profile("doc", tmp_path, known_hosts=str(kh))))
    shown: list[str] = []
    refused = doctor_mod.doctor(prof, trust=True, confirm=lambda msg: shown.append(msg) or False)
    assert [c.name for c in refused] == ["host key"] and not refused[0].ok and not kh.exists()
    assert "SHA256:" in shown[0]
    checks = doctor_mod.doctor(prof, trust=True, confirm=lambda msg: True)
    by_name = {c.name: c for c in checks}
    assert by_name["host key"].ok and f"[127.0.0.1]:{sshd.port}" in kh.read_text()
    assert by_name["reachable"].ok and by_name["numpy"].ok and by_name["runtime onnxruntime"].ok
    assert by_name["execution providers"].ok and by_name["free disk"].ok
    again = doctor_mod.doctor(prof)  # now known: no confirmation needed, and nothing appended twice
    assert all(c.ok for c in again if c.name in ("host key", "reachable")) and kh.read_text().count("\n") == 1


@pytest.mark.onnx
def test_doctor_reports_missing_provider_when_profile_asks_for_cuda(sshd, tmp_path):
    path = sshd.profile("gpu", tmp_path)
    text = path.read_text().replace("- CPUExecutionProvider", "- CUDAExecutionProvider\n  - CPUExecutionProvider")
    path.write_text(text)
    checks = {c.name: c for c in doctor_mod.doctor(load_profile(str(path)))}
    assert not checks["execution providers"].ok and "CUDAExecutionProvider" in checks["execution providers"].detail


def test_sshd_fixture_really_is_openssh(sshd):
    out = subprocess.run(["ssh-keyscan", "-p", str(sshd.port), "127.0.0.1"], capture_output=True, text=True,
                         timeout=10).stdout
    assert sshd.host_key_line.split()[1] in out


def test_pid_marker_split_drops_login_noise_when_shell_prints_banner():
    from targets.remote import split_pid

    assert split_pid(b"Welcome to the board!\n__edgepipe_pid=4242\n{\"ok\": 1}\n") == (b"4242", b"{\"ok\": 1}\n")
    assert split_pid(b"no marker at all\n") == (b"", b"no marker at all\n")


def test_doctor_refuses_to_trust_when_host_key_changed(sshd, tmp_path):
    changed = tmp_path / "kh_changed"
    changed.write_text(f"[127.0.0.1]:{sshd.port} {' '.join(keygen(tmp_path / 'impostor').split()[:2])}\n")
    before = changed.read_text()
    checks = doctor_mod.doctor(load_profile(str(sshd.profile("doc2", tmp_path, known_hosts=str(changed)))),
                               trust=True, confirm=lambda msg: True)
    assert [(c.name, c.ok) for c in checks] == [("host key", False)] and "CHANGED" in checks[0].detail
    assert changed.read_text() == before


def test_doctor_names_numpy_when_device_lacks_it(sshd, tmp_path):
    path = sshd.profile("nonumpy", tmp_path)
    path.write_text(path.read_text().replace(str(sshd.python), str(sshd.python_without("numpy"))))
    checks = doctor_mod.doctor(load_profile(str(path)))
    assert checks[-1].name == "numpy" and not checks[-1].ok and "install" in checks[-1].detail
    assert [c.name for c in checks if c.ok] == ["host key", "reachable", "device lock"]


def edgepipe(*args: str) -> subprocess.CompletedProcess[str]:
    root = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=120,
                          cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, check=False)


@pytest.mark.onnx
def test_cli_bench_exits_4_without_traceback_when_host_unknown(sshd, tmp_path):
    prof = sshd.profile("cli", tmp_path)
    empty = tmp_path / "kh_none"
    empty.write_text("")
    res = edgepipe("bench", str(tiny_onnx(tmp_path / "m.onnx")), "--device", str(prof), "--known-hosts", str(empty))
    assert res.returncode == 4 and "Traceback" not in res.stderr
    assert "SHA256:" in res.stderr and "--trust" in res.stderr
    assert not (tmp_path / "work").exists() or list((tmp_path / "work").iterdir()) == []


@pytest.mark.onnx
def test_cli_bench_exits_4_when_device_vanishes_mid_upload(sshd, tmp_path):
    proxy = CuttableProxy(sshd.port, cut_after_bytes=2_000_000)
    kh = sshd.known_hosts_for(proxy.port, tmp_path / "kh_cli_proxy")
    prof = sshd.profile("vanish", tmp_path, port=proxy.port, known_hosts=str(kh), connect_timeout=2)
    big = tmp_path / "big.onnx"
    big.write_bytes(os.urandom(8_000_000))  # not a model: the upload is cut long before anything would load it
    res = edgepipe("bench", str(big), "--device", str(prof))
    assert res.returncode == 4 and "Traceback" not in res.stderr and "big.onnx" in res.stderr
    assert list((tmp_path / "work").glob("job-*/big.onnx")) == []


def test_missing_key_file_is_config_error_when_profile_names_it(sshd, tmp_path):
    prof = load_profile(str(sshd.profile("nokey", tmp_path, key=str(tmp_path / "nope"))))
    tr = open_transport(prof)
    with pytest.raises(ConfigError, match="connection.key") as info:
        tr.run(["true"], 10)
    assert info.value.exit_code == 2


def test_a_key_file_that_cannot_be_parsed_is_a_config_error_at_once(sshd, tmp_path):
    bad = tmp_path / "id_broken"
    bad.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot base64 at all\n-----END OPENSSH PRIVATE KEY-----\n")
    prof = load_profile(str(sshd.profile("badkey", tmp_path, key=str(bad))))
    tr = SSHTransport.from_profile(prof, backoff_s=2.0)
    start = time.monotonic()
    with pytest.raises(ConfigError, match="is not a private key edgepipe can read") as info:
        tr.run(["true"], 10)
    assert info.value.exit_code == 2 and time.monotonic() - start < 1.5  # no retries with back-off


def test_our_own_timeout_kill_is_reported_as_a_timeout_not_out_of_memory(transport):
    # the command ignores SIGTERM, so `timeout -k` ends it (and itself) with SIGKILL: no exit status comes back
    with pytest.raises(RemoteCommandError, match="timed out after 1s and edgepipe's timeout killed it") as info:
        transport.run(["sh", "-c", "trap '' TERM; sleep 30"], 1)
    assert "out of memory" not in str(info.value)
