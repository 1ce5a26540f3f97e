#!/usr/bin/env bash
# Runs fuzz targets, each for one budget: a duration ("60s") or an execution count ("20000x").
#
#   tests/fuzz.sh BUDGET pkg:FuzzName...
#
# Go 1.26's fuzz coordinator can fail a target at the very end of a duration budget with a bare
# "context deadline exceeded" and no input (golang/go#75804, fixed in Go 1.27): it compares the
# budget context's error with its child's before the cancellation has reached the child. A count
# budget sets no deadline, so `make test` uses counts and any failure there is real. For
# durations (`make fuzz`) that race is told apart from a finding: a finding always writes its
# input under testdata/fuzz/<target>/ and names it ("Failing input written to"); the race writes
# nothing and prints nothing but that one line. It is reported, and does not fail the run.
set -euo pipefail
cd "$(dirname "$0")/.."
budget=${1:?usage: tests/fuzz.sh BUDGET pkg:FuzzName...}
shift
go=${GO:-go}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

inputs() { ls "$1" 2>/dev/null | sort || true; }

for t in "$@"; do
	pkg=${t%%:*} name=${t#*:}
	corpus=pkg/$pkg/testdata/fuzz/$name
	before=$(inputs "$corpus")
	echo "fuzz $name ($budget)"
	if "$go" test -run '^$' -fuzz "^$name\$" -fuzztime "$budget" "./pkg/$pkg/" >"$log" 2>&1; then
		# go test passes when -fuzz matches no target: a renamed target must not pass unseen.
		if ! grep '^fuzz: elapsed' "$log" | tail -1 | grep .; then
			cat "$log"
			echo "fuzz $name: no such fuzz target in ./pkg/$pkg/"
			exit 1
		fi
		continue
	fi
	written=$(comm -13 <(echo "$before") <(inputs "$corpus"))
	# The race's whole report: the FAIL line, the error, and the package's FAIL lines.
	other=$(grep -v -e '^fuzz: ' -e '^--- FAIL: '"$name"' ' -e '^    context deadline exceeded$' \
		-e '^FAIL$' -e '^exit status 1$' -e "^FAIL"$'\t' "$log" || true)
	if [[ $budget != *x && -z $written && -z $other ]] && grep -qx '    context deadline exceeded' "$log"; then
		echo "fuzz $name: the run ended with Go's fuzz-coordinator shutdown race (golang/go#75804):"
		echo "  'context deadline exceeded' at the end of the $budget budget, no input written; not a finding"
		continue
	fi
	cat "$log"
	[[ -n $written ]] && echo "fuzz $name: new input(s) under $corpus: $written"
	exit 1
done
