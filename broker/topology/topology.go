// Package topology owns kiln's JetStream layout: the KILN_JOBS, KILN_RESULTS
// and KILN_EVENTS streams, the per-(kind, model, lane) job consumers and the
// kiln_workers and kiln_cancel key-value buckets. Provisioning is idempotent
// and the same for the embedded broker and for an external nats-server or
// cluster. It imports nats.go only, never nats-server, so workers and
// clients can use it against any broker.
//
// It also turns schema values into the messages that travel on that layout
// (NewMsg, Publish): encoded with their codec, with the Content-Type header.
package topology

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/schema"
)

// Config describes the topology. The zero value of a field means its
// default; WithDefaults fills them in.
type Config struct {
	// Prefix is the first subject token (default "kiln"). Stream names are
	// its upper case (KILN_JOBS), bucket names its lower case (kiln_workers).
	Prefix string
	// Replicas of every stream and bucket: 1 on a single Pi, 3 on a
	// cluster. 0 (the default) picks it at provisioning time: an existing
	// KILN_JOBS keeps its replicas, a new topology gets as many as the
	// JetStream cluster allows, up to 3 (1 on a single server).
	Replicas int
	// JobMaxAge is how long a job may wait in the queue (default 10 min).
	// A job that waited longer gets an expired result (broker/janitor);
	// KILN_JOBS itself keeps a job JobMaxAgeMargin longer.
	JobMaxAge time.Duration
	// MaxQueuedJobs bounds KILN_JOBS; a publish past it is refused at once
	// (DiscardNew) and the client returns ErrQueueFull (default 10,000).
	MaxQueuedJobs int64
	// DuplicateWindow is how long a job id is remembered for publish
	// deduplication (default 2 min).
	DuplicateWindow time.Duration
	// MaxMsgSize bounds one job or result (default 8 MiB).
	MaxMsgSize int32
	// ResultMaxAge is how long results are kept for late readers (default 1 h).
	ResultMaxAge time.Duration
	// ResultMaxBytes bounds KILN_RESULTS (default 512 MiB).
	ResultMaxBytes int64
	// EventMaxAge is how long events are kept (default 24 h).
	EventMaxAge time.Duration
	// EventMaxBytes bounds KILN_EVENTS (default 256 MiB).
	EventMaxBytes int64
	// HeartbeatInterval is the workers' heartbeat period; a registry entry
	// lives three of them (default 5 s).
	HeartbeatInterval time.Duration
	// AckWait is how long a delivered job may go without an ack or an
	// in-progress signal before it is redelivered (default 30 s).
	AckWait time.Duration
	// MaxDeliver is how many times a job is delivered at most (default 5).
	MaxDeliver int
}

// Defaults of Config: WithDefaults puts them in the fields left zero.
const (
	DefaultJobMaxAge         = 10 * time.Minute
	DefaultMaxQueuedJobs     = 10000
	DefaultDuplicateWindow   = 2 * time.Minute
	DefaultMaxMsgSize        = 8 << 20 // bytes
	DefaultResultMaxAge      = time.Hour
	DefaultResultMaxBytes    = 512 << 20
	DefaultEventMaxAge       = 24 * time.Hour
	DefaultEventMaxBytes     = 256 << 20
	DefaultHeartbeatInterval = 5 * time.Second
	DefaultAckWait           = 30 * time.Second
	DefaultMaxDeliver        = 5
)

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = schema.DefaultPrefix
	}
	if c.Replicas < 0 {
		c.Replicas = 0
	}
	if c.JobMaxAge <= 0 {
		c.JobMaxAge = DefaultJobMaxAge
	}
	if c.MaxQueuedJobs <= 0 {
		c.MaxQueuedJobs = DefaultMaxQueuedJobs
	}
	if c.DuplicateWindow <= 0 {
		c.DuplicateWindow = DefaultDuplicateWindow
	}
	if c.MaxMsgSize <= 0 {
		c.MaxMsgSize = DefaultMaxMsgSize
	}
	if c.ResultMaxAge <= 0 {
		c.ResultMaxAge = DefaultResultMaxAge
	}
	if c.ResultMaxBytes <= 0 {
		c.ResultMaxBytes = DefaultResultMaxBytes
	}
	if c.EventMaxAge <= 0 {
		c.EventMaxAge = DefaultEventMaxAge
	}
	if c.EventMaxBytes <= 0 {
		c.EventMaxBytes = DefaultEventMaxBytes
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if c.AckWait <= 0 {
		c.AckWait = DefaultAckWait
	}
	if c.MaxDeliver <= 0 {
		c.MaxDeliver = DefaultMaxDeliver
	}
	return c
}

