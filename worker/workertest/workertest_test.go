package workertest_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/echo"
	"github.com/kiln-project/kiln/worker"
	"github.com/kiln-project/kiln/worker/workertest"
)

func chatJob(text string, md map[string]string) *schema.ChatJob {
	return &schema.ChatJob{
		JobHeader: schema.JobHeader{ID: "job-1", Model: "echo", Metadata: md},
		Messages:  []schema.Message{{Role: "user", Content: text}},
	}
}

// The handler's tokens are recorded in order, each as it streamed it, and its result is
// returned as it made it.
func TestRunChat(t *testing.T) {
	out, err := workertest.Run(t.Context(), echo.Chat, chatJob("the quick brown fox", nil))
	if err != nil {
		t.Fatal(err)
	}
	res := out.Result
	if res.Text != "echo: the quick brown fox" || res.FinishReason != schema.FinishStop || res.Usage.CompletionTokens != 5 {
		t.Fatalf("result %+v", res)
	}
	if res.Status != "" || res.JobID != "" || res.Attempt != 0 {
		t.Fatalf("result %+v: Run added what only the worker adds", res)
	}
	var tokens []string
	for _, ev := range out.Events {
		if ev.Type != schema.EventToken {
			t.Fatalf("event %+v from a chat handler", ev)
		}
		tokens = append(tokens, ev.Text)
	}
	if !slices.Equal(tokens, []string{"echo:", " the", " quick", " brown", " fox"}) || out.Text() != res.Text {
		t.Fatalf("tokens %q, Text() %q, result %q", tokens, out.Text(), res.Text)
	}

	job := chatJob("the quick brown fox", nil)
	job.MaxTokens = 2
	out, err = workertest.Run(t.Context(), echo.Chat, job)
	if err != nil || out.Result.Text != "echo: the" || out.Result.FinishReason != schema.FinishLength || out.Text() != "echo: the" {
		t.Fatalf("max_tokens 2: %+v, %v, streamed %q", out.Result, err, out.Text())
	}
}

func TestRunImage(t *testing.T) {
	seed := uint64(42)
	job := &schema.ImageJob{JobHeader: schema.JobHeader{ID: "img-1", Model: "echo"}, Prompt: "a red fox", Seed: &seed, Steps: 3, Progress: true}
	out, err := workertest.Run(t.Context(), echo.Image, job)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(out.Steps(), []int{1, 2, 3}) || out.Result.Mime != "image/png" || !strings.HasPrefix(string(out.Result.Image), "\x89PNG") {
		t.Fatalf("steps %v, mime %q, %d image bytes", out.Steps(), out.Result.Mime, len(out.Result.Image))
	}
	for _, ev := range out.Events {
		if ev.Type != schema.EventProgress || ev.Steps != 3 {
			t.Fatalf("event %+v, want progress of 3 steps", ev)
		}
	}
	job.Progress = false
	if out, err := workertest.Run(t.Context(), echo.Image, job); err != nil || len(out.Events) != 0 {
		t.Fatalf("without progress: %d events, %v", len(out.Events), err)
	}
}

// The handler's errors come back as it returned them: the worker's classification (transient,
// permanent, the request's fault) can be asserted on them.
func TestRunErrors(t *testing.T) {
	flaky := chatJob("a b", map[string]string{"fail_until": "2"})
	_, err := workertest.Run(t.Context(), echo.Chat, flaky)
	var verr *schema.Error
	if err == nil || errors.As(err, &verr) || !strings.Contains(err.Error(), "attempt 1") {
		t.Fatalf("first delivery of fail_until=2: %v, want a transient error", err)
	}
	if out, err := workertest.RunAttempt(t.Context(), echo.Chat, flaky, 2); err != nil || out.Result.Text != "echo: a b" {
		t.Fatalf("second delivery of fail_until=2: %+v, %v", out.Result, err)
	}
	_, err = workertest.Run(t.Context(), echo.Chat, chatJob("a b", map[string]string{"fail": "invalid"}))
	if !errors.As(err, &verr) || verr.Code != schema.CodeUnsupported {
		t.Fatalf("fail=invalid: %v, want a *schema.Error", err)
	}
}

// A cancelled context stops the handler, which returns its partial result; a deadline in the
// job ends the context with cause worker.ErrDeadline, as in the worker.
func TestRunContext(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	out, err := workertest.Run(ctx, echo.Chat, chatJob("a b c", map[string]string{"delay_ms": "1"}))
	if !errors.Is(err, context.Canceled) || out.Result == nil || out.Result.Text != "" || len(out.Events) != 0 {
		t.Fatalf("cancelled: %+v, %v", out.Result, err)
	}

	var cause error
	spy := worker.HandlerFunc[schema.ChatJob](func(ctx context.Context, job *worker.Job[schema.ChatJob]) (*schema.Result, error) {
		<-ctx.Done()
		cause = context.Cause(ctx)
		return nil, ctx.Err()
	})
	job := chatJob("a", nil)
	past := time.Now().Add(-time.Second)
	job.Deadline = &past
	if _, err := workertest.Run(t.Context(), spy, job); !errors.Is(err, context.DeadlineExceeded) || !errors.Is(cause, worker.ErrDeadline) {
		t.Fatalf("past deadline: %v, cause %v; want the deadline with cause worker.ErrDeadline", err, cause)
	}
}

// A Queue's workers serve its handlers unless their own configuration changes them, on the
// topology with the shorter ack wait and heartbeat interval; its clients reach them.
func TestStartQueue(t *testing.T) {
	q := workertest.StartQueue(t, workertest.QueueOptions{
		Topology: topology.Config{MaxDeliver: 2},
		Chat:     map[string]worker.Handler[schema.ChatJob]{"echo": echo.Chat},
	})
	if q.Topology.AckWait != 3*time.Second || q.Topology.HeartbeatInterval != time.Second || q.Topology.MaxDeliver != 2 {
		t.Fatalf("topology %+v", q.Topology)
	}
	q.Worker(t, "w1", nil)
	q.Worker(t, "w2", func(c *worker.Config) { c.Chat["other"] = echo.Chat })
	c := q.Client(t)
	res, err := c.Chat(workertest.Context(t), chatJob("hello queue", nil), nil)
	if err != nil || res.Status != schema.StatusOK || res.Text != "echo: hello queue" {
		t.Fatalf("chat: %+v, %v", res, err)
	}
	other := chatJob("hello other", nil)
	other.ID, other.Model = "job-2", "other"
	res, err = c.Chat(workertest.Context(t), other, nil)
	if err != nil || res.Worker != "w2" {
		t.Fatalf("chat on the model only w2 serves: %+v, %v", res, err)
	}
}

func ExampleRun() {
	job := &schema.ChatJob{
		JobHeader: schema.JobHeader{ID: "job-1", Model: "echo"},
		Messages:  []schema.Message{{Role: "user", Content: "hello kiln"}},
	}
	out, err := workertest.Run(context.Background(), echo.Chat, job)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%q in %d tokens: %q\n", out.Result.Text, len(out.Events), out.Text())
	// Output: "echo: hello kiln" in 3 tokens: "echo: hello kiln"
}
