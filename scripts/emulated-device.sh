#!/usr/bin/env bash
# An emulated ARM board on this machine: an arm64 Debian root filesystem run through
# qemu-user-static (binfmt_misc), with sshd inside it on a loopback port.
#
#   scripts/emulated-device.sh rpi4 [start]   build once (cached), then start sshd
#   scripts/emulated-device.sh rpi4 build     only build / complete the root filesystem
#   scripts/emulated-device.sh rpi4 stop      stop sshd and unmount /proc, /dev in the rootfs
#   scripts/emulated-device.sh rpi4 status    print whether it is built / running
#
# Everything lives outside the clone, under $EDGEPRUNE_CACHE (default /var/cache/edgeprune):
#   rootfs-arm64/                    the root filesystem (built once, ~10 min; reused)
#   emulated-rpi4/                   host key, user key, known_hosts, sshd log
#   emulated-rpi4.devices.yaml       a devices.yaml for `edgeprune --devices ...`
#
# Timings measured on such a device are meaningless (every instruction is translated);
# the device is marked `emulated: true` and reports say so. Correctness is real: the
# aarch64 artifact loads and runs on aarch64 builds of Python, numpy and the runtimes.
#
# Needs root (debootstrap, chroot, mount). Idempotent: every step checks before it acts.
set -euo pipefail

BOARD="${1:-}"
ACTION="${2:-start}"
case "$BOARD" in
  rpi4) ;;
  -h|--help|"") sed -n '2,20p' "$0"; exit 0 ;;
  *) echo "unknown board '$BOARD'. Choose from: rpi4" >&2; exit 2 ;;
esac

CACHE="${EDGEPRUNE_CACHE:-/var/cache/edgeprune}"
ROOT="$CACHE/rootfs-arm64"
STATE="$CACHE/emulated-$BOARD"
DEVICES_YAML="$CACHE/emulated-$BOARD.devices.yaml"
PORT="${EDGEPRUNE_EMULATED_PORT:-2222}"
SUITE=bookworm
REMOTE_USER=edge
REMOTE_VENV=/opt/edgeprune-venv
# The same releases as the host's (pyproject.toml): a TVM .so loads only into the TVM
# runtime it was built with, OpenVINO IR is read best by the same release.
# cloudpickle + psutil: what TVM's RPC server needs (python -m tvm.exec.rpc_server, a farm board).
PIP_PKGS=(numpy==2.4.6 onnxruntime==1.32.0 openvino==2026.4.1 apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1
          cloudpickle==3.1.2 psutil==7.2.2)
QEMU=/usr/bin/qemu-aarch64-static
QEMU_CPU=cortex-a72
SSHD_CONFIG=/etc/ssh/sshd_config_edgeprune
PIDFILE_IN_ROOT=/run/sshd-edgeprune.pid

log() { printf '[emulated-%s] %s\n' "$BOARD" "$*" >&2; }
die() { printf '[emulated-%s] error: %s\n' "$BOARD" "$*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot and mount need it)"; }

# Run a command inside the root filesystem with a clean environment: the host's PIP_*
# variables point at x86 wheel directories that do not exist (and do not fit) in there.
in_root() {
  env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180 PIP_CONFIG_FILE=/etc/pip.conf \
    chroot "$ROOT" "$@"
}

