// Command reachd verifies network connectivity and says where and why it fails.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"reachd/pkg/cli"
)

func main() { os.Exit(run()) }

func run() int {
	// REACHD_CPUPROFILE=FILE writes a CPU profile of the run (go tool pprof), for the
	// benchmarks and for reports of reachd using more CPU than it should.
	if p := os.Getenv("REACHD_CPUPROFILE"); p != "" {
		f, err := os.Create(p)
		if err != nil {
			fmt.Fprintf(os.Stderr, "reachd: REACHD_CPUPROFILE: %v\n", err)
			return cli.ExitUsage
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(os.Stderr, "reachd: REACHD_CPUPROFILE: %v\n", err)
			return cli.ExitUsage
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return cli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
}
