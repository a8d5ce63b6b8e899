package tui

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/charmbracelet/bubbles/help"
	"github.com/charmbracelet/bubbles/key"
	"github.com/charmbracelet/bubbles/textinput"
	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/x/ansi"
	"github.com/pushctl/pushctl/internal/broker"
)

// Config describes what the UI shows and can do.
type Config struct {
	Source    string // broker URL or ZeroMQ endpoint
	Transport string // how messages arrive: ndjson, zmq
	Channels  []string
	Store     *Store
	// Publish sends a message; nil when the source cannot take one (ZeroMQ).
	Publish func(ctx context.Context, channel, event string, data []byte) (id string, err error)
	// Copy puts text on the clipboard (OSC 52); nil disables copying.
	Copy      func(text string)
	Renderer  *lipgloss.Renderer
	FrameRate time.Duration // default 50ms (20 frames a second)
	// MaxItems bounds the messages the list keeps (default: the store's).
	MaxItems int
	// Location is the time zone of the times shown (default: local).
	Location *time.Location
}

type mode int

const (
	modeList mode = iota
	modeDetail
	modeFilter
	modePublish
)

// Model is the bubbletea model of the UI.
type Model struct {
	cfg   Config
	st    styles
	keys  KeyMap
	help  help.Model
	input textinput.Model
	w, h  int
	mode  mode

	items    []Item // retained messages, oldest first
	visible  []int  // indexes into items that pass the filter
	lastN    uint64
	snap     Snapshot
	filter   string
	filterRe *regexp.Regexp
	filterOK bool

	sel      int // index into visible
	top      int
	follow   bool
	newCount int // messages arrived while not following

	detailTop   int
	pubChannel  int
	flash       string
	flashUntil  time.Time
	done        error // the feed ended with this
	ended       bool
	Interrupted bool // the user pressed Ctrl-C
}

// FeedDone tells the UI that the subscription ended.
type FeedDone struct{ Err error }

type frameMsg time.Time

type publishedMsg struct {
	channel, id string
	err         error
}

// New returns the model.
func New(cfg Config) Model {
	if cfg.FrameRate <= 0 {
		cfg.FrameRate = 50 * time.Millisecond
	}
	if cfg.Renderer == nil {
		cfg.Renderer = lipgloss.DefaultRenderer()
	}
	if cfg.MaxItems <= 0 {
		cfg.MaxItems = cfg.Store.maxItems
	}
	if cfg.Location == nil {
		cfg.Location = time.Local
	}
	in := textinput.New()
	in.CharLimit = 1 << 16
	h := help.New()
	return Model{cfg: cfg, st: newStyles(cfg.Renderer), keys: DefaultKeyMap, help: h, input: in, follow: true, w: 80, h: 24, filterOK: true}
}

// Init implements tea.Model.
func (m Model) Init() tea.Cmd { return m.tick() }

func (m Model) tick() tea.Cmd {
	return tea.Tick(m.cfg.FrameRate, func(t time.Time) tea.Msg { return frameMsg(t) })
}

// SetSize sets the terminal size (tests; the program sends WindowSizeMsg).
func (m *Model) SetSize(w, h int) { m.w, m.h = max(w, 20), max(h, 6) }

// Refresh pulls what arrived since the last frame (tests call it directly).
func (m *Model) Refresh() {
	snap := m.cfg.Store.Snapshot(m.lastN, 20)
	m.snap = snap
	if len(snap.Items) > 0 {
		m.lastN = snap.Items[len(snap.Items)-1].N
	}
	// Forget what the store evicted, and keep the list bounded.
	drop := 0
	for drop < len(m.items) && m.items[drop].N < snap.Oldest {
		drop++
	}
	if over := len(m.items) + len(snap.Items) - m.cfg.MaxItems; over > drop {
		drop = min(over, len(m.items))
	}
	if drop > 0 {
		m.items = append(m.items[:0:0], m.items[drop:]...)
		shift := 0
		for shift < len(m.visible) && m.visible[shift] < drop {
			shift++
		}
		nv := make([]int, 0, len(m.visible)-shift)
		for _, i := range m.visible[shift:] {
			nv = append(nv, i-drop)
		}
		m.visible = nv
		m.sel = max(0, m.sel-shift)
		m.top = max(0, m.top-shift)
	}
	for _, it := range snap.Items {
		if len(m.items) >= m.cfg.MaxItems {
			break
		}
		m.items = append(m.items, it)
		if m.matches(it) {
			m.visible = append(m.visible, len(m.items)-1)
			if !m.follow {
				m.newCount++
			}
		}
	}
	if m.follow {
		m.toEnd()
	}
}

