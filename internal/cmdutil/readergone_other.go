//go:build !linux

package cmdutil

import (
	"context"
	"errors"
	"io"
)

// ErrReaderGone is the cause of a context ended by WhenReaderGone.
var ErrReaderGone = errors.New("the reader of standard output has gone")

// WhenReaderGone watches nothing on this system: a closed pipe is noticed
// at the next write.
func WhenReaderGone(ctx context.Context, out io.Writer) (context.Context, func()) {
	return ctx, func() {}
}
