package schema

import (
	"fmt"
	"slices"
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

// Job is the subject an anonymous job of kind for model is published on in
// lane: <prefix>.jobs.<kind>.<model>.<lane>. Its sender is unknown, so its
// result is kept under Result(job) and its reply subject is any outside
// kiln's own (ReplyTo). Only an open broker (or an admin) takes it.
func (s Subjects) Job(kind, model, lane string) string {
	return s.p() + ".jobs." + kind + "." + model + "." + lane
}

// ClientJob is the subject client publishes a job on:
// <prefix>.jobs.<kind>.<model>.<lane>.<client>. The client token is the
// job's identity: broker permissions let each controller publish under
// its own id only, and the worker answers, stores and cancels the job
// under that token (ReplyTo, ClientResult, ClientCancel), never under a
// header or body field. An empty client gives Job(kind, model, lane).
func (s Subjects) ClientJob(kind, model, lane, client string) string {
	if client == "" {
		return s.Job(kind, model, lane)
	}
	return s.Job(kind, model, lane) + "." + client
}

// JobFilters are the subjects of the jobs of one (kind, model, lane), the
// anonymous one and every client's: the filters of its consumer.
func (s Subjects) JobFilters(kind, model, lane string) []string {
	j := s.Job(kind, model, lane)
	return []string{j, j + ".*"}
}

// Jobs is the wildcard of every job subject (KILN_JOBS captures the two
// shapes of JobFilters for every kind, model and lane).
func (s Subjects) Jobs() string { return s.p() + ".jobs.>" }

// ClientJobs is the wildcard of the job subjects of client:
// <prefix>.jobs.*.*.*.<client>, what a controller may publish to.
func (s Subjects) ClientJobs(client string) string { return s.ClientJob("*", "*", "*", client) }

// Wake is the subject the job stream republishes each stored anonymous
// job's headers on (no body), so that idle workers wake at once instead of
// polling. A client's job wakes on Wake(...)+"."+client: WakeFilters has
// both.
func (s Subjects) Wake(kind, model, lane string) string {
	return s.p() + ".wake." + kind + "." + model + "." + lane
}

// WakeFilters are the wake subjects of the jobs of one (kind, model,
// lane), as JobFilters are their job subjects.
func (s Subjects) WakeFilters(kind, model, lane string) []string {
	w := s.Wake(kind, model, lane)
	return []string{w, w + ".*"}
}

// Wakes is the wildcard of every wake subject: where KILN_JOBS republishes.
func (s Subjects) Wakes() string { return s.p() + ".wake.>" }

// ClientWakes is the wildcard of the wake subjects of client's jobs:
// <prefix>.wake.*.*.*.<client>.
func (s Subjects) ClientWakes(client string) string { return s.Wake("*", "*", "*") + "." + client }

// Reply is the default reply subject of a job submitted by client.
func (s Subjects) Reply(client, job string) string {
	return s.p() + ".reply." + client + "." + job
}

// Replies is the wildcard of every default reply subject.
func (s Subjects) Replies() string { return s.p() + ".reply.>" }

// ClientReplies is the wildcard of the default reply subjects of client's
// jobs: <prefix>.reply.<client>.>.
func (s Subjects) ClientReplies(client string) string { return s.p() + ".reply." + client + ".>" }

// Result is the subject an anonymous job's final result is kept on in
// KILN_RESULTS (a job published on Job(...), without a client token).
func (s Subjects) Result(job string) string { return s.p() + ".results." + job }

// ClientResult is the subject of the result of a job that client submitted
// (on ClientJob(..., client)): <prefix>.results.<job>.<client>, so that a
// broker permission can let each client read its own results only. An
// empty client gives Result(job).
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

// Cancel is the core subject that asks the worker running anonymous job to
// stop: <prefix>.cancel.<job>.
func (s Subjects) Cancel(job string) string { return s.p() + ".cancel." + job }

// ClientCancel is the core subject that asks the worker running client's
// job to stop: <prefix>.cancel.<client>.<job>, that is <prefix>.cancel.
// followed by JobKey(client, job). It stops that client's job only. An
// empty client gives Cancel(job).
func (s Subjects) ClientCancel(client, job string) string {
	return s.p() + ".cancel." + JobKey(client, job)
}

// ClientCancels is the wildcard of client's cancel subjects:
// <prefix>.cancel.<client>.*, what a controller may publish to.
func (s Subjects) ClientCancels(client string) string { return s.ClientCancel(client, "*") }

// Cancels is the wildcard of every cancel subject, anonymous and client.
func (s Subjects) Cancels() string { return s.p() + ".cancel.>" }

// ParseCancel returns the job key (JobKey) a cancel subject names.
func (s Subjects) ParseCancel(subject string) (key string, ok bool) {
	key, ok = strings.CutPrefix(subject, s.p()+".cancel.")
	return key, ok && key != ""
}

// JobKey is what tells one client's job from another's with the same id:
// client.job, or job for an anonymous job. It is the job's Nats-Msg-Id (so
// the stream deduplicates each client's ids apart), its key in the
// kiln_cancel bucket and the tail of its cancel subject.
func JobKey(client, job string) string {
	if client == "" {
		return job
	}
	return client + "." + job
}

// JobIDOf is the job id that key, a job's Nats-Msg-Id, names for a job of
// client ("" when anonymous): the inverse of JobKey. A key without the
// client's prefix is taken as the id itself (a hand-published job); ""
// when it names no valid id.
func JobIDOf(client, key string) string {
	if client != "" {
		key = strings.TrimPrefix(key, client+".")
	}
	if !ValidToken(key) {
		return ""
	}
	return key
}

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
	// Client is the client token of a ClientJob subject, "" for an
	// anonymous job (a Job subject). It is the job's only identity.
	Client string
}

