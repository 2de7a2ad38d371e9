#!/usr/bin/env bash
# Train a small top-level prior (level 2) on a new dataset, without labels, on the codes of the
# released 3-level VQ-VAE (downloaded on first use) (README: "Reuse pre-trained VQ-VAE").
#   scripts/train_pretrained_vqvae_prior.sh [AUDIO_DIR=./audio] [NGPUS=all GPUs or 1] [extra --key=value ...]
# Checkpoints: logs/pretrained_vqvae_small_prior/.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
AUDIO="$(audio_dir "${1:-./audio}")"; NGPUS="${2:-$(default_ngpus)}"; shift $(( $# < 2 ? $# : 2 ))
launch "$NGPUS" --hps=vqvae,small_prior,all_fp16,cpu_ema --name=pretrained_vqvae_small_prior \
    --sample_length=1048576 --bs=4 --aug_shift --aug_blend --audio_files_dir="$AUDIO" \
    --labels=False --train --test --prior --levels=3 --level=2 --weight_decay=0.01 --save_iters=1000 "$@"
