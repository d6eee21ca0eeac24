# Sourced by the launch scripts: `run CMD ARGS...` prints the command (quoted so it can be copied into
# a shell) and runs it unless the calling script set dry_run=1.
run() {
  local shown="+" argument
  for argument in "$@"; do
    if [[ "$argument" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then shown+=" $argument"; else shown+=" '${argument//\'/\'\\\'\'}'"; fi
  done
  echo "$shown"
  if [[ "${dry_run:-0}" -eq 0 ]]; then "$@"; fi
}
