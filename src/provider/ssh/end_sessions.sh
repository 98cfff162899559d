# rekey ssh provider: ends an account's sshd sessions on this host (breach mode).
# Run as: sh -c SCRIPT rekey-ssh ACCOUNT
# Kills the processes named sshd (sshd-session from OpenSSH 9.8) that run as the
# account: the unprivileged half of each of its logins; the connection ends with
# it. sshd's listener and the root-owned half of each login are not the account's.
# Prints how many it killed. Exit codes: 64 no such account, 67 not run as root,
# 68 no pgrep, 69 the account is root (its sshd processes include the server).
set -u
account=$1
[ "$(id -u)" = 0 ] || exit 67
entry=$(getent passwd "$account") || exit 64
[ -n "$entry" ] || exit 64
[ "$(printf '%s\n' "$entry" | cut -d: -f3)" != 0 ] || exit 69
command -v pgrep >/dev/null 2>&1 || exit 68
n=0
for pid in $(pgrep -u "$account" -x 'sshd|sshd-session'); do
  kill -KILL "$pid" 2>/dev/null && n=$((n + 1))
done
echo "$n"
