"""Keys that cross the wire between ServerApp and ClientApp, defined once.

Strategies and clients never import each other; both import these constants. Keys
follow Flower's kebab-case convention (``num-examples``, ``proximal-mu``).
"""

from __future__ import annotations

from typing import Final

# Keys that belong to one algorithm live in its package (fedsim/algorithms/<name>/keys.py);
# named here too for code written before the move.
from fedsim.algorithms.agc.keys import (
    AGC_GRAD_PREFIX as AGC_GRAD_PREFIX,
)
from fedsim.algorithms.agc.keys import (
    AGC_P as AGC_P,
)
from fedsim.algorithms.fedaws.keys import (
    FEDAWS_CLASS as FEDAWS_CLASS,
)
from fedsim.algorithms.fedaws.keys import (
    FEDAWS_POSITIVE_MARGIN as FEDAWS_POSITIVE_MARGIN,
)
from fedsim.algorithms.fedaws.keys import (
    FEDAWS_ROW as FEDAWS_ROW,
)
from fedsim.algorithms.fedaws.keys import (
    FEDAWS_TRAIN_ROW as FEDAWS_TRAIN_ROW,
)
from fedsim.algorithms.fedaws.keys import (
    LABELS as LABELS,
)
from fedsim.algorithms.fedaws.keys import (
    QUERY_LABELS as QUERY_LABELS,
)
from fedsim.algorithms.fedcurv.keys import (
    CURV_FISHER as CURV_FISHER,
)
from fedsim.algorithms.fedcurv.keys import (
    CURV_LAMBDA as CURV_LAMBDA,
)
from fedsim.algorithms.fedcurv.keys import (
    CURV_MEMBERS as CURV_MEMBERS,
)
from fedsim.algorithms.fedcurv.keys import (
    CURV_PREFIX as CURV_PREFIX,
)
from fedsim.algorithms.fedcurv.keys import (
    CURV_SUMS_ROUND as CURV_SUMS_ROUND,
)
from fedsim.algorithms.lasgd.keys import (
    LASGD_ACTION as LASGD_ACTION,
)
from fedsim.algorithms.lasgd.keys import (
    LASGD_SCALE as LASGD_SCALE,
)
from fedsim.algorithms.ldpc.keys import (
    MOMENT_BLOCK as MOMENT_BLOCK,
)
from fedsim.algorithms.ldpc.keys import (
    MOMENT_PRODUCT as MOMENT_PRODUCT,
)
from fedsim.algorithms.scaffold.keys import (
    SCAFFOLD_C_PREFIX as SCAFFOLD_C_PREFIX,
)
from fedsim.algorithms.scaffold.keys import (
    SCAFFOLD_OPTION as SCAFFOLD_OPTION,
)

# Flower's error code of a reply whose ClientApp raised (flwr.common.constant.ErrorCode):
# a number on the wire; a client's traceback follows TRACEBACK_MARK in the reason.
CLIENT_APP_RAISED_EXCEPTION: Final = 2
TRACEBACK_MARK: Final = "\nclient traceback:\n"

# Record names inside a message's RecordDict (Flower's defaults).
ARRAYS: Final = "arrays"
CONFIG: Final = "config"
METRICS: Final = "metrics"

# Run config (pyproject [tool.flwr.app.config] or --run-config).
RUN_SCENARIO: Final = "scenario"  # path of the resolved scenario YAML
RUN_SCENARIO_SHA256: Final = "scenario-sha256"  # its content's digest: the apps read only that
RUN_DIR: Final = "run-dir"  # where the ServerApp writes metrics
RUN_RESUME: Final = "resume"  # true: continue from the run dir's checkpoint
# Set by engines whose client processes they do not start (Ray's actors): the ClientApp
# calls torch.set_num_threads with it once per process (engine.threads_per_worker).
RUN_TORCH_THREADS: Final = "torch-threads"
# Deployment: nodes share no file system with the server, so the YAML text travels.
RUN_SCENARIO_YAML: Final = "scenario-yaml"  # the resolved scenario itself (wins over the path)
RUN_WAIT_NODES: Final = "wait-nodes"  # nodes the ServerApp waits for before round 1

# Node config (per node; `flower-supernode --node-config`).
PARTITION_ID: Final = "partition-id"
NUM_PARTITIONS: Final = "num-partitions"
# Message type asking a node which partition it holds (reply metrics: PARTITION_ID);
# the server's virtual clock knows Flower's nodes by their partitions.
QUERY_PARTITION: Final = "query.partition"
DATA_PATH: Final = "data-path"
NODE_DEVICE: Final = "device"  # a node's training device (engine.device's choices)
# true/false: this node attacks (wins over the scenario's system.attackers draw), so a
# deployed SuperNode can be made an attacker from its own --node-config.
ATTACKER: Final = "attacker"

# Server -> client config.
SERVER_ROUND: Final = "server-round"  # set by Flower's strategies
LOCAL_STEP: Final = "local-step"  # name of the client step to run (default: inferred)
PROXIMAL_MU: Final = "proximal-mu"  # set by Flower's FedProx

# Data poisoning (system.attackers label-flip): train on labels y -> C - 1 - y.
LABEL_FLIP: Final = "label-flip"


# Config flag (bool): the simulated network carries nothing for this message (a job on
# data the node already holds); the in-process clock charges its compute only. A
# decentralised strategy that times its own communication (LASGD's All-Reduce) sets it.
LOCAL_COMPUTE: Final = "local-compute"


# Client -> server metrics.
NUM_EXAMPLES: Final = "num-examples"
TRAIN_LOSS: Final = "train-loss"
TRAIN_SAMPLES: Final = "train-samples"  # examples processed: drives the virtual clock
DURATION_S: Final = "duration-s"  # wall-clock seconds of local work
EVAL_LOSS: Final = "eval-loss"
EVAL_ACCURACY: Final = "eval-accuracy"
EPSILON: Final = "epsilon"  # DP-SGD: the client's privacy spent so far (at its delta)
# client.weights: bytes of the client's model in its fixed-point encoding.
MODEL_BYTES: Final = "model-bytes"
# 1 if the reply came from an attacking node, else 0 (only when system.attackers is set).
ATTACKER_METRIC: Final = "attacker"
