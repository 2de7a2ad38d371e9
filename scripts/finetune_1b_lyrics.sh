#!/usr/bin/env bash
# Fine-tune the released 1B lyrics top-level prior (downloaded on first use) to new styles
# (README: "Fine-tune pre-trained top-level prior"; needs metadata, and a GPU with >= 15 GB).
#   scripts/finetune_1b_lyrics.sh [AUDIO_DIR=./audio] [NGPUS=all GPUs or 1] [extra --key=value ...]
# Checkpoints: logs/finetuned/.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
AUDIO="$(audio_dir "${1:-./audio}")"; NGPUS="${2:-$(default_ngpus)}"; shift $(( $# < 2 ? $# : 2 ))
launch "$NGPUS" --hps=vqvae,prior_1b_lyrics,all_fp16,cpu_ema --name=finetuned \
    --sample_length=1048576 --bs=1 --aug_shift --aug_blend --audio_files_dir="$AUDIO" \
    --labels=True --train --test --prior --levels=3 --level=2 --weight_decay=0.01 --save_iters=1000 "$@"
