"""Keys that cross the wire between ServerApp and ClientApp, defined once.

Strategies and clients never import each other; both import these constants. Keys
follow Flower's kebab-case convention (``num-examples``, ``proximal-mu``).
"""

from __future__ import annotations

from typing import Final

# Record names inside a message's RecordDict (Flower's defaults).
ARRAYS: Final = "arrays"
CONFIG: Final = "config"
METRICS: Final = "metrics"

# Run config (pyproject [tool.flwr.app.config] or --run-config).
RUN_SCENARIO: Final = "scenario"  # path of the resolved scenario YAML
RUN_DIR: Final = "run-dir"  # where the ServerApp writes metrics
# Deployment: nodes share no file system with the server, so the YAML text travels.
RUN_SCENARIO_YAML: Final = "scenario-yaml"  # the resolved scenario itself (wins over the path)
RUN_WAIT_NODES: Final = "wait-nodes"  # nodes the ServerApp waits for before round 1

# Node config (per node; `flower-supernode --node-config`).
PARTITION_ID: Final = "partition-id"
NUM_PARTITIONS: Final = "num-partitions"
DATA_PATH: Final = "data-path"

# Server -> client config.
SERVER_ROUND: Final = "server-round"  # set by Flower's strategies
LOCAL_STEP: Final = "local-step"  # name of the client step to run (default: inferred)
PROXIMAL_MU: Final = "proximal-mu"  # set by Flower's FedProx
CURV_LAMBDA: Final = "curv-lambda"  # FedCurv: penalty weight (selects the curvature step)
CURV_FISHER: Final = "curv-fisher"  # FedCurv: "empirical" | "batch" Fisher estimate
# FedCurv array keys, "<prefix><kind>.<parameter name>" in the one ArrayRecord of a
# message: server -> client U, V, W (sums over other clients); client -> server F, FT.
CURV_PREFIX: Final = "curv."

# Client -> server metrics.
NUM_EXAMPLES: Final = "num-examples"
TRAIN_LOSS: Final = "train-loss"
TRAIN_SAMPLES: Final = "train-samples"  # examples processed: drives the virtual clock
DURATION_S: Final = "duration-s"  # wall-clock seconds of local work
EVAL_LOSS: Final = "eval-loss"
EVAL_ACCURACY: Final = "eval-accuracy"
EPSILON: Final = "epsilon"  # DP-SGD: the client's privacy spent so far (at its delta)
