# Two commands on a fresh machine (each sets up .venv itself):
#   make book   build the website and print where to open it
#   make test   run the whole test suite
.PHONY: book test generate clean

book:
	scripts/bootstrap.sh book
	.venv/bin/course book

test:
	scripts/bootstrap.sh dev
	scripts/run_tests.sh

generate:
	scripts/bootstrap.sh book
	.venv/bin/course generate

clean:
	rm -rf _build
