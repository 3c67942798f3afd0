"""Device profiles, fit/roofline math, percentiles and the `bench` command's one-line errors (fast)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from arte_edge.bench import devices
from arte_edge.bench.core import percentile
from arte_edge.bench.devices import DeviceProfile, known_devices, load_device
from arte_edge.bench.remote import SshTarget
from arte_edge.bench.roofline import (
    ModelShape,
    assess,
    decode_bytes_per_token,
    estimate,
    gguf_shape,
    hf_shape,
    kv_cache_bytes,
    roofline_tok_s,
    weights_read_per_token,
)
from arte_edge.errors import ArteError

REFERENCE = ["jetson-orin-nano-8gb", "raspberry-pi-5", "snapdragon-8-gen-3", "x86-avx2-laptop"]
GIB = 2**30


@pytest.fixture
def fake_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> DeviceProfile:
    """host_profile() without measuring: a fixed 2-core, 20 GB/s machine (cache in tmp)."""
    monkeypatch.setenv("ARTE_EDGE_CACHE", str(tmp_path / "cache"))
    profile = devices.validate_profile({
        "name": "host", "cpu": {"model": "Test CPU", "cores": 2, "threads": 2, "isa": ["avx2"]},
        "memory": {"total_gib": 16, "usable_gib": 12, "bandwidth_gbs": 20, "bandwidth_source": "measured"},
        "os": "Linux", "measured": True}, "test")
    monkeypatch.setattr(devices, "measure_host", lambda bandwidth_mib=256: profile)
    return profile


@pytest.mark.parametrize("name", REFERENCE)
def test_reference_profiles_load(name: str) -> None:
    profile = load_device(name)
    assert profile.name == name and not profile.measured
    assert 0 < profile.memory.usable_gib <= profile.memory.total_gib
    assert profile.memory.bandwidth_source == "datasheet" and profile.memory.bandwidth_note
    assert 0 < profile.cpu.threads <= profile.cpu.cores and profile.cpu.isa


def test_isa_and_cores_of_arm_profiles() -> None:
    assert load_device("jetson-orin-nano-8gb").cpu.cores == 6
    assert "i8mm" in load_device("snapdragon-8-gen-3").cpu.isa
    assert "i8mm" not in load_device("raspberry-pi-5").cpu.isa
    assert "avx512" not in load_device("x86-avx2-laptop").cpu.isa


def test_known_devices_include_all_files() -> None:
    assert set(REFERENCE) | {"host"} <= set(known_devices())


def test_unknown_device_lists_known_ones() -> None:
    with pytest.raises(ArteError, match=r"unknown device 'pi-9'; known devices: .*raspberry-pi-5"):
        load_device("pi-9")


def test_missing_yaml_path() -> None:
    with pytest.raises(ArteError, match="device file not found"):
        load_device("/nonexistent/board.yaml")


def test_bad_keys_are_named(tmp_path: Path) -> None:
    data = yaml.safe_load(Path(load_device("raspberry-pi-5").source).read_text())
    data["cpu"]["frequency"] = "2.4 GHz"
    data["memory"]["bandwidth_gbs"] = -1
    del data["memory"]["usable_gib"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ArteError) as info:
        load_device(path)
    message = str(info.value)
    assert "unknown key 'cpu.frequency'" in message
    assert "'memory.bandwidth_gbs'" in message and "missing key 'memory.usable_gib'" in message
    assert "\n" not in message


def test_profile_is_frozen() -> None:
    profile = load_device("raspberry-pi-5")
    with pytest.raises(Exception, match="frozen"):
        profile.name = "other"  # type: ignore[misc]


def test_host_yaml_is_measured_and_cached(fake_host: DeviceProfile, monkeypatch: pytest.MonkeyPatch) -> None:
    host = load_device("host")
    assert host.measured and host.memory.bandwidth_gbs == 20 and host.memory.bandwidth_source == "measured"
    assert host.description.startswith("The machine")
    calls = []
    monkeypatch.setattr(devices, "measure_host", lambda bandwidth_mib=256: calls.append(1) or fake_host)
    devices.host_profile()
    assert calls == []  # served from the cache
    devices.host_profile(refresh=True)
    assert calls == [1]


def test_host_overrides_from_yaml(fake_host: DeviceProfile, tmp_path: Path) -> None:
    path = tmp_path / "my-host.yaml"
    path.write_text("name: my-host\nmeasured: true\ncpu:\n  threads: 1\n")
    profile = load_device(path)
    assert profile.name == "my-host" and profile.cpu.threads == 1 and profile.cpu.cores == 2


def test_host_measurements_parse_this_machine() -> None:
    assert devices.physical_cores() >= 1 and devices.available_cpus() >= 1
    assert devices.meminfo().get("MemTotal", 0) > 0
    assert all(isinstance(f, str) for f in devices.isa_features())


def test_copy_bandwidth_is_positive_small() -> None:
    assert devices.copy_bandwidth_gbs(size_mib=8, threads=2, repeats=2) > 0.1


# ---- roofline and fit ----------------------------------------------------------------------------------

SHAPE = ModelShape(weight_bytes=1_000_000_000, weight_read_bytes=900_000_000, n_layers=24, n_kv_heads=2,
                   head_dim=64, context_length=32768, source="synthetic")


def test_kv_cache_math() -> None:
    per_position = 2 * 24 * 2 * 64 * 2  # K and V, layers, kv heads, head dim, f16
    assert SHAPE.kv_bytes_per_position() == per_position
    assert kv_cache_bytes(SHAPE, 4096) == per_position * 4096
    assert kv_cache_bytes(SHAPE, 4096, "f32") == 2 * per_position * 4096
    assert decode_bytes_per_token(SHAPE, 100) == 900_000_000 + per_position * 100
    with pytest.raises(ArteError, match="unknown KV cache type"):
        kv_cache_bytes(SHAPE, 1, "q2")


def test_roofline_and_fit_on_a_profile() -> None:
    pi = load_device("raspberry-pi-5")
    est = estimate(pi, SHAPE, context=2048, decode_position=0, overhead_bytes=0)
    assert est.label == "estimate"
    assert est.decode_tok_s == pytest.approx(17.1e9 / 900_000_000)
    assert est.total_bytes == 1_000_000_000 + kv_cache_bytes(SHAPE, 2048) and est.fits
    default = estimate(pi, SHAPE)
    assert default.context == 4096 and default.decode_position == 2048
    assert default.overhead_bytes == pytest.approx(256 * 2**20 + 0.1 * 1e9)
    huge = ModelShape(8 * GIB, 8 * GIB, 80, 8, 128, 8192, "synthetic")
    assert not estimate(pi, huge).fits
    assert roofline_tok_s(10e9, 1e9) == 10.0


def test_assess_ratio() -> None:
    pi = load_device("raspberry-pi-5")
    out = assess(SHAPE, pi, context=1024, gen_tokens=128, measured_decode_tok_s=9.5)
    roof = out["roofline"]
    assert roof["label"] == "estimate" and roof["position"] == 64
    assert roof["measured_over_roofline"] == pytest.approx(9.5 / roof["decode_tok_s"])
    assert out["fit"]["context"] == 1024


def test_weights_read_tied_and_untied() -> None:
    tied = {"token_embd.weight": 100, "blk.0.attn_q.weight": 50}
    assert weights_read_per_token(tied, row_bytes_embd=1) == 150  # the table doubles as the output layer
    untied = {**tied, "output.weight": 100}
    assert weights_read_per_token(untied, row_bytes_embd=1) == 151


def test_gguf_shape_of_tiny_model(tiny_gguf: Path) -> None:
    shape = gguf_shape(tiny_gguf)
    assert (shape.n_layers, shape.n_kv_heads, shape.head_dim, shape.context_length) == (2, 1, 16, 128)
    embd = 262 * 32 * 4
    assert shape.weight_bytes < tiny_gguf.stat().st_size
    assert shape.weight_read_bytes == shape.weight_bytes - embd + 32 * 4


def test_hf_shape_from_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({
        "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2, "hidden_size": 256,
        "max_position_embeddings": 2048, "tie_word_embeddings": True}))
    header = json.dumps({"model.embed_tokens.weight": {"dtype": "F32", "shape": [10, 256],
                                                        "data_offsets": [0, 10240]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 10240)
    shape = hf_shape(tmp_path)
    assert (shape.n_layers, shape.n_kv_heads, shape.head_dim, shape.weight_bytes) == (4, 2, 32, 10240)


def test_corrupt_gguf_is_an_arte_error(tmp_path: Path, tiny_gguf: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(tiny_gguf.read_bytes()[:3000])
    with pytest.raises(ArteError, match="unreadable GGUF"):
        gguf_shape(bad)


# ---- percentiles and URLs ------------------------------------------------------------------------------


def test_percentile() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 90) == pytest.approx(3.7)
    assert percentile([5.0], 99) == 5.0
    assert percentile([1.0, 2.0], 0) == 1.0 and percentile([1.0, 2.0], 100) == 2.0
    assert percentile([], 50) != percentile([], 50)  # nan


def test_ssh_url_parsing() -> None:
    assert SshTarget.parse("ssh://pi@10.0.0.5:2222") == SshTarget(host="10.0.0.5", user="pi", port=2222)
    assert SshTarget.parse("ssh://pi@raspberrypi.local").port == 22
    for bad in ("pi@10.0.0.5", "http://pi@host", "ssh://pi@host:0", "ssh://pi@host/path", "ssh://"):
        with pytest.raises(ArteError, match="ssh://user@host"):
            SshTarget.parse(bad)


# ---- the CLI: one line on stderr, exit 2 ---------------------------------------------------------------


def _cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    from arte_edge import cli

    monkeypatch.setattr(sys, "argv", ["arte-edge", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    return int(info.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize("make, device, expect", [
    (lambda d, g: d / "missing.gguf", "raspberry-pi-5", "artifact not found"),
    (lambda d, g: _truncated(d, g), "raspberry-pi-5", "unreadable GGUF"),
    (lambda d, g: _not_gguf(d), "raspberry-pi-5", "not a GGUF file"),
    (lambda d, g: g, "pi-9", "unknown device 'pi-9'"),
])
def test_bench_cli_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                          tiny_gguf: Path, make, device: str, expect: str) -> None:
    code, err = _cli(monkeypatch, capsys, "bench", str(make(tmp_path, tiny_gguf)), "--device", device)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and expect in err


def test_bench_cli_bad_remote_url(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                  tiny_gguf: Path) -> None:
    code, err = _cli(monkeypatch, capsys, "bench", str(tiny_gguf), "--device", "raspberry-pi-5",
                     "--remote", "pi@host")
    assert code == 2 and "ssh://user@host" in err


def test_bench_cli_estimate_only(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                 tiny_gguf: Path) -> None:
    from arte_edge import cli

    monkeypatch.setattr(sys, "argv", ["arte-edge", "bench", str(tiny_gguf), "--device", "raspberry-pi-5", "--json"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert not info.value.code
    result = json.loads(capsys.readouterr().out)[str(tiny_gguf)]
    assert result["summary"] is None and "has no remote" in result["note"]
    assert result["estimate"]["fit"]["label"] == "estimate" and result["estimate"]["fit"]["fits"]
    assert result["device"]["name"] == "raspberry-pi-5"


def _truncated(d: Path, g: Path) -> Path:
    path = d / "truncated.gguf"
    path.write_bytes(g.read_bytes()[:3000])
    return path


def _not_gguf(d: Path) -> Path:
    path = d / "text.gguf"
    path.write_text("hello")
    return path