install_host_packages() {
  local missing=()
  for p in qemu-user-static debootstrap openssh-client; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing host packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# qemu-aarch64-static registered for aarch64 ELF files with the F (fix binary) flag, so
# the interpreter is opened at registration and works inside the chroot as well.
register_binfmt() {
  local dir=/proc/sys/fs/binfmt_misc
  if [ ! -e "$dir/register" ]; then
    mount -t binfmt_misc binfmt_misc "$dir" || die "cannot mount binfmt_misc (a container without privileges?)"
  fi
  if [ -e "$dir/qemu-aarch64" ]; then
    if grep -q '^enabled' "$dir/qemu-aarch64" && grep -q '^flags:.*F' "$dir/qemu-aarch64"; then
      return 0
    fi
    log "re-registering qemu-aarch64 with the F flag"
    echo -1 >"$dir/qemu-aarch64"
  fi
  [ -x "$QEMU" ] || die "$QEMU missing (apt-get install qemu-user-static)"
  printf '%s' ':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:'"$QEMU"':F' \
    >"$dir/register"
  log "registered $QEMU for aarch64 binaries (flags: F)"
}

# The Debian mirror this machine's own apt uses (deb822 .sources or one-line .list).
host_mirror() {
  python3 - <<'EOF'
import glob, re
uris = []
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in re.split(r"\n\s*\n", open(path).read()):
        fields = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            k, v = line.split(":", 1)
            fields[k.strip().lower()] = v.strip()
        if "deb" in fields.get("types", "").split() and "bookworm" in fields.get("suites", "").split():
            uris += fields.get("uris", "").split()
for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
    try:
        lines = open(path).read().splitlines()
    except OSError:
        continue
    for line in lines:
        parts = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
        if len(parts) >= 3 and parts[0] == "deb" and parts[2] == "bookworm":
            uris.append(parts[1])
main = [u for u in uris if "security" not in u]
print((main or uris or ["http://deb.debian.org/debian"])[0])
EOF
}

# What the board's software reads about its CPU. The host's own /sys and /proc/cpuinfo
# describe an x86 CPU: ONNX Runtime's cpuinfo then crashes on aarch64, and without any
# /sys OpenVINO's CPU plugin (hwloc, oneDNN's MIDR_EL1 probe) crashes. So the board gets
# a small sysfs and a cpuinfo of its own: Cortex-A72 cores (MIDR 0x410fd083), as many as
# this machine has (more would only oversubscribe it).
write_board_cpu() {
  local n sys="$STATE/sys" cpu i d
  n="$(nproc)"
  rm -rf "$sys"
  mkdir -p "$sys/devices/system/cpu" "$sys/bus/cpu/devices"
  for f in possible present online; do echo "0-$((n - 1))" >"$sys/devices/system/cpu/$f"; done
  printf '%x\n' $(( (1 << n) - 1 )) >"$STATE/allmask"
  : >"$STATE/cpuinfo"
  for ((i = 0; i < n; i++)); do
    d="$sys/devices/system/cpu/cpu$i"
    mkdir -p "$d/topology" "$d/regs/identification"
    echo 1 >"$d/online"
    echo 0x00000000410fd083 >"$d/regs/identification/midr_el1"
    echo 0 >"$d/topology/physical_package_id"; echo "$i" >"$d/topology/core_id"
    echo 0 >"$d/topology/cluster_id"; echo -1 >"$d/topology/die_id"
    for f in thread_siblings core_cpus; do printf '%x\n' $((1 << i)) >"$d/topology/$f"; done
    for f in thread_siblings_list core_cpus_list; do echo "$i" >"$d/topology/$f"; done
    for f in core_siblings package_cpus cluster_cpus; do cp "$STATE/allmask" "$d/topology/$f"; done
    for f in core_siblings_list package_cpus_list cluster_cpus_list; do echo "0-$((n - 1))" >"$d/topology/$f"; done
    ln -sfn "../../../devices/system/cpu/cpu$i" "$sys/bus/cpu/devices/cpu$i"
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$i" >>"$STATE/cpuinfo"
  done
  printf 'Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B (emulated by qemu-user)\n' >>"$STATE/cpuinfo"
}

mount_root() {
  mkdir -p "$STATE"
  [ -f "$STATE/cpuinfo" ] && [ -d "$STATE/sys" ] || write_board_cpu
  mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
  mountpoint -q "$ROOT/proc/cpuinfo" || mount --bind "$STATE/cpuinfo" "$ROOT/proc/cpuinfo"
  if ! mountpoint -q "$ROOT/sys"; then
    mount --bind "$STATE/sys" "$ROOT/sys"
    mount -o remount,bind,ro "$ROOT/sys" 2>/dev/null || true
  fi
  mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
  mkdir -p "$ROOT/dev/pts"
  mountpoint -q "$ROOT/dev/pts" || mount --bind /dev/pts "$ROOT/dev/pts" 2>/dev/null || true
}

umount_root() {
  local m
  for m in dev/pts dev sys proc/cpuinfo proc; do
    if mountpoint -q "$ROOT/$m" 2>/dev/null; then umount "$ROOT/$m" || umount -l "$ROOT/$m"; fi
  done
}

# Host pip configuration, minus what only fits this x86 machine: local find-links
# directories, file:// indexes and the constraint file that caps x86 wheels on disk.
write_pip_config() {
  python3 - "$ROOT/etc/pip.conf" <<'EOF'
import configparser, os, sys
out = configparser.ConfigParser()
for path in ["/etc/pip.conf", "/etc/xdg/pip/pip.conf",
             os.path.expanduser("~/.pip/pip.conf"), os.path.expanduser("~/.config/pip/pip.conf")]:
    cp = configparser.ConfigParser()
    try:
        cp.read(path)
    except configparser.Error:
        continue
    for section in cp.sections():
        for key, value in cp.items(section, raw=True):
            if key in ("find-links", "find_links", "constraint", "constraints", "no-index"):
                continue
            if key in ("extra-index-url", "index-url"):
                value = " ".join(u for u in value.split() if not u.startswith("file:"))
                if not value:
                    continue
            if not out.has_section(section):
                out.add_section(section)
            out.set(section, key, value)
if not out.has_section("global"):
    out.add_section("global")
out.set("global", "cert", "/etc/ssl/certs/ca-certificates.crt")
with open(sys.argv[1], "w") as fh:
    fh.write("# written by scripts/emulated-device.sh from the host pip configuration\n")
    out.write(fh)
EOF
}

build_rootfs() {
  need_root
  install_host_packages
  register_binfmt
  mkdir -p "$CACHE"
  if [ ! -f "$ROOT/.edgeprune-debootstrap-done" ]; then
    local mirror
    mirror="$(host_mirror)"
    umount_root
    rm -rf --one-file-system "$ROOT"
    log "debootstrap arm64 $SUITE from $mirror (takes several minutes)"
    debootstrap --arch=arm64 --variant=minbase \
      --include=python3,python3-venv,python3-pip,openssh-server,openssh-sftp-server,ca-certificates,procps \
      "$SUITE" "$ROOT" "$mirror" >"$CACHE/debootstrap-arm64.log" 2>&1 \
      || { tail -20 "$CACHE/debootstrap-arm64.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap-arm64.log)"; }
    touch "$ROOT/.edgeprune-debootstrap-done"
  fi
  cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
  # The host's CA bundle: it is what the host's pip trusts (a proxy's CA may be in it).
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    mkdir -p "$ROOT/etc/ssl/certs"
    cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
  fi
  write_pip_config
  # The stamp holds the package list: a changed list installs again (pip skips what is there).
  if [ "$(cat "$ROOT/.edgeprune-venv-done" 2>/dev/null)" != "${PIP_PKGS[*]}" ]; then
    mount_root
    log "creating $REMOTE_VENV with aarch64 wheels: ${PIP_PKGS[*]} (takes several minutes)"
    [ -x "$ROOT$REMOTE_VENV/bin/python" ] || in_root /usr/bin/python3 -m venv "$REMOTE_VENV"
    in_root "$REMOTE_VENV/bin/python" -m pip install --quiet --upgrade pip >"$CACHE/pip-arm64.log" 2>&1 || true
    in_root "$REMOTE_VENV/bin/python" -m pip install --prefer-binary --only-binary=:all: "${PIP_PKGS[@]}" \
      >>"$CACHE/pip-arm64.log" 2>&1 \
      || { tail -20 "$CACHE/pip-arm64.log" >&2; die "pip install in the rootfs failed (log: $CACHE/pip-arm64.log)"; }
    in_root "$REMOTE_VENV/bin/python" -c 'import numpy, onnxruntime, openvino, tvm; print("ok", numpy.__version__, onnxruntime.__version__, openvino.__version__, tvm.__version__)' \
      >>"$CACHE/pip-arm64.log" 2>&1 || die "runtimes do not import in the rootfs (log: $CACHE/pip-arm64.log)"
    echo "${PIP_PKGS[*]}" >"$ROOT/.edgeprune-venv-done"
  fi
  if ! in_root id -u "$REMOTE_USER" >/dev/null 2>&1; then
    in_root useradd --create-home --shell /bin/bash "$REMOTE_USER"
  fi
  log "root filesystem ready: $ROOT"
}

setup_keys() {
  # No password, but not locked: with UsePAM no, sshd refuses locked ('!') accounts.
  in_root usermod -p '*' "$REMOTE_USER"
  mkdir -p "$STATE"
  chmod 700 "$STATE"
  [ -f "$STATE/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C "emulated-$BOARD host" -f "$STATE/ssh_host_ed25519_key"
  [ -f "$STATE/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C "edgeprune@emulated-$BOARD" -f "$STATE/id_ed25519"
  install -m 600 "$STATE/ssh_host_ed25519_key" "$ROOT/etc/ssh/edgeprune_host_ed25519_key"
  install -m 644 "$STATE/ssh_host_ed25519_key.pub" "$ROOT/etc/ssh/edgeprune_host_ed25519_key.pub"
  local home="$ROOT/home/$REMOTE_USER"
  mkdir -p "$home/.ssh"
  install -m 600 "$STATE/id_ed25519.pub" "$home/.ssh/authorized_keys"
  local uid gid
  uid="$(in_root id -u "$REMOTE_USER")"
  gid="$(in_root id -g "$REMOTE_USER")"
  chown -R "$uid:$gid" "$home/.ssh"
  chmod 700 "$home/.ssh"
  printf '[127.0.0.1]:%s %s\n' "$PORT" "$(cut -d' ' -f1,2 "$STATE/ssh_host_ed25519_key.pub")" >"$STATE/known_hosts"
  cat >"$ROOT$SSHD_CONFIG" <<EOF
# written by scripts/emulated-device.sh
Port $PORT
ListenAddress 127.0.0.1
HostKey /etc/ssh/edgeprune_host_ed25519_key
PidFile $PIDFILE_IN_ROOT
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin no
AllowUsers $REMOTE_USER
X11Forwarding no
PrintMotd no
MaxStartups 30:30:100
MaxSessions 30
LoginGraceTime 120
Subsystem sftp /usr/lib/openssh/sftp-server
# qemu-user emulates the board's own core (BCM2711: Cortex-A72), not qemu's "max" CPU
SetEnv QEMU_CPU=$QEMU_CPU
EOF
  cat >"$DEVICES_YAML" <<EOF
# An emulated Raspberry Pi 4 (arm64 Debian under qemu-user): outputs and accuracy are
# real, timings are not. Written by scripts/emulated-device.sh; use it with
#   edgeprune compile --devices $DEVICES_YAML --target $BOARD --device emulated-$BOARD --model zoo:digits-cnn
devices:
  - name: emulated-$BOARD
    kind: ssh
    target: $BOARD
    host: 127.0.0.1
    port: $PORT
    user: $REMOTE_USER
    identity_file: $STATE/id_ed25519
    known_hosts: $STATE/known_hosts
    python: $REMOTE_VENV/bin/python
    workdir: /tmp/edgeprune
    emulated: true
    concurrency: 1
    connect_timeout_s: 60
    command_timeout_s: 3600
EOF
}

sshd_pid() {
  local f="$ROOT$PIDFILE_IN_ROOT"
  [ -f "$f" ] || return 1
  local pid
  pid="$(cat "$f")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  # a stale pid file (board killed with its session) may name a reused pid: it must be our sshd
  local cmd
  cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  case "$cmd" in *"sshd -f $SSHD_CONFIG"*) echo "$pid" ;; *) return 1 ;; esac
}

start() {
  need_root
  if [ "$(cat "$ROOT/.edgeprune-venv-done" 2>/dev/null)" != "${PIP_PKGS[*]}" ] \
     || ! in_root id -u "$REMOTE_USER" >/dev/null 2>&1; then
    build_rootfs
  fi
  register_binfmt
  setup_keys
  mountpoint -q "$ROOT/sys" || write_board_cpu  # never rewrite it under a mounted board
  if pid="$(sshd_pid)"; then
    log "sshd already running (pid $pid) on 127.0.0.1:$PORT"
  else
    mount_root
    mkdir -p "$ROOT/run/sshd"
    chmod 755 "$ROOT/run/sshd"
    in_root /usr/sbin/sshd -t -f "$SSHD_CONFIG" || die "sshd configuration rejected"
    in_root /usr/sbin/sshd -f "$SSHD_CONFIG" -E /var/log/sshd-edgeprune.log
    local i
    # sshd runs under qemu user emulation: on a busy host it can take tens of seconds to listen
    # and it writes its pid file only after it listens: wait for both (a CI run once found the
    # port open and the pid file not yet written, and called a starting sshd dead)
    for i in $(seq 1 180); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && sshd_pid >/dev/null; then break; fi
      sleep 0.5
    done
    pid="$(sshd_pid)" || die "sshd did not start (log: $ROOT/var/log/sshd-edgeprune.log)"
    log "sshd running (pid $pid) on 127.0.0.1:$PORT"
  fi
  log "devices file: $DEVICES_YAML"
  echo "$DEVICES_YAML"
}

stop() {
  need_root
  if pid="$(sshd_pid)"; then
    kill "$pid"
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    log "stopped sshd (pid $pid)"
  else
    log "sshd is not running"
  fi
  [ -d "$ROOT" ] && umount_root
  return 0
}

status() {
  if [ -f "$ROOT/.edgeprune-venv-done" ]; then echo "rootfs: built ($ROOT)"; else echo "rootfs: not built"; fi
  if pid="$(sshd_pid)"; then echo "sshd: running (pid $pid, 127.0.0.1:$PORT)"; else echo "sshd: stopped"; fi
  [ -f "$DEVICES_YAML" ] && echo "devices file: $DEVICES_YAML"
  return 0
}

case "$ACTION" in
  build) build_rootfs ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "unknown action '$ACTION'. Choose from: start, build, stop, status" ;;
esac
