package tui

import "github.com/charmbracelet/bubbles/key"

// KeyMap lists every key binding with its help text.
type KeyMap struct {
	Up, Down, PageUp, PageDown, Top, End key.Binding
	Pause, Filter, Detail, Publish, Copy key.Binding
	Help, Quit, Back, NextChannel        key.Binding
}

// DefaultKeyMap is the keymap shown by `?`.
var DefaultKeyMap = KeyMap{
	Up:          key.NewBinding(key.WithKeys("up", "k"), key.WithHelp("↑/k", "up")),
	Down:        key.NewBinding(key.WithKeys("down", "j"), key.WithHelp("↓/j", "down")),
	PageUp:      key.NewBinding(key.WithKeys("pgup", "ctrl+u"), key.WithHelp("pgup", "page up")),
	PageDown:    key.NewBinding(key.WithKeys("pgdown", "ctrl+d"), key.WithHelp("pgdn", "page down")),
	Top:         key.NewBinding(key.WithKeys("home", "g"), key.WithHelp("g", "oldest")),
	End:         key.NewBinding(key.WithKeys("end", "G"), key.WithHelp("G", "newest, follow")),
	Pause:       key.NewBinding(key.WithKeys(" "), key.WithHelp("space", "pause/follow")),
	Filter:      key.NewBinding(key.WithKeys("/"), key.WithHelp("/", "filter (re: for a regexp)")),
	Detail:      key.NewBinding(key.WithKeys("enter"), key.WithHelp("enter", "details")),
	Publish:     key.NewBinding(key.WithKeys("p"), key.WithHelp("p", "publish")),
	Copy:        key.NewBinding(key.WithKeys("c"), key.WithHelp("c", "copy data")),
	Help:        key.NewBinding(key.WithKeys("?"), key.WithHelp("?", "help")),
	Quit:        key.NewBinding(key.WithKeys("q", "ctrl+c"), key.WithHelp("q", "quit")),
	Back:        key.NewBinding(key.WithKeys("esc"), key.WithHelp("esc", "back/clear")),
	NextChannel: key.NewBinding(key.WithKeys("tab"), key.WithHelp("tab", "next channel")),
}

// ShortHelp implements help.KeyMap.
func (k KeyMap) ShortHelp() []key.Binding {
	return []key.Binding{k.Pause, k.Filter, k.Detail, k.Publish, k.Help, k.Quit}
}

// FullHelp implements help.KeyMap.
func (k KeyMap) FullHelp() [][]key.Binding {
	return [][]key.Binding{
		{k.Up, k.Down, k.PageUp, k.PageDown},
		{k.Top, k.End, k.Pause, k.Filter},
		{k.Detail, k.Copy, k.Publish, k.NextChannel},
		{k.Back, k.Help, k.Quit},
	}
}