// Subjects returns the subject builder for c's prefix.
func (c Config) Subjects() schema.Subjects { return schema.Subjects{Prefix: c.prefix()} }

func (c Config) prefix() string {
	if c.Prefix == "" {
		return schema.DefaultPrefix
	}
	return c.Prefix
}

// JobsStream is the name of the job queue stream (KILN_JOBS).
func (c Config) JobsStream() string { return strings.ToUpper(c.prefix()) + "_JOBS" }

// ResultsStream is the name of the results stream (KILN_RESULTS).
func (c Config) ResultsStream() string { return strings.ToUpper(c.prefix()) + "_RESULTS" }

// EventsStream is the name of the events stream (KILN_EVENTS).
func (c Config) EventsStream() string { return strings.ToUpper(c.prefix()) + "_EVENTS" }

// WorkersBucket is the name of the live worker registry (kiln_workers).
func (c Config) WorkersBucket() string { return strings.ToLower(c.prefix()) + "_workers" }

// CancelBucket is the name of the cancelled job ids bucket (kiln_cancel).
func (c Config) CancelBucket() string { return strings.ToLower(c.prefix()) + "_cancel" }

// JobMaxAgeMargin is how much longer KILN_JOBS keeps a job than JobMaxAge
// (the stream's MaxAge is their sum). A job that waited JobMaxAge is
// answered "expired" by a janitor (broker/janitor) unless a worker has
// taken it; the stream's own MaxAge removes a job silently, so it must come
// later: after the janitor's next sweep, and after the redelivery (AckWait)
// of a job whose worker died while it ran, which the next worker answers.
const JobMaxAgeMargin = 2 * time.Minute

// MetadataJobMaxAge is the KILN_JOBS metadata key that keeps the
// JobMaxAge the stream was provisioned with (a Go duration, "10m0s").
const MetadataJobMaxAge = "kiln_job_max_age"

// JobMaxAgeOf is the JobMaxAge a jobs stream was provisioned with, so that a
// janitor or worker that was not told the broker's JobMaxAge agrees with
// it. A stream provisioned before kiln kept it in the metadata removed a
// job at its MaxAge: a little less than that is returned. 0: the stream
// has no MaxAge.
func JobMaxAgeOf(sc jetstream.StreamConfig) time.Duration {
	if d, err := time.ParseDuration(sc.Metadata[MetadataJobMaxAge]); err == nil && d > 0 {
		return d
	}
	return sc.MaxAge - min(JobMaxAgeMargin, sc.MaxAge/4)
}

// ConsumerName is the durable consumer of one (kind, model, lane).
func ConsumerName(kind, model, lane string) string { return kind + "_" + model + "_" + lane }

// JobSubjects are the subjects KILN_JOBS captures: the anonymous job
// subjects <prefix>.jobs.<kind>.<model>.<lane> and the client ones with a
// fifth token, <prefix>.jobs.<kind>.<model>.<lane>.<client>
// (schema.Subjects.Job and ClientJob). This is the one list of them: the
// stream and the broker's checks read it here.
func (c Config) JobSubjects() []string {
	s := c.Subjects()
	return []string{s.Job("*", "*", "*"), s.ClientJob("*", "*", "*", "*")}
}

// StreamConfigs returns the three stream configurations.
func (c Config) StreamConfigs() []jetstream.StreamConfig {
	c = c.WithDefaults()
	s := c.Subjects()
	// KILN_JOBS takes exactly kind, model, lane and an optional client: a
	// subject with a token more or less can never be a job and is refused
	// at publish.
	return []jetstream.StreamConfig{
		{
			Name:        c.JobsStream(),
			Description: "kiln job queue: one message per accepted job, deleted on ack",
			Subjects:    c.JobSubjects(),
			Retention:   jetstream.WorkQueuePolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    c.Replicas,
			MaxAge:      c.JobMaxAge + JobMaxAgeMargin,
			MaxMsgs:     c.MaxQueuedJobs,
			Discard:     jetstream.DiscardNew,
			MaxMsgSize:  c.MaxMsgSize,
			Duplicates:  c.DuplicateWindow,
			RePublish: &jetstream.RePublish{
				Source:      s.Jobs(),
				Destination: s.Wakes(),
				HeadersOnly: true,
			},
			Metadata: map[string]string{MetadataJobMaxAge: c.JobMaxAge.String()},
		},
		{
			Name:              c.ResultsStream(),
			Description:       "kiln results: the final result of every job, for late readers",
			Subjects:          []string{s.Results()},
			Retention:         jetstream.LimitsPolicy,
			Storage:           jetstream.FileStorage,
			Replicas:          c.Replicas,
			MaxAge:            c.ResultMaxAge,
			MaxBytes:          c.ResultMaxBytes,
			MaxMsgsPerSubject: 1,
			MaxMsgSize:        c.MaxMsgSize,
			Discard:           jetstream.DiscardOld,
			AllowDirect:       true,
		},
		{
			Name:        c.EventsStream(),
			Description: "kiln events: heartbeats, thermal transitions, device faults",
			Subjects:    []string{s.Events()},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    c.Replicas,
			MaxAge:      c.EventMaxAge,
			MaxBytes:    c.EventMaxBytes,
			Discard:     jetstream.DiscardOld,
			AllowDirect: true,
		},
	}
}

