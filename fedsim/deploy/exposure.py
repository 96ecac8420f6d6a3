"""What a SuperLink's addresses and options expose, and the refusal to expose it silently.

Flower enforces TLS, SuperNode keys and (through fedsim's guarded listener) a Control
API off the node network, but only when asked. A SuperLink listening beyond loopback
without one of them is open in a way Flower cannot prevent; fedsim then refuses to
start unless the operator passes :data:`RISK_FLAG`.
"""

from __future__ import annotations

import ipaddress
import os
import warnings

from fedsim.errors import DeploymentError, FedsimWarning

RISK_FLAG = "--i-understand-the-risks"
ROOT_FLAG = "--allow-root"
ROOT_ENV = "FEDSIM_ALLOW_ROOT"  # =1: the same as ROOT_FLAG (containers whose user is root)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine (``localhost``, 127/8, ::1)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def network_risks(
    *, host: str, control_host: str, insecure: bool, supernode_auth: bool
) -> list[str]:
    """The ways a SuperLink so configured is open to the network, one phrase each."""
    risks: list[str] = []
    if not is_loopback(control_host):
        risks.append(
            f"the Control API on {control_host} lets anyone who reaches it submit runs "
            "(code run on this host) and register SuperNode keys; Flower has no user "
            "authentication for it outside its enterprise edition"
        )
    if not is_loopback(host):
        if insecure:
            risks.append(f"without TLS, traffic to {host} is readable and forgeable on the network")
        if not supernode_auth:
            risks.append(
                "without --supernode-auth any device that reaches the SuperLink joins as "
                "a node, receives the model and sends updates"
            )
    return risks


def check_exposure(
    *, host: str, control_host: str, insecure: bool, supernode_auth: bool, accept_risks: bool
) -> None:
    """Raise :class:`DeploymentError` naming each risk unless ``accept_risks``."""
    risks = network_risks(
        host=host, control_host=control_host, insecure=insecure, supernode_auth=supernode_auth
    )
    if risks and not accept_risks:
        raise DeploymentError(
            f"refusing to start a SuperLink that is open to the network: {'; '.join(risks)}. "
            f"Use TLS, --supernode-auth and a loopback --control-host, or pass {RISK_FLAG} "
            "(docs/deployment.md, threat model)"
        )


def check_root(process: str, *, allow_root: bool) -> None:
    """Refuse to start ``process`` as root unless the operator insists (then warn).

    A Flower app runs as the user of the process that runs it: as root, a submitted
    app (or a client app sent to a node) can read and change everything on the host.

    Raises
    ------
    DeploymentError
        If this process runs as root and neither :data:`ROOT_FLAG` nor
        ``FEDSIM_ALLOW_ROOT=1`` was given.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    what = (
        f"the {process} would run as root, and so would every Flower app it runs "
        "(it could read and change anything on this host)"
    )
    if not (allow_root or os.environ.get(ROOT_ENV) == "1"):
        raise DeploymentError(
            f"refusing to start: {what}; run it as an unprivileged user, or pass "
            f"{ROOT_FLAG} (or set {ROOT_ENV}=1)"
        )
    warnings.warn(f"{what}; started anyway ({ROOT_FLAG})", FedsimWarning, stacklevel=2)
