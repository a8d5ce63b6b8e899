package cmdutil

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"

	"github.com/itchyny/gojq"
	"github.com/spf13/cobra"
)

// Filter keeps the messages a command was asked for: --where, a jq
// expression over the JSON data (gojq), and --match, a regular expression
// over the data as text. A message must pass both when both are given.
type Filter struct {
	where *gojq.Code
	match *regexp.Regexp
}

// FilterFlags are the values of --where and --match.
type FilterFlags struct {
	Where string
	Match string
}

// AddFilterFlags adds --where and --match.
func AddFilterFlags(cmd *cobra.Command, f *FilterFlags) {
	cmd.Flags().StringVar(&f.Where, "where", "", "keep only messages whose JSON data makes this jq expression true (e.g. '.status == \"done\"'); other data never matches")
	cmd.Flags().StringVar(&f.Match, "match", "", "keep only messages whose data matches this regular expression (Go RE2 syntax)")
}

// Compile checks the expressions, as usage errors naming the flag; it
// returns nil when neither flag is given.
func (f FilterFlags) Compile() (*Filter, error) {
	if f.Where == "" && f.Match == "" {
		return nil, nil
	}
	flt := &Filter{}
	if f.Where != "" {
		q, err := gojq.Parse(f.Where)
		if err != nil {
			return nil, FlagErrorf("--where %q: %v", f.Where, err)
		}
		code, err := gojq.Compile(q)
		if err != nil {
			return nil, FlagErrorf("--where %q: %v", f.Where, err)
		}
		flt.where = code
	}
	if f.Match != "" {
		re, err := regexp.Compile(f.Match)
		if err != nil {
			return nil, FlagErrorf("--match %q: %s", f.Match, strings.TrimPrefix(err.Error(), "error parsing regexp: "))
		}
		flt.match = re
	}
	return flt, nil
}

// maxOutputs bounds the results of one --where evaluation looked at.
const maxOutputs = 64

// Keep reports whether data passes the filter. isJSON says whether data
// is JSON; --where never matches other data. An expression that fails on
// a message (.a.b where .a is a number) does not match it; the error is
// returned for the caller to report.
func (f *Filter) Keep(ctx context.Context, data []byte, isJSON bool) (bool, error) {
	if f == nil {
		return true, nil
	}
	if f.match != nil && !f.match.Match(data) {
		return false, nil
	}
	if f.where == nil {
		return true, nil
	}
	if !isJSON {
		return false, nil
	}
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		return false, nil
	}
	it := f.where.RunWithContext(ctx, v)
	for i := 0; i < maxOutputs; i++ {
		out, ok := it.Next()
		if !ok {
			return false, nil
		}
		if err, isErr := out.(error); isErr {
			return false, fmt.Errorf("--where: %v", err)
		}
		if out != nil && out != false {
			return true, nil
		}
	}
	return false, nil
}
