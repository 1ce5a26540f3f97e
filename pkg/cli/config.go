package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"reachd/pkg/config"
	"reachd/pkg/probe"
)

func newConfig(stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Work with the daemon's config file",
		Args:  noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return usagef("missing subcommand (want: reachd config check FILE)")
		},
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "check [FILE]",
		Short: "Check a config file: a one-line summary, or every error as FILE:LINE:COL: message (exit 2)",
		Long: "Check a config file. Without FILE, " + config.DefaultPath + " (what `reachd run` reads), or, when\n" +
			"it does not exist, the gateway profile `reachd run` would probe instead.",
		Args: func(c *cobra.Command, args []string) error {
			if len(args) > 1 {
				return usagef("want one file: reachd config check [FILE]")
			}
			return nil
		},
		RunE: func(_ *cobra.Command, args []string) error {
			path := config.DefaultPath
			if len(args) == 1 {
				path = args[0]
			} else if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
				c, _, err := config.LoadProfile(config.ResolvConf, nil)
				if err != nil {
					return usageError{err}
				}
				fmt.Fprintf(stdout, "no %s: reachd run probes the %s\n", path, summary(c))
				return nil
			}
			c, err := config.Load(path)
			if err != nil {
				return usageError{err}
			}
			fmt.Fprintln(stdout, summary(c))
			return nil
		},
	})
	return cmd
}

// summary says in one line what a config will run.
func summary(c *config.Config) string {
	kinds := map[string]int{}
	targets, legs := 0, 0
	for _, p := range c.Probes {
		targets += len(p.Targets)
		kinds[p.Kind.Name] += len(p.Targets)
		legs += probe.Verdicts(p.Targets, p.Options)
	}
	var parts []string
	for k, n := range kinds {
		parts = append(parts, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(parts)
	return fmt.Sprintf("%s: ok: %d probes, %d targets (%s), up to %d verdicts a round", c.File, len(c.Probes), targets, strings.Join(parts, ", "), legs)
}
