// Command reachd verifies network connectivity and says where and why it fails.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"reachd/pkg/cli"
)

func main() { os.Exit(run()) }

func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return cli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
}
