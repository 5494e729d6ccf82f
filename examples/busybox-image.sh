#!/usr/bin/env bash
# Builds a small image from this machine's static busybox (package busybox-static; no registry
# or internet needed) and imports it into a node agent's image store as localhost/busybox:1,
# the image examples/web.yaml runs.
#
#   bash examples/busybox-image.sh [AGENT_DATA_DIR]     (default /var/lib/ferry/agent, what
#                                                        `ferry up` uses)
# Set FERRY to the ferry binary if it is not on PATH.
set -euo pipefail
FERRY=${FERRY:-ferry}
DATA=${1:-/var/lib/ferry/agent}
BUSYBOX=$(command -v busybox || true)
if [[ -z $BUSYBOX ]] || ! file "$BUSYBOX" 2>/dev/null | grep -q 'statically linked'; then
    for b in /bin/busybox /usr/bin/busybox; do [[ -x $b ]] && BUSYBOX=$b; done
fi
[[ -x $BUSYBOX ]] || { echo "busybox-static is not installed (apt-get install busybox-static)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
root=$tmp/root
mkdir -p "$root"/{bin,etc,tmp,root,www}
chmod 1777 "$root/tmp"
cp "$BUSYBOX" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
    [[ $applet == busybox ]] || ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
printf '<h1>Hello from Ferry</h1>\n' >"$root/www/index.html"
tar -C "$root" --owner=0 --group=0 -cf "$tmp/rootfs.tar" .
"$FERRY" image import-rootfs "$tmp/rootfs.tar" --name localhost/busybox:1 --cmd sh --data-dir "$DATA"
