#!/usr/bin/env bash
# Train the small two-level VQ-VAE (README: "VQVAE").
#   scripts/train_vqvae.sh [AUDIO_DIR=./audio] [NGPUS=all GPUs or 1] [extra --key=value ...]
# Checkpoints: logs/small_vqvae/checkpoint_latest.pth.tar. Monitor with: tensorboard --logdir logs
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
AUDIO="$(audio_dir "${1:-./audio}")"; NGPUS="${2:-$(default_ngpus)}"; shift $(( $# < 2 ? $# : 2 ))
launch "$NGPUS" --hps=small_vqvae --name=small_vqvae --sample_length=262144 --bs=4 \
    --audio_files_dir="$AUDIO" --labels=False --train --aug_shift --aug_blend "$@"
