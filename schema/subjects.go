package schema

import (
	"fmt"
	"strings"
)

// DefaultPrefix is the first token of every kiln subject.
const DefaultPrefix = "kiln"

// Subjects builds and parses kiln subjects under one prefix. The zero value
// uses DefaultPrefix.
type Subjects struct {
	Prefix string
}

func (s Subjects) p() string {
	if s.Prefix == "" {
		return DefaultPrefix
	}
	return s.Prefix
}

// Job is the subject a job of kind for model is published on in lane.
func (s Subjects) Job(kind, model, lane string) string {
	return s.p() + ".jobs." + kind + "." + model + "." + lane
}

// Jobs is the wildcard of every subject under <prefix>.jobs. KILN_JOBS
// stores only Job("*", "*", "*"): exactly kind, model and lane.
func (s Subjects) Jobs() string { return s.p() + ".jobs.>" }

// Wake is the subject the job stream republishes each stored job's headers
// on (no body), so that idle workers wake at once instead of polling.
func (s Subjects) Wake(kind, model, lane string) string {
	return s.p() + ".wake." + kind + "." + model + "." + lane
}

// Wakes is the wildcard of every wake subject: where KILN_JOBS republishes.
func (s Subjects) Wakes() string { return s.p() + ".wake.>" }

// Reply is the default reply subject of a job submitted by client.
func (s Subjects) Reply(client, job string) string {
	return s.p() + ".reply." + client + "." + job
}

// Replies is the wildcard of every default reply subject.
func (s Subjects) Replies() string { return s.p() + ".reply.>" }

// ClientReplies is the wildcard of the default reply subjects of client's
// jobs: <prefix>.reply.<client>.>.
func (s Subjects) ClientReplies(client string) string { return s.p() + ".reply." + client + ".>" }

// Result is the subject a job's final result is kept on in KILN_RESULTS
// when the job names no client (published by hand, without HeaderClient).
func (s Subjects) Result(job string) string { return s.p() + ".results." + job }

// ClientResult is the subject of the result of a job that client submitted
// (its HeaderClient): <prefix>.results.<job>.<client>, so that a broker
// permission can let each client read its own results only. An empty client
// gives Result(job).
func (s Subjects) ClientResult(job, client string) string {
	if client == "" {
		return s.Result(job)
	}
	return s.p() + ".results." + job + "." + client
}

// Results is the wildcard that KILN_RESULTS captures.
func (s Subjects) Results() string { return s.p() + ".results.>" }

// ClientResults is the wildcard of the results of every job that client
// submitted: <prefix>.results.*.<client>.
func (s Subjects) ClientResults(client string) string { return s.p() + ".results.*." + client }

// Cancel is the core subject that asks the worker running job to stop.
func (s Subjects) Cancel(job string) string { return s.p() + ".cancel." + job }

// Cancels is the wildcard of every cancel subject.
func (s Subjects) Cancels() string { return s.p() + ".cancel.*" }

// Status is the subject of a worker's status endpoint (the NATS
// micro-service framework): a request gets the worker's heartbeat.
func (s Subjects) Status(worker string) string { return s.p() + ".status." + worker }

// Statuses is the wildcard of every worker's status endpoint.
func (s Subjects) Statuses() string { return s.p() + ".status.*" }

// Event topics: the token after <prefix>.events.
const (
	TopicHeartbeat = "heartbeat"
	TopicThermal   = "thermal"
	TopicDevice    = "device"
)

// Heartbeat is the subject of a worker's periodic status.
func (s Subjects) Heartbeat(worker string) string { return s.event(TopicHeartbeat, worker) }

// Thermal is the subject of a worker's governor transitions.
func (s Subjects) Thermal(worker string) string { return s.event(TopicThermal, worker) }

// Device is the subject of a worker's device faults, resets and loads.
func (s Subjects) Device(worker string) string { return s.event(TopicDevice, worker) }

func (s Subjects) event(topic, worker string) string {
	return s.p() + ".events." + topic + "." + worker
}

// Events is the wildcard that KILN_EVENTS captures.
func (s Subjects) Events() string { return s.p() + ".events.>" }

// ParseEvent splits an event subject, <prefix>.events.<topic>.<worker>, into
// its topic (TopicHeartbeat, ...) and worker (the rest of the subject).
func (s Subjects) ParseEvent(subject string) (topic, worker string, err error) {
	rest, ok := strings.CutPrefix(subject, s.p()+".events.")
	if ok {
		topic, worker, ok = strings.Cut(rest, ".")
	}
	if !ok || topic == "" || worker == "" {
		return "", "", fmt.Errorf("schema: %q is not an event subject (%s.events.<topic>.<worker>)", subject, s.p())
	}
	return topic, worker, nil
}

// JobSubject is a parsed job subject.
type JobSubject struct {
	Kind, Model, Lane string
}

// ParseJob splits a job subject into kind, model and lane.
func (s Subjects) ParseJob(subject string) (JobSubject, error) {
	rest, ok := strings.CutPrefix(subject, s.p()+".jobs.")
	parts := strings.Split(rest, ".")
	if !ok || len(parts) != 3 {
		return JobSubject{}, fmt.Errorf("schema: %q is not a job subject (%s.jobs.<kind>.<model>.<lane>)", subject, s.p())
	}
	return JobSubject{Kind: parts[0], Model: parts[1], Lane: parts[2]}, nil
}

// ValidToken reports whether s can stand as one subject token: non-empty,
// at most 128 bytes of letters, digits, '-' and '_'. Model names, worker
// names, client ids and job ids are all tokens.
func ValidToken(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}

// ValidSubject reports whether s is a literal subject one can publish to:
// at most 256 bytes of dot-separated non-empty tokens without whitespace,
// control characters or wildcards. A job's reply_to must be one.
func ValidSubject(s string) bool {
	if s == "" || len(s) > 256 {
		return false
	}
	for _, tok := range strings.Split(s, ".") {
		if tok == "" || tok == "*" || tok == ">" {
			return false
		}
		for i := 0; i < len(tok); i++ {
			if c := tok[i]; c <= ' ' || c == 0x7f || c == '*' || c == '>' {
				return false
			}
		}
	}
	return true
}