// ParseJob splits a job subject, <prefix>.jobs.<kind>.<model>.<lane> with
// an optional .<client>, into its parts. A client token must be a
// ValidToken.
func (s Subjects) ParseJob(subject string) (JobSubject, error) {
	rest, ok := strings.CutPrefix(subject, s.p()+".jobs.")
	parts := strings.Split(rest, ".")
	if !ok || len(parts) < 3 || len(parts) > 4 || slices.Contains(parts, "") {
		return JobSubject{}, fmt.Errorf("schema: %q is not a job subject (%s.jobs.<kind>.<model>.<lane>[.<client>])", subject, s.p())
	}
	js := JobSubject{Kind: parts[0], Model: parts[1], Lane: parts[2]}
	if len(parts) == 4 {
		if !ValidToken(parts[3]) {
			return JobSubject{}, fmt.Errorf("schema: the client token of job subject %q is not a client id (letters, digits, '-' and '_', at most 128 bytes)", clip(subject))
		}
		js.Client = parts[3]
	}
	return js, nil
}

// InboxPrefix begins every NATS inbox subject (nats.go's _INBOX.); a
// controller's inboxes are _INBOX.<client>.>, which broker permissions
// give it alone. (schema imports no NATS code, so it is spelled here.)
const InboxPrefix = "_INBOX."

// ReplyTo decides where the events and the result of a job go, from the
// client token of its subject ("" for an anonymous job), its id (""
// when unknown) and the reply subject it asked for (its reply_to; "" for
// the default). The worker publishes with its own rights, so this rule is
// what keeps one client from making it publish into another's subjects or
// kiln's own:
//
//   - a client's job replies under that client's own subjects only:
//     <prefix>.reply.<client>.… or _INBOX.<client>.…; its default is
//     Reply(client, job);
//   - an anonymous job may reply on any subject outside kiln's own
//     namespace (<prefix>.…, but for <prefix>.reply.…) and NATS's ($…);
//     it has no default.
//
// A subject it refuses gives "" and a bad_value error on reply_to; so does
// one that is not publishable (spaces, wildcards, more than 256 bytes).
func (s Subjects) ReplyTo(client, job, requested string) (string, *Error) {
	if requested == "" {
		if client == "" || !ValidToken(job) {
			return "", nil
		}
		return s.Reply(client, job), nil
	}
	if !ValidSubject(requested) {
		return "", Errorf(CodeBadValue, "reply_to", "%q is not a subject one can publish to (no spaces, no wildcards, at most 256 bytes)", clip(requested))
	}
	if client != "" {
		own, inbox := s.p()+".reply."+client+".", InboxPrefix+client+"."
		if strings.HasPrefix(requested, own) || strings.HasPrefix(requested, inbox) {
			return requested, nil
		}
		return "", Errorf(CodeBadValue, "reply_to", "%q is not a reply subject of client %s: use %s… or %s… (or none, for %s<job>)",
			clip(requested), client, own, inbox, own)
	}
	if strings.HasPrefix(requested, "$") ||
		strings.HasPrefix(requested, s.p()+".") && !strings.HasPrefix(requested, s.p()+".reply.") {
		return "", Errorf(CodeBadValue, "reply_to", "%q is one of kiln's or NATS's own subjects (%s.…, $…): use %s.reply.… or a subject of your own",
			clip(requested), s.p(), s.p())
	}
	return requested, nil
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
