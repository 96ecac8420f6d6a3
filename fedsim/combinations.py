"""Combinations of scenario options that would give wrong numbers, refused before training.

Each rule looks at a whole (expanded) scenario and returns the problems it finds, each
naming the key to change. :func:`fedsim.scenario_loading.validate_mapping` runs them, so
``fedsim validate`` and ``fedsim run`` refuse the same combinations before anything
trains; clients refuse them again at run time (a deployed SuperNode may be handed a
scenario that was never validated).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedsim.errors import Problem, UnknownNameError
from fedsim.registry import Registry
from fedsim.scenario import Scenario, has_regression_targets

Rule = Callable[[Scenario], list[Problem]]
RULES: Registry[Rule] = Registry("combination rules")


def client_step_of(strategy_cls: type) -> str:
    """Return the local step a strategy class asks its clients for.

    fedsim's strategies name it in a ``client_step`` class attribute (the name in
    :data:`fedsim.clients.steps.STEPS`); strategies that do not say ask for the plain or
    proximal step, which train through the shared loop.
    """
    return str(getattr(strategy_cls, "client_step", "plain"))


def _strategy_chain(name: str, params: dict[str, Any]) -> list[tuple[str, type]]:
    """The strategy and, for wrappers (``params.strategy: {name, params}``), those inside.

    Unknown names end the chain (the component check reports them).
    """
    from fedsim.strategies import STRATEGIES

    try:
        chain = [(name, STRATEGIES.get(name))]
    except UnknownNameError:
        return []
    inner = params.get("strategy")
    if isinstance(inner, dict) and isinstance(inner.get("name"), str):
        chain += _strategy_chain(inner["name"], dict(inner.get("params") or {}))
    return chain


@RULES.register("dp-releases", help="client.dp with a step or strategy that releases more")
def dp_releases(scenario: Scenario) -> list[Problem]:
    """Under ``client.dp`` everything a client releases must be private."""
    if scenario.client.dp is None:
        return []
    import fedsim.clients.app  # noqa: F401  (registers every shipped step)
    from fedsim.clients.dp import DP_EVALUATE_REFUSAL
    from fedsim.clients.losses import LOSS_DP_REFUSALS
    from fedsim.clients.steps import STEPS
    from fedsim.scenario_loading import accepted_params

    problems = []
    for name, cls in _strategy_chain(scenario.strategy.name, dict(scenario.strategy.params)):
        step = STEPS.get(client_step_of(cls))
        if step.dp_refusal is not None:
            reason = f"cannot be used with strategy '{name}': {step.dp_refusal}"
            problems.append(Problem("client.dp", reason))
        if "train_loss_key" in (accepted_params(cls) or []):
            problems.append(
                Problem(
                    "client.dp",
                    f"cannot be used with strategy '{name}': it weights updates by the "
                    "clients' training loss, which stays on the device under DP-SGD",
                )
            )
    loss = scenario.client.loss
    if loss.name in LOSS_DP_REFUSALS:
        loss_refusal = LOSS_DP_REFUSALS.get(loss.name)(loss)
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


@RULES.register("regression-targets", help="least-squares data with classification keys")
def regression_targets(scenario: Scenario) -> list[Problem]:
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
    if regression and scenario.client.loss.name != "squared_error":
        trains = any(
            client_step_of(cls) != "moment-product"
            for _, cls in _strategy_chain(scenario.strategy.name, dict(scenario.strategy.params))
        )
        if trains:
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


@RULES.register("colluding-attacks", help="alie/ipm need a strategy on Flower's round loop")
def colluding_attacks(scenario: Scenario) -> list[Problem]:
    """Colluding attackers are simulated by a wrapper, which needs Flower's round loop."""
    from flwr.serverapp.strategy import Strategy

    from fedsim.strategies.collusion import COLLUSIONS

    attackers = scenario.system.attackers
    if attackers is None or attackers.attack.name not in COLLUSIONS:
        return []
    for name, cls in _strategy_chain(scenario.strategy.name, dict(scenario.strategy.params))[:1]:
        if issubclass(cls, Strategy) and cls.start is not Strategy.start:
            reason = (
                f"'{attackers.attack.name}' cannot be used with strategy '{name}': its "
                "attackers collude through the server's round loop, which it replaces"
            )
            return [Problem("system.attackers.attack", reason)]
    return []


@RULES.register("strategy-checks", help="what each strategy needs of the scenario (its check)")
def strategy_checks(scenario: Scenario) -> list[Problem]:
    """Each strategy's (and each inner strategy's) own ``check(scenario, params)``.

    A strategy that needs a particular model, partitioner or engine says so in a
    classmethod ``check`` returning problems (each naming the key to change), so
    validation refuses the scenario before anything trains instead of the run failing
    in its first round.
    """
    problems: list[Problem] = []
    chain = _strategy_chain(scenario.strategy.name, dict(scenario.strategy.params))
    params: dict[str, Any] = dict(scenario.strategy.params)
    for _, cls in chain:
        check = getattr(cls, "check", None)
        if callable(check):
            problems += check(scenario, params)
        inner = params.get("strategy")
        params = dict(inner.get("params") or {}) if isinstance(inner, dict) else {}
    return problems


def check_combinations(scenario: Scenario) -> list[Problem]:
    """Return the problems every registered rule finds in ``scenario``."""
    return [p for name in RULES.names() for p in RULES.get(name)(scenario)]
