#!/usr/bin/env bash
# Fetch the training data of the bundled demo model: the album of Debian's `singularity-music`
# package (Max McCracken, CC-BY-SA-3.0; 13 tracks, 61 min, Ogg Vorbis 48 kHz stereo).
# Usage: scripts/prepare_demo_data.sh [OUT_DIR]   (default: data/demo)
# Writes OUT_DIR/train/ (11 tracks) and OUT_DIR/test/ (2 held-out tracks), plus the licence.
set -euo pipefail
OUT=${1:-data/demo}
HELD_OUT=("Through Space.ogg" "Inevitable.ogg")

if [ -d "$OUT/train" ] && [ -d "$OUT/test" ]; then
    echo "prepare_demo_data.sh: $OUT already prepared"
    exit 0
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
( cd "$WORK" && apt-get download singularity-music >/dev/null ) || {
    echo "prepare_demo_data.sh: 'apt-get download singularity-music' failed; it needs a Debian/Ubuntu machine with network access to its package mirror" >&2
    exit 1
}
dpkg -x "$WORK"/singularity-music_*.deb "$WORK/pkg"
SRC="$WORK/pkg/usr/share/games/singularity/music"
mkdir -p "$OUT.tmp/train" "$OUT.tmp/test"
for f in "$SRC"/*.ogg; do    # the 13 album tracks; the win/ and lose/ jingles are left out
    name=$(basename "$f")
    dest=train
    for h in "${HELD_OUT[@]}"; do [ "$name" = "$h" ] && dest=test; done
    cp "$f" "$OUT.tmp/$dest/$name"
done
cp "$WORK/pkg/usr/share/doc/singularity-music/copyright" "$OUT.tmp/LICENSE-singularity-music.txt"
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
echo "prepare_demo_data.sh: $(ls "$OUT/train" | wc -l) training and $(ls "$OUT/test" | wc -l) held-out tracks in $OUT"
