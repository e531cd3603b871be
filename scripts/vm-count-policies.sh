#!/usr/bin/env bash
# Count how many TracingPolicy files of DIR a stock Debian kernel serves (compile-only, as
# `tetrapipe tracingpolicy add` would, against that kernel's probed features and BTF), and why
# each refused one is refused. Boots the kernel once under qemu (scripts/vm/runner.py) and runs
# scripts/count-policies.py DIR inside. DIR must be readable from this host's / (the guest sees it
# read-only over 9p), e.g. the fetched library in /var/cache/tetrapipe-build/tetragon-library.
#
# --with-named-files: count the refused ones again with the files Tetragon's library names but a
# Debian install lacks put in place, only inside the count's own mount namespace
# (scripts/count-policies.py, scripts/named_files.py).
#
#   scripts/vm-count-policies.sh DIR [--kernel 6.12|6.1] [--json OUT] [--load] [--with-named-files]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] || { sed -n '2,12p' "$0" >&2; exit 2; }
dir=$(realpath "$1"); shift
kernel=6.12; extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --kernel) kernel=$2; shift 2 ;;
    --json) extra+=(--json "$(realpath -m "$2")"); out_json=$(realpath -m "$2"); shift 2 ;;
    --load) extra+=(--load); shift ;;
    --with-named-files) extra+=(--with-named-files); shift ;;
    *) echo "vm-count-policies: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -d "$dir" ] || { echo "vm-count-policies: $dir is not a directory" >&2; exit 2; }
results=$(mktemp -d "${TMPDIR:-/tmp}/tetrapipe-vm-count-XXXXXX")
guest_json=/tetrapipe-vm/count.json
# In the guest PID 1 is the harness's initramfs init (scripts/vm/init), whose root has no /usr/bin:
# a policy naming /procRoot/1/root/... (Tetragon's uprobe-host) would be judged against that root,
# not the installed system's as on a host. The count runs as PID 1 of its own PID namespace (its own
# /proc) in the Debian root, so /proc/1/root is that root, as on an installed host. Only the count
# does this; the guest test suites keep the harness as it is. Its mount namespace is private too
# (--mount --propagation private): --with-named-files mounts there (in a child namespace of its own).
cmd=(unshare --pid --fork --mount --propagation private --mount-proc "$repo/.venv/bin/python" "$repo/scripts/count-policies.py" "$dir"
     --json "$guest_json")
[ ${#extra[@]} -gt 0 ] && for a in "${extra[@]}"; do
  case "$a" in --load|--with-named-files) cmd+=("$a") ;; esac
done
rc=0
python3 "$repo/scripts/vm/runner.py" "$kernel" --cwd "$repo" --timeout "${TETRAPIPE_VM_TIMEOUT:-1800}" \
  --results "$results" -- "${cmd[@]}" || rc=$?

if [ -n "${out_json:-}" ] && [ -f "$results/count.json" ]; then cp "$results/count.json" "$out_json"; fi
rm -rf "$results"
exit $rc
