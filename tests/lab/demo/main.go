// Command demo builds a throwaway namespace lab and shows reachd's verdicts in it.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "demo: the namespace lab is not built yet (work in progress on issue 2)")
	os.Exit(1)
}
