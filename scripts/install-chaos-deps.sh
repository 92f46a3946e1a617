#!/usr/bin/env bash
# Installs what the chaos tests (tests/chaos) need from Debian when it is missing:
# iptables (network partitions), util-linux (unshare, setpriv), iproute2 (ip) and a C
# compiler (the fault library, tests/chaos/faults.c). Needs root and apt-get; fails
# loudly, naming what is missing, when it cannot install it.
set -euo pipefail

declare -A package_of=(
  [iptables]=iptables [iptables-restore]=iptables [unshare]=util-linux [setpriv]=util-linux
  [ip]=iproute2 [cc]=gcc
)
missing=()
for tool in "${!package_of[@]}"; do
  command -v "$tool" >/dev/null || missing+=("${package_of[$tool]}")
done
# The compiler needs the C library's headers too.
[ -f /usr/include/dlfcn.h ] || missing+=(libc6-dev)
[ ${#missing[@]} -eq 0 ] && exit 0

packages=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "error: the chaos tests need the Debian packages: $packages(install them as root with apt-get)" >&2
  exit 1
fi
echo "installing for the chaos tests: $packages"
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086
if ! apt-get install -y -q $packages >/dev/null 2>&1; then
  apt-get update -q >/dev/null
  # shellcheck disable=SC2086
  apt-get install -y -q $packages >/dev/null || {
    echo "error: apt-get could not install $packages" >&2
    exit 1
  }
fi
for tool in "${!package_of[@]}"; do
  command -v "$tool" >/dev/null || { echo "error: $tool is still missing after installing $packages" >&2; exit 1; }
done
