#!/usr/bin/env bash
# Train the small upsampler (level 0) on the codes of logs/small_vqvae (README: "Prior").
#   scripts/train_upsampler.sh [AUDIO_DIR=./audio] [NGPUS=all GPUs or 1] [extra --key=value ...]
# sample_length = n_ctx 8192 * level-0 hop 32. Checkpoints: logs/small_upsampler/.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
AUDIO="$(audio_dir "${1:-./audio}")"; NGPUS="${2:-$(default_ngpus)}"; shift $(( $# < 2 ? $# : 2 ))
launch "$NGPUS" --hps=small_vqvae,small_upsampler,all_fp16,cpu_ema --name=small_upsampler \
    --sample_length=262144 --bs=4 --audio_files_dir="$AUDIO" --labels=False --train --test --aug_shift --aug_blend \
    --restore_vqvae=logs/small_vqvae/checkpoint_latest.pth.tar --prior --levels=2 --level=0 --weight_decay=0.01 \
    --save_iters=1000 "$@"
