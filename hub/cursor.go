package hub

import (
	"strconv"
	"strings"
)

// A cursor names a position in one hub process's history: "<epoch>-<seq>".
// The epoch changes when the hub restarts; seq comes from one counter per
// hub, so it increases per topology (not contiguously: the gaps belong to
// other topologies).

// FormatCursor renders a cursor.
func FormatCursor(epoch int64, seq uint64) string {
	b := make([]byte, 0, 32)
	b = strconv.AppendInt(b, epoch, 10)
	b = append(b, '-')
	b = strconv.AppendUint(b, seq, 10)
	return string(b)
}

// ParseCursor reads a cursor; ok is false when s is not of the form
// "<epoch>-<seq>" with both decimal integers.
func ParseCursor(s string) (epoch int64, seq uint64, ok bool) {
	e, q, found := strings.Cut(s, "-")
	if !found {
		return 0, 0, false
	}
	epoch, err := strconv.ParseInt(e, 10, 64)
	if err != nil || epoch < 0 {
		return 0, 0, false
	}
	seq, err = strconv.ParseUint(q, 10, 64)
	if err != nil {
		return 0, 0, false
	}
	return epoch, seq, true
}
