"""The deployment docs/deployment.md recommends, attacked on loopback.

A SuperLink with TLS and SuperNode authentication (``fedsim deploy superlink
--certificates DIR --supernode-auth``), its Control API on a port of its own. An
intruder holding only ``ca.crt`` (every device has it) talks to the port the devices
use: it can neither register its own SuperNode key nor submit a run. A node without
TLS, one with TLS but no key, and one with an unregistered key are refused. A
submitted scenario that names an import path is refused (the SuperLink's operator did
not allow imports). The two registered nodes then train a 2-round run.

Every process is started by id and stopped by id (``tests.deploy.loopback``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedsim.deploy.flwr_cli import CONNECTION, SuperLinkConnection, flwr_home, flwr_json
from tests.conftest import TINY, write_yaml
from tests.deploy.credentials import write_supernode_key, write_tls
from tests.deploy.loopback import Cluster, cluster, free_port, metrics_records, wait_for_port
from tests.deploy.test_loopback import FEDSIM, ONE_THREAD, RUN_TIMEOUT_S

NODES = 2
SCENARIO: dict[str, Any] = {
    **TINY,
    "name": "locked",
    "data": {**TINY["data"], "num_clients": NODES},
    "system": {},
}
REFUSED_S = 60  # a refused node or command gives up (or is judged stuck) within this


def _fedsim(c: Cluster, name: str, *args: str) -> None:
    c.start(name, [FEDSIM, "deploy", *args])


def _node(c: Cluster, name: str, k: int, fleet: str, *auth: str) -> None:
    cmd = ["node", "--partition-id", str(k), "--num-partitions", str(NODES), "--superlink", fleet]
    c.start(name, [FEDSIM, "deploy", *cmd, "--port", str(free_port()), *auth], env=ONE_THREAD)


def _finished(c: Cluster, name: str, timeout_s: float = REFUSED_S) -> int:
    return c.procs[name].wait(timeout=timeout_s)


def _nodes(operator: SuperLinkConnection) -> list[dict[str, Any]]:
    with flwr_home(operator) as (_, env):
        return list(flwr_json(["supernode", "list", CONNECTION], env).get("nodes") or [])


def _runs(operator: SuperLinkConnection) -> list[dict[str, Any]]:
    with flwr_home(operator) as (_, env):
        return list(flwr_json(["ls", CONNECTION], env).get("runs") or [])


@pytest.mark.slow
def test_tls_and_node_auth_keep_intruders_out_and_let_the_fleet_train(tmp_path: Path) -> None:
    certs = write_tls(tmp_path / "certs")
    ca = str(certs / "ca.crt")
    keys = [write_supernode_key(certs, f"supernode-{k}") for k in range(NODES)]
    intruder_key, intruder_pub = write_supernode_key(certs, "intruder")
    scenario = write_yaml(tmp_path / "scenario.yaml", SCENARIO)
    imports = write_yaml(
        tmp_path / "imports.yaml",
        {**SCENARIO, "strategy": {"name": "flwr.serverapp.strategy:FedAvg"}},
    )
    runs = tmp_path / "runs"
    fleet_port, control_port = free_port(), free_port()
    fleet, control = f"127.0.0.1:{fleet_port}", f"127.0.0.1:{control_port}"
    operator = SuperLinkConnection(control, Path(ca))
    tls = ["--root-certificates", ca]

    with cluster(tmp_path) as c:
        superlink = ["--certificates", str(certs), "--supernode-auth", "--runs-root", str(runs)]
        superlink += ["--port", str(fleet_port), "--control-port", str(control_port)]
        _fedsim(c, "superlink", "superlink", *superlink)
        wait_for_port(control_port, timeout_s=60)
        wait_for_port(fleet_port, timeout_s=10)

        # Everything at once (the machine is small; each step mostly waits on Flower).
        # The intruder, on the devices' port with ca.crt, registers a key and submits.
        _fedsim(c, "intruder-register", "register", str(intruder_pub), "--superlink", fleet, *tls)
        _fedsim(c, "intruder-run", "run", str(scenario), "--superlink", fleet, *tls,
                "--out", str(runs / "intruder"), "--quiet")  # fmt: skip
        # The operator, on the SuperLink's host, admits the fleet's keys.
        _fedsim(c, "register", "register", *(str(pub) for _, pub in keys),
                "--superlink", control, *tls)  # fmt: skip
        assert _finished(c, "register") == 0, c.log("register")
        registered = {n["node-id"] for n in _nodes(operator)}
        assert len(registered) == NODES
        for k, (private, _) in enumerate(keys):
            _node(c, f"node-{k}", k, fleet, *tls, "--auth-key", str(private))
        # Nodes the SuperLink must refuse: no TLS, TLS without a key, an unknown key.
        _node(c, "no-tls", 0, fleet, "--insecure")
        _node(c, "no-key", 0, fleet, *tls)
        _node(c, "unregistered", 0, fleet, *tls, "--auth-key", str(intruder_key))
        # The operator submits a scenario naming an import path (refused) and the run.
        _fedsim(c, "imports-run", "run", str(imports), "--superlink", control, *tls,
                "--out", str(runs / "imports"), "--quiet")  # fmt: skip
        _fedsim(c, "run", "run", str(scenario), "--superlink", control, *tls,
                "--out", str(runs / "fleet"), "--quiet")  # fmt: skip

        assert _finished(c, "intruder-register") == 2, c.log("intruder-register")
        assert "403 (that address serves SuperNodes only" in c.log("intruder-register")
        assert _finished(c, "intruder-run") == 2, c.log("intruder-run")
        assert "403 (that address serves SuperNodes only" in c.log("intruder-run")
        assert _finished(c, "no-key") != 0, c.log("no-key")
        assert _finished(c, "unregistered") != 0, c.log("unregistered")
        assert "Failed to activate SuperNode" in c.log("unregistered")
        assert _finished(c, "imports-run", RUN_TIMEOUT_S) == 2, c.log("imports-run")
        refusal = "strategy.name: 'flwr.serverapp.strategy:FedAvg' is an import path"
        assert refusal in c.log("imports-run")
        assert not metrics_records(runs / "imports")
        assert _finished(c, "run", RUN_TIMEOUT_S) == 0, c.log("run") + c.log("superlink")[-3000:]

        # The node without TLS never got in; it is still trying to connect.
        assert c.procs["no-tls"].poll() is None
        assert "Connection attempt failed" in c.log("no-tls")
        nodes = _nodes(operator)
        assert {n["node-id"] for n in nodes} == registered  # the intruder's key is not there
        assert all(n["status"] == "online" for n in nodes), nodes
        statuses = sorted(r["status"] for r in _runs(operator))
        assert statuses == ["finished:completed", "finished:failed"]  # no intruder run

    records = metrics_records(runs / "fleet")
    assert [r["round"] for r in records] == [0, 1, 2]
    assert [r["participants"] for r in records[1:]] == [NODES, NODES]
    assert all(r["failures"] == 0 for r in records[1:])
