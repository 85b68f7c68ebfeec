#!/usr/bin/env bash
# Quick start: a primary and a remote DTU over an emulated T1, a real host.
#
#   cargo build --release -p dtu -p dtu-sim
#   export PATH=$PWD/target/release:$PATH
#   mkdir /tmp/dtu-quickstart && cd /tmp/dtu-quickstart
#   bash "$OLDPWD/docs/quickstart.sh"
#
# It needs qemu-io, qemu-img (qemu-utils) and nbdcopy (libnbd-bin), runs in
# the current directory and stops everything it started when it ends. The
# ports on 127.0.0.1 can be moved with DTU_REMOTE_PORT (UDP, default 7001),
# DTU_LINK_PORT (UDP and TCP, 7000) and DTU_NBD_PORT (TCP, 10809).
set -euo pipefail
remote_port=${DTU_REMOTE_PORT:-7001}
link_port=${DTU_LINK_PORT:-7000}
nbd_port=${DTU_NBD_PORT:-10809}

pids=()
stop() {
    kill "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "${pids[@]}" 2>/dev/null || break; sleep 0.1; done
    kill -9 "${pids[@]}" 2>/dev/null || true
}
trap stop EXIT
# Waits (30 s at most) for a socket to appear.
wait_for() {
    for _ in $(seq 300); do [ -S "$1" ] && return; sleep 0.1; done
    echo "$1 did not appear; see the *.log files" >&2
    exit 1
}

# Keys, certificates (each side pins the other's SHA-256), a volume key and two configs.
dtu init --dir pair --volume-size 256MiB \
    --remote-listen 127.0.0.1:$remote_port --remote-addr 127.0.0.1:$link_port \
    --link-rate 1.544Mbit --link-rtt 4ms --nbd-tcp 127.0.0.1:$nbd_port

# A T1 with 0.1 % loss between them (see "Link emulation").
linkemu --listen 127.0.0.1:$link_port --forward 127.0.0.1:$remote_port \
    --preset t1 --loss 0.1% --seed 7 2>linkemu.log &
pids+=($!)

dtu remote --config pair/remote.toml --export-ro-unix replica.sock 2>remote.log &
pids+=($!)
dtu primary --config pair/primary.toml 2>primary.log &
pids+=($!)
wait_for replica.sock
wait_for pair/primary.nbd.sock

# The host: any NBD client. The primary serves nbd+unix:///dtu?socket=pair/primary.nbd.sock
# and nbd://127.0.0.1:$nbd_port/dtu. Until the host reports its dirty %, every
# write is answered only once the remote has stored it.
qemu-img create -f raw disk.img 4M
qemu-io -f raw disk.img -c 'write -P 0xcd 0 4M'
nbdcopy disk.img "nbd+unix:///dtu?socket=pair/primary.nbd.sock"
qemu-io -f raw "nbd+unix:///dtu?socket=pair/primary.nbd.sock" -c 'write -P 0xab 0 1M' -c flush

dtu status --config pair/primary.toml
dtu status --config pair/primary.toml --json
dtu dirty 90 --config pair/primary.toml          # the host's cache is 90 % dirty: spoofing applies
dtu policy set --trigger sent --config pair/primary.toml
dtu status --config pair/remote.toml

# The replica, read-only: the 1 MiB written through qemu-io, then the rest of disk.img.
qemu-io -r -f raw "nbd+unix:///dtu?socket=replica.sock" \
    -c 'read -P 0xab 0 1M' -c 'read -P 0xcd 1M 3M'
echo "quick start done: the replica holds the host's writes"
