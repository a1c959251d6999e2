package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kiln-project/kiln/schema"
)

func TestClassify(t *testing.T) {
	t.Parallel()
	delays := []time.Duration{time.Second, 2 * time.Second, 5 * time.Second}
	deadline := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	transient := errors.New("npu: execute failed")
	deviceFault := fmt.Errorf("llm: decode: %w", transient)
	invalid := schema.Errorf(schema.CodeUnsupported, "images", "this model reads no images")
	panicked := func() error {
		_, err := safeHandle(context.Background(), HandlerFunc[schema.ChatJob](func(context.Context, *Job[schema.ChatJob]) (*schema.Result, error) {
			panic("boom")
		}), &Job[schema.ChatJob]{})
		return err
	}()
	cases := []struct {
		name string
		in   ending
		want outcome
		msg  string // in the result's error message
	}{
		{"ok", ending{attempt: 1, maxDeliver: 5},
			outcome{settle: settleFinish, status: schema.StatusOK}, ""},
		{"ok on the last delivery", ending{attempt: 5, maxDeliver: 5},
			outcome{settle: settleFinish, status: schema.StatusOK}, ""},
		{"invalid", ending{err: invalid, attempt: 1, maxDeliver: 5},
			outcome{settle: settleReject, status: schema.StatusError, err: invalid}, "reads no images"},
		{"invalid, wrapped", ending{err: fmt.Errorf("chat: %w", invalid), attempt: 1, maxDeliver: 5},
			outcome{settle: settleReject, status: schema.StatusError, err: invalid}, "reads no images"},
		{"invalid, marked permanent", ending{err: Permanent(invalid), attempt: 1, maxDeliver: 5},
			outcome{settle: settleReject, status: schema.StatusError, err: invalid}, "reads no images"},
		{"permanent", ending{err: Permanent(errors.New("no such file")), attempt: 1, maxDeliver: 5},
			outcome{settle: settleFinish, status: schema.StatusError, err: &schema.Error{Code: schema.CodeFailed}}, "no such file"},
		{"panic", ending{err: panicked, attempt: 1, maxDeliver: 5},
			outcome{settle: settleFinish, status: schema.StatusError, err: &schema.Error{Code: schema.CodeFailed}}, "handler panicked: boom"},
		{"transient, first delivery", ending{err: transient, attempt: 1, maxDeliver: 5},
			outcome{settle: settleRetry, delay: time.Second, fault: true}, ""},
		{"transient, deliveries left", ending{err: transient, attempt: 2, maxDeliver: 5},
			outcome{settle: settleRetry, delay: 2 * time.Second, fault: true}, ""},
		{"transient, past the delays given", ending{err: transient, attempt: 4, maxDeliver: 5},
			outcome{settle: settleRetry, delay: 5 * time.Second, fault: true}, ""},
		{"transient, last delivery", ending{err: transient, attempt: 5, maxDeliver: 5},
			outcome{settle: settleFinish, status: schema.StatusError, err: &schema.Error{Code: schema.CodeFailed}, fault: true}, "failed on all 5 deliveries, last: npu: execute failed"},
		{"transient, the consumer's MaxDeliver", ending{err: transient, attempt: 2, maxDeliver: 2},
			outcome{settle: settleFinish, status: schema.StatusError, err: &schema.Error{Code: schema.CodeFailed}, fault: true}, "failed on all 2 deliveries"},
		{"transient, no delivery limit", ending{err: transient, attempt: 40, maxDeliver: -1},
			outcome{settle: settleRetry, delay: 5 * time.Second, fault: true}, ""},
		{"device fault", ending{err: deviceFault, attempt: 1, maxDeliver: 5},
			outcome{settle: settleRetry, delay: time.Second, fault: true}, ""},
		{"cancelled", ending{err: context.Canceled, cause: ErrCancelRequested, attempt: 1, maxDeliver: 5},
			outcome{settle: settleFinish, status: schema.StatusCancelled, finish: schema.FinishCancelled, err: &schema.Error{Code: schema.CodeCancelled}}, "cancelled while running"},
		{"cancelled, handler returned no error", ending{cause: ErrCancelRequested, attempt: 1, maxDeliver: 5},
			outcome{settle: settleFinish, status: schema.StatusCancelled, finish: schema.FinishCancelled, err: &schema.Error{Code: schema.CodeCancelled}}, "cancelled while running"},
		{"cancelled on the last delivery", ending{err: context.Canceled, cause: ErrCancelRequested, attempt: 5, maxDeliver: 5},
			outcome{settle: settleFinish, status: schema.StatusCancelled, finish: schema.FinishCancelled, err: &schema.Error{Code: schema.CodeCancelled}}, "cancelled while running"},
		{"expired", ending{err: context.DeadlineExceeded, cause: ErrDeadline, attempt: 1, maxDeliver: 5, deadline: &deadline},
			outcome{settle: settleFinish, status: schema.StatusExpired, err: &schema.Error{Code: schema.CodeExpired, Field: "deadline"}}, "deadline 2026-12-01T10:00:00Z passed while running"},
		{"critical hand-back", ending{err: context.Canceled, cause: ErrPaused, attempt: 1, maxDeliver: 5},
			outcome{settle: settleHandBack}, ""},
		{"critical hand-back on the last delivery", ending{err: context.Canceled, cause: ErrPaused, attempt: 5, maxDeliver: 5},
			outcome{settle: settleHandBack}, ""},
		{"shutdown hand-back", ending{err: context.Canceled, cause: ErrShutdown, attempt: 1, maxDeliver: 5},
			outcome{settle: settleHandBack}, ""},
		{"finished before it saw the shutdown", ending{cause: ErrShutdown, attempt: 1, maxDeliver: 5},
			outcome{settle: settleFinish, status: schema.StatusOK}, ""},
		{"finished before it saw the governor", ending{cause: ErrPaused, attempt: 1, maxDeliver: 5},
			outcome{settle: settleFinish, status: schema.StatusOK}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := classify(tc.in, delays)
			if got.settle != tc.want.settle || got.status != tc.want.status || got.finish != tc.want.finish ||
				got.delay != tc.want.delay || got.fault != tc.want.fault {
				t.Fatalf("classify = %+v, want %+v", got, tc.want)
			}
			switch {
			case tc.want.err == nil && got.err != nil:
				t.Fatalf("error %v, want none", got.err)
			case tc.want.err != nil && got.err == nil:
				t.Fatalf("no error, want code %s", tc.want.err.Code)
			case tc.want.err != nil && (got.err.Code != tc.want.err.Code || got.err.Field != tc.want.err.Field ||
				!strings.Contains(got.err.Message, tc.msg)):
				t.Fatalf("error %+v, want code %s field %q and %q in its message", got.err, tc.want.err.Code, tc.want.err.Field, tc.msg)
			}
		})
	}
}

