# agora: the front door. `just setup` once, then the rest.

setup:
    ./scripts/setup.sh

run config="configs/tiny.yaml" *args="":
    .venv/bin/agora run {{config}} {{args}}

test *args="":
    ./scripts/test.sh {{args}}

lint:
    ./scripts/lint.sh

bench:
    .venv/bin/python -m bench
