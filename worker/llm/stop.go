package llm

import "strings"

// StopMatcher cuts a streamed reply at the first of its stop strings. It
// holds back the end of the text that could be the start of a stop string,
// so no part of a stop string is ever passed on, and text is only split
// where the input was (whole UTF-8 characters in, whole characters out).
type StopMatcher struct {
	stops []string
	held  string
	hit   bool
}

// NewStopMatcher returns a matcher for stops (empty strings are ignored).
func NewStopMatcher(stops []string) *StopMatcher {
	m := &StopMatcher{}
	for _, s := range stops {
		if s != "" {
			m.stops = append(m.stops, s)
		}
	}
	return m
}

// Feed takes the next piece of text and returns what may be passed on now,
// and whether a stop string was found: the text is then cut just before it
// and the reply is over.
func (m *StopMatcher) Feed(text string) (string, bool) {
	if m.hit {
		return "", true
	}
	if len(m.stops) == 0 {
		return text, false
	}
	buf := m.held + text
	cut := -1
	for _, st := range m.stops {
		if i := strings.Index(buf, st); i >= 0 && (cut < 0 || i < cut) {
			cut = i
		}
	}
	if cut >= 0 {
		m.held, m.hit = "", true
		return buf[:cut], true
	}
	hold := 0
	for _, st := range m.stops {
		for k := min(len(st)-1, len(buf)); k > hold; k-- {
			if strings.HasSuffix(buf, st[:k]) {
				hold = k
				break
			}
		}
	}
	m.held = buf[len(buf)-hold:]
	return buf[:len(buf)-hold], false
}

// Flush takes the last piece of text of a reply that ended otherwise and
// returns what is left to pass on: the held-back text (it was no stop
// string after all), cut at a stop string the piece completes.
func (m *StopMatcher) Flush(tail string) string {
	out, hit := m.Feed(tail)
	if !hit {
		out += m.held
	}
	m.held = ""
	return out
}

// Hit reports whether a stop string was found.
func (m *StopMatcher) Hit() bool { return m.hit }
