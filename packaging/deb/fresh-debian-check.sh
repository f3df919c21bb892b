#!/bin/sh
# `make deb-check`: the package on a fresh Debian, as an operator would use it — a minimal
# Debian of this machine's release (debootstrap --variant=minbase, made once and kept as a
# pristine copy), copied for each check, then in a chroot: `dpkg -i` (which stops at the
# dependencies a minimal system lacks, as on any fresh machine) and `apt-get -f install`,
# the unit's ExecStart run by hand as its User= (no systemd in a chroot), a run submitted
# and approved with `touch`, then `dpkg --purge`, checking that nothing is left behind.
#
#   packaging/deb/fresh-debian-check.sh PACKAGE.deb [PRISTINE_DIR]
#
# Needs root, debootstrap and the Debian mirror (deb.debian.org) the first time.
set -eu
deb=${1:?usage: fresh-debian-check.sh PACKAGE.deb [PRISTINE_DIR]}
pristine=${2:-/var/tmp/cairn-fresh-debian}
[ "$(id -u)" = 0 ] || { echo "fresh-debian-check: needs root (chroot, mounts)" >&2; exit 1; }
[ -f "$deb" ] || { echo "fresh-debian-check: no package at $deb" >&2; exit 1; }
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:?}")

if [ ! -x "$pristine/usr/bin/apt-get" ]; then
  command -v debootstrap >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  echo "fresh-debian-check: debootstrap --variant=minbase $suite $pristine (once)"
  rm -rf "$pristine.part"
  debootstrap --variant=minbase "$suite" "$pristine.part" http://deb.debian.org/debian >/dev/null
  mv "$pristine.part" "$pristine"
fi

root=$(mktemp -d /var/tmp/cairn-fresh-XXXXXX)
cleanup() {
  for m in dev/pts dev proc; do umount -l "$root/$m" 2>/dev/null || true; done
  rm -rf "$root"
}
trap cleanup EXIT INT TERM
cp -a "$pristine/." "$root/"
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp "$deb" "$root/tmp/cairn.deb"

in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 /bin/sh -c "$1"; }
fail() { echo "fresh-debian-check: FAILED: $*" >&2; exit 1; }
step() { echo "fresh-debian-check: $*"; }

step "$(in_root '. /etc/os-release; echo $PRETTY_NAME'), $(in_root 'dpkg-query -f . -W | wc -c') packages"
in_root 'command -v cairn' >/dev/null 2>&1 && fail "cairn is already there"
step "dpkg -i cairn.deb"
if in_root 'dpkg -i /tmp/cairn.deb' >"$root/tmp/dpkg.log" 2>&1; then
  step "installed by dpkg alone"
else
  grep -q "dependency problems" "$root/tmp/dpkg.log" || { cat "$root/tmp/dpkg.log" >&2; fail "dpkg -i failed for another reason than dependencies"; }
  step "dpkg stopped at missing dependencies ($(grep -o 'depends on [a-z0-9.+-]*' "$root/tmp/dpkg.log" | cut -d' ' -f3 | sort -u | tr '\n' ' ')); apt-get -f install"
  in_root 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -f install -y -qq' >"$root/tmp/apt.log" 2>&1 || { tail -20 "$root/tmp/apt.log" >&2; fail "apt-get -f install"; }
fi
[ "$(in_root "dpkg-query -W -f '\${Status}' cairn")" = "install ok installed" ] || fail "cairn is not installed"
in_root 'getent passwd cairn' >/dev/null || fail "no service user cairn"
[ "$(in_root 'stat -c %U /var/lib/cairn/spool/cairn.json')" = cairn ] || fail "the spool is not the service user's"
for f in /usr/share/man/man1/cairn.1.gz /usr/share/bash-completion/completions/cairn /lib/systemd/system/cairn.service; do
  [ -e "$root$f" ] || fail "$f missing"
done
libs=$(in_root 'ldd /usr/bin/cairn') || fail "ldd /usr/bin/cairn: $libs"
echo "$libs" | grep -qi swift && fail "cairn links a Swift library dynamically: $libs"
step "$(in_root '/usr/bin/cairn --version' 2>/dev/null || echo '?'): installed, user cairn, spool /var/lib/cairn/spool"

exec_line=$(sed -n 's/^ExecStart=//p' "$root/lib/systemd/system/cairn.service")
user=$(sed -n 's/^User=//p' "$root/lib/systemd/system/cairn.service")
workdir=$(sed -n 's/^WorkingDirectory=//p' "$root/lib/systemd/system/cairn.service")
env_line=$(sed -n 's/^Environment=//p' "$root/lib/systemd/system/cairn.service" | tr '\n' ' ')
pre_line=$(sed -n 's/^ExecStartPre=//p' "$root/lib/systemd/system/cairn.service")
if [ -n "$pre_line" ]; then
  in_root "cd ${workdir:-/} && setpriv --reuid=${user:-root} --regid=${user:-root} --init-groups -- env $env_line $pre_line" >/dev/null || fail "ExecStartPre: $pre_line"
fi
step "ExecStart as ${user:-root}: $exec_line"
# chroot, env, sh, setpriv and env each exec the next: $! is the daemon's pid.
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 /bin/sh -c \
  "cd ${workdir:-/} && exec setpriv --reuid=${user:-root} --regid=${user:-root} --init-groups -- env $env_line $exec_line" >"$root/tmp/daemon.log" 2>&1 &
