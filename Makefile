# Two commands do all the set-up on a fresh machine:
#   make run   - create .venv, install, start the dashboard (demo dataset shipped in demo_data/) on this computer
#                only (127.0.0.1); `make run HOST=0.0.0.0` opens it to the network on purpose
#   make test  - create .venv if needed, install, run the whole test suite
# And for a demo or field server that several people reach:
#   make serve - the dashboard in shared mode (TOPTUNE_SHARED=1) on every interface: private workspaces, no server
#                paths, limits (see README, "Shared mode"); it reads the demo photos in the background as it
#                starts (warm-demo), so the first visitor's top-tune of the demo takes seconds
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8501
HOST ?= 127.0.0.1
# Streamlit's own cap on one upload (MB), matched to shared mode's zip limit.
MAX_UPLOAD_MB ?= $(or $(TOPTUNE_MAX_ZIP_MB),200)

WEB := toptune_core/portable/web

.PHONY: run serve test install browser offline-page clean-venv

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install -r requirements.txt
	touch $@

install: $(VENV)/.installed offline-page

# The offline diagnosis page's onnxruntime-web, from npm at the version its package-lock.json pins (README, "In the
# field"). Where npm is missing: one line, and everything else still works.
offline-page:
	@if [ -f $(WEB)/node_modules/.package-lock.json ] && [ $(WEB)/node_modules/.package-lock.json -nt $(WEB)/package-lock.json ]; then :; \
	elif command -v npm >/dev/null 2>&1; then cd $(WEB) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: no offline diagnosis page (README, 'In the field'); everything else works"; fi

run: install
	$(PY) -m streamlit run app.py --server.address $(HOST) --server.port $(PORT)

serve: install
	TOPTUNE_SHARED=1 $(PY) -m toptune_core warm-demo > /dev/null 2>&1 &
	TOPTUNE_SHARED=1 $(PY) -m streamlit run app.py --server.address 0.0.0.0 --server.port $(PORT) \
		--server.headless true --server.maxUploadSize $(MAX_UPLOAD_MB) --browser.gatherUsageStats false

# The browser test drives Debian's chromium; install it where it is missing and apt-get can.
browser:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the browser test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| (sudo -n apt-get update -qq && sudo -n DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| echo "could not install chromium; the browser test will be skipped"; \
	fi

test: install browser
	$(PY) -m pytest

clean-venv:
	rm -rf $(VENV)
