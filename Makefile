# Two commands do everything on a fresh machine:
#   make demo   - create .venv, install, compile + benchmark the built-in demo model
#   make test   - create .venv, install, run the test suite (what .ci/run calls)
#   make test-wheel - build a wheel, install it into a fresh venv, run it outside the checkout
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
DEB_PKGS := g++-aarch64-linux-gnu openssh-server postgresql

.PHONY: setup system-deps demo test test-wheel test-slow test-arm emulated-device bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,tune,rpc]'
	touch $(STAMP)

# Debian packages: a cross compiler for ARM targets, sshd for the remote-device tests.
system-deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "warning: missing Debian packages:$$missing (run as root or: sudo apt-get install$$missing)"; fi; \
	fi

setup: $(STAMP) system-deps

demo: setup
	$(VENV)/bin/edgeprune compile --model zoo:digits-cnn --target host --out reports/demo

test: setup
	$(PY) -m pytest -q

# The package as users get it: a wheel in a fresh venv, `edgeprune targets` and a small
# compile from a folder outside the checkout (tests/test_wheel.py; about a minute with the zoo
# model already trained, which `make test` does).
test-wheel: setup
	$(PY) -m pytest -q -m slow tests/test_wheel.py

# Long real work (tuning, emulated ARM device, full benchmarks); CI runs a small form of it.
test-slow: setup
	$(PY) -m pytest -q -m slow

# The emulated Raspberry Pi 4 (arm64 Debian rootfs under qemu-user-static, sshd on
# 127.0.0.1:2222): built once (~5 min) and cached under /var/cache/edgeprune; then
# `compile --target rpi4 --device emulated-rpi4` runs end to end on it. Needs root.
emulated-device: setup
	bash scripts/emulated-device.sh rpi4 build

test-arm: emulated-device
	$(PY) -m pytest -q -m slow tests/test_emulated_arm.py

bench: setup
	$(PY) benchmarks/backends.py

clean:
	rm -rf $(VENV) out reports/demo .pytest_cache
