// Package reachd's go:generate lines live here (bpf2go, once the eBPF programs exist).
package reachd
