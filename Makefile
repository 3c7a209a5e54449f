# The two Quick start commands. Each does all the set-up it needs first.
.PHONY: demo test

demo:
	@scripts/setup.sh
	@python3 -m mcsafe demo

test:
	@scripts/setup.sh
	@python3 -m pytest -q -p no:cacheprovider tests benchmarks --benchmark-disable
