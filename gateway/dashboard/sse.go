package dashboard

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// sseWriter writes server-sent events and flushes each.
type sseWriter struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

// startSSE answers with an event stream; it returns false (having
// answered) when w cannot stream.
func startSSE(w http.ResponseWriter) (*sseWriter, bool) {
	rc := http.NewResponseController(w)
	// An event stream lasts: lift the server's write deadline, if any.
	_ = rc.SetWriteDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // a proxy in front must not hold events back
	w.WriteHeader(http.StatusOK)
	s := &sseWriter{w: w, rc: rc}
	if err := rc.Flush(); err != nil {
		return nil, false
	}
	return s, true
}

// send writes one event whose data is v as JSON.
func (s *sseWriter) send(event string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(s.w, "event: %s\ndata: %s\n\n", event, b); err != nil {
		return err
	}
	return s.rc.Flush()
}

// comment writes an SSE comment, which keeps idle connections open.
func (s *sseWriter) comment(text string) error {
	if _, err := fmt.Fprintf(s.w, ": %s\n\n", text); err != nil {
		return err
	}
	return s.rc.Flush()
}
