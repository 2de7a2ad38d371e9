#!/usr/bin/env bash
# Train a small top-level prior conditioned on artist, genre and timing, on the released VQ-VAE's
# codes (README: "Train with labels"; the dataset must provide metadata, see the README).
#   scripts/train_labelled_prior.sh [AUDIO_DIR=./audio] [NGPUS=all GPUs or 1] [extra --key=value ...]
# Checkpoints: logs/pretrained_vqvae_small_prior_labels/.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
AUDIO="$(audio_dir "${1:-./audio}")"; NGPUS="${2:-$(default_ngpus)}"; shift $(( $# < 2 ? $# : 2 ))
launch "$NGPUS" --hps=vqvae,small_labelled_prior,all_fp16,cpu_ema --name=pretrained_vqvae_small_prior_labels \
    --sample_length=1048576 --bs=4 --aug_shift --aug_blend --audio_files_dir="$AUDIO" \
    --labels=True --train --test --prior --levels=3 --level=2 --weight_decay=0.01 --save_iters=1000 "$@"