daemon=$!
i=0
until grep -q "scanned spool" "$root/tmp/daemon.log" 2>/dev/null; do
  i=$((i + 1)); [ $i -lt 100 ] || { cat "$root/tmp/daemon.log" >&2; fail "the daemon did not start"; }
  sleep 0.2
done
run=$(in_root "echo '{\"order\": \"A-1\", \"amount\": 2.5, \"reason\": \"late\"}' | CAIRN_SPOOL=/var/lib/cairn/spool cairn submit demo-refund --input -") || fail "submit"
in_root "cairn wait $run --for waiting --timeout 30s --spool /var/lib/cairn/spool" >/dev/null || fail "the run did not reach its gate"
step "run $run waits for approval; touch approvals/issue-refund.approved"
in_root "touch /var/lib/cairn/spool/runs/$run/approvals/issue-refund.approved"
in_root "cairn wait $run --for completed --timeout 30s --spool /var/lib/cairn/spool" >/dev/null || { cat "$root/tmp/daemon.log" >&2; fail "the run did not complete"; }
step "completed: $(in_root "cat /var/lib/cairn/spool/runs/$run/result.json" | tr -d '\n ')"
[ "$(readlink "/proc/$daemon/exe")" = "$root/usr/bin/cairn" ] || [ "$(readlink "/proc/$daemon/exe")" = /usr/bin/cairn ] || fail "pid $daemon is not the daemon: $(readlink "/proc/$daemon/exe")"

# The man pages and the completion, as a person uses them.
in_root 'DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends man-db' >/dev/null 2>&1 || fail "apt-get install man-db"
pages=0
for page in $(in_root 'ls /usr/share/man/man1 | grep "^cairn"'); do
  warnings=$(in_root "MANWIDTH=80 man --warnings -l /usr/share/man/man1/$page 2>&1 >/dev/null")
  [ -z "$warnings" ] || fail "man $page warns: $warnings"
  pages=$((pages + 1))
done
in_root 'MANWIDTH=80 man cairn.daemon 2>/dev/null' | grep -q -- '--otlp-endpoint' || fail "man cairn.daemon does not show --otlp-endpoint"
in_root 'MANWIDTH=80 man cairn 2>/dev/null' | grep -q '__\|cairn.help' && fail "man cairn points at internal commands"
in_root 'bash -c ". /usr/share/bash-completion/completions/cairn && complete -p cairn"' | grep -q cairn || fail "the bash completion does not load"
step "man: $pages pages, no warnings; bash completion loads"

# An upgrade while the daemon runs (started by hand): the package says to restart it.
mkdir "$root/tmp/next"
dpkg-deb -R "$deb" "$root/tmp/next/pkg"
sed -i 's/^Version: .*/&+next/' "$root/tmp/next/pkg/DEBIAN/control"
dpkg-deb -b "$root/tmp/next/pkg" "$root/tmp/next/cairn.deb" >/dev/null
in_root 'dpkg -i /tmp/next/cairn.deb' >"$root/tmp/upgrade.log" 2>&1 || { cat "$root/tmp/upgrade.log" >&2; fail "the upgrade"; }
grep -q "runs the old version; restart it" "$root/tmp/upgrade.log" || { cat "$root/tmp/upgrade.log" >&2; fail "the upgrade did not say the daemon runs the old version"; }
[ -d "/proc/$daemon" ] || fail "the upgrade stopped the daemon"
step "upgrade to $(in_root "dpkg-query -W -f '\${Version}' cairn"): the daemon runs on, and the package says to restart it"

# Remove: the daemon started by hand is stopped (no systemd here), the spool kept.
step "dpkg --remove cairn"
in_root 'dpkg --remove cairn' >"$root/tmp/remove.log" 2>&1 || { cat "$root/tmp/remove.log" >&2; fail "remove"; }
wait "$daemon" || fail "the daemon did not exit 0 when the package was removed: $(tail -3 "$root/tmp/daemon.log")"
[ -f "$root/var/lib/cairn/spool/runs/$run/result.json" ] || fail "remove did not keep the spool"
step "removed: the daemon stopped ($(grep -o 'stopping the daemon[^;]*' "$root/tmp/remove.log")), the spool kept"

step "dpkg --purge cairn"
in_root 'dpkg --purge cairn' >"$root/tmp/purge.log" 2>&1 || fail "purge"
[ -s "$root/tmp/purge.log" ] && grep -q "could not remove" "$root/tmp/purge.log" && fail "$(cat "$root/tmp/purge.log")"
for f in /usr/bin/cairn /var/lib/cairn /lib/systemd/system/cairn.service; do
  [ -e "$root$f" ] && fail "$f left after purge"
done
in_root 'getent passwd cairn' >/dev/null && fail "user cairn left after purge"

# Installed where /proc is not mounted (a chroot being built): the package still makes its
# spool (cairn reads its arguments from the C runtime, not /proc/self/cmdline).
umount -l "$root/proc"
in_root 'dpkg -i /tmp/cairn.deb' >"$root/tmp/noproc.log" 2>&1 || { cat "$root/tmp/noproc.log" >&2; fail "install without /proc"; }
[ -f "$root/var/lib/cairn/spool/cairn.json" ] || fail "installed without /proc, but no spool"
in_root 'cairn --version' | grep -q . || fail "cairn --version without /proc"
mount -t proc proc "$root/proc"
in_root 'dpkg --purge cairn' >/dev/null 2>&1 || fail "purge after the install without /proc"
step "installed again without /proc: the spool made; purged"
step "OK: installed on a fresh $suite, started by the unit's ExecStart, approved with touch, upgraded, removed, purged clean"
