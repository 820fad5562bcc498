# agora: the front door. `just setup` once, then the rest.

setup:
    ./scripts/setup.sh

run config="configs/tiny.yaml" *args="":
    .venv/bin/agora run {{config}} {{args}}

test *args="":
    ./scripts/test.sh {{args}}

test-unit *args="":
    ./scripts/test.sh -m unit {{args}}

test-integration *args="":
    ./scripts/test.sh -m integration {{args}}

test-e2e *args="":
    ./scripts/test.sh -m e2e {{args}}

lint:
    ./scripts/lint.sh

bench:
    .venv/bin/python -m bench
