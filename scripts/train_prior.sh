#!/usr/bin/env bash
# Train the small top-level prior (level 1) on the codes of logs/small_vqvae (README: "Prior").
#   scripts/train_prior.sh [AUDIO_DIR=./audio] [NGPUS=all GPUs or 1] [extra --key=value ...]
# sample_length = n_ctx 8192 * top-level hop 256. Checkpoints: logs/small_prior/.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
AUDIO="$(audio_dir "${1:-./audio}")"; NGPUS="${2:-$(default_ngpus)}"; shift $(( $# < 2 ? $# : 2 ))
launch "$NGPUS" --hps=small_vqvae,small_prior,all_fp16,cpu_ema --name=small_prior \
    --sample_length=2097152 --bs=4 --audio_files_dir="$AUDIO" --labels=False --train --test --aug_shift --aug_blend \
    --restore_vqvae=logs/small_vqvae/checkpoint_latest.pth.tar --prior --levels=2 --level=1 --weight_decay=0.01 \
    --save_iters=1000 "$@"
