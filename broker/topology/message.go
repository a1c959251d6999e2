package topology

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/schema"
)

// NewMsg encodes v with codec as a kiln message on subject: the body and
// the Content-Type header that names the codec. Callers add any other kiln
// header (schema.HeaderReplyTo) and publish it, with
// core NATS or into a stream.
//
// It lives here, not in schema, because schema imports no NATS code; the
// worker and the client both import topology already.
func NewMsg(subject string, codec schema.Codec, v any) (*nats.Msg, error) {
	data, err := codec.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("topology: encode %T for %s: %w", v, subject, err)
	}
	m := nats.NewMsg(subject)
	m.Data = data
	m.Header.Set(schema.HeaderContentType, codec.ContentType())
	return m, nil
}

// Publish encodes v with codec and publishes it on subject with core NATS
// (no stream acknowledgement): a job's events on its reply subject, fleet
// events (which KILN_EVENTS captures all the same).
func Publish(nc *nats.Conn, subject string, codec schema.Codec, v any) error {
	m, err := NewMsg(subject, codec, v)
	if err != nil {
		return err
	}
	if err := nc.PublishMsg(m); err != nil {
		return fmt.Errorf("topology: publish %s: %w", subject, err)
	}
	return nil
}

// ErrResultStored is returned by StoreResult when the job has a result
// already: only the first one is kept.
var ErrResultStored = errors.New("topology: the job has a stored result already")

// StoreResult keeps res in the results stream on subject (a job's result
// subject, schema.Subjects.ClientResult) unless a result is there already
// (Nats-Expected-Last-Subject-Sequence 0): then it returns an error matching
// ErrResultStored, so a job never ends with two different results, whoever
// answers it (a worker, a redelivery on another card, a janitor).
func StoreResult(ctx context.Context, js jetstream.JetStream, subject string, codec schema.Codec, res *schema.Result) error {
	m, err := NewMsg(subject, codec, res)
	if err != nil {
		return err
	}
	_, err = js.PublishMsg(ctx, m, jetstream.WithExpectLastSequencePerSubject(0))
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		return fmt.Errorf("%w: %w", ErrResultStored, err)
	}
	if err != nil {
		return fmt.Errorf("topology: store result on %s: %w", subject, err)
	}
	return nil
}
