#!/bin/sh
# Plan preview for CI: plans each playbook given, offline (validation needs no
# secret: no Vault token, no admin credential), with
#   rekey plan PLAYBOOK --format markdown --detailed-exitcode
# and writes one Markdown comment for the pull/merge request to OUT.
#
#   examples/ci/plan-preview.sh OUT PLAYBOOK...
#
# Exit 0 when every playbook is valid (whether or not it has work to do), 1 when
# one is not (the comment shows rekey's diagnostics), 2 on a usage error.
# REKEY names the binary (default: rekey on PATH). The playbooks' ${VAULT_ADDR}
# needs a value, not a reachable Vault: CI sets a placeholder.
set -u
if [ $# -lt 1 ]; then
  echo "usage: $0 OUT [PLAYBOOK...]" >&2
  exit 2
fi
out=$1
shift
rekey=${REKEY:-rekey}
tmp=$(mktemp -d) || exit 2
trap 'rm -rf "$tmp"' EXIT
status=0
{
  echo "<!-- rekey-plan-preview -->"
  echo "## rekey plan preview"
  if [ $# -eq 0 ]; then
    echo
    echo "No playbook changed."
  fi
} >"$out"
for playbook in "$@"; do
  "$rekey" plan "$playbook" --format markdown --detailed-exitcode >"$tmp/plan.md" 2>"$tmp/plan.err"
  code=$?
  {
    echo
    echo "### \`$playbook\`"
    echo
    case $code in
      0) echo "Valid; nothing to do." ;;
      10) cat "$tmp/plan.md" ;;
      *)
        echo "**Invalid** (\`rekey plan\` exit $code):"
        echo
        echo '```text'
        cat "$tmp/plan.err"
        echo '```'
        status=1
        ;;
    esac
  } >>"$out"
  echo "$playbook: rekey plan exit $code" >&2
done
exit $status
