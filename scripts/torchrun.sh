#!/usr/bin/env bash
# Multi-node lvdm training with torchrun (no scheduler): run this on every node.
# NPROC_PER_NODE defaults to the number of GPUs here.
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 scripts/torchrun.sh --config recipes/... --config strategies/zero2.yaml
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 scripts/torchrun.sh --config recipes/... --config strategies/zero2.yaml
#
# Everything after the script name is passed to `lvdm fit` (number of nodes and processes come
# last, from NNODES / NPROC_PER_NODE, so that a recipe's `devices: 1` does not override them). torchrun starts NPROC_PER_NODE
# processes per node and sets RANK / LOCAL_RANK / WORLD_SIZE, which Lightning picks up
# (TorchElasticEnvironment); the c10d rendezvous on MASTER_ADDR:MASTER_PORT joins the nodes.
set -euo pipefail

NNODES=${NNODES:-1}
PYTHON=${PYTHON:-python}   # the environment lvdm is installed in, e.g. PYTHON=.venv/bin/python
NPROC_PER_NODE=${NPROC_PER_NODE:-$("$PYTHON" -c "import torch; print(max(1, torch.cuda.device_count()))")}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
RDZV_ID=${RDZV_ID:-lvdm}

exec "$PYTHON" -m torch.distributed.run \
    --nnodes "$NNODES" --nproc_per_node "$NPROC_PER_NODE" --node_rank "$NODE_RANK" \
    --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv_id "$RDZV_ID" \
    -m lvdm.cli fit "$@" --trainer.num_nodes "$NNODES" --trainer.devices "$NPROC_PER_NODE"
