"""``fedsim deploy superlink|node|run|register|split``: a Flower deployment of a scenario."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedsim.cli.errors import user_errors
from fedsim.compose import load_scenario
from fedsim.config.schema import Scenario
from fedsim.deploy.exposure import RISK_FLAG, check_exposure
from fedsim.deploy.flower_commands import (
    DEFAULT_CONTROL_PORT,
    DEFAULT_NODE_PORT,
    DEFAULT_SUPERLINK_PORT,
    LOOPBACK,
    ServerCertificates,
    flower_env,
    superlink_command,
    superlink_env,
    supernode_command,
)
from fedsim.errors import DeploymentError, Problem, ScenarioError
from fedsim.submission_policy import PERMISSIONS, SubmissionPolicy

# `run` and `split` import the runner and the data code (and so torch) on use: a
# device's `fedsim deploy node` only builds a command line and becomes flower-supernode.

app = typer.Typer(
    help="Run scenarios on real devices: Flower SuperLink, SuperNodes, runs (docs/deployment.md).",
    no_args_is_help=True,
)

Insecure = Annotated[
    bool, typer.Option("--insecure", help="No TLS (loopback or a trusted network only).")
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the Flower command; start nothing.")]
Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a key: --set strategy.params.fraction_train=0.5"),
]
ControlAddress = Annotated[
    str,
    typer.Option(
        "--superlink",
        help="The SuperLink's Control API HOST:PORT (its --control-host/--control-port; "
        "reachable from the SuperLink's host only, unless its operator chose otherwise).",
    ),
]
RootCertificates = Annotated[
    Path | None,
    typer.Option("--root-certificates", help="CA certificate that signed the SuperLink's (TLS)."),
]


def _one_of_tls(insecure: bool, tls: object) -> None:
    if insecure == (tls is not None):
        raise DeploymentError("choose --insecure or TLS certificates (exactly one)")


def _exec(cmd: list[str], dry_run: bool, env: dict[str, str] | None = None) -> None:
    """Print the Flower command, then become it (signals reach Flower directly)."""
    typer.echo(shlex.join(cmd), err=True)
    if dry_run:
        return
    with user_errors():
        try:
            os.execvpe(cmd[0], cmd, flower_env() if env is None else env)
        except OSError as exc:
            raise DeploymentError(f"cannot start {cmd[0]}: {exc.strerror}") from None


@app.command("superlink")
def superlink(
    host: Annotated[
        str,
        typer.Option(help="Address SuperNodes connect to (0.0.0.0: all; see the threat model)."),
    ] = LOOPBACK,
    port: Annotated[int, typer.Option(help="Port SuperNodes connect to (Fleet API only).")] = (
        DEFAULT_SUPERLINK_PORT
    ),
    control_host: Annotated[
        str,
        typer.Option(help="Address of the Control API (flwr run, register); keep it loopback."),
    ] = LOOPBACK,
    control_port: Annotated[
        int, typer.Option(help="Port of the Control API (and of the ServerApps' Runtime API).")
    ] = DEFAULT_CONTROL_PORT,
    certificates: Annotated[
        Path | None,
        typer.Option(help="Folder with ca.crt, server.pem, server.key (deploy/certificates)."),
    ] = None,
    insecure: Insecure = False,
    supernode_auth: Annotated[
        bool, typer.Option("--supernode-auth", help="Admit only registered SuperNode keys.")
    ] = False,
    database: Annotated[
        Path | None, typer.Option(help="SQLite file for the SuperLink's state (default: memory).")
    ] = None,
    allow_submitted: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-submitted",
            help="Let submitted runs do this on this host (repeatable): "
            + "; ".join(f"{k}: {v}" for k, v in PERMISSIONS.items()),
        ),
    ] = None,
    runs_root: Annotated[
        Path | None,
        typer.Option(help="Submitted runs may write run directories inside this folder only."),
    ] = None,
    accept_risks: Annotated[
        bool,
        typer.Option(
            RISK_FLAG,
            help="Start even though the network can reach an insecure, unauthenticated or "
            "Control API address (the error names which).",
        ),
    ] = False,
    dry_run: DryRun = False,
) -> None:
    """Start a Flower SuperLink (runs the ServerApp; SuperNodes connect to it)."""
    with user_errors():
        _one_of_tls(insecure, certificates)
        check_exposure(
            host=host,
            control_host=control_host,
            insecure=insecure,
            supernode_auth=supernode_auth,
            accept_risks=accept_risks,
        )
        certs = ServerCertificates.from_dir(certificates) if certificates else None
        try:
            policy = SubmissionPolicy(frozenset(allow_submitted or ()), runs_root)
        except ScenarioError as exc:
            raise DeploymentError(f"--allow-submitted: {exc.problems[0].message}") from None
        cmd = superlink_command(
            host=host,
            port=port,
            control_host=control_host,
            control_port=control_port,
            certificates=certs,
            supernode_auth=supernode_auth,
            database=database,
        )
    _exec(cmd, dry_run, superlink_env(policy))


@app.command("node")
def node(
    partition_id: Annotated[int, typer.Option(help="This node's partition (0-based).")],
    num_partitions: Annotated[int, typer.Option(help="Number of nodes (data.num_clients).")],
    superlink: Annotated[str, typer.Option(help="SuperLink Fleet API address HOST:PORT.")],
    port: Annotated[
        int, typer.Option(help="Local port for the node's ClientApps; one per node on a host.")
    ] = DEFAULT_NODE_PORT,
    data_path: Annotated[
        Path | None,
        typer.Option(help="Local .npz (x, y, num_classes) instead of the scenario's partition."),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            help="Where this node trains: auto, cpu, cuda, cuda:N, mps (default: the "
            "scenario's engine.device, auto: CUDA when present)."
        ),
    ] = None,
    root_certificates: RootCertificates = None,
    insecure: Insecure = False,
    auth_key: Annotated[
        Path | None,
        typer.Option(help="The node's EC private key (OpenSSH format) for SuperNode auth."),
    ] = None,
    dry_run: DryRun = False,
) -> None:
    """Start a Flower SuperNode holding one partition (runs the ClientApp)."""
    with user_errors():
        _one_of_tls(insecure, root_certificates)
        cmd = supernode_command(
            superlink=superlink,
            partition_id=partition_id,
            num_partitions=num_partitions,
            port=port,
            data_path=data_path,
            root_certificates=root_certificates,
            auth_private_key=auth_key,
            device=device,
        )
    _exec(cmd, dry_run)


def _concrete(scenario_file: Path, overrides: list[str]) -> Scenario:
    scenario = load_scenario(scenario_file, overrides)
    if not scenario.is_expanded:
        raise ScenarioError(
            [Problem("variants", "a deployment runs one concrete run; drop variants/seeds")],
            str(scenario_file),
        )
    return scenario


@app.command("run")
def run(
    scenario_file: Annotated[Path, typer.Argument(help="Scenario YAML file.", metavar="SCENARIO")],
    superlink: ControlAddress = f"{LOOPBACK}:{DEFAULT_CONTROL_PORT}",
    set_: Overrides = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Run directory (default runs/<name>-<time>).")
    ] = None,
    root_certificates: RootCertificates = None,
    insecure: Insecure = False,
    min_nodes: Annotated[
        int | None,
        typer.Option(
            help="After round 1 (which waits for all nodes), go on with this many connected "
            "nodes (strategy min_available_nodes; default: all)."
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not echo Flower's log.")] = False,
) -> None:
    """Run a scenario on a SuperLink's SuperNodes; metrics land in a run directory."""
    from fedsim.deploy.flwr_cli import SuperLinkConnection
    from fedsim.deploy.submission import DeploymentEngine
    from fedsim.runner import run as run_scenario

    console = Console()
    with user_errors():
        _one_of_tls(insecure, root_certificates)
        overrides = list(set_ or [])
        scenario = _concrete(scenario_file, overrides)
        if min_nodes is not None:
            # Checked before validation sees it, which would name the strategy key instead.
            if not 1 <= min_nodes <= scenario.data.num_clients:
                raise DeploymentError(f"--min-nodes must lie in 1..{scenario.data.num_clients}")
            overrides.append(f"strategy.params.min_available_nodes={min_nodes}")
            scenario = _concrete(scenario_file, overrides)
        engine = DeploymentEngine(
            SuperLinkConnection(superlink, root_certificates),
            on_log=None if quiet else typer.echo,
        )
        result = run_scenario(scenario, out, engine=engine)
    s = result.summary
    console.print(
        f"final accuracy {s['final_eval_accuracy']:.4f} (best {s['best_eval_accuracy']:.4f})"
    )
    console.print(f"run directory: {result.run_dir}")


