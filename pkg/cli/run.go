package cli

import (
	"errors"
	"io"
	"log/slog"

	"github.com/spf13/cobra"

	"reachd/pkg/config"
	"reachd/pkg/daemon"
)

func newRun(stdout io.Writer) *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "run [--config FILE]",
		Short: "Run the daemon: probe the config's targets on their intervals, log verdicts, export metrics",
		Long: "Run the daemon in the foreground (systemd runs this). Without --config it reads " + config.DefaultPath + ".\n" +
			"SIGHUP reloads the config (a bad file keeps the running one); SIGTERM stops after in-flight attempts end.",
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			log := slog.New(slog.NewTextHandler(c.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelInfo}))
			err := daemon.Run(c.Context(), daemon.Options{ConfigPath: path, Version: version(), Stdout: stdout, Log: log, Diag: c.ErrOrStderr()})
			var cerrs config.Errors
			if errors.As(err, &cerrs) || errors.Is(err, daemon.ErrConfig) {
				return usageError{err}
			}
			if err != nil {
				return runtimeError{err}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&path, "config", "", "config file (default "+config.DefaultPath+")")
	return cmd
}
