# giftstream: `make demo` runs the main job offline; `make test` runs every test against a real local Kafka.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The compiled engine (native/) is built by pip through setuptools-rust with rustup's cargo.
export PATH := $(HOME)/.cargo/bin:$(PATH)
NATIVE_SRC := native/Cargo.toml native/Cargo.lock $(wildcard native/src/*.rs)

.PHONY: install node-test-tools demo test unit lint kafka-up kafka-down kafka-single bench bench-kafka clean

install: $(STAMP)

$(STAMP): pyproject.toml $(NATIVE_SRC)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "giftstream needs Python >= 3.11")'
	@command -v cargo >/dev/null || { echo "giftstream's engine is Rust: install it with https://rustup.rs (cargo on PATH)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

# The Node.js library the TikTok-Live-Connector tests drive (tests/unit/test_live_tiktok_live_connector.py):
# tiktok-live-connector pinned exactly by its package-lock.json; needs node and npm on PATH.
TLC       := tests/support/tiktok-live-connector
TLC_STAMP := $(TLC)/node_modules/.installed

node-test-tools: $(TLC_STAMP)

$(TLC_STAMP): $(TLC)/package.json $(TLC)/package-lock.json
	@command -v npm >/dev/null || { echo "the TikTok-Live-Connector tests need Node.js >= 20 and npm on PATH" >&2; exit 1; }
	npm ci --prefix $(TLC) --no-audit --no-fund
	@touch $@

demo: install
	$(BIN)/giftstream replay --out out/demo

lint: install
	$(BIN)/ruff check .
	@if cargo clippy --version >/dev/null 2>&1; then cd native && cargo clippy --quiet --release -- -D warnings; \
	 else echo "lint: cargo clippy not installed, Rust lint skipped"; fi

unit: install node-test-tools
	cd native && cargo test --quiet --release
	$(BIN)/python -m pytest -q -m "not kafka"

test: install lint kafka-single node-test-tools
	bash deploy/install-test-tools.sh
	cd native && cargo test --quiet --release
	$(BIN)/python -m pytest -q

# `make kafka-up`: the single-node broker the tests use (127.0.0.1:19092). `KAFKA_NODES=3 make kafka-up`: the
# three-broker loopback cluster instead (127.0.0.1:19500,19600,19700; deploy/kafka/README.md), beside it.
KAFKA_NODES ?= 1
kafka-up: install
	$(if $(filter 1,$(KAFKA_NODES)),bash deploy/kafka/kafka-up.sh,KAFKA_NODES=$(KAFKA_NODES) bash deploy/kafka/kafka-cluster.sh up)

kafka-down:
	$(if $(filter 1,$(KAFKA_NODES)),bash deploy/kafka/kafka-down.sh,KAFKA_NODES=$(KAFKA_NODES) bash deploy/kafka/kafka-cluster.sh down)

# what `make test` and `make bench-kafka` need whatever KAFKA_NODES says: the single node
kafka-single: install
	bash deploy/kafka/kafka-up.sh

bench: install
	$(BIN)/python -m load.bench_engine

bench-kafka: install kafka-single
	$(BIN)/giftstream load compare --events 1000000

clean:
	rm -rf out build *.egg-info .pytest_cache .ruff_cache native/target stream/_native*.so