func (m *Model) matches(it Item) bool {
	if m.filter == "" || !m.filterOK {
		return true
	}
	msg := it.Msg
	data := msg.Data
	if len(data) > 64<<10 {
		data = data[:64<<10]
	}
	if m.filterRe != nil {
		return m.filterRe.MatchString(msg.Channel) || m.filterRe.MatchString(msg.Event) || m.filterRe.Match(data)
	}
	return strings.Contains(msg.Channel, m.filter) || strings.Contains(msg.Event, m.filter) || bytes.Contains(data, []byte(m.filter))
}

func (m *Model) setFilter(f string) {
	m.filter, m.filterRe, m.filterOK = f, nil, true
	if expr, ok := strings.CutPrefix(f, "re:"); ok {
		re, err := regexp.Compile(expr)
		if err != nil {
			m.filterOK = false
			m.setFlash("bad regexp: " + err.Error())
		} else {
			m.filterRe = re
		}
	}
	visible := make([]int, 0, len(m.items))
	for i, it := range m.items {
		if m.matches(it) {
			visible = append(visible, i)
		}
	}
	m.visible = visible
	m.toEnd()
	m.follow = true
}

func (m *Model) setFlash(s string) { m.flash, m.flashUntil = s, time.Now().Add(4*time.Second) }

func (m *Model) listRows() int { return max(1, m.h-3) }

func (m *Model) toEnd() {
	m.sel = max(0, len(m.visible)-1)
	m.top = max(0, len(m.visible)-m.listRows())
	m.newCount = 0
}

func (m *Model) move(d int) {
	if len(m.visible) == 0 {
		return
	}
	m.sel = min(max(m.sel+d, 0), len(m.visible)-1)
	m.follow = m.sel == len(m.visible)-1 && d > 0
	if m.follow {
		m.toEnd()
		return
	}
	rows := m.listRows()
	if m.sel < m.top {
		m.top = m.sel
	}
	if m.sel >= m.top+rows {
		m.top = m.sel - rows + 1
	}
}

func (m Model) selected() (Item, bool) {
	if m.sel < 0 || m.sel >= len(m.visible) {
		return Item{}, false
	}
	return m.items[m.visible[m.sel]], true
}

func (m Model) publishChannels() []string {
	var out []string
	for _, c := range m.cfg.Channels {
		if !broker.IsPattern(c) {
			out = append(out, c)
		}
	}
	return out
}

// Update implements tea.Model.
func (m Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.SetSize(msg.Width, msg.Height)
		if m.follow {
			m.toEnd()
		}
		m.help.Width = m.w
		return m, nil
	case frameMsg:
		m.Refresh()
		if m.ended {
			return m, nil
		}
		return m, m.tick()
	case FeedDone:
		m.Refresh()
		m.done, m.ended = msg.Err, true
		return m, tea.Quit
	case publishedMsg:
		if msg.err != nil {
			m.setFlash("publish failed: " + msg.err.Error())
		} else {
			m.setFlash("published to " + msg.channel + ": " + msg.id)
		}
		return m, nil
	case tea.KeyMsg:
		return m.key(msg)
	}
	return m, nil
}

