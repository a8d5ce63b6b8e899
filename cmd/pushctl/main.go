// Command pushctl is a publish/subscribe toolbox. See README.md.
package main

import (
	"os"

	"github.com/pushctl/pushctl/internal/cmd/root"
)

func main() {
	os.Exit(root.Main())
}
