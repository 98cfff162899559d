# rekey ssh provider: reads or replaces one account's authorized_keys file.
# Run as: sh -c SCRIPT rekey-ssh read|write ACCOUNT PATH [SHA256-OF-WHAT-WAS-READ]
# PATH may hold %h (the account's home). `write` takes the new content on stdin.
# Exit codes: 3 the file does not exist (read), 64 no such account, 65 the file
# changed since it was read, 66 the file could not be written.
set -u
op=$1 account=$2 template=$3
entry=$(getent passwd "$account") || exit 64
[ -n "$entry" ] || exit 64
home=$(printf '%s\n' "$entry" | cut -d: -f6)
file='' rest=$template
while :; do
  case $rest in
    *%h*) file=$file${rest%%%h*}$home rest=${rest#*%h} ;;
    *) file=$file$rest; break ;;
  esac
done
case $op in
  read)
    [ -e "$file" ] || exit 3
    exec cat -- "$file"
    ;;
  write)
    expected=$4
    dir=$(dirname -- "$file")
    if [ -e "$file" ]; then
      current=$(sha256sum <"$file" | cut -d' ' -f1) || exit 66
    else
      current=none
    fi
    # Someone (or another rekey step) changed it since it was read: do not lose that.
    [ "$current" = "$expected" ] || exit 65
    if [ ! -d "$dir" ]; then
      mkdir -p -m 700 -- "$dir" && chown -- "$account" "$dir" || exit 66
    fi
    # A temporary file beside it, then a rename: readers see the old or the new file.
    tmp=$(mktemp "$dir/.authorized_keys.rekey.XXXXXX") || exit 66
    if ! cat >"$tmp"; then rm -f -- "$tmp"; exit 66; fi
    if [ -e "$file" ]; then
      chown --reference="$file" -- "$tmp" && chmod --reference="$file" -- "$tmp"
    else
      chown -- "$account" "$tmp" && chmod 600 -- "$tmp"
    fi || { rm -f -- "$tmp"; exit 66; }
    sync -- "$tmp" 2>/dev/null || true
    mv -f -- "$tmp" "$file" || { rm -f -- "$tmp"; exit 66; }
    ;;
  *) exit 2 ;;
esac