func (m Model) key(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	if k.Type == tea.KeyCtrlC {
		m.Interrupted = true
		return m, tea.Quit
	}
	switch m.mode {
	case modeFilter, modePublish:
		return m.inputKey(k)
	case modeDetail:
		switch {
		case key.Matches(k, m.keys.Back), key.Matches(k, m.keys.Detail):
			m.mode = modeList
		case key.Matches(k, m.keys.Down):
			m.detailTop++
		case key.Matches(k, m.keys.Up):
			m.detailTop = max(0, m.detailTop-1)
		case key.Matches(k, m.keys.PageDown):
			m.detailTop += m.listRows()
		case key.Matches(k, m.keys.PageUp):
			m.detailTop = max(0, m.detailTop-m.listRows())
		case key.Matches(k, m.keys.Copy):
			m.copySelected()
		case key.Matches(k, m.keys.Quit):
			return m, tea.Quit
		}
		return m, nil
	}
	switch {
	case key.Matches(k, m.keys.Quit):
		return m, tea.Quit
	case key.Matches(k, m.keys.Up):
		m.move(-1)
	case key.Matches(k, m.keys.Down):
		m.move(1)
	case key.Matches(k, m.keys.PageUp):
		m.move(-m.listRows())
	case key.Matches(k, m.keys.PageDown):
		m.move(m.listRows())
	case key.Matches(k, m.keys.Top):
		m.follow = false
		m.sel, m.top = 0, 0
	case key.Matches(k, m.keys.End):
		m.follow = true
		m.toEnd()
	case key.Matches(k, m.keys.Pause):
		m.follow = !m.follow
		if m.follow {
			m.toEnd()
		}
	case key.Matches(k, m.keys.Detail):
		if _, ok := m.selected(); ok {
			m.mode, m.detailTop = modeDetail, 0
			m.follow = false
		}
	case key.Matches(k, m.keys.Copy):
		m.copySelected()
	case key.Matches(k, m.keys.Filter):
		m.mode = modeFilter
		m.input.Prompt = "filter: "
		m.input.Placeholder = "text, or re:regexp"
		m.input.SetValue(m.filter)
		m.input.CursorEnd()
		return m, m.input.Focus()
	case key.Matches(k, m.keys.Publish):
		if m.cfg.Publish == nil {
			m.setFlash("this source cannot take messages")
			return m, nil
		}
		if len(m.publishChannels()) == 0 {
			m.setFlash("subscribe to a channel name (not only patterns) to publish")
			return m, nil
		}
		m.mode = modePublish
		m.input.Placeholder = "message (start with @event to name the event)"
		m.input.SetValue("")
		m.updatePrompt()
		return m, m.input.Focus()
	case key.Matches(k, m.keys.Back):
		switch {
		case m.help.ShowAll:
			m.help.ShowAll = false
		case m.filter != "":
			m.setFilter("")
		}
	case key.Matches(k, m.keys.Help):
		m.help.ShowAll = !m.help.ShowAll
	}
	return m, nil
}

func (m *Model) updatePrompt() {
	chans := m.publishChannels()
	m.input.Prompt = "publish to " + chans[m.pubChannel%len(chans)] + ": "
}

func (m Model) inputKey(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	switch {
	case k.Type == tea.KeyEsc:
		if m.mode == modeFilter {
			m.setFilter("")
		}
		m.mode = modeList
		m.input.Blur()
		return m, nil
	case k.Type == tea.KeyTab && m.mode == modePublish:
		m.pubChannel++
		m.updatePrompt()
		return m, nil
	case k.Type == tea.KeyEnter:
		val := m.input.Value()
		mode := m.mode
		m.mode = modeList
		m.input.Blur()
		if mode == modeFilter {
			m.setFilter(val)
			return m, nil
		}
		chans := m.publishChannels()
		ch := chans[m.pubChannel%len(chans)]
		event, text := "", val
		if rest, ok := strings.CutPrefix(val, "@"); ok {
			event, text, _ = strings.Cut(rest, " ")
		}
		pub := m.cfg.Publish
		return m, func() tea.Msg {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			id, err := pub(ctx, ch, event, []byte(text))
			return publishedMsg{channel: ch, id: id, err: err}
		}
	}
	var cmd tea.Cmd
	m.input, cmd = m.input.Update(k)
	if m.mode == modeFilter {
		// Filter as you type.
		m.setFilter(m.input.Value())
		m.flash = ""
	}
	return m, cmd
}

func (m *Model) copySelected() {
	it, ok := m.selected()
	if !ok || m.cfg.Copy == nil {
		return
	}
	m.cfg.Copy(string(it.Msg.Data))
	m.setFlash(fmt.Sprintf("copied %d bytes to the clipboard (OSC 52)", len(it.Msg.Data)))
}

// Done returns the error the feed ended with, if it ended.
func (m Model) Done() (bool, error) { return m.ended, m.done }

// View implements tea.Model.
func (m Model) View() string {
	var b strings.Builder
	b.WriteString(ansi.Truncate(m.headerLine(), m.w, "…"))
	b.WriteByte('\n')
	rows := m.listRows()
	var body []string
	if m.help.ShowAll && m.mode == modeList {
		body = append([]string{m.st.header.Render("keys")}, strings.Split(m.help.FullHelpView(m.keys.FullHelp()), "\n")...)
	} else if m.mode == modeDetail {
		body = m.detailLines()
		if m.detailTop > max(0, len(body)-rows) {
			m.detailTop = max(0, len(body)-rows)
		}
		body = body[min(m.detailTop, len(body)):]
	} else {
		body = m.listLines(rows)
	}
	for i := 0; i < rows; i++ {
		if i < len(body) {
			b.WriteString(ansi.Truncate(body[i], m.w, "…"))
		}
		b.WriteByte('\n')
	}
	b.WriteString(ansi.Truncate(m.footerLine(), m.w, "…"))
	b.WriteByte('\n')
	b.WriteString(ansi.Truncate(m.bottomLine(), m.w, "…"))
	return b.String()
}