func TestQueued(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	past, future := now.Add(-time.Second), now.Add(time.Minute)
	cases := []struct {
		name      string
		deadline  *time.Time
		cancelled bool
		status    string
		code      schema.ErrorCode
	}{
		{"runs", nil, false, "", ""},
		{"runs before its deadline", &future, false, "", ""},
		{"cancelled while queued", nil, true, schema.StatusCancelled, schema.CodeCancelled},
		{"cancelled and expired", &past, true, schema.StatusCancelled, schema.CodeCancelled},
		{"expired while queued", &past, false, schema.StatusExpired, schema.CodeExpired},
	}
	for _, tc := range cases {
		res := queued(&schema.JobHeader{Deadline: tc.deadline}, tc.cancelled, now)
		switch {
		case tc.status == "" && res != nil:
			t.Errorf("%s: ended with %+v, want it to run", tc.name, res)
		case tc.status != "" && (res == nil || res.Status != tc.status || res.Error == nil || res.Error.Code != tc.code):
			t.Errorf("%s: %+v, want status %s code %s", tc.name, res, tc.status, tc.code)
		}
	}
}

func TestRequestErrorKeepsTheSchemaError(t *testing.T) {
	t.Parallel()
	verr := schema.Errorf(schema.CodeBadJSON, "", "body is not JSON")
	if got := requestError(fmt.Errorf("decode: %w", verr), schema.CodeBadMsgpack); got != verr {
		t.Fatalf("requestError = %+v, want the wrapped %+v", got, verr)
	}
	if got := requestError(errors.New("short read"), schema.CodeBadMsgpack); got.Code != schema.CodeBadMsgpack || got.Message != "short read" {
		t.Fatalf("requestError of a plain error = %+v", got)
	}
}

func TestLogLimiter(t *testing.T) {
	t.Parallel()
	var l logLimiter
	start := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	steps := []struct {
		after      time.Duration
		ok         bool
		suppressed int
	}{
		{0, true, 0},
		{time.Second, false, 0},
		{10 * time.Second, false, 0},
		{29 * time.Second, false, 0},
		{30 * time.Second, true, 3},
		{31 * time.Second, false, 0},
		{2 * time.Minute, true, 1},
		{3 * time.Minute, true, 0},
	}
	for _, s := range steps {
		suppressed, ok := l.allow(start.Add(s.after), 30*time.Second)
		if ok != s.ok || suppressed != s.suppressed {
			t.Fatalf("at +%v: allow = %d, %v; want %d, %v", s.after, suppressed, ok, s.suppressed, s.ok)
		}
	}
}
