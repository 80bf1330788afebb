# The course's two commands are `make demo` and `make test`; both set up .venv first.
# A second run reinstalls nothing: the install step only reruns when pyproject.toml changes.

VENV    := .venv
PYTHON  := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# sqlc finds its process plugin (sqlc-gen-psycopg) on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install demo lesson diff test exercise exercises-proof generate check bench bench-peers \
	bench-flow-control bench-scale bench-vacuum viewer

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(INSTALLED)

## Run every lesson's main.py in order and print a summary table.
demo: install
	$(PYTHON) -m lessons.common.demo

## Run one lesson: make lesson N=07 ARGS=--panic
lesson: install
	$(PYTHON) -m lessons.common.demo --lesson $(N) -- $(ARGS)

## The web viewer of a lesson's queues, workers and tasks, on 127.0.0.1 (it prints its
## address): make viewer [N=11] [ARGS=--allow-operations]; the last lesson by default.
viewer: install
	$(PYTHON) -m viewer $(if $(N),--lesson $(N)) $(ARGS)

## Lesson N as the change from the lesson before it: make diff N=04
## (its SQL, engine, demo, tools and main.py; no README, no generated db/).
diff: install
	@$(PYTHON) -m lessons.common.lesson_diff $(N)

## The whole test suite.
test: install
	$(PYTHON) -m pytest

## Check your attempt at an exercise of a lesson's README: make exercise N=04 E=1
exercise: install
	$(PYTHON) -m exercises.check $(N) $(E)

## CI's proof of every exercise: its check fails on the lesson as shipped and passes
## with the reference solution applied (in a copy of the repository; a few minutes).
exercises-proof: install
	$(PYTHON) -m exercises.prove

## Regenerate every lesson's db/ package from its SQL.
generate: install
	$(VENV)/bin/sqlc generate

## Lint, format, type and generated-code checks: what CI runs besides the tests.
check: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy lessons sqlc_gen_psycopg benchmarks tests exercises viewer
	$(VENV)/bin/sqlc diff

## Lesson 04's worker: burn-down, the pgbench ceiling of its SQL, latency, memory (a few minutes).
## Entry points are the modules at the top of benchmarks/; benchmarks/README.md gives the layout.
bench: install
	$(PYTHON) -m benchmarks.queue_burn_down

## Lesson 12's fair claim against lesson 11's claim: one claim's latency with 1 to 10,000
## keys, and a drain by 2 worker processes (about 3-5 minutes).
bench-flow-control: install
	$(PYTHON) -m benchmarks.flow_control_claim

## Lesson 15's measured growth: claims with up to 1M queued, wake-ups of 100,000 sleepers,
## replays of 1,000 events, deletes with and without indexes on the foreign keys, orders with
## 1-8 worker processes (about 20 minutes). QUICK=1: each case once, small (under a minute,
## report in a temporary directory); LESSON=lesson15_... for another lesson's engine.
bench-scale: install
	$(PYTHON) -m benchmarks.scale_growth $(if $(QUICK),--quick) $(if $(LESSON),--lesson $(LESSON))

## Lesson 15's vacuum and bloat: 1,000,000 tasks through the hot tables under stock and tuned
## per-table autovacuum and fillfactor; dead rows, heap and index sizes, HOT updates, claim
## latency by tenth of the run (about 10 minutes). QUICK=1: 40,000 tasks a regime (under a
## minute, report in a temporary directory); LESSON=lesson15_... for another lesson's engine.
bench-vacuum: install
	$(PYTHON) -m benchmarks.vacuum_bloat $(if $(QUICK),--quick) $(if $(LESSON),--lesson $(LESSON))

## Lesson 04 against PgQueuer and Procrastinate, the durable orders of lessons 07 to 15
## against DBOS workflows, on the same server, 5 runs of each case (under 15 minutes).
## QUICK=1: each case once, small, stock pass only (about a minute, report in a temporary
## directory). VACUUM=both adds the burn-downs under aggressive autovacuum (about 20 minutes
## in all). Installs the `bench` extra (the peers and matplotlib) into .venv first.
bench-peers: $(VENV)/.installed-bench
	$(PYTHON) -m benchmarks.compare $(if $(QUICK),--quick) $(if $(VACUUM),--vacuum $(VACUUM))

$(VENV)/.installed-bench: pyproject.toml $(INSTALLED)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $@