func (m Model) headerLine() string {
	st := m.snap.State
	var state string
	switch st.Phase {
	case "live":
		state = m.st.live.Render("● live")
	case "resumed":
		state = m.st.live.Render("● resumed")
	case "reconnecting":
		state = m.st.bad.Render(fmt.Sprintf("○ reconnecting (attempt %d)", st.Attempt))
	case "ended":
		state = m.st.dim.Render("■ ended")
	default:
		state = m.st.warn.Render("◌ " + st.Phase)
	}
	if st.Gap {
		state += " " + m.st.warn.Render("⚠ gap detected")
	}
	parts := []string{m.st.header.Render("pushctl sub"), m.cfg.Source, m.cfg.Transport, state}
	var chans []string
	for _, c := range m.cfg.Channels {
		chans = append(chans, m.st.channel(c).Render(c))
	}
	return strings.Join(parts, m.st.dim.Render(" · ")) + "  " + strings.Join(chans, " ")
}

func (m Model) listLines(rows int) []string {
	if len(m.visible) == 0 {
		switch {
		case m.filter != "":
			return []string{m.st.dim.Render(fmt.Sprintf("  no message matches %q (esc clears the filter)", m.filter))}
		default:
			return []string{m.st.dim.Render("  waiting for messages…")}
		}
	}
	chw := 0
	for _, c := range m.cfg.Channels {
		chw = max(chw, len(c))
	}
	for _, i := range m.visible[m.top:min(len(m.visible), m.top+rows)] {
		chw = max(chw, len(m.items[i].Msg.Channel))
	}
	chw = min(chw, 24)
	var out []string
	for vi := m.top; vi < len(m.visible) && vi < m.top+rows; vi++ {
		it := m.items[m.visible[vi]]
		msg := it.Msg
		ts := msg.Time
		if ts.IsZero() {
			ts = it.At
		}
		ch := msg.Channel
		if len(ch) > chw {
			ch = ch[:chw-1] + "…"
		}
		ev := ""
		if msg.Event != "" && msg.Event != broker.DefaultEvent {
			ev = msg.Event + " "
		}
		fixed := 14 + chw + 1 + len(ev)
		prev := preview(msg, max(0, m.w-fixed))
		if vi == m.sel && !m.follow || vi == m.sel && m.mode != modeList {
			// A marker as well as reverse video, so the selection shows
			// without colour too.
			line := fmt.Sprintf("›%s %-*s %s%s", ts.In(m.cfg.Location).Format("15:04:05.000"), chw, ch, ev, prev)
			out = append(out, m.st.selected.Render(padRight(line, m.w)))
			continue
		}
		line := " " + m.st.dim.Render(ts.In(m.cfg.Location).Format("15:04:05.000")) + " " +
			m.st.channel(msg.Channel).Render(fmt.Sprintf("%-*s", chw, ch)) + " " +
			m.st.key.Render(ev) + prev
		out = append(out, line)
	}
	return out
}

func padRight(s string, w int) string {
	if n := ansi.StringWidth(s); n < w {
		return s + strings.Repeat(" ", w-n)
	}
	return s
}

// preview is a one-line rendering of the data.
func preview(m *broker.Message, w int) string {
	if w <= 0 {
		return ""
	}
	data := m.Data
	if len(data) > 4*w+16 {
		data = data[:4*w+16]
	}
	if m.Kind == broker.KindBinary || !utf8.Valid(data) && len(data) == len(m.Data) {
		h := hex.EncodeToString(data)
		return fmt.Sprintf("[%d bytes] %s", len(m.Data), h)
	}
	s := strings.Map(func(r rune) rune {
		switch {
		case r == '\n' || r == '\r' || r == '\t':
			return ' '
		case r < 0x20 || r == 0x7f:
			return '·'
		}
		return r
	}, string(data))
	return ansi.Truncate(s, w, "…")
}

