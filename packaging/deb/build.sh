#!/bin/sh
# Builds the Debian package of Cairn with dpkg-deb (make deb; DebTests builds one from the
# debug binaries). Usage: build.sh BIN_DIR MAN_DIR OUT_DIR VERSION
#   BIN_DIR  holds cairn and cairn-helper
#   MAN_DIR  holds the man pages (cairn.1, cairn.SUB.1; from argument-parser's
#            generate-manual plugin), or "-" for none
# Prints the path of the .deb.
set -eu
bin=$1 man=$2 out=$3 version=$4
here=$(cd "$(dirname "$0")" && pwd)
arch=$(dpkg --print-architecture)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

install -d "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/usr/lib/sysusers.d" \
  "$root/usr/lib/tmpfiles.d" "$root/usr/share/man/man1" "$root/usr/share/doc/cairn" \
  "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
  "$root/usr/share/fish/vendor_completions.d"
install -m 0755 "$bin/cairn" "$bin/cairn-helper" "$root/usr/bin/"
# The unit of deploy/, with the package's paths.
# Its header's manual install steps are for a checkout, not the package: a copy in
# /etc/systemd/system would shadow the packaged unit. The package's header says so.
{
  echo "# Cairn daemon as a systemd service, installed by the cairn package (docs/operations.md)."
  echo "# Change it with \`systemctl edit cairn\` (a drop-in), not here: an upgrade replaces this file."
  sed -n -e 's|/usr/local/bin/|/usr/bin/|g' -e '/^# Script workflows run inside/,$p' "$here/../../deploy/cairn.service"
} > "$root/lib/systemd/system/cairn.service"
chmod 0644 "$root/lib/systemd/system/cairn.service"
install -m 0644 "$here/cairn.sysusers" "$root/usr/lib/sysusers.d/cairn.conf"
install -m 0644 "$here/cairn.tmpfiles" "$root/usr/lib/tmpfiles.d/cairn.conf"
if [ "$man" != "-" ]; then
  for page in "$man"/*.1; do
    case "$(basename "$page")" in *.__*|cairn.help.1) continue ;; esac
    # Without the internal commands' pages and `help`'s, nothing may point at them (SEE ALSO
    # lists every page, the last without a comma); and without empty lines, which mdoc
    # warns of on every page ("Empty input line").
    sed -e '/^\.Xr cairn\.__[a-z-]* 1/d' -e '/^\.Xr cairn\.help 1/d' -e '/^$/d' "$page" \
      | awk '{ lines[NR] = $0 } END { last = 0; for (i = 1; i <= NR; i++) if (lines[i] ~ /^\.Xr /) last = i
               for (i = 1; i <= NR; i++) { l = lines[i]; if (i == last) sub(/ ,$/, "", l); print l } }' \
      | gzip -9n > "$root/usr/share/man/man1/$(basename "$page").gz"
  done
fi
"$bin/cairn" --generate-completion-script bash > "$root/usr/share/bash-completion/completions/cairn"
"$bin/cairn" --generate-completion-script zsh > "$root/usr/share/zsh/vendor-completions/_cairn"
"$bin/cairn" --generate-completion-script fish > "$root/usr/share/fish/vendor_completions.d/cairn.fish"
install -m 0644 "$here/copyright" "$root/usr/share/doc/cairn/copyright"
for s in postinst prerm postrm; do install -m 0755 "$here/$s" "$root/DEBIAN/$s"; done
size=$(du -sk "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: cairn
Version: $version
Architecture: $arch
Maintainer: Cairn developers <cairn@localhost>
Installed-Size: $size
Depends: libc6, libstdc++6, libinotifytools0, libcurl4
Section: admin
Priority: optional
Homepage: https://example.invalid/cairn
Description: durable execution for AI agents on a plain directory
 Each run is a directory in a spool, each completed step an fsync'd JSON file;
 a daemon advances runs the instant a file lands, and a person approves by
 dropping a file. Installs the cairn binary, its scripts' helper client, the
 systemd unit (cairn.service, not started), the service user cairn and the
 spool /var/lib/cairn/spool, man pages and shell completions.
CONTROL
mkdir -p "$out"
deb="$out/cairn_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "$deb"
