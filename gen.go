// Package reachd holds the project's go:generate lines: bpf2go, pinned through
// go.mod's tool directive, compiles bpf/ into pkg/wire for amd64 and arm64.
package reachd

//go:generate go tool bpf2go -go-package wire -output-dir pkg/wire -target amd64,arm64 -type flow_key -type wire_event -type event_kind tcWire bpf/tc_wire.c -- -I bpf/include -O2 -g -Wall -Werror
//go:generate go tool bpf2go -go-package wire -output-dir pkg/wire -target amd64,arm64 sockTrace bpf/sock_trace.c -- -I bpf/include -O2 -g -Wall -Werror
