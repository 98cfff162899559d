# rekey ssh provider: ends an account's SSH sessions on this host (breach mode).
# Run as: sh -c SCRIPT rekey-ssh ACCOUNT
# Kills the processes named sshd (sshd-session from OpenSSH 9.8) that run as the
# account and belong to the sshd server this script was started by (the one
# reading the authorized_keys rekey edits): the unprivileged half of each login;
# the connection ends with it. Listeners and the root-owned half of each login are
# not the account's. Prints how many it killed. Exit codes: 64 no such account,
# 67 not run as root, 68 no pgrep or ps, 69 the account is root (its sshd
# processes include the servers).
set -u
account=$1
[ "$(id -u)" = 0 ] || exit 67
entry=$(getent passwd "$account") || exit 64
[ -n "$entry" ] || exit 64
[ "$(printf '%s\n' "$entry" | cut -d: -f3)" != 0 ] || exit 69
command -v pgrep >/dev/null 2>&1 && command -v ps >/dev/null 2>&1 || exit 68
# The oldest sshd ancestor of a process: its server's listener.
listener() {
  l_pid=$1 l_top=
  while [ -n "$l_pid" ] && [ "$l_pid" -gt 1 ]; do
    case $(ps -o comm= -p "$l_pid") in
      sshd|sshd-session) l_top=$l_pid ;;
    esac
    l_pid=$(ps -o ppid= -p "$l_pid" | tr -d ' ')
  done
  echo "$l_top"
}
ours=$(listener $$)
[ -n "$ours" ] || exit 68
n=0
for session in $(pgrep -u "$account" -x 'sshd|sshd-session'); do
  [ "$(listener "$session")" = "$ours" ] || continue
  kill -KILL "$session" 2>/dev/null && n=$((n + 1))
done
echo "$n"
