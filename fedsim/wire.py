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
DATA_PATH: Final = "data-path"
NODE_DEVICE: Final = "device"  # a node's training device (engine.device's choices)
# true/false: this node attacks (wins over the scenario's system.attackers draw), so a
# deployed SuperNode can be made an attacker from its own --node-config.
ATTACKER: Final = "attacker"

# Server -> client config.
SERVER_ROUND: Final = "server-round"  # set by Flower's strategies
LOCAL_STEP: Final = "local-step"  # name of the client step to run (default: inferred)
PROXIMAL_MU: Final = "proximal-mu"  # set by Flower's FedProx
CURV_LAMBDA: Final = "curv-lambda"  # FedCurv: penalty weight (selects the curvature step)
CURV_FISHER: Final = "curv-fisher"  # FedCurv: "empirical" | "batch" Fisher estimate
# FedCurv: the round whose replies the sums U, V, W cover, and the node ids (as strings:
# Flower's node ids are unsigned 64-bit) of the clients whose terms are in them.
CURV_SUMS_ROUND: Final = "curv-sums-round"
CURV_MEMBERS: Final = "curv-members"
# FedCurv array keys, "<prefix><kind>.<parameter name>" in the one ArrayRecord of a
# message: server -> client U, V, W (sums over other clients); client -> server F, FT.
CURV_PREFIX: Final = "curv."
# FedAwS: the class a client holds and the one class-embedding row it may see (never
# the whole matrix). Config: the class, the positive margin, whether to train the row;
# array key (both directions): the row.
FEDAWS_CLASS: Final = "fedaws-class"
FEDAWS_POSITIVE_MARGIN: Final = "fedaws-positive-margin"
FEDAWS_TRAIN_ROW: Final = "fedaws-train-row"
FEDAWS_ROW: Final = "fedaws.row"

# Data poisoning (system.attackers label-flip): train on labels y -> C - 1 - y.
LABEL_FLIP: Final = "label-flip"

# Query actions (message type "query.<action>").
QUERY_LABELS: Final = "labels"  # reply metrics: LABELS, the distinct labels the node holds
# Approximate gradient coding (AGC): the straggle probability p the encoding weights
# assume (the sharing plan is the nodes' data); the reply's arrays are the encoded
# gradient, "<prefix><parameter name>".
AGC_P: Final = "agc-p"
AGC_GRAD_PREFIX: Final = "agc.grad."
# LDPC moment encoding: the server sends a zero MOMENT_PRODUCT array (shape: the block's
# rows) beside the model; the client replies it filled with its coded block's product
# A_j θ - c_j, and its partition id as the MOMENT_BLOCK metric (the code position).
MOMENT_PRODUCT: Final = "moment.product"
MOMENT_BLOCK: Final = "moment-block"

# LASGD: block messages are "train.<LASGD_ACTION>"; the worker merges x <- a*x + b with
# a = LASGD_SCALE from the config and b the message's ArrayRecord (none: keep computing).
LASGD_ACTION: Final = "lasgd"
LASGD_SCALE: Final = "lasgd-scale"
# Config flag (bool): the simulated network carries nothing for this message (a job on
# data the node already holds); the in-process clock charges its compute only. A
# decentralised strategy that times its own communication (LASGD's All-Reduce) sets it.
LOCAL_COMPUTE: Final = "local-compute"

# Reply arrays that stand for one model parameter each, "<prefix><parameter name>"
# (FedCurv's F and F⊙θ, AGC's encoded gradient): the engine checks each against the
# shape of the parameter it names, and refuses reply arrays it cannot place.
PER_PARAMETER_PREFIXES: Final = (f"{CURV_PREFIX}F.", f"{CURV_PREFIX}FT.", AGC_GRAD_PREFIX)

# Client -> server metrics.
NUM_EXAMPLES: Final = "num-examples"
TRAIN_LOSS: Final = "train-loss"
TRAIN_SAMPLES: Final = "train-samples"  # examples processed: drives the virtual clock
DURATION_S: Final = "duration-s"  # wall-clock seconds of local work
EVAL_LOSS: Final = "eval-loss"
EVAL_ACCURACY: Final = "eval-accuracy"
EPSILON: Final = "epsilon"  # DP-SGD: the client's privacy spent so far (at its delta)
LABELS: Final = "labels"  # reply to a labels query: list of ints
# client.weights: bytes of the client's model in its fixed-point encoding.
MODEL_BYTES: Final = "model-bytes"
# 1 if the reply came from an attacking node, else 0 (only when system.attackers is set).
ATTACKER_METRIC: Final = "attacker"

# SCAFFOLD: the option ("I" | "II") by which clients update their control variate c_i;
# array keys "<prefix><parameter name>": server -> client the server control variate c,
# client -> server the change of the client's control variate, c_i+ - c_i (an array
# under a key the server sent, in the shape it was sent).
SCAFFOLD_OPTION: Final = "scaffold-option"
SCAFFOLD_C_PREFIX: Final = "scaffold.c."
# SCAFFOLD, per node: the latest round whose Δc_i from this node the server added to c
# (0: none). The client commits the c_i+ it computed in that round, and rolls back any
# other (a reply that missed the deadline, dropped or failed never reached c).
SCAFFOLD_CONFIRMED: Final = "scaffold-confirmed-round"
