"""cortex.toml [[neurons]] keys: kind, headers, https + ca_file, declared topology."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from cortex_fsm import ConfigError, Device
from cortex_fsm.drivers.config import NeuronSettings, load_config


def write(tmp_path: Path, text: str, name: str = "cortex.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_neuron_key(tmp_path: Path) -> None:
    ca = trustme.CA()
    (tmp_path / "certs").mkdir()
    ca.cert_pem.write_to_path(str(tmp_path / "certs" / "ca.pem"))
    path = write(
        tmp_path,
        """
[gateway]
state_dir = "state"

[[neurons]]
name = "gpu-a"
endpoint = "http://gpu-a.lan:13131"
gpus = 2
vram_mb = 81920

[[neurons]]
name = "gpu-b"
endpoint = "https://gpu-b.lan"
devices = [
  {index = 0, vram_total_mb = 24576, name = "RTX 4090"},
  {index = 3, vram_total_mb = 49152},
]
ca_file = "certs/ca.pem"
headers = { Authorization = "Bearer s3cret", "X-Team" = "infra" }

[[neurons]]
name = "vllm-1"
endpoint = "https://vllm-1.lan:8000/"
kind = "vllm"
headers = { Authorization = "Bearer k" }
""",
    )
    config = load_config(path)
    assert config.state_dir == str(tmp_path / "state")
    a = config.neuron("gpu-a")
    assert (a.kind, a.devices) == (
        "neuron",
        (Device(index=0, vram_total_mb=81920), Device(index=1, vram_total_mb=81920)),
    )
    assert config.settings_of("gpu-a") == NeuronSettings()
    assert config.neuron("gpu-b").devices == (
        Device(index=0, vram_total_mb=24576, name="RTX 4090"),
        Device(index=3, vram_total_mb=49152),
    )
    b = config.settings_of("gpu-b")
    assert b.ca_file == str(tmp_path / "certs" / "ca.pem")
    assert b.headers == (("Authorization", "Bearer s3cret"), ("X-Team", "infra"))
    v = config.neuron("vllm-1")
    assert (v.kind, v.devices) == ("vllm", None)
    assert config.settings_of("vllm-1") == NeuronSettings(headers=(("Authorization", "Bearer k"),))
    # The trace header records kind and devices, never headers.
    header = config.trace_header()
    assert [n.to_json() for n in header.neurons][2] == {
        "name": "vllm-1",
        "endpoint": "https://vllm-1.lan:8000",
        "kind": "vllm",
    }
    assert "Bearer" not in repr(header)
    upstreams = config.upstreams()
    assert upstreams["vllm-1"].endpoint == "https://vllm-1.lan:8000"
    assert upstreams["vllm-1"].kind == "vllm"
    assert upstreams["vllm-1"].tls is None  # the system's CAs
    assert isinstance(upstreams["gpu-b"].tls, ssl.SSLContext)
    assert upstreams["gpu-b"].headers == b.headers
    assert upstreams["gpu-a"].kind == "neuron"
    # A node with nothing special has the defaults, and no entry of its own.
    plain = load_config(write(tmp_path, '[[neurons]]\nname = "n"\nendpoint = "http://n:1"\n', "p"))
    assert plain.settings == {}
    assert plain.settings_of("n") == NeuronSettings()
    assert plain.state_dir is None


NEURON = '[[neurons]]\nname = "a"\nendpoint = "http://a:1"\n'
HTTPS = '[[neurons]]\nname = "a"\nendpoint = "https://a:1"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (NEURON + 'kind = "tgi"\n', "(a) kind must be one of neuron, openai, vllm, sglang"),
        (NEURON + "kind = 1\n", "(a) kind must be one of"),
        (
            '[[neurons]]\nname = "a"\nendpoint = "http://a:1/v1"\nkind = "openai"\n',
            "(a) endpoint must not end in /v1: requests go to {endpoint}/v1/..., "
            "so use 'http://a:1'",
        ),
        (NEURON + 'headers = "Bearer x"\n', "(a) headers must be a table"),
        (NEURON + 'headers = { "Bad Name" = "x" }\n', "'Bad Name' is not a valid header name"),
        (NEURON + 'headers = { Host = "x" }\n', "'Host' is set by the gateway itself"),
        (NEURON + 'headers = { "Content-Length" = "1" }\n', "set by the gateway itself"),
        (NEURON + 'headers = { "X-Cortex-Hop" = "1" }\n', "set by the gateway itself"),
        (NEURON + "headers = { A = 1 }\n", "headers: A must be a string, got 1"),
        (NEURON + 'headers = { A = "x\\r\\nB: y" }\n', "without line breaks"),
        (NEURON + 'headers = { A = "€" }\n', "Latin-1"),
        (NEURON + 'ca_file = "ca.pem"\n', "ca_file is only for an https:// endpoint"),
        (HTTPS + 'ca_file = "missing.pem"\n', "missing.pem: no such file"),
        (HTTPS + 'ca_file = "cortex.toml"\n', "not a PEM file of CA certificates"),
        (HTTPS + "ca_file = 3\n", "ca_file must be a file path string"),
        (NEURON + "gpus = 2\n", "(a) gpus needs vram_mb too"),
        (NEURON + "vram_mb = 2\n", "(a) vram_mb needs gpus too"),
        (NEURON + "gpus = 0\nvram_mb = 1\n", "gpus must be an integer in 1..64, got 0"),
        (NEURON + "gpus = 65\nvram_mb = 1\n", "gpus must be an integer in 1..64, got 65"),
        (NEURON + "gpus = true\nvram_mb = 1\n", "gpus must be an integer"),
        (NEURON + "gpus = 1\nvram_mb = 0\n", "vram_mb must be an integer >= 1, got 0"),
        (NEURON + "gpus = 1\nvram_mb = 1.5\n", "vram_mb must be an integer >= 1"),
        (
            NEURON + "gpus = 1\nvram_mb = 1\ndevices = [{index = 0, vram_total_mb = 1}]\n",
            "devices cannot be combined with gpus/vram_mb",
        ),
        (NEURON + "devices = []\n", "devices must be a non-empty list"),
        (NEURON + "devices = [1]\n", "devices[0] must be a table"),
        (NEURON + "devices = [{index = 0}]\n", "devices[0] needs index and vram_total_mb"),
        (
            NEURON + "devices = [{index = 0, vram_total_mb = 1, vram = 2}]\n",
            "devices[0]: unknown key 'vram'",
        ),
        (
            NEURON + "devices = [{index = 0, vram_total_mb = 1}, {index = 0, vram_total_mb = 1}]\n",
            "devices[1] index 0 is listed twice",
        ),
        (NEURON + "devices = [{index = -1, vram_total_mb = 1}]\n", "devices[0] index must be"),
        (NEURON + 'devices = [{index = 0, vram_total_mb = "80G"}]\n', "vram_total_mb must be"),
        (
            NEURON + "devices = [{index = 0, vram_total_mb = 1, name = 3}]\n",
            "devices[0] name must be a string",
        ),
        (
            NEURON + 'kind = "vllm"\ngpus = 1\nvram_mb = 80000\n',
            '(a) gpus: only a kind = "neuron" node has a topology; a vllm node cannot load',
        ),
        (
            NEURON + 'kind = "ollama"\ndevices = [{index = 0, vram_total_mb = 1}]\n',
            "(a) devices: only a kind",
        ),
        ("[gateway]\nstate_dir = 3\n" + NEURON, "[gateway] state_dir must be a directory path"),
        ('[gateway]\nstate_dir = "cortex.toml"\n' + NEURON, "exists and is not a directory"),
    ],
)
def test_errors_name_the_neuron_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    assert str(info.value).startswith(f"{path}: ")
