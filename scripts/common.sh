# Shared by the launch scripts in this folder (source it, do not run it).
#
# Each script runs one training recipe of the README as
#     mpiexec -n NGPUS python jukebox/train.py --hps=... --audio_files_dir=AUDIO_DIR ...
# from the repository root, so checkpoints land in logs/{name} as in the README.
#
# Environment: PYTHON (default: .venv/bin/python if present, else python), MPIEXEC (default:
# the mpiexec beside that Python, else mpiexec on PATH), DRY_RUN=1 prints the command instead
# of running it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
if [[ -z "${MPIEXEC:-}" ]]; then
    if [[ -x "$(dirname "$(command -v "$PYTHON")")/mpiexec" ]]; then
        MPIEXEC="$(dirname "$(command -v "$PYTHON")")/mpiexec"
    else
        MPIEXEC=mpiexec
    fi
fi

default_ngpus() {
    local n=0
    if command -v nvidia-smi >/dev/null 2>&1; then n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true); fi
    if [[ "$n" -gt 0 ]]; then echo "$n"; else echo 1; fi
}

# audio_dir DIR: DIR as an absolute path (the run happens in the repository root).
audio_dir() {
    if [[ ! -d "$1" ]]; then
        echo "error: audio directory '$1' does not exist; pass it as the first argument" >&2
        exit 2
    fi
    (cd "$1" && pwd)
}

# launch NGPUS ARGS...: run jukebox/train.py ARGS... on NGPUS ranks.
launch() {
    local ngpus="$1"; shift
    local cmd=("$MPIEXEC" -n "$ngpus" "$PYTHON" jukebox/train.py "$@")
    if [[ -n "${DRY_RUN:-}" ]]; then
        printf '%s\n' "${cmd[*]}"
    else
        cd "$ROOT"
        exec "${cmd[@]}"
    fi
}
