"""MQTT.js on node: over TLS by IP literal and by name, TLS 1.2 and 1.3, without and with a client
certificate, against the gateway's `tls` listeners (the same PKI and listeners as `test_tls.py`);
and over WebSocket and secure WebSocket, by IP literal and by name, MQTT 3.1.1 and 5, QoS 0, 1
and 2 (the `ws`/`wss` listeners of `test_websocket.py`).

Each case runs `node/mqttjs_client.js`, which connects, subscribes at QoS 1, publishes to its own
topic and waits for the message; the negotiated TLS version and the SUBACK are checked here. With
a client certificate the topic is under `dev/device-8/`, granted by the ACL only to the username
taken from the certificate's CN.

MQTT.js (the version pinned in `node/package.json` and `node/package-lock.json`) lives in
`target/interop-node` (or `$MQTTJS_DIR`): scripts/test.sh installs it there with `npm ci`, and
this module does the same when it is missing. Without node or npm the tests are skipped, loudly,
except under CI, where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from test_websocket import ws_gateway  # noqa: F401 (a fixture)
from tls_helpers import DEVICE, HOSTS

HERE = Path(__file__).resolve().parent / "node"
NODE_DIR = Path(os.environ.get("MQTTJS_DIR", REPO_ROOT / "target" / "interop-node"))


def _unavailable(why: str):
    message = f"MQTT.js TLS interop NOT TESTED: {why}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _pinned_version() -> str:
    return json.loads((HERE / "package.json").read_text())["dependencies"]["mqtt"]


def _installed_version() -> str | None:
    try:
        manifest = NODE_DIR / "node_modules" / "mqtt" / "package.json"
        return json.loads(manifest.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, with the pinned MQTT.js installed in NODE_DIR."""
    node_bin = shutil.which("node")
    if node_bin is None:
        _unavailable("`node` is not installed (apt install nodejs npm)")
    if _installed_version() != _pinned_version():
        npm = shutil.which("npm")
        if npm is None:
            _unavailable("`npm` is not installed (apt install npm)")
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        for f in ("package.json", "package-lock.json"):
            shutil.copy(HERE / f, NODE_DIR / f)
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR, capture_output=True, text=True, timeout=300,
        )
        if done.returncode != 0 or _installed_version() != _pinned_version():
            _unavailable(f"`npm ci` in {NODE_DIR} failed: {done.stderr.strip()[-2000:]}")
    return node_bin


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize("client_cert", [False, True], ids=["no-client-cert", "client-cert"])
def test_mqttjs_over_tls(node, tls_gateway, host, version, client_cert):
    pki, tls_port, mutual_port = tls_gateway
    args = {
        "host": host,
        "ca": pki.ca,
        "tls": f"TLSv{version}",
        "payload": f"mqtt.js {host} TLS {version} client_cert={client_cert}",
    }
    if client_cert:
        args.update(port=mutual_port, topic=f"dev/{DEVICE}/js", cert=pki.client_cert,
                    key=pki.client_key)
    else:
        args.update(port=tls_port, topic="open/js")
    result, said = _run(node, args)
    assert result == {
        "protocol": f"TLSv{version}",
        "granted": [1],
        "received": args["payload"],
    }, said


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
@pytest.mark.parametrize("mqtt", [4, 5], ids=["3.1.1", "5"])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_mqttjs_over_websocket(node, ws_gateway, host, secure, mqtt, qos):
    _gw, ws_port, wss_port, ca = ws_gateway
    url = f"wss://{host}:{wss_port}/secure" if secure else f"ws://{host}:{ws_port}/mqtt"
    args = {
        "url": url,
        "mqtt": mqtt,
        "qos": qos,
        "topic": f"js/ws/{int(secure)}/{mqtt}/{qos}",
        "payload": f"mqtt.js over {url} MQTT {mqtt} QoS {qos}",
    }
    if secure:
        args["ca"] = ca
    result, said = _run(node, args)
    # (MQTT.js's WebSocket stream does not tell the TLS version under wss.)
    assert result == {
        "protocol": None,
        "granted": [qos],
        "received": args["payload"],
    }, said


def _run(node: str, args: dict) -> tuple[dict, str]:
    """Runs `node/mqttjs_client.js` with `args`: its JSON result, and what it printed."""
    env = dict(os.environ, NODE_PATH=str(NODE_DIR / "node_modules"))
    done = subprocess.run(
        [node, str(HERE / "mqttjs_client.js"), json.dumps(args)],
        capture_output=True, text=True, timeout=30, env=env,
    )
    lines = done.stdout.strip().splitlines()
    said = f"{done.stdout}{done.stderr}"
    assert done.returncode == 0 and lines, f"MQTT.js failed: {said}"
    return json.loads(lines[-1]), said