func (m Model) detailLines() []string {
	it, ok := m.selected()
	if !ok {
		return nil
	}
	msg := it.Msg
	label := func(k, v string) string { return m.st.dim.Render(fmt.Sprintf("%-8s", k)) + " " + v }
	lines := []string{
		label("channel", m.st.channel(msg.Channel).Render(msg.Channel)),
		label("id", msg.ID()+m.st.dim.Render(fmt.Sprintf("   seq %d", msg.Seq))),
		label("event", msg.Event),
		label("time", msg.Time.In(m.cfg.Location).Format(time.RFC3339Nano)),
		label("data", fmt.Sprintf("%s, %d bytes", msg.Kind, len(msg.Data))),
		m.st.dim.Render(strings.Repeat("─", max(1, m.w))),
	}
	switch {
	case msg.Kind == broker.KindJSON:
		lines = append(lines, m.colorJSON(msg.Data)...)
	case msg.Kind == broker.KindBinary || !utf8.Valid(msg.Data):
		lines = append(lines, hexDump(msg.Data)...)
		lines = append(lines, "", m.st.dim.Render("base64"), base64.StdEncoding.EncodeToString(msg.Data))
	default:
		lines = append(lines, strings.Split(string(msg.Data), "\n")...)
	}
	return lines
}

func hexDump(b []byte) []string {
	var out []string
	for off := 0; off < len(b); off += 16 {
		chunk := b[off:min(off+16, len(b))]
		asc := make([]byte, len(chunk))
		for i, c := range chunk {
			asc[i] = '.'
			if c >= 0x20 && c < 0x7f {
				asc[i] = c
			}
		}
		out = append(out, fmt.Sprintf("%08x  %-47s  %s", off, hex.EncodeToString(chunk), asc))
	}
	return out
}

// colorJSON pretty-prints JSON with keys, strings and numbers coloured.
func (m Model) colorJSON(data []byte) []string {
	var buf bytes.Buffer
	if err := json.Indent(&buf, data, "", "  "); err != nil {
		return strings.Split(string(data), "\n")
	}
	var out []string
	for _, line := range strings.Split(buf.String(), "\n") {
		out = append(out, m.colorJSONLine(line))
	}
	return out
}

func (m Model) colorJSONLine(line string) string {
	var b strings.Builder
	for i := 0; i < len(line); {
		c := line[i]
		switch {
		case c == '"':
			j := i + 1
			for j < len(line) && line[j] != '"' {
				if line[j] == '\\' {
					j++
				}
				j++
			}
			j = min(j+1, len(line))
			tok := line[i:j]
			if strings.HasPrefix(strings.TrimLeft(line[j:], " "), ":") {
				b.WriteString(m.st.key.Render(tok))
			} else {
				b.WriteString(m.st.str.Render(tok))
			}
			i = j
		case c == '-' || c >= '0' && c <= '9' || strings.HasPrefix(line[i:], "true") || strings.HasPrefix(line[i:], "false") || strings.HasPrefix(line[i:], "null"):
			j := i
			for j < len(line) && !strings.ContainsRune(",]} ", rune(line[j])) {
				j++
			}
			b.WriteString(m.st.num.Render(line[i:j]))
			i = j
		default:
			b.WriteByte(c)
			i++
		}
	}
	return b.String()
}

func (m Model) footerLine() string {
	s := m.snap
	parts := []string{
		fmt.Sprintf("%d msgs", s.Total),
		fmt.Sprintf("%.0f/s %s", s.Rate, sparkline(s.Spark)),
		humanBytes(s.Bytes),
	}
	gd := fmt.Sprintf("gaps %d · drops %d", s.Gaps, s.Drops)
	if s.Gaps+s.Drops > 0 {
		gd = m.st.warn.Render(gd)
	}
	parts = append(parts, gd)
	if m.filter != "" {
		parts = append(parts, fmt.Sprintf("filter %q: %d shown", m.filter, len(m.visible)))
	}
	mode := m.st.live.Render("▶ following")
	if !m.follow {
		mode = m.st.warn.Render("⏸ paused")
		if m.newCount > 0 {
			mode += " " + m.st.marker.Render(fmt.Sprintf(" %d new ", m.newCount))
		}
	}
	parts = append(parts, mode)
	return strings.Join(parts, m.st.dim.Render(" · "))
}

func (m Model) bottomLine() string {
	switch {
	case m.mode == modeFilter || m.mode == modePublish:
		return m.input.View()
	case m.flash != "" && time.Now().Before(m.flashUntil):
		return m.flash
	case m.ended && m.done != nil:
		return m.st.bad.Render("ended: " + m.done.Error())
	}
	return m.help.ShortHelpView(m.keys.ShortHelp())
}

var sparks = []rune("▁▂▃▄▅▆▇█")

func sparkline(v []uint64) string {
	var top uint64
	for _, x := range v {
		top = max(top, x)
	}
	var b strings.Builder
	for _, x := range v {
		if top == 0 {
			b.WriteRune(sparks[0])
			continue
		}
		b.WriteRune(sparks[int(x*uint64(len(sparks)-1)/top)])
	}
	return b.String()
}

func humanBytes(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
