# Every target sets itself up: a fresh machine needs only Python 3.11, pip, make and kubectl.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
HOST   ?= 127.0.0.1
PORT   ?= 8443

.PHONY: install run test lint typecheck bench soak fuzz audit e2e lock fmt clean

$(STAMP): requirements/dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements/dev.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

install: $(STAMP)

# Development certificates (gitignored), valid for 127.0.0.1 and localhost too.
certs/tls.crt: | $(STAMP)
	$(BIN)/istio-spiffe-webhook certs --san 127.0.0.1 --san localhost

run: $(STAMP) certs/tls.crt
	@echo "Serving on https://$(HOST):$(PORT) (metrics on http://$(HOST):9090/metrics). Try:"
	@echo "  curl -sS --cacert certs/ca.crt -H 'Content-Type: application/json' \\"
	@echo "    --data-binary @examples/admission-review.json https://localhost:$(PORT)/mutate \\"
	@echo "    | $(PY) -c 'import sys,json,base64; r=json.load(sys.stdin)[\"response\"]; print(json.dumps(json.loads(base64.b64decode(r[\"patch\"])), indent=2))'"
	ISTIO_SPIFFE_WEBHOOK_METRICS_HOST=$(HOST) \
	$(BIN)/istio-spiffe-webhook serve --host $(HOST) --port $(PORT) \
	  --cert certs/tls.crt --key certs/tls.key

lint: $(STAMP)
	$(BIN)/ruff check webhook tests bench fuzz
	$(BIN)/ruff format --check webhook tests bench fuzz

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest -n 2 -q

# Every form judged by a real kube-apiserver 1.36.2 (../shared/kube-harness, built once per
# machine); not part of `make test` or CI, which have no Kubernetes binaries.
# E2E_ARGS: pytest arguments, e.g. E2E_ARGS=tests/e2e/test_webhook_e2e.py
e2e: $(STAMP)
	$(PY) scripts/e2e.py $(E2E_ARGS)

bench: $(STAMP)
	$(PY) bench/run.py

soak: $(STAMP)
	$(PY) -m tests.soak

fuzz: $(STAMP)
	$(PY) -m pip install --quiet --require-hashes -r requirements/fuzz.lock
	$(PY) fuzz/run.py

audit: $(STAMP)
	$(PY) -m pip install --quiet --require-hashes -r requirements/audit.lock
	$(PY) scripts/audit.py

# Re-pin the lock files (with `uv`, installed into .venv-uv).
lock:
	$(PYTHON) -m venv .venv-uv && .venv-uv/bin/pip install --quiet uv
	.venv-uv/bin/uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 -o requirements/dev.lock -q
	.venv-uv/bin/uv pip compile pyproject.toml --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 -o requirements/runtime.lock -q
	.venv-uv/bin/uv pip compile requirements/fuzz.in -c requirements/dev.lock --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 -o requirements/fuzz.lock -q
	.venv-uv/bin/uv pip compile requirements/audit.in -c requirements/dev.lock --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 -o requirements/audit.lock -q

fmt: $(STAMP)
	$(BIN)/ruff format webhook tests bench fuzz
	$(BIN)/ruff check --fix webhook tests bench fuzz

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
