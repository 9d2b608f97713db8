# magma_ros developer entry points. `make demo` and `make test` set up everything
# they need on first use (virtualenv, pinned ROS 2 Kilted wheels, torch, the
# interface build) and skip finished steps afterwards.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --quiet --disable-pip-version-check
SITE = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# pip prints a warning per package for the machine's local mirrors; keep them out of sight.
QUIET_PIP := 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

# Every ROS process we start stays on this machine (see README, "Networking").
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export RMW_IMPLEMENTATION ?= rmw_fastrtps_cpp
# Large camera frames need bigger shared-memory segments (see config/fastdds_local.xml).
export FASTDDS_DEFAULT_PROFILES_FILE ?= $(CURDIR)/config/fastdds_local.xml
export PYTHONDONTWRITEBYTECODE = 1

INTERFACES := $(wildcard msg/*.msg srv/*.srv)

.PHONY: help setup demo test bench lint lock clean

help:
	@echo "make demo   run the main job on the embedded default model"
	@echo "make test   run the whole test suite"
	@echo "make bench  run the benchmarks"
	@echo "make lint   ruff check"
	@echo "make lock   re-pin requirements/lock.txt from requirements/direct.in"

$(VENV)/.stamp-venv:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "magma_ros needs Python 3.10+"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	touch $@

$(VENV)/.stamp-deps: $(VENV)/.stamp-venv requirements/lock.txt
	@echo "[setup] installing pinned dependencies (ROS 2 Kilted wheels, torch, ...) into $(VENV)"
	@free=$$(df -Pk $(VENV) | awk 'NR == 2 {print int($$4 / 1048576)}'); [ "$$free" -ge 8 ] || \
	  echo "[setup] warning: $$free GiB free on this disk; the venv takes about 7 GiB (torch's CUDA build and its libraries)"
	$(PIP) install -r requirements/lock.txt $(QUIET_PIP)
	touch $@

# The package itself, editable: imported from this source tree, executables on PATH.
$(VENV)/.stamp-package: $(VENV)/.stamp-deps setup.py magma_ros/executables.py
	$(PIP) install --no-deps --no-build-isolation -e . --config-settings editable_mode=compat $(QUIET_PIP)
	touch $@

# The magma_ros messages and services, generated once into the venv's ROS prefix.
$(VENV)/.stamp-interfaces: $(VENV)/.stamp-package CMakeLists.txt package.xml $(INTERFACES) $(wildcard cmake/*)
	@echo "[setup] building magma_ros interfaces into $(VENV)"
	rm -rf build/dev-interfaces && mkdir -p build
	source $(VENV)/bin/activate && \
	  CMAKE_PREFIX_PATH=$(abspath $(VENV)) AMENT_PREFIX_PATH=$(abspath $(VENV)) \
	  cmake -S . -B build/dev-interfaces -DCMAKE_INSTALL_PREFIX=$(abspath $(VENV)) \
	    -DPython3_EXECUTABLE=$(abspath $(PY)) -DMAGMA_ROS_INSTALL_PYTHON=OFF -DBUILD_TESTING=OFF \
	    > build/dev-interfaces.log 2>&1 && \
	  $(MAKE) -C build/dev-interfaces -j2 install >> build/dev-interfaces.log 2>&1 \
	  || { tail -n 40 build/dev-interfaces.log; exit 1; }
	$(PY) -c 'from magma_ros.msg import Prediction, EndEffectorDelta, Trace, Mark; from magma_ros.srv import SetInstruction'
	touch $@

setup: $(VENV)/.stamp-interfaces

# A private DDS domain unless one is set, so a demo never mixes with another stack on this machine.
demo: setup
	ROS_DOMAIN_ID=$${ROS_DOMAIN_ID:-$$(( 100 + RANDOM % 100 ))} $(VENV)/bin/magma-ros demo

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) bench/run.py

lint: setup
	$(VENV)/bin/ruff check .

lock: $(VENV)/.stamp-venv
	$(PY) tools/lock_requirements.py $(QUIET_PIP)

clean:
	rm -rf build install log .pytest_cache