// Provision creates or updates the streams and buckets: the broker's (or an
// operator's) view of the topology wins. It is idempotent. On a cluster
// whose JetStream meta leader is not elected yet a request can go
// unanswered, so each attempt has a short timeout and is retried until ctx
// ends. With c.Replicas 0 the replicas are picked as its doc says.
func Provision(ctx context.Context, js jetstream.JetStream, c Config) error {
	return provision(ctx, js, c, true)
}

// Ensure creates the streams and buckets that are missing and leaves the
// existing ones as they are: what a worker does at start, so that it never
// overrides the broker's limits and needs no permission to change streams
// once they exist.
func Ensure(ctx context.Context, js jetstream.JetStream, c Config) error {
	return provision(ctx, js, c, false)
}

func provision(ctx context.Context, js jetstream.JetStream, c Config, update bool) error {
	c = c.WithDefaults()
	if c.Replicas == 0 {
		r, err := pickReplicas(ctx, js, c)
		if err != nil {
			return err
		}
		c.Replicas = r
	}
	for _, sc := range c.StreamConfigs() {
		if err := retry(ctx, func(ctx context.Context) error {
			if !update {
				_, err := js.Stream(ctx, sc.Name)
				if err == nil {
					return nil
				}
				if !errors.Is(err, jetstream.ErrStreamNotFound) {
					return err
				}
				_, err = js.CreateStream(ctx, sc)
				if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
					return nil // another worker was first
				}
				return err
			}
			_, err := js.CreateOrUpdateStream(ctx, sc)
			return err
		}); err != nil {
			return fmt.Errorf("topology: stream %s: %w", sc.Name, err)
		}
	}
	kvs := c.bucketConfigs()
	for _, kc := range kvs {
		if err := retry(ctx, func(ctx context.Context) error {
			if !update {
				_, err := js.KeyValue(ctx, kc.Bucket)
				if err == nil {
					return nil
				}
				if !errors.Is(err, jetstream.ErrBucketNotFound) {
					return err
				}
				_, err = js.CreateKeyValue(ctx, kc)
				if errors.Is(err, jetstream.ErrBucketExists) {
					return nil
				}
				return err
			}
			_, err := js.CreateOrUpdateKeyValue(ctx, kc)
			return err
		}); err != nil {
			return fmt.Errorf("topology: bucket %s: %w", kc.Bucket, err)
		}
	}
	return nil
}

// pickReplicas returns the replicas of an existing jobs stream, or else the
// most the JetStream cluster allows, up to 3. It asks the servers by
// creating a probe stream (memory, no subjects) and deleting it: JetStream
// tells a client nothing else about the cluster's size without the system
// account.
func pickReplicas(ctx context.Context, js jetstream.JetStream, c Config) (int, error) {
	var replicas int
	err := retry(ctx, func(ctx context.Context) error {
		st, err := js.Stream(ctx, c.JobsStream())
		if err == nil {
			replicas = max(st.CachedInfo().Config.Replicas, 1)
			return nil
		}
		if !errors.Is(err, jetstream.ErrStreamNotFound) {
			return err
		}
		probe := c.JobsStream() + "_REPLICAS_PROBE"
		for r := 3; r > 1; r-- {
			_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: probe, Storage: jetstream.MemoryStorage,
				Replicas: r, Subjects: []string{c.prefix() + ".replicas-probe"}, MaxMsgs: 1})
			if err == nil || errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				_ = js.DeleteStream(ctx, probe)
				replicas = r
				return nil
			}
			var apiErr *jetstream.APIError
			if !errors.As(err, &apiErr) {
				return err
			}
			switch apiErr.ErrorCode {
			case errNoPeers, errInsufficientResources, errReplicasNotSupported:
				// too many replicas for this cluster: try fewer
			default:
				return err
			}
		}
		replicas = 1
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("topology: replicas: %w", err)
	}
	return replicas, nil
}