@app.command("register")
def register(
    public_keys: Annotated[
        list[Path], typer.Argument(help="SuperNode public keys (OpenSSH, EC).", metavar="KEY.pub")
    ],
    superlink: ControlAddress = f"{LOOPBACK}:{DEFAULT_CONTROL_PORT}",
    root_certificates: RootCertificates = None,
    insecure: Insecure = False,
) -> None:
    """Admit SuperNodes to a SuperLink started with --supernode-auth."""
    from fedsim.deploy.flwr_cli import SuperLinkConnection, register_supernode

    with user_errors():
        _one_of_tls(insecure, root_certificates)
        connection = SuperLinkConnection(superlink, root_certificates)
        for key in public_keys:
            typer.echo(f"{key}: node {register_supernode(connection, key)}")


@app.command("split")
def split(
    scenario_file: Annotated[Path, typer.Argument(help="Scenario YAML file.", metavar="SCENARIO")],
    out: Annotated[Path, typer.Option("--out", help="Folder for partition-<k>.npz files.")],
    set_: Overrides = None,
) -> None:
    """Write each node's partition as an .npz to copy onto its device (--data-path)."""
    from fedsim.data.node_data import write_partitions

    with user_errors():
        scenario = _concrete(scenario_file, list(set_ or []))
        paths = write_partitions(scenario.data, scenario.seed, out)
    typer.echo(f"wrote {len(paths)} partitions to {out}")
