"""Combinations of scenario options that would give wrong numbers, refused before training.

Each rule looks at a whole (expanded) scenario and its strategy chain (one
:class:`~fedsim.algorithms.spec.StrategyLink` per strategy, each with its algorithm's
spec) and returns the problems it finds, each naming the key to change. The rules read
specs, never strategy names or class attributes: an algorithm says what it releases,
whether it trains on the loss and what engine it needs in its spec.
:func:`fedsim.compose.compose` runs them, so ``fedsim validate`` and ``fedsim run``
refuse the same combinations before anything trains; clients refuse them again at run
time (a deployed SuperNode may be handed a scenario that was never validated).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from flwr.serverapp.strategy import Strategy

from fedsim.algorithms.spec import ROUND_CLOCK, VIRTUAL_CLOCK, StrategyLink
from fedsim.config.schema import ENGINE_SECTIONS, Scenario, has_regression_targets
from fedsim.errors import Problem
from fedsim.registry import Registry

Rule = Callable[[Scenario, Sequence[StrategyLink]], list[Problem]]
RULES: Registry[Rule] = Registry("combination rules")

# Under DP-SGD only model updates leave a client; federated evaluation releases the
# clients' loss and accuracy on their own data (the ClientApp refuses it too).
DP_EVALUATE_REFUSAL = (
    "federated evaluation (strategy.params.fraction_evaluate > 0) releases the clients' "
    "loss and accuracy on their private data outside DP-SGD"
)

# Which engine sections provide a capability an algorithm's spec may need.
CAPABILITIES = {VIRTUAL_CLOCK: "a virtual clock", ROUND_CLOCK: "a clock on its rounds"}
# `system` keys that change which replies reach the strategy, or when (drawn and cut on
# the clock of the rounds).
ROUND_CLOCK_KEYS = ("deadline_s", "straggle_prob", "dropout_prob", "failure_prob")


@runtime_checkable
class ScenarioCheck(Protocol):
    """A strategy class with its own check of the scenario (a classmethod ``check``).

    A strategy that needs a particular model or partitioner says so there, returning
    problems that each name the key to change.
    """

    def check(self, scenario: Scenario, params: Mapping[str, Any]) -> list[Problem]:
        """Return what this strategy cannot run with."""


@RULES.register("dp-releases", help="client.dp with an algorithm that releases more")
def dp_releases(scenario: Scenario, links: Sequence[StrategyLink]) -> list[Problem]:
    """Under ``client.dp`` everything a client releases must be private."""
    if scenario.client.dp is None:
        return []
    problems = []
    for link in links:
        if link.spec.dp_refusal is not None:
            reason = f"cannot be used with strategy '{link.name}': {link.spec.dp_refusal}"
            problems.append(Problem("client.dp", reason))
        if link.accepted is not None and "train_loss_key" in link.accepted:
            problems.append(
                Problem(
                    "client.dp",
                    f"cannot be used with strategy '{link.name}': it weights updates by the "
                    "clients' training loss, which stays on the device under DP-SGD",
                )
            )
    loss_refusal = scenario.client.loss.dp_refusal()  # a loss shaped by private data
    if loss_refusal is not None:
        problems.append(Problem("client.dp", loss_refusal))
    if float(scenario.strategy.params.get("fraction_evaluate", 0.0)) > 0:
        problems.append(Problem("client.dp", f"cannot be used with {DP_EVALUATE_REFUSAL}"))
    if scenario.output.per_client_eval:
        problems.append(
            Problem(
                "client.dp",
                "cannot be used with output.per_client_eval: each client's loss and "
                "accuracy on its own data are released outside DP-SGD",
            )
        )
    return problems


@RULES.register("colluding-attacks", help="alie/ipm need a strategy on Flower's round loop")
def colluding_attacks(scenario: Scenario, links: Sequence[StrategyLink]) -> list[Problem]:
    """Colluding attackers are simulated by a wrapper, which needs Flower's round loop."""
    from flwr.serverapp.strategy import Strategy

    attackers = scenario.system.attackers
    if attackers is None or not attackers.attack.colludes or not links:
        return []
    link = links[0]
    if issubclass(link.strategy_cls, Strategy) and link.strategy_cls.start is not Strategy.start:
        reason = (
            f"'{attackers.attack.name}' cannot be used with strategy '{link.name}': its "
            "attackers collude through the server's round loop, which it replaces"
        )
        return [Problem("system.attackers.attack", reason)]
    return []