// JetStream error codes that answer "not that many replicas".
const (
	errNoPeers               jetstream.ErrorCode = 10005
	errInsufficientResources jetstream.ErrorCode = 10023
	errReplicasNotSupported  jetstream.ErrorCode = 10074
)

func (c Config) bucketConfigs() []jetstream.KeyValueConfig {
	return []jetstream.KeyValueConfig{
		{
			Bucket:      c.WorkersBucket(),
			Description: "kiln live worker registry: one heartbeat per worker",
			TTL:         3 * c.HeartbeatInterval,
			History:     1,
			Storage:     jetstream.MemoryStorage,
			Replicas:    c.Replicas,
		},
		{
			Bucket:      c.CancelBucket(),
			Description: "kiln cancelled job ids",
			TTL:         c.JobMaxAge,
			History:     1,
			Storage:     jetstream.FileStorage,
			Replicas:    c.Replicas,
		},
	}
}

// ConsumerConfig is the durable pull consumer of one (kind, model, lane):
// its anonymous jobs and every client's (schema.Subjects.JobFilters).
func (c Config) ConsumerConfig(kind, model, lane string) jetstream.ConsumerConfig {
	c = c.WithDefaults()
	return jetstream.ConsumerConfig{
		Durable:        ConsumerName(kind, model, lane),
		Description:    fmt.Sprintf("kiln %s jobs for %s, %s lane", kind, model, lane),
		FilterSubjects: c.Subjects().JobFilters(kind, model, lane),
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        c.AckWait,
		MaxDeliver:     c.MaxDeliver,
		MaxAckPending:  1000,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		Replicas:       c.Replicas,
	}
}

// EnsureConsumer returns the consumer of (kind, model, lane), creating it
// from c when it is missing. An existing consumer is left as it is, like
// the streams Ensure finds: whoever provisioned it (an operator, the first
// worker) set its AckWait and MaxDeliver, and those are the ones that hold.
// Read them from the consumer's CachedInfo, not from c.
//
// Its filter is the one exception: a consumer made before jobs carried a
// client token filters the anonymous subject only, and would leave every
// client's job in the queue until its max age. Such a consumer gets the
// filters of ConsumerConfig, once, and keeps the rest of its settings.
func EnsureConsumer(ctx context.Context, js jetstream.JetStream, c Config, kind, model, lane string) (jetstream.Consumer, error) {
	c = c.WithDefaults()
	name := ConsumerName(kind, model, lane)
	var cons jetstream.Consumer
	err := retry(ctx, func(ctx context.Context) error {
		var err error
		cons, err = js.Consumer(ctx, c.JobsStream(), name)
		if err == nil {
			cons, err = widenFilter(ctx, js, c, cons, c.Subjects().JobFilters(kind, model, lane))
			return err
		}
		if !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return err
		}
		cons, err = js.CreateConsumer(ctx, c.JobsStream(), c.ConsumerConfig(kind, model, lane))
		if errors.Is(err, jetstream.ErrConsumerExists) {
			cons, err = js.Consumer(ctx, c.JobsStream(), name) // another worker was first
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("topology: consumer %s: %w", name, err)
	}
	return cons, nil
}

// widenFilter gives cons the filters want when it filters fewer subjects
// (the single subject of a consumer made by an older kiln), keeping the
// rest of its configuration. A consumer that has them, or that an operator
// filtered otherwise, is left as it is.
func widenFilter(ctx context.Context, js jetstream.JetStream, c Config, cons jetstream.Consumer, want []string) (jetstream.Consumer, error) {
	info := cons.CachedInfo()
	if info == nil {
		return cons, nil
	}
	cfg := info.Config
	have := cfg.FilterSubjects
	if cfg.FilterSubject != "" {
		have = []string{cfg.FilterSubject}
	}
	if slices.Equal(have, want) || !slices.Equal(have, want[:1]) {
		return cons, nil
	}
	cfg.FilterSubject, cfg.FilterSubjects = "", want
	updated, err := js.UpdateConsumer(ctx, c.JobsStream(), cfg)
	if err != nil {
		return nil, fmt.Errorf("widen the filter to %v: %w", want, err)
	}
	return updated, nil
}

// retry runs f with a 2 s timeout per attempt until it succeeds, fails
// with an error that retrying cannot fix, or ctx ends.
func retry(ctx context.Context, f func(context.Context) error) error {
	backoff := 100 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := f(actx)
		cancel()
		if err == nil {
			return nil
		}
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.Code != 503 && apiErr.Code != 408 {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-time.After(backoff):
		}
		if backoff < time.Second {
			backoff *= 2
		}
	}
}
