/* Kernel types for reachd's eBPF programs, by target architecture (see README.md). */
#ifndef REACHD_VMLINUX_H
#define REACHD_VMLINUX_H

#if defined(__TARGET_ARCH_x86) || defined(__TARGET_ARCH_arm64)
/* Generated from x86_64 BTF. arm64 builds use it too: every kernel structure the programs
 * touch is read through CO-RE (preserve_access_index), so field offsets are resolved against
 * the running kernel's BTF at load, and no arch-specific type (pt_regs, ...) is used. */
#include "vmlinux_x86.h"
#else
#error "reachd's eBPF programs are built for x86 and arm64 only (bpf2go -target amd64,arm64)"
#endif

#endif
