package broker

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxChannelLen is the longest channel name or pattern accepted.
const MaxChannelLen = 128

// ErrInvalidChannel is wrapped by every channel-name validation error.
var ErrInvalidChannel = errors.New("invalid channel")

// ValidChannelChar reports whether c may appear in a channel name. Dots
// separate segments; '*' and '>' are reserved for patterns, ',' separates
// lists and '=' separates names from positions in cursors.
func ValidChannelChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	switch c {
	case '_', '-', '.', ':', '@', '~', '+':
		return true
	}
	return false
}

// ReservedPrefix begins the names of the broker's own channels (the
// lifecycle events, "$events.…"): no client channel can be named so, only
// the broker publishes on them, and a pattern reaches them only when it
// names their first segment itself ("$events.>"; never "*" or ">", as in
// MQTT), so a subscriber of ">" does not receive them.
const ReservedPrefix = "$"

// MaxReservedLen is the longest reserved name: a reserved prefix segment
// and a channel name of MaxChannelLen.
const MaxReservedLen = MaxChannelLen + 32

// IsReserved reports whether name (a channel or a pattern) is one of the
// broker's own.
func IsReserved(name string) bool { return strings.HasPrefix(name, ReservedPrefix) }

// ValidateChannel checks a concrete channel name: 1 to MaxChannelLen
// characters of [A-Za-z0-9_-.:@~+], dot-separated segments, none empty.
// A reserved name ("$" then such characters in its first segment) is
// valid too, up to MaxReservedLen; the door says who may use it.
func ValidateChannel(name string) error {
	if err := validateCommon(name); err != nil {
		return err
	}
	start := reservedStart(name)
	for i := start; i < len(name); i++ {
		if !ValidChannelChar(name[i]) {
			if name[i] == '*' || name[i] == '>' {
				if ValidatePattern(name) == nil {
					return fmt.Errorf("%w %q: patterns cannot be published to; name one channel", ErrInvalidChannel, name)
				}
			}
			return fmt.Errorf("%w %q: %s is not allowed (use letters, digits and _-.:@~+)", ErrInvalidChannel, name, describeChar(name[i:]))
		}
	}
	return nil
}

// describeChar names the character at the start of s as a person wrote it:
// the whole rune, or the byte when s is not valid UTF-8 there.
func describeChar(s string) string {
	r, size := utf8.DecodeRuneInString(s)
	if r == utf8.RuneError && size <= 1 {
		return fmt.Sprintf("byte 0x%02x (not UTF-8)", s[0])
	}
	return fmt.Sprintf("character %q", r)
}

// ValidatePattern checks a channel name or a pattern. In a pattern a segment
// may be "*" (exactly one segment) and the last segment may be ">" (one or
// more segments).
func ValidatePattern(p string) error {
	if err := validateCommon(p); err != nil {
		return err
	}
	start := reservedStart(p)
	segs := strings.Split(p[start:], ".")
	for i, s := range segs {
		if s == "*" && !(i == 0 && start > 0) {
			continue
		}
		if s == ">" && !(i == 0 && start > 0) {
			if i != len(segs)-1 {
				return fmt.Errorf("%w %q: '>' may only be the last segment", ErrInvalidChannel, p)
			}
			continue
		}
		for j := 0; j < len(s); j++ {
			if !ValidChannelChar(s[j]) {
				return fmt.Errorf("%w %q: %s is not allowed (use letters, digits and _-.:@~+, or a whole segment of * or >)", ErrInvalidChannel, p, describeChar(s[j:]))
			}
		}
	}
	return nil
}

func validateCommon(s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty name", ErrInvalidChannel)
	}
	if limit := MaxChannelLen; len(s) > limit && (!IsReserved(s) || len(s) > MaxReservedLen) {
		if IsReserved(s) {
			limit = MaxReservedLen
		}
		return fmt.Errorf("%w: name longer than %d bytes", ErrInvalidChannel, limit)
	}
	if s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return fmt.Errorf("%w %q: empty segment (leading, trailing or double dot)", ErrInvalidChannel, s)
	}
	return nil
}

// reservedStart is where the checked characters of a name begin: after
// the "$" of a reserved name whose first segment has more than the "$".
func reservedStart(s string) int {
	if IsReserved(s) && len(s) > 1 && s[1] != '.' {
		return 1
	}
	return 0
}

// IsPattern reports whether a validated name contains wildcard segments.
func IsPattern(p string) bool {
	return p == "*" || p == ">" ||
		strings.HasPrefix(p, "*.") || strings.HasPrefix(p, ">.") ||
		strings.Contains(p, ".*") || strings.HasSuffix(p, ".>")
}

// Match reports whether the concrete channel name matches the pattern
// (which may also be a plain name).
// A wildcard never matches a reserved first segment ("$events"): only
// a pattern that names it reaches the broker's own channels.
func Match(pattern, name string) bool {
	if IsReserved(name) && !IsReserved(pattern) {
		return false
	}
	for {
		pseg, prest, pmore := strings.Cut(pattern, ".")
		nseg, nrest, nmore := strings.Cut(name, ".")
		switch {
		case pseg == ">":
			return true // at least one segment remains in name
		case pseg == "*" || pseg == nseg:
		default:
			return false
		}
		if !pmore || !nmore {
			return pmore == nmore
		}
		pattern, name = prest, nrest
	}
}

// ParseChannelList splits a comma-separated list of channels or patterns,
// validating each and dropping duplicates.
func ParseChannelList(s string) ([]string, error) {
	if s == "" {
		return nil, fmt.Errorf("%w: no channel given", ErrInvalidChannel)
	}
	parts := strings.Split(s, ",")
	if len(parts) > MaxChannelsPerList {
		return nil, fmt.Errorf("%w: more than %d channels in one list", ErrInvalidChannel, MaxChannelsPerList)
	}
	out := make([]string, 0, len(parts))
	seen := make(map[string]bool, len(parts))
	for _, p := range parts {
		if err := ValidatePattern(p); err != nil {
			return nil, err
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out, nil
}

// MaxChannelsPerList bounds how many channels one subscription names.
const MaxChannelsPerList = 64
