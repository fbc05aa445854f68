#!/usr/bin/env bash
# modules.sh MODDIR MODULE... : prints the .ko paths (relative to MODDIR/..) of MODULE and
# everything it depends on, dependencies first, each once. No depmod/modinfo needed: the
# dependencies are the `depends=` string of each .ko. Modules built into the kernel
# (modules.builtin) are skipped with a note on stderr.
set -euo pipefail
moddir=$1; shift
release=$(basename "$moddir")
declare -A path_of=() seen=()
while IFS= read -r f; do
  n=$(basename "$f" .ko); n=${n//-/_}
  path_of[$n]=${f#"$moddir"/}
done < <(find "$moddir/kernel" -name '*.ko' | LC_ALL=C sort)

visit() {
  local n=${1//-/_}
  [ -n "${seen[$n]:-}" ] && return 0
  seen[$n]=1
  local p=${path_of[$n]:-}
  if [ -z "$p" ]; then
    if grep -q "/${1}.ko\$\|/${n}.ko\$" "$moddir/modules.builtin" 2>/dev/null; then
      echo "modules: $1 is built into the kernel" >&2; return 0
    fi
    echo "modules: $1 not found in $moddir" >&2; return 1
  fi
  local deps
  deps=$(strings -a "$moddir/$p" | sed -n 's/^depends=//p' | head -1)
  local d
  for d in ${deps//,/ }; do visit "$d"; done
  echo "$release/$p"
}
for m in "$@"; do visit "$m"; done
