package tui

import (
	"hash/fnv"

	"github.com/charmbracelet/lipgloss"
)

// styles are adaptive: legible on light and dark backgrounds, and plain
// when the renderer has no colour (NO_COLOR, dumb terminals).
type styles struct {
	header, dim, selected, live, warn, bad, key, str, num, marker lipgloss.Style
	channels                                                      []lipgloss.Style
}

func newStyles(r *lipgloss.Renderer) styles {
	c := func(light, dark string) lipgloss.AdaptiveColor {
		return lipgloss.AdaptiveColor{Light: light, Dark: dark}
	}
	s := styles{
		header:   r.NewStyle().Bold(true),
		dim:      r.NewStyle().Foreground(c("#6c6c6c", "#8a8a8a")),
		selected: r.NewStyle().Reverse(true),
		live:     r.NewStyle().Foreground(c("#00875f", "#5fd787")).Bold(true),
		warn:     r.NewStyle().Foreground(c("#af5f00", "#ffaf00")).Bold(true),
		bad:      r.NewStyle().Foreground(c("#d70000", "#ff5f5f")).Bold(true),
		key:      r.NewStyle().Foreground(c("#005faf", "#5fafff")),
		str:      r.NewStyle().Foreground(c("#008700", "#87d787")),
		num:      r.NewStyle().Foreground(c("#875f00", "#d7af5f")),
		marker:   r.NewStyle().Reverse(true).Bold(true),
	}
	for _, col := range []lipgloss.AdaptiveColor{
		c("#005faf", "#5fafff"), c("#af005f", "#ff87af"), c("#008787", "#5fd7d7"),
		c("#5f00af", "#af87ff"), c("#875f00", "#ffd75f"), c("#00875f", "#87ffaf"),
	} {
		s.channels = append(s.channels, r.NewStyle().Foreground(col))
	}
	return s
}

// channel returns the colour of a channel, stable across runs.
func (s styles) channel(name string) lipgloss.Style {
	h := fnv.New32a()
	h.Write([]byte(name))
	return s.channels[int(h.Sum32()%uint32(len(s.channels)))]
}
