#!/usr/bin/env bash
# Train the bundled demo model (jukebox/models/demo) with jukebox/train.py on CPU, then export it.
# Usage: scripts/train_demo.sh [vqvae|prior_2|prior_1|prior_0|export|all]   (default: all)
# Data: scripts/prepare_demo_data.sh (data/demo/train). Runs 2 MPI ranks with one thread each;
# stop any stage early with Ctrl-C/SIGTERM (it saves logs/<name>/checkpoint_latest.pth.tar) and
# resume it by running the stage again. Step budgets: VQ_STEPS, PRIOR_STEPS (environment).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MPI=${MPI:-.venv/bin/mpiexec -n 2}
DATA=${DATA:-data/demo/train}
VQ_STEPS=${VQ_STEPS:-1000}
PRIOR_STEPS=${PRIOR_STEPS:-1000}
VQ_CKPT=logs/demo_vqvae/checkpoint_latest.pth.tar
export OMP_NUM_THREADS=1
# --mu=0.99: the weights exported are the EMA; the original's default decay for this batch (0.999) would
# still hold a quarter of the random initialisation after the ~1500 steps a CPU run affords.
COMMON=(--audio_files_dir="$DATA" --labels=False --train --aug_shift --aug_blend --nworkers=1
        --save_iters=100 --log_steps=10 --mu=0.99)

resume() {  # --restore_<kind>=<checkpoint> to continue a stage that was stopped
    local ckpt="logs/$1/checkpoint_latest.pth.tar"
    if [ -f "$ckpt" ]; then echo "--restore_$2=$ckpt"; fi
}

vqvae() {
    $MPI $PY jukebox/train.py --hps=demo_small_vqvae --name=demo_vqvae --sample_length=8192 --bs=4 \
        --lr=0.0005 --exit_train="$VQ_STEPS" "${COMMON[@]}" $(resume demo_vqvae vqvae)
}

prior() {  # prior <level> <hparams set> <sample_length>; one port per level so that they can run together
    $MPI $PY jukebox/train.py --hps=demo_small_vqvae,"$2" --name="demo_prior_level_$1" \
        --restore_vqvae="$VQ_CKPT" --prior --levels=3 --level="$1" --sample_length="$3" --bs=4 --port=$((29510 + $1)) \
        --lr=0.001 --weight_decay=0.01 --exit_train="$PRIOR_STEPS" "${COMMON[@]}" \
        $(resume "demo_prior_level_$1" prior)
}

export_weights() {  # the EMA weights of each stage, float16, into the package
    $PY scripts/export_demo.py --vqvae="$VQ_CKPT" \
        --priors=logs/demo_prior_level_0/checkpoint_latest.pth.tar,logs/demo_prior_level_1/checkpoint_latest.pth.tar,logs/demo_prior_level_2/checkpoint_latest.pth.tar \
        --out=jukebox/models/demo
}

case "${1:-all}" in
    vqvae) vqvae ;;
    prior_2) prior 2 demo_small_prior 65536 ;;
    prior_1) prior 1 demo_small_upsampler 16384 ;;
    prior_0) prior 0 demo_small_upsampler 4096 ;;
    export) export_weights ;;
    all) vqvae; prior 2 demo_small_prior 65536; prior 1 demo_small_upsampler 16384;
         prior 0 demo_small_upsampler 4096; export_weights ;;
    *) echo "usage: $0 [vqvae|prior_2|prior_1|prior_0|export|all]" >&2; exit 2 ;;
esac
