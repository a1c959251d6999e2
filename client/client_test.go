package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/broker/brokertest"
	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/echo"
	"github.com/kiln-project/kiln/test/wait"
	"github.com/kiln-project/kiln/worker"
)

func TestNewWithoutConnectionIsAnError(t *testing.T) {
	c, err := client.New(nil)
	if err == nil || c != nil || !strings.Contains(err.Error(), "connection") {
		t.Fatalf("client.New(nil) = %v, %v; want an error about the connection", c, err)
	}
}

// A job Submit refuses before publishing comes back as the same
// *client.JobError a worker's refusal does: ErrInvalid, the field, the code.
func TestInvalidJobIsAJobErrorBeforePublishing(t *testing.T) {
	b := brokertest.Run(t, nil)
	c, err := client.New(brokertest.Connect(t, b))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	hot := 7.0
	res, err := c.Chat(t.Context(), &schema.ChatJob{
		JobHeader:   schema.JobHeader{Model: "echo"},
		Messages:    []schema.Message{{Role: "user", Content: "hi"}},
		Temperature: &hot,
	}, nil)
	var je *client.JobError
	if res != nil || !errors.Is(err, client.ErrInvalid) || !errors.As(err, &je) {
		t.Fatalf("Chat = %v, %v; want a *client.JobError matching ErrInvalid", res, err)
	}
	r := je.Result
	if r.Status != schema.StatusError || r.Error == nil || r.Error.Field != "temperature" || r.Error.Code != schema.CodeOutOfRange || r.JobID == "" {
		t.Fatalf("refusal %+v (error %+v)", r, r.Error)
	}
	if msg := err.Error(); !strings.Contains(msg, "refused: out_of_range on temperature") {
		t.Fatalf("message %q", msg)
	}
}

// Ending ctx cancels the job: the error matches ErrCancelled and the
// context's cause, names the job, and the worker stops it.
func TestChatCancelledThroughContext(t *testing.T) {
	b := brokertest.Run(t, nil)
	w, err := worker.New(brokertest.Connect(t, b), worker.Config{
		Name:   "w1",
		Chat:   map[string]worker.Handler[schema.ChatJob]{"echo": echo.Chat},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.StopAndCancel(context.Background()) })
	c, err := client.New(brokertest.Connect(t, b), client.WithResultPoll(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithCancelCause(t.Context())
	defer cancel(nil)
	gone := errors.New("the visitor left")
	job := &schema.ChatJob{
		JobHeader: schema.JobHeader{Model: "echo", Metadata: map[string]string{"delay_ms": "50"}},
		Messages:  []schema.Message{{Role: "user", Content: strings.Repeat("word ", 200)}},
	}
	res, err := c.Chat(ctx, job, func(ev schema.Event) error {
		if ev.Type == schema.EventToken {
			cancel(gone)
		}
		return nil
	})
	var ce *client.CancelledError
	if res != nil || !errors.Is(err, client.ErrCancelled) || !errors.Is(err, gone) || !errors.As(err, &ce) || ce.JobID != job.ID {
		t.Fatalf("Chat = %v, %v; want a *client.CancelledError for %s matching ErrCancelled and the cause", res, err, job.ID)
	}
	if want := fmt.Sprintf("kiln: job %s cancelled: the visitor left", job.ID); err.Error() != want {
		t.Fatalf("message %q, want %q", err, want)
	}
	wait.For(t, 20*time.Second, 50*time.Millisecond, func() error {
		stored, err := c.Result(t.Context(), job.ID)
		if err != nil {
			return err
		}
		if stored.Status != schema.StatusCancelled {
			return fmt.Errorf("stored result %s, want cancelled", stored.Status)
		}
		return nil
	})
}

// A result's error reads once: "cancelled while running", not "cancelled:
// cancelled: cancelled while running".
func TestJobErrorSaysItOnce(t *testing.T) {
	cases := []struct {
		res  schema.Result
		want string
	}{
		{schema.Result{JobID: "j1", Status: schema.StatusCancelled, Error: schema.Errorf(schema.CodeCancelled, "", "cancelled while running")},
			"kiln: job j1 cancelled while running"},
		{schema.Result{JobID: "j1", Status: schema.StatusExpired, Error: schema.Errorf(schema.CodeExpired, "deadline", "deadline 2026-01-01T00:00:00Z passed while running")},
			"kiln: job j1 expired: deadline 2026-01-01T00:00:00Z passed while running"},
		{schema.Result{JobID: "j1", Status: schema.StatusError, Error: schema.Errorf(schema.CodeFailed, "", "failed on all 5 deliveries, last: boom")},
			"kiln: job j1 failed on all 5 deliveries, last: boom"},
		{schema.Result{JobID: "j1", Status: schema.StatusError, Error: schema.Errorf(schema.CodeOverLimit, "messages", "the prompt is 700 tokens")},
			"kiln: job j1 refused: over_limit on messages: the prompt is 700 tokens"},
		{schema.Result{JobID: "j1", Status: schema.StatusCancelled}, "kiln: job j1 cancelled"},
	}
	for _, c := range cases {
		if got := (&client.JobError{Result: &c.res}).Error(); got != c.want {
			t.Errorf("%+v: %q, want %q", c.res, got, c.want)
		}
	}
}

// Queue lists each (kind, model, lane) once, whoever's jobs wait there
// (anonymous and clients' subjects alike), with or without a consumer, and
// says when the oldest waiting job was queued unless asked not to.
func TestQueueListsEachRouteOnce(t *testing.T) {
	b := brokertest.Run(t, nil)
	nc := brokertest.Connect(t, b)
	ctx := t.Context()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	// A consumer for chat/held/normal that nobody fetches from, none for chat/nobody/normal.
	if _, err := topology.EnsureConsumer(ctx, js, topology.Config{}, schema.KindChat, "held", schema.LaneNormal); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	for _, id := range []string{"", "room-1", "room-2"} {
		opts := []client.Option{client.WithoutWorkerCheck()}
		if id != "" {
			opts = append(opts, client.WithClientID(id))
		}
		c, err := client.New(nc, opts...)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for _, model := range []string{"held", "nobody"} {
			p, err := c.Submit(ctx, &schema.ChatJob{JobHeader: schema.JobHeader{Model: model}, Messages: []schema.Message{{Role: "user", Content: "hi"}}})
			if err != nil {
				t.Fatal(err)
			}
			p.Close()
		}
	}
	c, err := client.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, opts := range [][]client.QueueOption{nil, {client.WithoutOldest()}} {
		queue, err := c.Queue(ctx, opts...)
		if err != nil {
			t.Fatal(err)
		}
		if len(queue) != 2 {
			t.Fatalf("queue %+v: want one row per route", queue)
		}
		for _, q := range queue {
			if q.Kind != schema.KindChat || q.Lane != schema.LaneNormal || q.Waiting != 3 || q.Unserved != true {
				t.Errorf("%+v: want 3 waiting, unserved", q)
			}
			if oldest := q.Oldest; opts == nil && (oldest.Before(before.Add(-time.Second)) || oldest.After(time.Now())) {
				t.Errorf("%s: oldest %v, want the first job's time (after %v)", q.Model, oldest, before)
			} else if opts != nil && !oldest.IsZero() {
				t.Errorf("%s: oldest %v read WithoutOldest", q.Model, oldest)
			}
		}
	}
}
