# Sourced by deploy/local/run and tests/run: the Debian 12 packages Berth needs, and a function
# that installs the missing ones (apt-get runs only when something is missing).

# shellcheck disable=SC2034
BERTH_BUILD_PACKAGES="gcc libc6-dev pkg-config meson ninja-build libevent-dev libhiredis-dev
  libxxhash-dev libyaml-dev libssl-dev libnghttp2-dev node-llhttp libseccomp-dev"
# shellcheck disable=SC2034
# qemu-system-x86 runs the microvm driver's VMs; lz4 and python3 build its guest image
# (scheduler/README.md, "The microvm driver").
# openssl (the CLI) makes the quick start's TLS certificate.
BERTH_RUN_PACKAGES="redis-server redis-tools curl util-linux procps e2fsprogs libseccomp2
  qemu-system-x86 lz4 python3 openssl"
# shellcheck disable=SC2034
# testssl.sh checks the gateway's TLS listener (tests/integration/test_tls.py).
# nghttp2-client (nghttp, h2load) and python3-h2 (raw frames) test the HTTP/2 side
# (tests/integration/test_h2.py). python3-cryptography dates an OCSP response in the past,
# which openssl ocsp cannot (test_tls.py).
BERTH_TEST_PACKAGES="python3 python3-pytest python3-yaml file openssl testssl.sh nghttp2-client
  python3-h2 python3-cryptography"

# berth_install_packages PKG...: installs those of PKG that are not installed.
berth_install_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "missing Debian packages: ${missing[*]} (install them, or run this as root)" >&2
        return 1
    fi
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"
}