@RULES.register("regression-targets", help="least-squares data with classification keys")
def regression_targets(scenario: Scenario, links: Sequence[StrategyLink]) -> list[Problem]:
    """Real-valued targets have no accuracy and need the squared error to train on."""
    regression = has_regression_targets(scenario.data.dataset)
    problems = []
    if regression and scenario.output.target_accuracy is not None:
        problems.append(
            Problem(
                "output.target_accuracy",
                "a regression dataset has no accuracy (runs report the test MSE as "
                "eval_loss); leave it unset",
            )
        )
    trains = any(link.spec.trains_with_loss for link in links)
    if regression and scenario.client.loss.name != "squared_error" and trains:
        problems.append(
            Problem(
                "client.loss",
                f"'{scenario.client.loss.name}' needs class labels; regression targets "
                "train on 'squared_error'",
            )
        )
    for key in ("class_recall", "eval_logit_adjust"):
        if regression and getattr(scenario.output, key) not in (None, False):
            problems.append(Problem(f"output.{key}", "needs class labels, not regression targets"))
    if not regression and scenario.client.loss.name == "squared_error":
        problems.append(
            Problem("client.loss", "'squared_error' needs regression targets (real values)")
        )
    if not regression and scenario.data.moment_encoding is not None:
        problems.append(Problem("data.moment_encoding", "needs regression targets (least squares)"))
    return problems


@RULES.register("engine-needs", help="what an algorithm needs of the engine (its spec's needs)")
def engine_needs(scenario: Scenario, links: Sequence[StrategyLink]) -> list[Problem]:
    """An algorithm that needs a capability runs only on engines that provide it."""
    problems = []
    caps = scenario.engine.capabilities
    if scenario.system.trace is not None and VIRTUAL_CLOCK not in caps:
        problems.append(
            Problem("system.trace", "needs engine 'inprocess' (the others have no clock)")
        )
    asked = [k for k in ROUND_CLOCK_KEYS if getattr(scenario.system, k) not in (None, 0, 0.0)]
    # Flower's grid keeps the clock for Flower's own round loop; a strategy with a loop
    # of its own (it pushes and pulls) needs the engine's full virtual clock.
    own_loop = bool(links) and getattr(links[0].strategy_cls, "start", None) is not Strategy.start
    need = VIRTUAL_CLOCK if own_loop else ROUND_CLOCK
    if asked and need not in caps:
        problems.append(
            Problem(
                f"system.{asked[0]}",
                f"engine '{scenario.engine.name}' cannot honour it"
                + (" for a strategy that runs its own loop" if own_loop else "")
                + "; use engine 'inprocess', or remove the key",
            )
        )
    for link in links:
        for need in link.spec.needs:
            if need in scenario.engine.capabilities:
                continue
            able = sorted(
                c.model_fields["name"].default for c in ENGINE_SECTIONS if need in c.capabilities
            )
            what = CAPABILITIES.get(need, need)
            problems.append(
                Problem(
                    "engine.name",
                    f"{link.name} needs {what}: use engine.name: {' or '.join(able) or '(none)'}",
                )
            )
    return problems


@RULES.register("strategy-checks", help="what each strategy needs of the scenario (its check)")
def strategy_checks(scenario: Scenario, links: Sequence[StrategyLink]) -> list[Problem]:
    """Each strategy's (and each inner strategy's) own ``check(scenario, params)``."""
    problems: list[Problem] = []
    for link in links:
        if isinstance(link.strategy_cls, ScenarioCheck):
            problems += link.strategy_cls.check(scenario, link.params)
    return problems


@RULES.register("attacker-count", help="robust aggregation assuming more attackers than clients")
def attacker_count(scenario: Scenario, links: Sequence[StrategyLink]) -> list[Problem]:
    """``num_malicious_nodes`` (Krum, Multi-Krum, Bulyan) below the number of clients.

    Those aggregations assume ``f`` of the round's replies are malicious; ``f`` at or
    past the whole population leaves no honest reply to select, and Flower's code
    would silently pick among too few neighbours.
    """
    problems: list[Problem] = []
    n = scenario.data.num_clients
    for link in links:
        f = link.params.get("num_malicious_nodes")
        if isinstance(f, int) and not isinstance(f, bool) and f >= n:
            problems.append(
                Problem(
                    f"{link.key}.params.num_malicious_nodes",
                    f"{f} malicious nodes assumed among {n} clients (data.num_clients); "
                    f"at most {n - 1}",
                )
            )
    return problems


@RULES.register("client-timeout", help="engine.client_timeout_s on an engine that cannot honour it")
def client_timeout(scenario: Scenario, links: Sequence[StrategyLink]) -> list[Problem]:
    """``engine.client_timeout_s`` only where the engine can stop a late client.

    Flower's Ray engine runs a ClientApp in an actor it cannot interrupt, and the
    ServerApp's wait would count the actors' start-up: the limit would fail rounds of
    healthy clients and leave hung ones running, so it is refused up front.
    """
    engine = scenario.engine
    if engine.client_timeout_s is None or type(engine).stops_late_clients:
        return []
    return [
        Problem(
            "engine.client_timeout_s",
            f"engine '{engine.name}' cannot stop a client that runs too long (nor tell its "
            "start-up from its work); use engine 'inprocess' or drop the key",
        )
    ]


def check_combinations(scenario: Scenario, links: Sequence[StrategyLink]) -> list[Problem]:
    """Return the problems every registered rule finds in ``scenario``."""
    return [p for name in RULES.names() for p in RULES.get(name)(scenario, links)]
