#!/usr/bin/env bash
# Continue training the small prior from its latest checkpoint with the learning rate decaying
# linearly to 0 (README: "Learning rate annealing").
#   scripts/anneal_prior.sh [AUDIO_DIR=./audio] [NGPUS=all GPUs or 1] [ALREADY_TRAINED_STEPS=the checkpoint's step]
#                           [DECAY_STEPS=10000] [extra --key=value ...]
# CHECKPOINT (environment) picks the checkpoint; default logs/small_prior/checkpoint_latest.pth.tar.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
AUDIO="$(audio_dir "${1:-./audio}")"; NGPUS="${2:-$(default_ngpus)}"
CHECKPOINT="${CHECKPOINT:-logs/small_prior/checkpoint_latest.pth.tar}"
STEPS="${3:-}"; DECAY="${4:-10000}"; shift $(( $# < 4 ? $# : 4 ))
if [[ -z "$STEPS" ]]; then
    STEPS="$(cd "$ROOT" && "$PYTHON" -c 'import sys, torch
print(torch.load(sys.argv[1], map_location="cpu", weights_only=True)["step"])' "$CHECKPOINT")"
fi
launch "$NGPUS" --hps=small_vqvae,small_prior,all_fp16,cpu_ema --name=small_prior \
    --sample_length=2097152 --bs=4 --audio_files_dir="$AUDIO" --labels=False --train --test --aug_shift --aug_blend \
    --restore_vqvae=logs/small_vqvae/checkpoint_latest.pth.tar --prior --levels=2 --level=1 --weight_decay=0.01 \
    --save_iters=1000 --restore_prior="$CHECKPOINT" --lr_use_linear_decay --lr_start_linear_decay="$STEPS" \
    --lr_decay="$DECAY" "$@"
